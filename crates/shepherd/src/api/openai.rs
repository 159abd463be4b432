//! OpenAI-protocol handlers: chat completions, completions, embeddings and responses.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

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

pub async fn responses(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Ctx,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&state, &ctx, Endpoint::Responses, &headers, body).await
}
