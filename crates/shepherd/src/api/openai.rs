//! OpenAI-protocol handlers: chat completions, completions, embeddings and the model list.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::errors::ApiError;
use super::proxy::proxy;
use crate::context::RequestContext;
use crate::providers::Endpoint;
use crate::state::AppState;

type Ctx = Extension<Arc<RequestContext>>;

async fn handle(
    state: &AppState,
    ctx: &Arc<RequestContext>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    match proxy(state, ctx, endpoint, headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Ctx,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&state, &ctx, Endpoint::ChatCompletions, &headers, body).await
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Ctx,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&state, &ctx, Endpoint::Completions, &headers, body).await
}

pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Ctx,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&state, &ctx, Endpoint::Embeddings, &headers, body).await
}

/// `GET /v1/models`: the models this key may use, in OpenAI's list shape.
pub async fn models(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Ctx,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let runtime = state.runtime();
    let key = state.governance.authenticate(&runtime, &headers)?;
    ctx.set_key(key.id.clone(), key.name.clone());
    let data: Vec<_> = runtime
        .models
        .names()
        .iter()
        .filter(|name| key.allows(name))
        .map(|name| json!({"id": &**name, "object": "model", "created": runtime.loaded_at, "owned_by": "shepherd"}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}
