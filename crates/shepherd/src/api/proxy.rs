//! The request path shared by every client route: authenticate, read and check the body, pick a
//! deployment, plan the exchange (pass-through or translation), send upstream within the
//! timeouts, and answer (streamed or whole) in the client's protocol.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::{Instant, timeout_at};

use super::errors::{ApiError, ClientProtocol};
use super::exchange::{self, Conversion, Translation};
use super::relay::{Mode, Relay, Settings, Translator, Watch};
use super::{answer, body};
use crate::config::Wire;
use crate::context::RequestContext;
use crate::providers::{
    ConnectTimer, Endpoint, UpstreamBody, UpstreamError, UpstreamRequest,
    response_headers_to_client,
};
use crate::state::AppState;
use crate::translate::stream::{Decoder, Encoder};
use crate::translate::{anthropic, gemini, openai};
use crate::wire::openai::RequestHead;

/// Largest non-streamed upstream answer the gateway will hold.
const MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

pub const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("x-shepherd-deployment");

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
    let protocol = endpoint.client_protocol();
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
    let exchange = exchange::plan(endpoint, &head, &body, deployment, stream)?;

    let timeouts = server.timeouts;
    let deadline = Instant::from_std(ctx.started) + timeouts.total;
    let first_byte_deadline = deadline.min(Instant::now() + timeouts.first_byte);
    let timer = ConnectTimer::default();
    let request = UpstreamRequest {
        operation: exchange.operation,
        model: &deployment.upstream_model,
        body: exchange.body.clone(),
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
        let mode = match &exchange.conversion {
            Conversion::Passthrough {
                wire,
                hide_usage_chunk,
            } => Mode::Passthrough(Watch::new(*wire, *hide_usage_chunk)),
            Conversion::Translate(translation) => {
                Mode::Translate(Box::new(translator(translation)))
            }
        };
        let settings = Settings {
            ctx: ctx.clone(),
            protocol,
            idle: timeouts.idle,
            deadline,
            prompt_estimate: exchange.prompt_estimate,
            secrets: deployment.provider.secrets().into(),
        };
        let relay = Relay::start(upstream.body, mode, settings, first_byte_deadline).await?;
        ctx.set_upstream_first_byte(ctx.started.elapsed());
        return Ok(relay.into_response(upstream.status, client_headers));
    }
    ctx.set_upstream_first_byte(ctx.started.elapsed());
    let bytes = read_whole(upstream.body, deadline, timeouts.idle).await?;
    ctx.set_upstream_done();
    if upstream.status.is_success() {
        return answer::success(ctx, &exchange, upstream.status, client_headers, bytes);
    }
    answer::upstream_error(
        &exchange,
        protocol,
        upstream.status,
        client_headers,
        &bytes,
        deployment.provider.secrets(),
    )
}

/// The decoder of the upstream's stream and the encoder of the client's.
fn translator(translation: &Translation) -> Translator {
    let decoder: Box<dyn Decoder> = match translation.upstream {
        Wire::OpenAi => Box::<openai::stream::ChatDecoder>::default(),
        Wire::Anthropic => Box::<anthropic::stream::MessagesDecoder>::default(),
        Wire::Gemini => Box::<gemini::stream::GenerateDecoder>::default(),
    };
    let envelope = |prefix: &str| openai::response::Envelope {
        id: answer::new_id(prefix),
        model: translation.model.clone(),
        created: answer::unix_now(),
    };
    let encoder: Box<dyn Encoder> = match translation.endpoint {
        Endpoint::Messages => Box::new(anthropic::stream::MessagesEncoder::new(
            answer::new_id("msg_"),
            translation.model.clone(),
        )),
        Endpoint::Completions => Box::new(openai::stream::ChatEncoder::new(
            envelope("cmpl-"),
            openai::stream::ChunkKind::Completion,
            translation.include_usage,
        )),
        Endpoint::ChatCompletions | Endpoint::Embeddings => {
            Box::new(openai::stream::ChatEncoder::new(
                envelope("chatcmpl-"),
                openai::stream::ChunkKind::Chat,
                translation.include_usage,
            ))
        }
    };
    Translator::new(decoder, encoder)
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
