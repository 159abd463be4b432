//! `RequestContext`: what one request has learned on its way through the gateway (key, model,
//! deployment, timings, bytes, usage, outcome). Every stage writes here; when the last holder
//! lets go (the response body is finished or the client left) the request is settled: its
//! admission reconciled with the real usage, its usage record handed to the ledger, and its
//! access log line written.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;

use crate::config::Price;
use crate::governance::admission::{Admission, now_ms};
use crate::governance::usage::UsageWriter;
use crate::store::UsageRecord;
use crate::telemetry::metrics::{Metrics, OTHER};
use crate::telemetry::traces::{AttemptTrace, RequestTrace, operation_of};
use crate::translate::ir::{Usage, UsageSource};

/// What settles a request at its end: its admission, the prices of the deployments that may
/// serve it, and the ledger.
#[derive(Debug)]
pub struct Accounting {
    pub admission: Option<Admission>,
    pub prices: Vec<(Arc<str>, Price)>,
    pub ledger: Arc<UsageWriter>,
}

/// How a request ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response (or stream) was delivered whole.
    Complete,
    /// The client went away before the response was delivered.
    ClientGone,
    /// A stream was ended early with an error event.
    StreamError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientGone => "client_gone",
            Outcome::StreamError => "stream_error",
        }
    }
}

#[derive(Debug, Default)]
struct Fields {
    /// The key's id and name.
    key: Option<(Arc<str>, Arc<str>)>,
    /// A configured model (metrics label only those); in flight while the request lasts.
    known_model: Option<Arc<str>>,
    accounting: Option<Accounting>,
    fallback: bool,
    cache_hit: bool,
    /// The request named no model; a key's or route's default was used.
    default_model: bool,
    model: Option<String>,
    deployment: Option<Arc<str>>,
    status: u16,
    stream: bool,
    bytes_in: u64,
    upstream_connect: Option<Duration>,
    upstream_first_byte: Option<Duration>,
    upstream_total: Option<Duration>,
    error: Option<&'static str>,
    body_done: bool,
    stream_failed: bool,
    usage: Option<(Usage, UsageSource)>,
}

#[derive(Debug)]
pub struct RequestContext {
    pub request_id: String,
    pub started: Instant,
    client_ip: Option<IpAddr>,
    method: String,
    route: String,
    /// Whether this request gets an access log line (health probes do not).
    logged: bool,
    bytes_out: AtomicU64,
    metrics: Option<Arc<Metrics>>,
    /// The request's span, when traces are on.
    trace: Option<RequestTrace>,
    fields: Mutex<Fields>,
}

impl RequestContext {
    pub fn new(
        request_id: String,
        client_ip: Option<IpAddr>,
        method: &str,
        route: &str,
        logged: bool,
        metrics: Option<Arc<Metrics>>,
        trace: Option<RequestTrace>,
    ) -> Self {
        RequestContext {
            request_id,
            started: Instant::now(),
            client_ip,
            method: method.to_owned(),
            route: route.to_owned(),
            logged,
            bytes_out: AtomicU64::new(0),
            fields: Mutex::new(Fields::default()),
            metrics,
            trace,
        }
    }

    /// The request is for a configured model: it is counted in flight until it ends.
    pub fn set_known_model(&self, model: Arc<str>) {
        if let Some(metrics) = &self.metrics {
            metrics.inflight.with_label_values(&[&model]).inc();
        }
        self.update(|f| f.known_model = Some(model));
    }

    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Starts the span of an upstream attempt (`None` without traces).
    pub fn trace_attempt(
        &self,
        deployment: &crate::routing::Deployment,
        attempt: u32,
    ) -> Option<AttemptTrace> {
        let trace = self.trace.as_ref()?;
        let provider = &deployment.provider;
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", operation_of(&self.route)),
            KeyValue::new("gen_ai.provider.name", provider.system_name()),
            KeyValue::new(
                "gen_ai.request.model",
                deployment.upstream_model.to_string(),
            ),
            KeyValue::new("shepherd.deployment", deployment.name.to_string()),
            KeyValue::new("shepherd.attempt", i64::from(attempt)),
        ];
        let server = provider
            .base_url()
            .and_then(|url| url.parse::<axum::http::Uri>().ok());
        if let Some(uri) = server {
            if let Some(host) = uri.host() {
                attributes.push(KeyValue::new("server.address", host.to_owned()));
            }
            let port = uri.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            });
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        let name = format!(
            "{} {}",
            operation_of(&self.route),
            deployment.upstream_model
        );
        Some(trace.attempt(name, attributes))
    }

    fn update(&self, change: impl FnOnce(&mut Fields)) {
        let mut fields = match self.fields.lock() {
            Ok(fields) => fields,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut fields);
    }

    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }
    pub fn set_key(&self, id: Arc<str>, name: Arc<str>) {
        self.update(|f| f.key = Some((id, name)));
    }
    pub fn set_accounting(&self, accounting: Accounting) {
        self.update(|f| f.accounting = Some(accounting));
    }
    /// The request named no model: a default was used.
    pub fn set_default_model(&self) {
        self.update(|f| f.default_model = true);
    }
    /// A fallback model served the request.
    pub fn set_fallback(&self) {
        self.update(|f| f.fallback = true);
    }
    /// The cache answered; `deployment` produced the cached answer.
    pub fn set_cache_hit(&self, deployment: Arc<str>) {
        self.update(|f| {
            f.cache_hit = true;
            f.deployment = Some(deployment);
        });
    }
    pub fn set_request(&self, model: &str, stream: bool, bytes_in: usize) {
        if let Some(trace) = &self.trace {
            let operation = operation_of(&self.route);
            trace.rename(format!("{operation} {model}"));
            trace.set(vec![
                KeyValue::new("gen_ai.operation.name", operation),
                KeyValue::new("gen_ai.request.model", model.to_owned()),
                KeyValue::new("shepherd.stream", stream),
            ]);
        }
        self.update(|f| {
            f.model = Some(model.to_owned());
            f.stream = stream;
            f.bytes_in = bytes_in as u64;
        });
    }
    pub fn set_bytes_in(&self, bytes_in: usize) {
        self.update(|f| f.bytes_in = bytes_in as u64);
    }
    pub fn set_deployment(&self, name: Arc<str>) {
        self.update(|f| f.deployment = Some(name));
    }
    pub fn set_upstream_connect(&self, micros: u64) {
        self.update(|f| f.upstream_connect = Some(Duration::from_micros(micros)));
    }
    pub fn set_upstream_first_byte(&self, at: Duration) {
        self.update(|f| f.upstream_first_byte = Some(at));
    }
    pub fn set_upstream_done(&self) {
        let elapsed = self.started.elapsed();
        self.update(|f| f.upstream_total = Some(elapsed));
    }
    pub fn set_status(&self, status: u16) {
        self.update(|f| f.status = status);
    }
    pub fn set_error(&self, code: &'static str) {
        self.update(|f| f.error = Some(code));
    }
    /// A stream ended with an error event instead of its natural end.
    pub fn set_stream_failed(&self, code: &'static str) {
        self.update(|f| {
            f.stream_failed = true;
            f.error = Some(code);
        });
    }
    /// The request's token counts, reported by the upstream or estimated.
    /// The request's usage (clamped: an upstream's absurd counts cannot overflow sums).
    pub fn set_usage(&self, usage: Usage, source: UsageSource) {
        self.update(|f| f.usage = Some((usage.clamped(), source)));
    }
    pub fn usage(&self) -> Option<(Usage, UsageSource)> {
        let mut usage = None;
        self.update(|f| usage = f.usage);
        usage
    }
    pub fn add_bytes_out(&self, bytes: usize) {
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    /// The response body reached its end (as opposed to being dropped mid-way).
    pub fn set_body_done(&self) {
        self.update(|f| f.body_done = true);
    }
}

fn millis(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0)
}

impl Drop for RequestContext {
    fn drop(&mut self) {
        let mut fields = match self.fields.get_mut() {
            Ok(fields) => std::mem::take(fields),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        let cost = self.settle(&mut fields);
        self.record_metrics(&fields, cost);
        self.finish_trace(&fields, cost);
        if !self.logged {
            return;
        }
        let outcome = if fields.stream_failed {
            Outcome::StreamError
        } else if fields.body_done {
            Outcome::Complete
        } else {
            Outcome::ClientGone
        };
        let record = crate::telemetry::access::AccessRecord {
            request_id: &self.request_id,
            key: fields.key.as_ref().map(|(_, name)| &**name),
            client_ip: self.client_ip,
            method: &self.method,
            route: &self.route,
            model: fields.model.as_deref(),
            default_model: fields.default_model,
            deployment: fields.deployment.as_deref(),
            status: fields.status,
            stream: fields.stream,
            bytes_in: fields.bytes_in,
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            upstream_connect_ms: millis(fields.upstream_connect),
            upstream_first_byte_ms: millis(fields.upstream_first_byte),
            upstream_total_ms: millis(fields.upstream_total),
            total_ms: millis(Some(self.started.elapsed())).unwrap_or_default(),
            outcome: outcome.as_str(),
            error: fields.error,
            usage: fields
                .usage
                .map(|(usage, source)| crate::telemetry::access::TokenCounts {
                    prompt_tokens: usage.input,
                    completion_tokens: usage.output,
                    cached_tokens: usage.cache_read,
                    reasoning_tokens: usage.reasoning,
                    usage: source.as_str(),
                }),
            cost_usd: cost.map(|(cost, _)| crate::governance::pricing::usd(cost)),
        };
        crate::telemetry::access::write(&record);
        // Client routes only, with shared strings: the live tail copies nothing per request.
        if let Some(endpoint) = crate::providers::Endpoint::ALL
            .into_iter()
            .find(|endpoint| endpoint.route() == self.route)
        {
            let mut recent = crate::telemetry::recent::RecentRequest::numbers_of(&record);
            recent.route = endpoint.route();
            recent.key = fields.key.map(|(_, name)| name);
            recent.model = fields.known_model.or_else(|| fields.model.map(Arc::from));
            recent.deployment = fields.deployment;
            crate::telemetry::recent::keep(recent);
        }
    }
}

impl RequestContext {
    /// Counts the request in the metrics: requests, durations, tokens, cost.
    fn record_metrics(&self, fields: &Fields, cost: Option<(u64, u64)>) {
        let Some(metrics) = &self.metrics else { return };
        let model = fields.known_model.as_deref();
        if let Some(model) = model {
            metrics.inflight.with_label_values(&[model]).dec();
        }
        if !self.logged {
            return;
        }
        let route = route_label(&self.route);
        let model = model.unwrap_or(if fields.model.is_some() { OTHER } else { "" });
        let code = axum::http::StatusCode::from_u16(fields.status).ok();
        let status = code.as_ref().map_or("0", axum::http::StatusCode::as_str);
        let deployment = fields.deployment.as_deref().unwrap_or_default();
        metrics
            .requests
            .with_label_values(&[route, model, deployment, status])
            .inc();
        Metrics::observe(
            &metrics.request_duration,
            &[route, model],
            self.started.elapsed(),
        );
        // Only answers that carried tokens: an upstream error's first byte is not a first token.
        let answered = (200..300).contains(&fields.status) && !fields.cache_hit;
        if let (Some(first_byte), true) = (fields.upstream_first_byte, answered) {
            Metrics::observe(&metrics.time_to_first_token, &[model], first_byte);
        }
        if let (Some((usage, _)), false) = (&fields.usage, fields.cache_hit) {
            metrics.count_tokens(model, fields.key.as_ref().map(|(_, name)| &**name), usage);
        }
        if let (Some((cost, saved)), Some((_, key))) = (cost, &fields.key) {
            let key = metrics.key_label(key);
            if cost > 0 {
                let usd = crate::governance::pricing::usd(cost);
                metrics.cost.with_label_values(&[model, key]).inc_by(usd);
            }
            if saved > 0 {
                let usd = crate::governance::pricing::usd(saved);
                metrics.saved.with_label_values(&[model, key]).inc_by(usd);
            }
        }
    }

    /// Reconciles the admission with the real usage and hands the usage record to the ledger;
    /// returns the cost and what a cache hit saved, when the request was accounted.
    fn settle(&self, fields: &mut Fields) -> Option<(u64, u64)> {
        let accounting = fields.accounting.take()?;
        let usage = fields.usage.map(|(usage, _)| usage);
        let price = fields.deployment.as_ref().and_then(|served| {
            accounting
                .prices
                .iter()
                .find(|(name, _)| name == served)
                .map(|(_, price)| *price)
        });
        let priced = match (&usage, &price) {
            (Some(usage), Some(price)) => crate::governance::pricing::cost(price, usage),
            _ => 0,
        };
        // A cache hit used no upstream: it costs nothing, and saved what it would have cost.
        let (cost, saved) = if fields.cache_hit {
            if let Some(admission) = accounting.admission {
                admission.settle(None, None);
            }
            (0, priced)
        } else {
            let cost = match accounting.admission {
                Some(admission) => admission.settle(usage.as_ref(), price.as_ref()),
                None => priced,
            };
            (cost, 0)
        };
        let (key_id, key_name) = fields.key.clone()?;
        let elapsed = self.started.elapsed();
        accounting.ledger.record(UsageRecord {
            request_id: self.request_id.clone(),
            ts_ms: now_ms() - i64::try_from(elapsed.as_millis()).unwrap_or(0),
            key_id,
            key_name,
            model: fields.model.clone(),
            deployment: fields.deployment.clone(),
            route: self.route.clone(),
            status: fields.status,
            stream: fields.stream,
            prompt_tokens: usage.map_or(0, |u| u.input),
            completion_tokens: usage.map_or(0, |u| u.output),
            cached_tokens: usage.map_or(0, |u| u.cache_read),
            reasoning_tokens: usage.map_or(0, |u| u.reasoning),
            usage_source: fields.usage.map(|(_, source)| source.as_str()),
            cost_nano_usd: cost,
            saved_nano_usd: saved,
            latency_ms: millis(Some(elapsed)).unwrap_or_default(),
            ttft_ms: millis(fields.upstream_first_byte),
            cache_hit: fields.cache_hit,
            fallback: fields.fallback,
        });
        Some((cost, saved))
    }
}

impl RequestContext {
    /// Ends the request's span with what the request became (GenAI attributes).
    fn finish_trace(&self, fields: &Fields, cost: Option<(u64, u64)>) {
        let Some(trace) = &self.trace else { return };
        let mut attributes = vec![
            KeyValue::new("shepherd.request_id", self.request_id.clone()),
            KeyValue::new("shepherd.cache_hit", fields.cache_hit),
            KeyValue::new("shepherd.fallback", fields.fallback),
        ];
        if let Some(deployment) = &fields.deployment {
            attributes.push(KeyValue::new("shepherd.deployment", deployment.to_string()));
        }
        if let (Some((_, key)), Some(metrics)) = (&fields.key, &self.metrics)
            && metrics.key_labels
        {
            attributes.push(KeyValue::new("shepherd.key", key.to_string()));
        }
        if let Some((usage, _)) = &fields.usage {
            let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            attributes.push(KeyValue::new(
                "gen_ai.usage.input_tokens",
                tokens(usage.input),
            ));
            attributes.push(KeyValue::new(
                "gen_ai.usage.output_tokens",
                tokens(usage.output),
            ));
        }
        if let Some((cost, _)) = cost {
            let usd = crate::governance::pricing::usd(cost);
            attributes.push(KeyValue::new("shepherd.cost_usd", usd));
        }
        trace.set(attributes);
        trace.finish(fields.status, fields.error);
    }
}

/// The metrics label of a path: a known route, `/admin`, or `other`.
pub fn route_label(path: &str) -> &str {
    if crate::api::ROUTES.contains(&path) {
        path
    } else if path == "/admin" || path.starts_with("/admin/") {
        "/admin"
    } else {
        OTHER
    }
}
