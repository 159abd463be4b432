//! Anthropic-protocol handler: `POST /v1/messages`, routed to any provider; errors in
//! Anthropic's `{"type":"error","error":{...}}` shape.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::errors::ClientProtocol;
use super::proxy::proxy;
use crate::context::RequestContext;
use crate::providers::Endpoint;
use crate::state::AppState;

pub async fn messages(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match proxy(&state, &ctx, Endpoint::Messages, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.in_protocol(ClientProtocol::Anthropic).into_response(),
    }
}
