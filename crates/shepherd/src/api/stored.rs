//! Stored Responses API answers: `store` (on unless `false`) keeps each finished response in the
//! state database for `state.response_retention`, with the conversation that led to it, so
//! `previous_response_id` continues it on any upstream and any replica; `GET` and
//! `DELETE /v1/responses/{id}` read and remove it. A key sees only its own responses.
//!
//! Continuing is done before anything else looks at the body: the stored conversation, the
//! stored answer's output items and the new `input` become one `input`, and
//! `previous_response_id` is taken out, so limits, the cache key, translation and an upstream
//! that offers the Responses API itself all see the whole conversation. Saving happens off the request threads once the answer is finished; a
//! continuation that arrives while its predecessor is still being written waits for it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::errors::ApiError;
use crate::context::RequestContext;
use crate::governance::admission::now_ms;
use crate::state::{AppState, Runtime};
use crate::store::{Store, StoredResponse};
use crate::telemetry::metrics::Metrics;
use crate::translate::responses::response::{Echo, Keeper, echo_of};

/// How long a continuation waits for its predecessor to be written.
const SAVE_WAIT: Duration = Duration::from_secs(2);
const SAVE_POLL: Duration = Duration::from_millis(5);
/// How long a response not found is looked for again (another replica may still be writing it;
/// a real miss answers this much later), and how often.
const OTHER_REPLICA_WAIT: Duration = Duration::from_millis(300);
const OTHER_REPLICA_POLL: Duration = Duration::from_millis(50);

/// The ids of responses being written.
#[derive(Debug, Default)]
pub struct Saving(Mutex<HashSet<String>>);

impl Saving {
    fn ids(&self) -> MutexGuard<'_, HashSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn contains(&self, id: &str) -> bool {
        self.ids().contains(id)
    }
}

/// A Responses API body made ready: the conversation it continues put in front of its input,
/// and the echo its response repeats (with a keeper when it is to be stored). A body that
/// continues nothing is returned as it came; a rewritten one must have its head read again.
pub async fn prepare(
    state: &AppState,
    runtime: &Runtime,
    key_id: &str,
    body: Bytes,
) -> Result<(Bytes, Echo), ApiError> {
    let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(&body) else {
        // Not an object: the decoder says what is wrong with it.
        return Ok((body, Echo::new()));
    };
    let mut echo = echo_of(&Value::Object(request.clone()));
    let retention = runtime.config.state.response_retention;
    let previous = match request.remove("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "previous_response_id",
                "expected a string",
            ));
        }
    };
    // Kept in the body: an upstream that offers the Responses API honours it too.
    let store = match request.get("store") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(store)) => *store,
        Some(_) => return Err(ApiError::invalid_field("store", "expected a boolean")),
    };
    let mut input = items_of(request.get("input"));
    if let Some(id) = &previous {
        if retention.is_none() {
            return Err(ApiError::responses_not_kept("previous_response_id"));
        }
        let stored = load(state, id, key_id, "continue").await?;
        let mut earlier = conversation_of(&stored);
        earlier.append(&mut input);
        input = earlier;
        request.insert("input".to_owned(), Value::Array(input.clone()));
    }
    if let (true, Some(retention)) = (store, retention) {
        echo.fields.insert("store".to_owned(), Value::Bool(true));
        echo.keeper = Some(Arc::new(StoreKeeper {
            store: state.governance.store.clone(),
            saving: state.saving_responses.clone(),
            metrics: state.metrics.clone(),
            key_id: key_id.to_owned(),
            input: Value::Array(input),
            retention,
        }));
    }
    // Rewritten only when continued: otherwise the client's bytes go on as they came.
    let body = match previous {
        Some(_) => continued_body(&request, crate::bounds::MAX_CONVERSATION_BYTES)?,
        None => body,
    };
    Ok((body, echo))
}

/// A continued request's new bytes, refused past `limit`.
fn continued_body(request: &Map<String, Value>, limit: usize) -> Result<Bytes, ApiError> {
    let bytes =
        serde_json::to_vec(request).map_err(|error| ApiError::internal(&error.to_string()))?;
    if bytes.len() > limit {
        return Err(ApiError::conversation_too_long(limit));
    }
    Ok(Bytes::from(bytes))
}

/// The items of an `input`: a string is one user message.
fn items_of(input: Option<&Value>) -> Vec<Value> {
    match input {
        Some(Value::String(text)) => vec![json!({"role": "user", "content": text})],
        Some(Value::Array(items)) => items.clone(),
        _ => Vec::new(),
    }
}

/// The conversation a stored response ends: what led to it, then its output.
fn conversation_of(stored: &StoredResponse) -> Vec<Value> {
    let mut items = match serde_json::from_str(&stored.input) {
        Ok(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    if let Ok(response) = serde_json::from_str::<Value>(&stored.response)
        && let Some(output) = response["output"].as_array()
    {
        items.extend(output.iter().cloned());
    }
    items
}

/// The stored response `id` of `key_id`, once any write of it in this process is done.
async fn load(
    state: &AppState,
    id: &str,
    key_id: &str,
    operation: &str,
) -> Result<StoredResponse, ApiError> {
    let waited = tokio::time::Instant::now();
    while state.saving_responses.contains(id) && waited.elapsed() < SAVE_WAIT {
        tokio::time::sleep(SAVE_POLL).await;
    }
    let read = || {
        let store = state.governance.store.clone();
        let (owned_id, owned_key) = (id.to_owned(), key_id.to_owned());
        async move {
            tokio::task::spawn_blocking(move || {
                store.load_response(&owned_id, &owned_key, now_ms())
            })
            .await
            .map_err(|error| ApiError::internal(&error.to_string()))
        }
    };
    let mut loaded = read().await?;
    // Another replica may have answered the previous response a moment ago and still be
    // writing it: a miss is read again for a short while before it counts.
    let missed = tokio::time::Instant::now();
    while matches!(loaded, Ok(None)) && missed.elapsed() < OTHER_REPLICA_WAIT {
        tokio::time::sleep(OTHER_REPLICA_POLL).await;
        loaded = read().await?;
    }
    let counted = |result: &str| {
        state
            .metrics
            .stored_responses
            .with_label_values(&[operation, result])
            .inc();
    };
    match loaded {
        Ok(Some(stored)) => {
            counted("ok");
            Ok(stored)
        }
        Ok(None) => {
            counted("not_found");
            Err(if operation == "continue" {
                ApiError::previous_response_not_found(id)
            } else {
                ApiError::response_not_found(id)
            })
        }
        Err(error) => {
            counted("error");
            tracing::error!(%error, response = id, "stored responses: cannot read");
            Err(ApiError::store_unavailable(&error.to_string()))
        }
    }
}

/// Writes finished responses to the store, off the request threads.
struct StoreKeeper {
    store: Arc<dyn Store>,
    saving: Arc<Saving>,
    metrics: Arc<Metrics>,
    key_id: String,
    /// The conversation that led to the response.
    input: Value,
    retention: Duration,
}

impl std::fmt::Debug for StoreKeeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKeeper")
            .field("key_id", &self.key_id)
            .field("retention", &self.retention)
            .finish()
    }
}

impl Keeper for StoreKeeper {
    fn keep(&self, response: &Value) {
        let Some(id) = response["id"].as_str() else {
            return;
        };
        let now = now_ms();
        let stored = StoredResponse {
            id: id.to_owned(),
            key_id: self.key_id.clone(),
            created_ms: now,
            expires_ms: now
                .saturating_add(i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)),
            response: response.to_string(),
            input: self.input.to_string(),
        };
        self.saving.ids().insert(stored.id.clone());
        let (store, saving, metrics) = (
            self.store.clone(),
            self.saving.clone(),
            self.metrics.clone(),
        );
        let save = move || {
            let saved = store.save_response(&stored);
            saving.ids().remove(&stored.id);
            let result = match saved {
                Ok(()) => "ok",
                Err(error) => {
                    tracing::error!(%error, response = %stored.id, "stored responses: cannot write; it cannot be continued");
                    "error"
                }
            };
            metrics
                .stored_responses
                .with_label_values(&["save", result])
                .inc();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(save)),
            Err(_) => save(),
        }
    }
}

/// The key a stored-response request is made with.
fn key_of(state: &AppState, ctx: &RequestContext, headers: &HeaderMap) -> Result<String, ApiError> {
    let key = state.governance.authenticate(&state.runtime(), headers)?;
    ctx.set_key(key.id.clone(), key.name.clone());
    Ok(key.id.to_string())
}

/// `GET /v1/responses/{id}`: a stored response of the caller's key.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestContext>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let found = async {
        let key_id = key_of(&state, &ctx, &headers)?;
        load(&state, &id, &key_id, "get").await
    };
    match found.await {
        Ok(stored) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Body::from(stored.response),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

/// `DELETE /v1/responses/{id}`: removes a stored response of the caller's key.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestContext>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let deleted = async {
        let key_id = key_of(&state, &ctx, &headers)?;
        let store = state.governance.store.clone();
        let owned_id = id.clone();
        let deleted =
            tokio::task::spawn_blocking(move || store.delete_response(&owned_id, &key_id))
                .await
                .map_err(|error| ApiError::internal(&error.to_string()))?;
        let result = match &deleted {
            Ok(true) => "ok",
            Ok(false) => "not_found",
            Err(_) => "error",
        };
        state
            .metrics
            .stored_responses
            .with_label_values(&["delete", result])
            .inc();
        match deleted {
            Ok(true) => Ok(()),
            Ok(false) => Err(ApiError::response_not_found(&id)),
            Err(error) => Err(ApiError::store_unavailable(&error.to_string())),
        }
    };
    match deleted.await {
        Ok(()) => {
            axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// The errors of stored responses, in OpenAI's shape.
impl ApiError {
    /// `previous_response_id` names no response this key may continue (unknown, expired,
    /// deleted, or another key's).
    pub fn previous_response_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "previous_response_not_found",
            format!("Previous response with id '{id}' not found."),
        )
        .with_param("previous_response_id")
    }

    /// `GET`/`DELETE /v1/responses/{id}` of a response this key does not have.
    pub fn response_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("No response with id '{id}' found."),
        )
    }

    /// Stored responses are off (`state.response_retention: 0s`).
    pub fn responses_not_kept(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "stored_responses_disabled",
            "This gateway keeps no responses (state.response_retention is 0s): send the whole conversation in `input`.".to_owned(),
        )
        .with_param(field)
    }

    /// The database that keeps responses cannot be read.
    pub fn store_unavailable(detail: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "state_unavailable",
            format!("The gateway cannot read its stored responses: {detail}"),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// A continued conversation past `bounds::MAX_CONVERSATION_BYTES`.
    pub fn conversation_too_long(limit: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "conversation_too_long",
            format!("The conversation continued from previous_response_id would be larger than {limit} bytes: start a new one."),
        )
        .with_param("previous_response_id")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continued_conversation_is_the_earlier_items_then_the_output() {
        let stored = StoredResponse {
            id: "resp_1".into(),
            key_id: "k".into(),
            created_ms: 0,
            expires_ms: 1,
            response: json!({"output": [{"type": "message", "role": "assistant",
                             "content": [{"type": "output_text", "text": "Hello Ada"}]}]})
            .to_string(),
            input: json!([{"role": "user", "content": "I am Ada"}]).to_string(),
        };
        let items = conversation_of(&stored);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0]["content"], "I am Ada");
        assert_eq!(items[1]["content"][0]["text"], "Hello Ada");
        assert_eq!(
            items_of(Some(&json!("hi"))),
            vec![json!({"role": "user", "content": "hi"})]
        );
    }

    #[test]
    fn a_continued_conversation_past_the_bound_is_refused_naming_the_field() {
        let mut request = Map::new();
        request.insert("input".to_owned(), json!("x".repeat(100)));
        assert!(continued_body(&request, 1_000).is_ok());
        let error = continued_body(&request, 50).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.code, "conversation_too_long");
        assert_eq!(error.param.as_deref(), Some("previous_response_id"));
    }
}
