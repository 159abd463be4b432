//! The request path shared by every client route: refuse looping requests, authenticate, read
//! and check the body, plan the route (canary, strategy, fallbacks), then hand over to the
//! attempt loop (`attempts.rs`), which answers in the client's protocol.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::Instant;

use super::attempts::{self, ATTEMPTS_HEADER, DEPLOYMENT_HEADER, Job};
use super::body;
use super::errors::{ApiError, ClientProtocol};
use super::stored;
use crate::cache::{CACHE_HEADER, Cache, Lookup, replay};
use crate::context::{Accounting, RequestContext};
use crate::governance::admission::Demand;
use crate::governance::keys::ClientKey;
use crate::providers::Endpoint;
use crate::providers::remote::HOPS_HEADER;
use crate::routing::canary::Requester;
use crate::state::{AppState, Runtime};
use crate::translate::ir::{UsageSource, estimate_tokens};
use crate::translate::shapes::Echo;
use crate::wire::openai::RequestHead;

impl Endpoint {
    pub fn client_protocol(self) -> ClientProtocol {
        self.shape()
            .map_or(ClientProtocol::OpenAi, |shape| shape.protocol())
    }

    /// The path clients call.
    pub fn route(self) -> &'static str {
        self.shape().map_or("/v1/embeddings", |shape| shape.route())
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
    let protocol = endpoint.client_protocol();
    let governance = &state.governance;
    let server = &runtime.config.server;
    governance.check_ip(&runtime, ctx.client_ip()).await?;
    let hops = hops(headers)?;
    if hops > server.max_hops {
        return Err(ApiError::loop_detected(hops - 1, server.max_hops));
    }
    let key = governance.authenticate(&runtime, headers)?;
    ctx.set_key(key.id.clone(), key.name.clone());
    ctx.set_accounting(Accounting {
        admission: None,
        prices: Vec::new(),
        ledger: governance.writer.clone(),
    });
    governance.check_route(&runtime, endpoint.route()).await?;
    let body =
        body::read_within(body, headers, server.max_body, server.client_timeouts.body).await?;
    ctx.set_bytes_in(body.len());
    let (mut head, body) = head_of(&runtime, ctx, &key, endpoint.route(), body)?;
    let (body, echo) = if endpoint == Endpoint::Responses {
        let (prepared, echo) = stored::prepare(state, &runtime, &key.id, body.clone()).await?;
        if prepared != body {
            // New bytes: the head's spans (model, stream) point into the old ones.
            head = RequestHead::parse(&prepared)?;
        }
        (prepared, echo)
    } else {
        (body, Echo::new())
    };
    let stream = head.stream && endpoint != Endpoint::Embeddings;
    ctx.set_request(&head.model, stream, body.len());
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
    let prices: Vec<_> = plan
        .candidates
        .iter()
        .filter_map(|c| {
            c.deployment
                .price
                .map(|price| (c.deployment.name.clone(), price))
        })
        .collect();
    let prompt_tokens = estimate_tokens(body.len());
    let output_tokens = head
        .max_output
        .unwrap_or(runtime.config.limits.reserve_output_tokens);
    let demand = Demand {
        tokens: prompt_tokens.saturating_add(output_tokens),
        prompt_tokens,
        output_tokens,
        price: prices
            .iter()
            .map(|(_, price)| *price)
            .max_by_key(|price| price.input + price.output)
            .unwrap_or_default(),
    };
    // Checked before admission: a bad cache header costs no quota.
    let config = &runtime.config;
    let model_cache = runtime.models.cache_of(&head.model);
    let ask = if model_cache.map_or(config.cache.enabled, |cache| cache.enabled) {
        Cache::ask(
            &config.cache,
            model_cache.and_then(|cache| cache.ttl),
            endpoint,
            &key.id,
            headers,
            &body,
        )
        .map_err(|error| error.in_protocol(protocol))?
    } else {
        None
    };
    let admission = match governance
        .admit(&runtime, key.clone(), &head.model, &demand)
        .await
    {
        Ok(admission) => admission,
        Err(denied) => {
            let mut response = denied.error.in_protocol(protocol).into_response();
            denied.headers.apply(response.headers_mut(), protocol);
            return Ok(response);
        }
    };
    let rate_headers = admission.headers;
    ctx.set_accounting(Accounting {
        admission: Some(admission),
        prices,
        ledger: governance.writer.clone(),
    });
    let mut fill = None;
    if let Some(ask) = &ask {
        let deadline = Instant::from_std(ctx.started) + server.timeouts.total;
        let lookup = state.cache.lookup(ask, deadline).await;
        let result = if matches!(lookup, Lookup::Hit(_)) {
            "hit"
        } else {
            "miss"
        };
        state
            .metrics
            .cache_requests
            .with_label_values(&[result])
            .inc();
        match lookup {
            Lookup::Hit(entry) => {
                if let Some(mut response) = replay::respond(
                    &entry,
                    endpoint,
                    stream,
                    head.include_usage,
                    &head.model,
                    &echo,
                ) {
                    ctx.set_cache_hit(entry.deployment.clone());
                    if let Some(usage) = entry.answer.as_ref().and_then(|a| a.usage) {
                        ctx.set_usage(usage, UsageSource::Reported);
                    }
                    let headers = response.headers_mut();
                    headers.insert(CACHE_HEADER, HeaderValue::from_static("HIT"));
                    headers.insert(ATTEMPTS_HEADER, HeaderValue::from_static("0"));
                    if let Ok(name) = HeaderValue::from_str(&entry.deployment) {
                        headers.insert(DEPLOYMENT_HEADER, name);
                    }
                    rate_headers.apply(headers, protocol);
                    return Ok(response);
                }
            }
            Lookup::Miss(leader) => fill = leader,
        }
    }
    let job = Job {
        runtime: &runtime,
        ctx,
        endpoint,
        head: &head,
        body: &body,
        headers,
        stream,
        hops,
        fill: std::sync::Mutex::new(fill),
        end: state.end_streams.subscribe(),
        echo,
    };
    let mut response = attempts::run(job, plan).await?;
    rate_headers.apply(response.headers_mut(), protocol);
    if ask.is_some() && response.status().is_success() {
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static("MISS"));
    }
    Ok(response)
}

/// The head of a request body, with the model filled in when it names none: the key's default
/// model (when the route serves it), else the route's. A route's `models` are checked here too.
pub(super) fn head_of(
    runtime: &Runtime,
    ctx: &RequestContext,
    key: &ClientKey,
    route: &str,
    body: Bytes,
) -> Result<(RequestHead, Bytes), ApiError> {
    let rule = runtime.config.routes.iter().find(|rule| rule.path == route);
    let (head, body) = match RequestHead::parse(&body) {
        Err(error) if error.code == MISSING && error.param.as_deref() == Some("model") => {
            let default = key
                .default_model
                .as_ref()
                .filter(|model| rule.is_none_or(|rule| rule.allows(model)))
                .or_else(|| rule.and_then(|rule| rule.default_model.as_ref()));
            let Some(default) = default else {
                return Err(error);
            };
            let body = RequestHead::with_model(&body, default);
            ctx.set_default_model();
            (RequestHead::parse(&body)?, body)
        }
        parsed => (parsed?, body),
    };
    if let Some(rule) = rule
        && !rule.allows(&head.model)
    {
        return Err(ApiError::model_not_on_route(&head.model, route));
    }
    Ok((head, body))
}

/// The error code of a missing field.
const MISSING: &str = "missing_required_parameter";

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
