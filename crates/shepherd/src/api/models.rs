//! `GET /v1/models` and `GET /v1/models/{id}`: the models a key may use, in the shape of the
//! caller's protocol. OpenAI's `{"object":"list","data":[{id, object, created, owned_by}]}`, or,
//! for a caller that sends `anthropic-version` (the Anthropic SDKs always do), Anthropic's
//! `{"data":[{type, id, display_name, created_at}], has_more, first_id, last_id}` with its
//! `limit` / `after_id` / `before_id` paging.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::{ApiError, ClientProtocol};
use crate::context::RequestContext;
use crate::state::{AppState, Runtime};

/// Anthropic's page size when the caller names none, and the largest it may ask for.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1000;

/// Anthropic's paging parameters (OpenAI's list has none).
#[derive(Debug, Default, Deserialize)]
pub struct Paging {
    limit: Option<usize>,
    after_id: Option<String>,
    before_id: Option<String>,
}

/// `GET /v1/models`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestContext>>,
    headers: HeaderMap,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Response {
    let protocol = ClientProtocol::of_request("/v1/models", &headers);
    let runtime = state.runtime();
    let names = match allowed(&state, &runtime, &ctx, &headers) {
        Ok(names) => names,
        Err(error) => return error.in_protocol(protocol).into_response(),
    };
    let body = match protocol {
        ClientProtocol::OpenAi => {
            let data: Vec<Value> = names.iter().map(|name| openai(&runtime, name)).collect();
            json!({"object": "list", "data": data})
        }
        ClientProtocol::Anthropic => {
            let paging = match paging {
                Ok(Query(paging)) => paging,
                Err(rejection) => {
                    return ApiError::invalid_field("query", &rejection.body_text())
                        .in_protocol(protocol)
                        .into_response();
                }
            };
            match anthropic_page(&runtime, &names, &paging) {
                Ok(page) => page,
                Err(error) => return error.in_protocol(protocol).into_response(),
            }
        }
    };
    axum::Json(body).into_response()
}

/// `GET /v1/models/{id}`.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestContext>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let protocol = ClientProtocol::of_request("/v1/models", &headers);
    let runtime = state.runtime();
    let names = match allowed(&state, &runtime, &ctx, &headers) {
        Ok(names) => names,
        Err(error) => return error.in_protocol(protocol).into_response(),
    };
    // A model the key may not use is as unknown as one that does not exist.
    let Some(name) = names.iter().find(|name| ***name == *id) else {
        return ApiError::unknown_model(&id)
            .in_protocol(protocol)
            .into_response();
    };
    let body = match protocol {
        ClientProtocol::OpenAi => openai(&runtime, name),
        ClientProtocol::Anthropic => anthropic(&runtime, name),
    };
    axum::Json(body).into_response()
}

/// The model names the caller's key may use, in config order.
fn allowed(
    state: &AppState,
    runtime: &Runtime,
    ctx: &RequestContext,
    headers: &HeaderMap,
) -> Result<Vec<Arc<str>>, ApiError> {
    let key = state.governance.authenticate(runtime, headers)?;
    ctx.set_key(key.id.clone(), key.name.clone());
    Ok(runtime
        .models
        .names()
        .iter()
        .filter(|name| key.allows(name))
        .cloned()
        .collect())
}

fn openai(runtime: &Runtime, name: &str) -> Value {
    json!({"id": name, "object": "model", "created": runtime.loaded_at, "owned_by": "shepherd"})
}

fn anthropic(runtime: &Runtime, name: &str) -> Value {
    let created = UNIX_EPOCH + Duration::from_secs(runtime.loaded_at);
    json!({
        "type": "model",
        "id": name,
        "display_name": name,
        "created_at": humantime::format_rfc3339_seconds(created).to_string(),
    })
}

/// One page of Anthropic's model list.
fn anthropic_page(
    runtime: &Runtime,
    names: &[Arc<str>],
    paging: &Paging,
) -> Result<Value, ApiError> {
    let limit = paging.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            &format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let position = |id: &str, field: &str| {
        names
            .iter()
            .position(|name| **name == *id)
            .ok_or_else(|| ApiError::invalid_field(field, "no model has this id"))
    };
    let (start, end) = match (&paging.after_id, &paging.before_id) {
        (Some(after), _) => {
            let start = position(after, "after_id")? + 1;
            (start, (start + limit).min(names.len()))
        }
        (None, Some(before)) => {
            let end = position(before, "before_id")?;
            (end.saturating_sub(limit), end)
        }
        (None, None) => (0, limit.min(names.len())),
    };
    let page = &names[start..end];
    let has_more = if paging.before_id.is_some() && paging.after_id.is_none() {
        start > 0
    } else {
        end < names.len()
    };
    Ok(json!({
        "data": page.iter().map(|name| anthropic(runtime, name)).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": page.first().map(|name| &**name),
        "last_id": page.last().map(|name| &**name),
    }))
}
