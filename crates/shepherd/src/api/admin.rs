//! The admin API under `/admin`, guarded by the master key (`Authorization: Bearer`): virtual
//! keys (create, list, get, update, revoke, rotate), usage reports (JSON or CSV) and the views
//! the console reads (`views.rs`). The console's session cookie is accepted too, a change made
//! with it only with its CSRF token (`console.rs`). Store work runs on the
//! blocking pool, never on the request threads.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::console::{self, same_secret};
use super::errors::ApiError;
use super::views;
use crate::governance::manage::{self, KeySpec, ManageError};
use crate::state::AppState;
use crate::store::UsageQuery;

/// The admin routes, with the master-key guard (the caller gives the state).
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/admin/keys", get(list_keys).post(create_key))
        .route(
            "/admin/keys/{id}",
            get(get_key).patch(update_key).delete(revoke_key),
        )
        .route("/admin/keys/{id}/rotate", post(rotate_key))
        .route("/admin/usage", get(usage))
        .route("/admin/session", get(views::session))
        .route("/admin/overview", get(views::overview))
        .route("/admin/deployments", get(views::deployments))
        .route("/admin/requests", get(views::requests))
        .layer(axum::middleware::from_fn_with_state(state, guard))
        .merge(console::routes())
}

async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let runtime = state.runtime();
    let Some(admin) = runtime.config.admin.as_ref() else {
        return ApiError::admin_disabled().into_response();
    };
    let presented = super::auth::presented_key(request.headers());
    match presented {
        Some(key) if same_secret(key.as_bytes(), admin.master_key.expose().as_bytes()) => {
            always_json(next.run(request).await).await
        }
        Some(_) => ApiError::invalid_key().into_response(),
        // The console's session cookie; a change must carry the session's CSRF token.
        None => match state.console.of(request.headers()) {
            None => ApiError::missing_key().into_response(),
            Some(session) => {
                let reads = matches!(*request.method(), Method::GET | Method::HEAD);
                if !reads && !console::csrf_ok(&session, request.headers()) {
                    return ApiError::admin(
                        StatusCode::FORBIDDEN,
                        "missing or wrong CSRF token (x-csrf-token)",
                    )
                    .into_response();
                }
                always_json(next.run(request).await).await
            }
        },
    }
}

/// An error the framework answered in plain text (a malformed query or path, a body over the
/// size limit) comes back as the admin API's JSON error with the same status.
async fn always_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text.trim().to_owned()
    };
    ApiError::admin(status, &message).into_response()
}

fn failure(error: &ManageError) -> Response {
    let status = match error {
        ManageError::Invalid(_) => StatusCode::BAD_REQUEST,
        ManageError::NotFound(_) => StatusCode::NOT_FOUND,
        ManageError::NoSecret => StatusCode::CONFLICT,
        ManageError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::admin(status, &error.to_string()).into_response()
}

/// Runs store work off the request threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ManageError> + Send + 'static,
) -> Result<T, ManageError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(ManageError::Store(error.to_string())))
}

fn body_of<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ManageError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    if !json {
        return Err(ManageError::Invalid("send a JSON body".into()));
    }
    let body = if body.is_empty() {
        b"{}".as_slice()
    } else {
        body
    };
    crate::translate::parse_body(body).map_err(|error| {
        ManageError::Invalid(match error.field {
            Some(field) => format!("{field}: {}", error.message),
            None => error.message,
        })
    })
}

async fn list_keys(State(state): State<Arc<AppState>>) -> Response {
    let governance = state.governance.clone();
    let keys: Vec<Value> = governance
        .virtual_keys()
        .iter()
        .map(|key| governance.key_view(&key.stored))
        .collect();
    Json(json!({"object": "list", "data": keys})).into_response()
}

async fn get_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.governance.virtual_key(&id) {
        Some(key) => Json(state.governance.key_view(&key.stored)).into_response(),
        None => failure(&ManageError::NotFound(id)),
    }
}

async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let spec: KeySpec = match body_of(&headers, &body) {
        Ok(spec) => spec,
        Err(error) => return failure(&error),
    };
    let governance = state.governance.clone();
    match blocking(move || governance.create_key(spec)).await {
        Ok((key, text)) => {
            tracing::info!(key_id = %key.id, name = %key.name, "virtual key created");
            let mut view = state.governance.key_view(&key);
            view["key"] = json!(text);
            (StatusCode::CREATED, Json(view)).into_response()
        }
        Err(error) => failure(&error),
    }
}

async fn update_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let spec: KeySpec = match body_of(&headers, &body) {
        Ok(spec) => spec,
        Err(error) => return failure(&error),
    };
    let governance = state.governance.clone();
    match blocking(move || governance.update_key(&id, spec)).await {
        Ok(key) => Json(state.governance.key_view(&key)).into_response(),
        Err(error) => failure(&error),
    }
}

async fn revoke_key(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let governance = state.governance.clone();
    match blocking(move || governance.revoke_key(&id)).await {
        Ok(key) => {
            tracing::info!(key_id = %key.id, name = %key.name, "virtual key revoked");
            Json(state.governance.key_view(&key)).into_response()
        }
        Err(error) => failure(&error),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateSpec {
    /// How long the old secret stays valid (`1h`; default 1h; `0s`: not at all).
    overlap: Option<String>,
}

async fn rotate_key(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let spec: RotateSpec = match body_of(&headers, &body) {
        Ok(spec) => spec,
        Err(error) => return failure(&error),
    };
    let overlap =
        match spec.overlap.as_deref().map(|text| {
            crate::bounds::duration("overlap", text, crate::bounds::MAX_ROTATION_OVERLAP)
        }) {
            None => Duration::from_secs(3600),
            Some(Ok(overlap)) => overlap,
            Some(Err(message)) => return failure(&ManageError::Invalid(message)),
        };
    let governance = state.governance.clone();
    match blocking(move || governance.rotate_key(&id, overlap)).await {
        Ok((key, text)) => {
            tracing::info!(key_id = %key.id, name = %key.name, ?overlap, "virtual key rotated");
            let mut view = state.governance.key_view(&key);
            view["key"] = json!(text);
            Json(view).into_response()
        }
        Err(error) => failure(&error),
    }
}

#[derive(Debug, Deserialize)]
struct UsageParams {
    group_by: Option<String>,
    /// `json` (the default) or `csv`.
    format: Option<String>,
    from: Option<String>,
    to: Option<String>,
    key: Option<String>,
}

async fn usage(State(state): State<Arc<AppState>>, Query(params): Query<UsageParams>) -> Response {
    let query = (|| -> Result<UsageQuery, ManageError> {
        if let Some(format) = params
            .format
            .as_deref()
            .filter(|f| !matches!(*f, "json" | "csv"))
        {
            return Err(ManageError::Invalid(format!(
                "format `{format}`: use json or csv"
            )));
        }
        Ok(UsageQuery {
            group_by: manage::group_by(params.group_by.as_deref().unwrap_or(""))?,
            from_ms: params.from.as_deref().map(manage::time_bound).transpose()?,
            to_ms: params.to.as_deref().map(manage::time_bound).transpose()?,
            key_id: params.key,
        })
    })();
    let query = match query {
        Ok(query) => query,
        Err(error) => return failure(&error),
    };
    let governance = state.governance.clone();
    match blocking(move || governance.report(&query)).await {
        Ok(rows) if params.format.as_deref() == Some("csv") => views::usage_csv(&rows),
        Ok(rows) => {
            Json(json!({"object": "list", "data": manage::report_json(&rows)})).into_response()
        }
        Err(error) => failure(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
