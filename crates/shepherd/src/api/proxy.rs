//! The request path shared by the OpenAI-protocol routes: authenticate, read and check the body,
//! pick a deployment, send upstream within the timeouts, and answer (streamed or whole).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};

use super::errors::ApiError;
use super::{body, relay};
use crate::context::RequestContext;
use crate::providers::{
    ConnectTimer, Endpoint, UpstreamBody, UpstreamError, UpstreamRequest, redact_secrets,
    response_headers_to_client,
};
use crate::state::AppState;
use crate::wire::openai::RequestHead;

/// Largest non-streamed upstream answer the gateway will hold.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

pub const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("x-shepherd-deployment");

/// Handles one request on an OpenAI-protocol route.
pub async fn proxy(
    state: &AppState,
    ctx: &Arc<RequestContext>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = state.keys.authenticate(headers)?;
    ctx.set_key(key.name.clone());
    let server = &state.config.server;
    let body = body::read_limited(body, headers, server.max_body).await?;
    ctx.set_bytes_in(body.len());
    let head = RequestHead::parse(&body)?;
    let stream = head.stream && endpoint != Endpoint::Embeddings;
    ctx.set_request(&head.model, stream, body.len());
    if !state.models.contains(&head.model) {
        return Err(ApiError::unknown_model(&head.model));
    }
    if !key.allows(&head.model) {
        return Err(ApiError::model_not_allowed(&head.model));
    }
    let deployment = state
        .models
        .pick(&head.model)
        .ok_or_else(|| ApiError::unknown_model(&head.model))?;
    ctx.set_deployment(deployment.name.clone());

    let timeouts = server.timeouts;
    let deadline = Instant::from_std(ctx.started) + timeouts.total;
    let first_byte_deadline = deadline.min(Instant::now() + timeouts.first_byte);
    let timer = ConnectTimer::default();
    let request = UpstreamRequest {
        endpoint,
        body: head.rewrite_model(&body, &deployment.upstream_model),
        stream,
        client_headers: headers,
        request_id: &ctx.request_id,
    };
    let sent = timeout_at(
        first_byte_deadline,
        timer.scope(deployment.provider.send(request)),
    )
    .await;
    ctx.set_upstream_connect(timer.micros());
    let upstream = match sent {
        Err(_elapsed) => {
            return Err(ApiError::upstream_timeout(
                "no response head within the first-byte timeout",
            ));
        }
        Ok(Err(error)) => return Err(transport_error(&error)),
        Ok(Ok(upstream)) => upstream,
    };
    let is_event_stream = upstream
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut client_headers = response_headers_to_client(&upstream.headers);
    if let Ok(name) = HeaderValue::from_str(&deployment.name) {
        client_headers.insert(DEPLOYMENT_HEADER, name);
    }
    if upstream.status.is_success() && is_event_stream {
        let first = relay::first_chunk(upstream.body, first_byte_deadline).await?;
        ctx.set_upstream_first_byte(ctx.started.elapsed());
        let relay = relay::Relay::new(first, ctx.clone(), timeouts.idle, deadline);
        return Ok(relay.into_response(upstream.status, client_headers));
    }
    ctx.set_upstream_first_byte(ctx.started.elapsed());
    let bytes = read_whole(upstream.body, deadline, timeouts.idle).await?;
    ctx.set_upstream_done();
    if upstream.status.is_success() {
        if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
            return Err(ApiError::upstream_bad_response(
                "the body is not valid JSON",
            ));
        }
        return Ok(whole_response(upstream.status, client_headers, bytes));
    }
    upstream_error_response(
        upstream.status,
        client_headers,
        &bytes,
        deployment.provider.secrets(),
    )
}

fn transport_error(error: &UpstreamError) -> ApiError {
    match error {
        UpstreamError::Connect(detail) => ApiError::upstream_unreachable(detail),
        UpstreamError::Timeout(detail) => ApiError::upstream_timeout(detail),
        UpstreamError::Transport(detail) => ApiError::upstream_bad_response(detail),
    }
}

/// Reads a non-streamed upstream body to its end, within the deadline and the size cap.
async fn read_whole(
    mut body: UpstreamBody,
    deadline: Instant,
    idle: Duration,
) -> Result<Bytes, ApiError> {
    let mut whole = BytesMut::new();
    let mut single: Option<Bytes> = None;
    loop {
        let next_deadline = deadline.min(Instant::now() + idle);
        let next = timeout_at(next_deadline, body.next())
            .await
            .map_err(|_| ApiError::upstream_timeout("the response body stalled"))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|error| transport_error(&error))?;
        if single.is_none() && whole.is_empty() {
            single = Some(chunk);
            continue;
        }
        if let Some(first) = single.take() {
            whole.extend_from_slice(&first);
        }
        whole.extend_from_slice(&chunk);
        if whole.len() > MAX_UPSTREAM_BODY {
            return Err(ApiError::upstream_bad_response(
                "the body is larger than the gateway accepts",
            ));
        }
    }
    Ok(single.unwrap_or_else(|| whole.freeze()))
}

fn whole_response(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// An upstream error answer: passed through with its status when it is a JSON error body
/// (secrets redacted); anything else becomes a 502 in the caller's shape.
fn upstream_error_response(
    status: StatusCode,
    headers: HeaderMap,
    body: &Bytes,
    secrets: &[crate::config::Secret],
) -> Result<Response, ApiError> {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let is_error_object = parsed
        .as_ref()
        .is_some_and(|value| value.get("error").is_some());
    if !is_error_object {
        return Err(ApiError::upstream_bad_response(&format!(
            "status {} with a body that is not an error object",
            status.as_u16()
        )));
    }
    let body = match redact_secrets(body, secrets) {
        Some(redacted) => Bytes::from(redacted),
        None => body.clone(),
    };
    let mut response = whole_response(status, headers, body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
