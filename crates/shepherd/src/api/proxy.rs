//! The request path shared by every client route: refuse looping requests, authenticate, read
//! and check the body, plan the route (canary, strategy, fallbacks), then hand over to the
//! attempt loop (`attempts.rs`), which answers in the client's protocol.

use std::sync::Arc;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;

use super::attempts::{self, Job};
use super::body;
use super::errors::{ApiError, ClientProtocol};
use crate::context::RequestContext;
use crate::providers::Endpoint;
use crate::providers::remote::HOPS_HEADER;
use crate::routing::canary::Requester;
use crate::state::AppState;
use crate::wire::openai::RequestHead;

impl Endpoint {
    pub fn client_protocol(self) -> ClientProtocol {
        match self {
            Endpoint::Messages => ClientProtocol::Anthropic,
            _ => ClientProtocol::OpenAi,
        }
    }
}

/// Handles one request on a client route.
pub async fn proxy(
    state: &AppState,
    ctx: &Arc<RequestContext>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let runtime = state.runtime();
    let server = &runtime.config.server;
    let hops = hops(headers)?;
    if hops > server.max_hops {
        return Err(ApiError::loop_detected(hops - 1, server.max_hops));
    }
    let key = runtime.keys.authenticate(headers)?;
    ctx.set_key(key.name.clone());
    let body = body::read_limited(body, headers, server.max_body).await?;
    ctx.set_bytes_in(body.len());
    let head = RequestHead::parse(&body)?;
    let stream = head.stream && endpoint != Endpoint::Embeddings;
    ctx.set_request(&head.model, stream, body.len());
    if !runtime.models.contains(&head.model) {
        return Err(ApiError::unknown_model(&head.model));
    }
    if !key.allows(&head.model) {
        return Err(ApiError::model_not_allowed(&head.model));
    }
    let requester = Requester {
        key_name: &key.name,
        headers,
        client_ip: ctx.client_ip(),
    };
    let plan = runtime
        .models
        .plan(&head.model, &requester)
        .ok_or_else(|| ApiError::unknown_model(&head.model))?;
    let job = Job {
        runtime: &runtime,
        ctx,
        endpoint,
        head: &head,
        body: &body,
        headers,
        stream,
        hops,
    };
    attempts::run(job, plan).await
}

/// Gateways this request will have passed once it leaves this one (`x-shepherd-hops` + 1).
fn hops(headers: &HeaderMap) -> Result<u32, ApiError> {
    match headers.get(HOPS_HEADER) {
        None => Ok(1),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map(|hops| hops.saturating_add(1))
            .ok_or_else(|| ApiError::invalid_field("x-shepherd-hops", "expected a number")),
    }
}
