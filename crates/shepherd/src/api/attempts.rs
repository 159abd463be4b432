//! The attempt loop: walks a request's plan (candidates in order) until one answers. A retryable
//! failure (connect error, timeout before the first byte, 429, 5xx, 529) moves on to the next
//! candidate, or waits (backoff with full jitter, or the upstream's `Retry-After`, capped) before
//! trying one again; a refused upstream key is taken out of rotation and another key tried at
//! once; a final answer (400, 404, ...) goes to the client as is. Breakers are consulted before
//! and fed after every attempt. A stream counts as served once its first events arrived: nothing
//! is retried after a byte reached the client.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::time::{Instant, sleep_until, timeout_at};

use super::answer;
use super::errors::ApiError;
use super::exchange::{self, Conversion, Translation};
use super::relay::{Mode, Relay, Settings, Translator, Watch};
use crate::context::RequestContext;
use crate::providers::{
    ConnectTimer, Endpoint, KeyChoice, UpstreamBody, UpstreamError, UpstreamRequest,
    response_headers_to_client,
};
use crate::routing::retry::{self, Verdict};
use crate::routing::{Candidate, Plan};
use crate::state::Runtime;
use crate::telemetry::traces::AttemptTrace;
use crate::translate::errors::ErrorKind;
use crate::translate::shapes::{self, Echo, Grammar};
use crate::wire::openai::RequestHead;

/// The shortest wait for a breaker to reopen (no busy loop on a probe in flight).
const MIN_WAIT: Duration = Duration::from_millis(10);

pub const DEPLOYMENT_HEADER: HeaderName = HeaderName::from_static("x-shepherd-deployment");
pub const ATTEMPTS_HEADER: HeaderName = HeaderName::from_static("x-shepherd-attempts");
pub const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-shepherd-fallback");
pub const CANARY_HEADER: HeaderName = HeaderName::from_static("x-shepherd-canary");
/// The fields of the request the upstream's protocol had no place for.
pub const DROPPED_HEADER: HeaderName = HeaderName::from_static("x-shepherd-dropped");

/// One client request, ready for its attempts.
pub struct Job<'a> {
    pub runtime: &'a Runtime,
    pub ctx: &'a Arc<RequestContext>,
    pub endpoint: Endpoint,
    pub head: &'a RequestHead,
    pub body: &'a Bytes,
    pub headers: &'a HeaderMap,
    pub stream: bool,
    pub hops: u32,
    /// The right to store the answer in the cache (a cache miss).
    pub fill: std::sync::Mutex<Option<crate::cache::Fill>>,
    /// Turns true when the server's shutdown grace is over.
    pub end: tokio::sync::watch::Receiver<bool>,
    /// What a Responses API answer repeats of its request, and who stores it.
    pub echo: Echo,
}

impl Job<'_> {
    fn wants_capture(&self) -> bool {
        self.fill.lock().is_ok_and(|fill| fill.is_some())
    }

    fn take_fill(&self) -> Option<crate::cache::Fill> {
        match self.fill.lock() {
            Ok(mut fill) => fill.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }
}

/// A failed attempt: what the client gets if it is the last word, and what it means.
struct Failure {
    answer: Result<Response, ApiError>,
    kind: ErrorKind,
    code: Option<String>,
    retry_after: Option<Duration>,
}

impl Failure {
    fn of(error: ApiError) -> Failure {
        Failure {
            kind: kind_of(&error),
            code: None,
            retry_after: None,
            answer: Err(error),
        }
    }
}

/// The kind of failure an error raised by the gateway about an upstream stands for.
fn kind_of(error: &ApiError) -> ErrorKind {
    match error.code {
        "upstream_auth_failed" => ErrorKind::Authentication,
        "insufficient_quota" => ErrorKind::Billing,
        "upstream_permission_denied" => ErrorKind::Permission,
        "upstream_timeout" => ErrorKind::Timeout,
        "upstream_unreachable" | "upstream_bad_response" => ErrorKind::Server,
        _ => ErrorKind::of_status(error.status.as_u16()),
    }
}

/// What the loop asks of the world, one attempt at a time: production plans the exchange with
/// the client shape's codec and sends it to the candidate's upstream (`attempt`); the loop's unit
/// tests (`attempts_tests.rs`) script the outcomes instead, under paused time.
trait Attempter {
    fn attempt(
        &self,
        candidate: &Candidate,
        key: Option<usize>,
        deadline: Instant,
        traceparent: Option<HeaderValue>,
    ) -> impl std::future::Future<Output = Result<Response, Failure>> + Send;
}

/// The real attempts: to the upstreams.
struct Upstreams<'j, 'a>(&'j Job<'a>);

impl Attempter for Upstreams<'_, '_> {
    fn attempt(
        &self,
        candidate: &Candidate,
        key: Option<usize>,
        deadline: Instant,
        traceparent: Option<HeaderValue>,
    ) -> impl std::future::Future<Output = Result<Response, Failure>> + Send {
        attempt(self.0, candidate, key, deadline, traceparent)
    }
}

pub async fn run(job: Job<'_>, plan: Plan) -> Result<Response, ApiError> {
    run_with(&job, plan, &Upstreams(&job)).await
}

/// The loop itself, whatever makes the attempts.
async fn run_with(
    job: &Job<'_>,
    plan: Plan,
    attempter: &impl Attempter,
) -> Result<Response, ApiError> {
    let config = &job.runtime.config;
    let (retry, circuit) = (&config.retry, &config.circuit);
    let deadline = Instant::from_std(job.ctx.started) + config.server.timeouts.total;
    let candidates = &plan.candidates;
    let mut tried = vec![false; candidates.len()];
    let mut attempts = 0u32;
    let mut retries = 0u32;
    let mut cursor = 0usize;
    let mut waits = 0u32;
    let mut last: Option<Failure> = None;
    // The deployment and reason of the failure the next attempt retries (for the metric).
    let mut retrying: Option<(Arc<str>, &'static str)> = None;
    let metrics = job.ctx.metrics().cloned();
    while attempts < retry.attempts && Instant::now() < deadline {
        let Some((index, key)) = next_candidate(job.runtime, candidates, cursor) else {
            // Everything is out of service for now. When an upstream of this very request said
            // when to come back (`Retry-After`), wait for that if it is soon enough; an outage
            // (breakers opened by failures) is answered at once instead.
            let asked_to_wait = last.as_ref().is_some_and(|f| f.retry_after.is_some());
            let reopens = earliest_reopening(job.runtime, candidates);
            let wait = reopens.saturating_duration_since(Instant::now());
            if !asked_to_wait
                || wait > retry.max_retry_after
                || reopens >= deadline
                || waits >= retry.attempts
            {
                break;
            }
            waits += 1;
            sleep_until(reopens.max(Instant::now() + MIN_WAIT)).await;
            continue;
        };
        // Trying a candidate again: back off first, unless its `Retry-After` already held it.
        let held = last.as_ref().is_some_and(|f| f.retry_after.is_some());
        if tried[index] && !held {
            let pause = retry::backoff(retry, retries);
            if Instant::now() + pause >= deadline {
                break;
            }
            sleep_until(Instant::now() + pause).await;
            retries += 1;
        }
        tried[index] = true;
        attempts += 1;
        if let (Some((failed, reason)), Some(metrics)) = (retrying.take(), &metrics) {
            metrics.retries.with_label_values(&[&failed, reason]).inc();
        }
        let candidate = &candidates[index];
        let deployment = &candidate.deployment;
        job.ctx.set_deployment(deployment.name.clone());
        let started = Instant::now();
        let span = job.ctx.trace_attempt(deployment, attempts);
        let traceparent = span.as_ref().and_then(AttemptTrace::traceparent);
        let outcome = attempter
            .attempt(candidate, key, deadline, traceparent)
            .await;
        if let Some(span) = span {
            match &outcome {
                Ok(response) => span.finish(Some(response.status().as_u16()), None),
                Err(failure) => {
                    let status = match &failure.answer {
                        Ok(response) => response.status(),
                        Err(error) => error.status,
                    };
                    span.finish(Some(status.as_u16()), Some(reason_of(failure.kind)));
                }
            }
        }
        if let Some(metrics) = &metrics {
            metrics
                .upstream_duration
                .with_label_values(&[&deployment.name])
                .observe(started.elapsed().as_secs_f64());
        }
        match outcome {
            Ok(mut response) => {
                deployment.health.breaker.success(circuit);
                if let Some(index) = key {
                    if let Some(health) = deployment.provider.key_health(index) {
                        health.breaker.success(circuit);
                    }
                    deployment.provider.key_served(index);
                }
                deployment.health.record_latency(started.elapsed());
                if candidate.fallback {
                    job.ctx.set_fallback();
                    if let Some(metrics) = &metrics {
                        metrics
                            .fallbacks
                            .with_label_values(&[job.head.model.as_str(), &*candidate.model])
                            .inc();
                    }
                }
                decorate(response.headers_mut(), candidate, &plan, attempts);
                return Ok(response);
            }
            Err(failure) => {
                let verdict = retry::verdict(failure.kind, failure.code.as_deref());
                tracing::info!(request_id = %job.ctx.request_id, deployment = %deployment.name,
                               attempt = attempts, kind = ?failure.kind, ?verdict, "attempt failed");
                let key_health = key.and_then(|k| deployment.provider.key_health(k));
                retrying = Some((deployment.name.clone(), reason_of(failure.kind)));
                match verdict {
                    Verdict::Final => {
                        // The upstream answered; the request itself was wrong.
                        deployment.health.breaker.success(circuit);
                        return finish(failure, candidate, &plan, attempts);
                    }
                    Verdict::KeyRefused => match key_health {
                        Some(health) => {
                            tracing::warn!(provider = %deployment.provider.name,
                                           "upstream key refused; out of rotation for the key cool-down");
                            health.breaker.open_for(circuit.key_cooldown);
                            if let Some(key) = key {
                                deployment.provider.key_refused(key);
                            }
                            // The same deployment again, with another key, without a pause.
                            tried[index] = false;
                            cursor = index;
                        }
                        None => {
                            deployment.health.breaker.failure(circuit, None);
                            cursor = index + 1;
                        }
                    },
                    Verdict::ContextWindow => match candidates.iter().position(|c| c.fallback) {
                        Some(first_fallback)
                            if plan.fallback_on_context_window && first_fallback > index =>
                        {
                            cursor = first_fallback;
                        }
                        _ => return finish(failure, candidate, &plan, attempts),
                    },
                    Verdict::Retry => {
                        let rate_limited = failure.kind == ErrorKind::RateLimited;
                        let breaker = match key_health {
                            Some(health) if rate_limited => &health.breaker,
                            _ => &deployment.health.breaker,
                        };
                        match failure.retry_after {
                            Some(wait) => breaker.open_for(wait),
                            None => {
                                breaker.failure(circuit, None);
                            }
                        }
                        cursor = index + 1;
                    }
                }
                last = Some(failure);
            }
        }
    }
    match last {
        Some(failure) => {
            let candidate = &candidates[tried.iter().rposition(|t| *t).unwrap_or(0)];
            finish(failure, candidate, &plan, attempts)
        }
        None => {
            let wait = earliest_reopening(job.runtime, candidates)
                .saturating_duration_since(Instant::now());
            Err(ApiError::no_healthy_deployment(&job.head.model, wait))
        }
    }
}

/// The `reason` label of a failure.
fn reason_of(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::Overloaded => "overloaded",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Server => "server_error",
        ErrorKind::Authentication | ErrorKind::Billing | ErrorKind::Permission => "key_refused",
        ErrorKind::InvalidRequest => "context_window",
        ErrorKind::NotFound | ErrorKind::TooLarge => "other",
    }
}

/// The first candidate from `cursor` on (wrapping) that its breaker and its provider's keys let
/// through, with the key to use.
fn next_candidate(
    runtime: &Runtime,
    candidates: &[Candidate],
    cursor: usize,
) -> Option<(usize, Option<usize>)> {
    let cooldown = runtime.config.circuit.cooldown;
    (0..candidates.len())
        .map(|step| (cursor + step) % candidates.len())
        .find_map(|index| {
            let deployment = &candidates[index].deployment;
            if !deployment.health.breaker.admit(cooldown).allowed() {
                return None;
            }
            match deployment.provider.pick_key(
                runtime.config.circuit.key_cooldown,
                runtime.config.circuit.cooldown,
            ) {
                KeyChoice::None => Some((index, None)),
                KeyChoice::Key(key) => Some((index, Some(key))),
                KeyChoice::Exhausted(_) => None,
            }
        })
}

/// When the first candidate's deployment (and one of its keys) lets requests through again.
fn earliest_reopening(runtime: &Runtime, candidates: &[Candidate]) -> Instant {
    let now = Instant::now();
    let circuit = &runtime.config.circuit;
    candidates
        .iter()
        .map(|candidate| {
            let deployment = &candidate.deployment;
            let open_until = deployment
                .health
                .breaker
                .reopens_at(circuit.cooldown)
                .unwrap_or(now);
            let key_until = deployment
                .provider
                .key_reopens_at(circuit.key_cooldown)
                .unwrap_or(now);
            open_until.max(key_until).max(now)
        })
        .min()
        .unwrap_or(now + circuit.cooldown)
}

/// The last failure as the client's answer.
fn finish(
    failure: Failure,
    candidate: &Candidate,
    plan: &Plan,
    attempts: u32,
) -> Result<Response, ApiError> {
    match failure.answer {
        Ok(mut response) => {
            decorate(response.headers_mut(), candidate, plan, attempts);
            Ok(response)
        }
        Err(error) => {
            let mut response = error.into_response();
            decorate(response.headers_mut(), candidate, plan, attempts);
            Ok(response)
        }
    }
}

/// The routing headers of an answer: deployment, attempts, fallback, canary.
fn decorate(headers: &mut HeaderMap, candidate: &Candidate, plan: &Plan, attempts: u32) {
    if let Ok(name) = HeaderValue::from_str(&candidate.deployment.name) {
        headers.insert(DEPLOYMENT_HEADER, name);
    }
    headers.insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    if candidate.fallback
        && let Ok(model) = HeaderValue::from_str(&candidate.model)
    {
        headers.insert(FALLBACK_HEADER, model);
    }
    if let Some(canary) = plan.canary {
        headers.insert(
            CANARY_HEADER,
            HeaderValue::from_static(if canary { "true" } else { "false" }),
        );
    }
}

/// One attempt on one candidate: plan the exchange for its protocol, send within the timeouts,
/// and read the answer (a whole body, or a stream's first events).
async fn attempt(
    job: &Job<'_>,
    candidate: &Candidate,
    key: Option<usize>,
    deadline: Instant,
    traceparent: Option<HeaderValue>,
) -> Result<Response, Failure> {
    let ctx = job.ctx;
    let deployment = &candidate.deployment;
    let protocol = job.endpoint.client_protocol();
    let timeouts = job.runtime.config.server.timeouts;
    let exchange = exchange::plan(
        job.endpoint,
        job.head,
        job.body,
        deployment,
        job.stream,
        &job.echo,
    )
    .map_err(|error| Failure {
        // The request cannot be put in this upstream's protocol: not the upstream's fault,
        // and no other attempt changes it.
        kind: ErrorKind::InvalidRequest,
        code: None,
        retry_after: None,
        answer: Err(error),
    })?;
    let inflight = deployment.health.start();
    let first_byte_deadline = deadline.min(Instant::now() + timeouts.first_byte);
    let timer = ConnectTimer::default();
    let request = UpstreamRequest {
        operation: exchange.operation,
        model: &deployment.upstream_model,
        body: exchange.body.clone(),
        stream: job.stream,
        client_headers: job.headers,
        request_id: &ctx.request_id,
        key,
        hops: job.hops,
        traceparent,
    };
    let sent = timeout_at(
        first_byte_deadline,
        timer.scope(deployment.provider.send(request)),
    )
    .await;
    ctx.set_upstream_connect(timer.micros());
    let upstream = match sent {
        Err(_elapsed) => {
            return Err(Failure::of(ApiError::upstream_timeout(
                "no response head within the first-byte timeout",
            )));
        }
        Ok(Err(error)) => return Err(Failure::of(transport_error(&error))),
        Ok(Ok(upstream)) => upstream,
    };
    let is_event_stream = upstream
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let client_headers = response_headers_to_client(&upstream.headers, &job.runtime.redactor);
    if upstream.status.is_success() && is_event_stream {
        let mode = match &exchange.conversion {
            Conversion::Passthrough {
                endpoint,
                hide_usage_chunk,
                keeper,
                ..
            } => Mode::Passthrough(
                Watch::new(
                    endpoint
                        .shape()
                        .map_or(Grammar::OpenAiChunks, |shape| shape.grammar()),
                    *hide_usage_chunk,
                    job.runtime.redactor.clone(),
                )
                .keeping(keeper.clone()),
            ),
            Conversion::Translate(translation) => {
                Mode::Translate(Box::new(translator(translation).map_err(Failure::of)?))
            }
        };
        let settings = Settings {
            ctx: ctx.clone(),
            protocol,
            idle: timeouts.idle,
            deadline,
            prompt_estimate: exchange.prompt_estimate,
            redactor: job.runtime.redactor.clone(),
            inflight: Some(inflight),
            capture: job.wants_capture().then(|| deployment.provider.wire()),
            end: job.end.clone(),
            max_event: job.runtime.config.server.max_upstream_event,
        };
        let mut relay = Relay::start(upstream.body, mode, settings, first_byte_deadline)
            .await
            .map_err(Failure::of)?;
        ctx.set_upstream_first_byte(ctx.started.elapsed());
        if let Some(fill) = job.take_fill() {
            relay.fill_cache(fill, deployment.name.clone());
        }
        let mut response = relay.into_response(upstream.status, client_headers);
        mark_dropped(&mut response, &exchange.dropped);
        return Ok(response);
    }
    ctx.set_upstream_first_byte(ctx.started.elapsed());
    let limit = job.runtime.config.server.max_upstream_body;
    let declared = upstream
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Failure::of(ApiError::upstream_bad_response(&format!(
            "the answer is larger than the gateway takes (server.max_upstream_body, {limit} bytes)"
        ))));
    }
    let bytes = read_whole(upstream.body, deadline, timeouts.idle, limit)
        .await
        .map_err(Failure::of)?;
    ctx.set_upstream_done();
    drop(inflight);
    if upstream.status.is_success() {
        let (mut response, body) =
            answer::success(ctx, &exchange, upstream.status, client_headers, bytes)
                .map_err(Failure::of)?;
        mark_dropped(&mut response, &exchange.dropped);
        if let Some(fill) = job.take_fill() {
            let answer = answer::canonical(job.endpoint, &body).map(|mut answer| {
                if answer.usage.is_none() {
                    answer.usage = ctx.usage().map(|(usage, _)| usage);
                }
                answer
            });
            fill.store(answer, Some(body), deployment.name.clone());
        }
        return Ok(response);
    }
    let retry_after = retry::retry_after(&upstream.headers);
    let failed = answer::upstream_error(
        &exchange,
        protocol,
        upstream.status,
        client_headers,
        &bytes,
        &job.runtime.redactor,
    );
    Err(Failure {
        answer: failed.answer,
        kind: failed.kind,
        code: failed.code,
        retry_after,
    })
}

/// The most field names `x-shepherd-dropped` lists (then `+N`).
const MAX_DROPPED_NAMES: usize = 16;

/// Names the request's fields the upstream had no place for, in `x-shepherd-dropped`: at most
/// 16 names (then `+N` for the rest); a name a header cannot carry is shown as `?`.
fn mark_dropped(response: &mut Response, dropped: &[String]) {
    if dropped.is_empty() {
        return;
    }
    let plain = |name: &str| {
        name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.[]".contains(&b))
    };
    let mut names: Vec<&str> = dropped
        .iter()
        .take(MAX_DROPPED_NAMES)
        .map(|name| if plain(name) { name.as_str() } else { "?" })
        .collect();
    let more = dropped.len().saturating_sub(MAX_DROPPED_NAMES);
    let more = format!("+{more}");
    if dropped.len() > MAX_DROPPED_NAMES {
        names.push(&more);
    }
    if let Ok(value) = HeaderValue::from_str(&names.join(",")) {
        response.headers_mut().insert(DROPPED_HEADER, value);
    }
}

/// The decoder of the upstream's stream and the encoder of the client's.
fn translator(translation: &Translation) -> Result<Translator, ApiError> {
    let shape = translation
        .endpoint
        .shape()
        .ok_or_else(|| ApiError::unsupported("this route has no streams".to_owned()))?;
    let encoder = shape.stream_encoder(
        translation.model.clone(),
        translation.include_usage,
        translation.echo.clone(),
    );
    Ok(Translator::new(
        shapes::upstream_decoder(translation.upstream),
        encoder,
    ))
}

pub(super) fn transport_error(error: &UpstreamError) -> ApiError {
    match error {
        UpstreamError::Connect(detail) => ApiError::upstream_unreachable(detail),
        UpstreamError::Timeout(detail) => ApiError::upstream_timeout(detail),
        UpstreamError::Transport(detail) => ApiError::upstream_bad_response(detail),
    }
}

/// Reads a non-streamed upstream body to its end, within the deadline and the size cap.
pub(super) async fn read_whole(
    mut body: UpstreamBody,
    deadline: Instant,
    idle: Duration,
    limit: usize,
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
        let held = single.as_ref().map_or(0, Bytes::len) + whole.len() + chunk.len();
        if held > limit {
            // Nothing more is read or held: memory stays flat whatever the upstream sends.
            return Err(ApiError::upstream_bad_response(&format!(
                "the answer is larger than the gateway takes (server.max_upstream_body, {limit} bytes)"
            )));
        }
        if let Some(first) = single.take() {
            // Grow by doubling, but never past the limit.
            whole.reserve((first.len() * 2).clamp(held, limit));
            whole.extend_from_slice(&first);
        }
        if whole.capacity() - whole.len() < chunk.len() {
            whole.reserve((whole.capacity()).clamp(chunk.len(), limit - whole.len()));
        }
        whole.extend_from_slice(&chunk);
    }
    Ok(single.unwrap_or_else(|| whole.freeze()))
}

#[cfg(test)]
#[path = "attempts_tests.rs"]
mod tests;
