//! `POST /v1/messages/count_tokens` (Claude Code calls it before sending): the input tokens of
//! an Anthropic Messages request, counted by whoever serves the model. Anthropic upstreams count
//! it themselves (passed through), Gemini upstreams through `:countTokens`, and
//! OpenAI-compatible upstreams (which have no such endpoint) and the built-in mock with
//! OpenAI's tokenizer inside the gateway. `x-shepherd-token-count` says which: `upstream`, or
//! `tiktoken/<encoding>`. Counting is free: no key limit or budget is spent, nothing is billed.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::time::{Instant, timeout_at};

use super::attempts::{DEPLOYMENT_HEADER, read_whole, transport_error};
use super::body;
use super::errors::{ApiError, ClientProtocol};
use crate::config::Wire;
use crate::context::RequestContext;
use crate::providers::{KeyChoice, Operation, UpstreamRequest};
use crate::routing::Deployment;
use crate::routing::canary::Requester;
use crate::state::AppState;
use crate::translate::{anthropic, errors, gemini, tokens};
use crate::wire::openai::RequestHead;

/// How a count was made.
pub const COUNT_HEADER: HeaderName = HeaderName::from_static("x-shepherd-token-count");

/// The route, as limits name it.
pub const ROUTE: &str = "/v1/messages/count_tokens";

pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<Arc<RequestContext>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match count(&state, &ctx, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.in_protocol(ClientProtocol::Anthropic).into_response(),
    }
}

async fn count(
    state: &AppState,
    ctx: &Arc<RequestContext>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let runtime = state.runtime();
    let governance = &state.governance;
    governance.check_ip(&runtime, ctx.client_ip()).await?;
    let key = governance.authenticate(&runtime, headers)?;
    ctx.set_key(key.id.clone(), key.name.clone());
    governance.check_route(&runtime, ROUTE).await?;
    let server = &runtime.config.server;
    let body =
        body::read_within(body, headers, server.max_body, server.client_timeouts.body).await?;
    ctx.set_bytes_in(body.len());
    let (head, body) = super::proxy::head_of(&runtime, ctx, &key, ROUTE, body)?;
    ctx.set_request(&head.model, false, body.len());
    let Some(model_name) = runtime.models.name_of(&head.model) else {
        return Err(ApiError::unknown_model(&head.model));
    };
    ctx.set_known_model(model_name);
    if !key.allows(&head.model) {
        return Err(ApiError::model_not_allowed(&head.model));
    }
    let requester = Requester {
        key_name: &key.name,
        key_models: &key.models,
        headers,
        client_ip: ctx.client_ip(),
    };
    let plan = runtime
        .models
        .plan(&head.model, &requester)
        .ok_or_else(|| ApiError::unknown_model(&head.model))?;
    let deadline = Instant::from_std(ctx.started) + server.timeouts.total;
    let cooldown = runtime.config.circuit.key_cooldown;
    let mut last = None;
    for candidate in plan.candidates.iter().filter(|c| !c.fallback) {
        let deployment = &candidate.deployment;
        if !deployment
            .health
            .breaker
            .admit(runtime.config.circuit.cooldown)
            .allowed()
        {
            continue;
        }
        let key = match deployment
            .provider
            .pick_key(cooldown, runtime.config.circuit.cooldown)
        {
            KeyChoice::None => None,
            KeyChoice::Key(key) => Some(key),
            KeyChoice::Exhausted(_) => continue,
        };
        ctx.set_deployment(deployment.name.clone());
        let counted = match deployment.provider.wire() {
            Wire::OpenAi => local_count(&body, deployment),
            Wire::Anthropic | Wire::Gemini => {
                let upstream = Upstream {
                    ctx,
                    headers,
                    deployment,
                    key,
                    deadline,
                    first_byte: server.timeouts.first_byte,
                    idle: server.timeouts.idle,
                    redactor: &runtime.redactor,
                };
                upstream.count(&head, &body).await
            }
        };
        match counted {
            Ok(mut response) => {
                if let Ok(name) = HeaderValue::from_str(&deployment.name) {
                    response.headers_mut().insert(DEPLOYMENT_HEADER, name);
                }
                return Ok(response);
            }
            // The upstream could not be reached: the next deployment may be.
            Err(error) if error.status.is_server_error() => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last
        .unwrap_or_else(|| ApiError::no_healthy_deployment(&head.model, std::time::Duration::ZERO)))
}

/// A count made here, with OpenAI's tokenizer for the upstream's model.
fn local_count(body: &Bytes, deployment: &Deployment) -> Result<Response, ApiError> {
    let request = anthropic::request::decode_count(body)
        .map_err(|error| ApiError::untranslatable(error.field.as_deref(), &error.message))?;
    let count = tokens::count(&request, &deployment.upstream_model);
    Ok(answer(
        count.tokens,
        &format!("tiktoken/{}", count.encoding),
    ))
}

fn answer(input_tokens: u64, method: &str) -> Response {
    let mut response = axum::Json(json!({"input_tokens": input_tokens})).into_response();
    if let Ok(value) = HeaderValue::from_str(method) {
        response.headers_mut().insert(COUNT_HEADER, value);
    }
    response
}

/// A count asked of an upstream that has a counting endpoint.
struct Upstream<'a> {
    ctx: &'a RequestContext,
    headers: &'a HeaderMap,
    deployment: &'a Deployment,
    key: Option<usize>,
    deadline: Instant,
    first_byte: std::time::Duration,
    idle: std::time::Duration,
    redactor: &'a crate::redact::Redactor,
}

impl Upstream<'_> {
    async fn count(&self, head: &RequestHead, body: &Bytes) -> Result<Response, ApiError> {
        let model = &*self.deployment.upstream_model;
        let wire = self.deployment.provider.wire();
        let (operation, upstream_body) = match wire {
            Wire::Gemini => {
                let request = anthropic::request::decode_count(body).map_err(|error| {
                    ApiError::untranslatable(error.field.as_deref(), &error.message)
                })?;
                let mut encoded = gemini::request::encode(&request).map_err(|error| {
                    ApiError::untranslatable(error.field.as_deref(), &error.message)
                })?;
                encoded["model"] = json!(format!("models/{model}"));
                let wrapped = json!({"generateContentRequest": encoded});
                (
                    Operation::GeminiCountTokens,
                    Bytes::from(wrapped.to_string()),
                )
            }
            _ => (Operation::CountTokens, head.rewrite(body, model, false)),
        };
        let request = UpstreamRequest {
            operation,
            model,
            body: upstream_body,
            stream: false,
            client_headers: self.headers,
            request_id: &self.ctx.request_id,
            key: self.key,
            hops: 1,
            traceparent: None,
        };
        let first_byte = self.deadline.min(Instant::now() + self.first_byte);
        let response = timeout_at(first_byte, self.deployment.provider.send(request))
            .await
            .map_err(|_| {
                ApiError::upstream_timeout("no response head within the first-byte timeout")
            })?
            .map_err(|error| transport_error(&error))?;
        let bytes = read_whole(response.body, self.deadline, self.idle, 1024 * 1024).await?;
        self.ctx.set_upstream_done();
        let bytes = self.redactor.body(&bytes).unwrap_or(bytes);
        let parsed: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::upstream_bad_response("the body is not valid JSON"))?;
        let status = response.status.as_u16();
        if !response.status.is_success() {
            let failure = match wire {
                Wire::Gemini => errors::from_gemini(status, &parsed),
                _ => errors::from_anthropic(status, &parsed),
            };
            return Err(ApiError::from_upstream(&failure, ClientProtocol::Anthropic));
        }
        let tokens = match wire {
            Wire::Gemini => parsed["totalTokens"].as_u64(),
            _ => parsed["input_tokens"].as_u64(),
        }
        .ok_or_else(|| ApiError::upstream_bad_response("the answer holds no token count"))?;
        let mut answer = answer(tokens, "upstream");
        answer
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(answer)
    }
}
