//! Every metric Shepherd exposes, named in this one place (prefix `shepherd_`), in Prometheus'
//! text format at `/metrics`. Request metrics are recorded once, when a request ends; state
//! (deployment health, circuits, cache size, ledger) is read at scrape time. Labels are bounded:
//! routes and models are the configured ones (anything else is `other`), keys appear by name only
//! and not at all with `telemetry.key_labels: false`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::state::AppState;
use crate::translate::ir::Usage;

/// Seconds, from 5 ms to 2 minutes: LLM latencies span both ends.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
];

/// The `scope` of a refusal by a limit (`ratelimited_total`).
pub const LIMIT_SCOPES: [&str; 6] = ["ip", "route", "key", "model", "concurrency", "budget"];

/// Label value of anything outside the configured routes and models.
pub const OTHER: &str = "other";

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub tokens: IntCounterVec,
    pub key_tokens: IntCounterVec,
    pub cost: CounterVec,
    pub saved: CounterVec,
    pub inflight: IntGaugeVec,
    pub cache_requests: IntCounterVec,
    pub ratelimited: IntCounterVec,
    pub retries: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub config_reloads: IntCounterVec,
    /// Checks of upstream keys new in a reload (`result`: ok, refused, unverified).
    pub upstream_key_checks: IntCounterVec,
    pub stored_responses: IntCounterVec,
    /// Console sign-ins and sign-outs (`event`: sign_in, refused, sign_out).
    pub console_sessions: IntCounterVec,
    deployment_healthy: IntGaugeVec,
    circuit_state: IntGaugeVec,
    budget_limit: GaugeVec,
    budget_spent: GaugeVec,
    cache_bytes: IntGauge,
    cache_entries: IntGauge,
    cache_evictions: IntCounter,
    ledger_written: IntCounter,
    ledger_dropped: IntCounter,
    ledger_errors: IntCounter,
    /// 1 while a state backend's writes work (`backend`: sqlite, postgres, redis).
    state_backend_up: IntGaugeVec,
    /// Ledger rows rolled up into per-day sums (`state.usage_retention`).
    ledger_pruned: IntCounter,
    /// Key names as labels (`telemetry.key_labels`).
    pub key_labels: bool,
    /// `telemetry.metrics`: when off, requests are not counted.
    pub enabled: bool,
}

/// Registers a metric built from this file's constants (a failure is a programming error).
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    built: prometheus::Result<M>,
) -> M {
    let metric = built.unwrap_or_else(|_| unreachable_metric(name));
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        name,
        IntCounterVec::new(Opts::new(name, help), labels),
    )
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(registry, name, HistogramVec::new(opts, labels))
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        registry,
        name,
        IntGaugeVec::new(Opts::new(name, help), labels),
    )
}

fn float_counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> CounterVec {
    register(
        registry,
        name,
        CounterVec::new(Opts::new(name, help), labels),
    )
}

fn float_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(registry, name, GaugeVec::new(Opts::new(name, help), labels))
}

fn single_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, name, IntCounter::new(name, help))
}

fn single_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, name, IntGauge::new(name, help))
}

#[expect(
    clippy::panic,
    reason = "metric names are constants; a bad one cannot pass the tests"
)]
fn unreachable_metric<T>(name: &str) -> T {
    panic!("invalid metric definition `{name}`")
}

impl Metrics {
    pub fn new(enabled: bool, key_labels: bool) -> Metrics {
        let r = Registry::new_custom(Some("shepherd".to_owned()), None).unwrap_or_default();
        gauge(&r, "build_info", "Shepherd's version.", &["version"])
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let metrics = Metrics {
            requests: counter(
                &r,
                "requests_total",
                "Requests by route, model, deployment and status.",
                &["route", "model", "deployment", "status"],
            ),
            request_duration: histogram(
                &r,
                "request_duration_seconds",
                "Time from a request's arrival to its last byte.",
                &["route", "model"],
            ),
            time_to_first_token: histogram(
                &r,
                "time_to_first_token_seconds",
                "Time from a request's arrival to the upstream's first byte (first event of a stream).",
                &["model"],
            ),
            upstream_duration: histogram(
                &r,
                "upstream_duration_seconds",
                "Time of one upstream attempt, to its answer (whole, or a stream's first events).",
                &["deployment"],
            ),
            tokens: counter(
                &r,
                "tokens_total",
                "Tokens by model and type (prompt, completion, cached, reasoning).",
                &["model", "type"],
            ),
            key_tokens: counter(
                &r,
                "key_tokens_total",
                "Tokens by key and type (prompt, completion, cached, reasoning).",
                &["key", "type"],
            ),
            cost: float_counter(
                &r,
                "cost_usd_total",
                "Cost of upstream usage in USD.",
                &["model", "key"],
            ),
            saved: float_counter(
                &r,
                "cache_saved_usd_total",
                "Cost the response cache saved, in USD.",
                &["model", "key"],
            ),
            inflight: gauge(
                &r,
                "inflight_requests",
                "Requests in flight by model.",
                &["model"],
            ),
            cache_requests: counter(
                &r,
                "cache_requests_total",
                "Cache lookups by result (hit, miss).",
                &["result"],
            ),
            ratelimited: counter(
                &r,
                "ratelimited_total",
                "Requests refused by a limit, by scope (ip, route, key, model, concurrency, budget).",
                &["scope"],
            ),
            retries: counter(
                &r,
                "retries_total",
                "Upstream attempts that failed and were retried, by deployment and reason.",
                &["deployment", "reason"],
            ),
            fallbacks: counter(
                &r,
                "fallbacks_total",
                "Requests served by a fallback model.",
                &["from", "to"],
            ),
            config_reloads: counter(
                &r,
                "config_reloads_total",
                "Config reloads by result (success, failure).",
                &["result"],
            ),
            upstream_key_checks: counter(
                &r,
                "upstream_key_checks_total",
                "Upstream keys new in a reload, checked against the provider's model list before they serve (result: ok, refused, unverified).",
                &["provider", "result"],
            ),
            stored_responses: counter(
                &r,
                "stored_responses_total",
                "Responses API answers kept for previous_response_id, and their use (operation: save, continue, get, delete; result: ok, not_found, error).",
                &["operation", "result"],
            ),
            console_sessions: counter(
                &r,
                "console_sessions_total",
                "Console sessions by event (sign_in, refused: a wrong master key, sign_out).",
                &["event"],
            ),
            deployment_healthy: gauge(
                &r,
                "deployment_healthy",
                "1 when the deployment takes traffic (breaker not open, health check passing).",
                &["deployment"],
            ),
            circuit_state: gauge(
                &r,
                "circuit_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                &["deployment"],
            ),
            budget_limit: float_gauge(
                &r,
                "budget_limit_usd",
                "The budget of a key for its period, in USD (keys with a budget).",
                &["key"],
            ),
            budget_spent: float_gauge(
                &r,
                "budget_spent_usd",
                "What a key spent in its current budget period, in USD (keys with a budget).",
                &["key"],
            ),
            cache_bytes: single_gauge(&r, "cache_bytes", "Bytes held by the response cache."),
            cache_entries: single_gauge(&r, "cache_entries", "Answers held by the response cache."),
            cache_evictions: single_counter(
                &r,
                "cache_evictions_total",
                "Answers evicted to keep the cache within its bound.",
            ),
            ledger_written: single_counter(
                &r,
                "usage_records_written_total",
                "Usage records written to the ledger.",
            ),
            ledger_dropped: single_counter(
                &r,
                "usage_records_dropped_total",
                "Usage records lost (writer behind, or past the retry bound).",
            ),
            ledger_errors: single_counter(
                &r,
                "usage_store_errors_total",
                "Failed writes of the usage ledger (retried).",
            ),
            state_backend_up: gauge(
                &r,
                "state_backend_up",
                "1 while writes to a state backend work, 0 while they fail.",
                &["backend"],
            ),
            ledger_pruned: single_counter(
                &r,
                "usage_records_pruned_total",
                "Ledger rows past the retention, rolled up into per-day sums and removed.",
            ),
            key_labels,
            enabled,
            registry: r,
        };
        // Series of fixed label sets exist from the start at 0, so that `rate` and `increase`
        // see their first event (a series born at 1 shows no increase).
        for scope in LIMIT_SCOPES {
            metrics.ratelimited.with_label_values(&[scope]);
        }
        for result in ["hit", "miss"] {
            metrics.cache_requests.with_label_values(&[result]);
        }
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        metrics
    }

    /// The label value of a key.
    pub fn key_label<'a>(&self, name: &'a str) -> &'a str {
        if self.key_labels { name } else { "" }
    }

    /// Counts the tokens of one request, by model and by key.
    pub fn count_tokens(&self, model: &str, key: Option<&str>, usage: &Usage) {
        let key = key.map(|name| self.key_label(name));
        for (kind, count) in [
            ("prompt", usage.input),
            ("completion", usage.output),
            ("cached", usage.cache_read),
            ("reasoning", usage.reasoning),
        ] {
            if count > 0 {
                self.tokens.with_label_values(&[model, kind]).inc_by(count);
                if let Some(key) = key {
                    self.key_tokens
                        .with_label_values(&[key, kind])
                        .inc_by(count);
                }
            }
        }
    }

    pub fn observe(histogram: &HistogramVec, labels: &[&str], duration: Duration) {
        histogram
            .with_label_values(labels)
            .observe(duration.as_secs_f64());
    }

    /// Reads the state of deployments, the cache and the ledger, then encodes every metric.
    pub fn render(&self, state: &AppState) -> String {
        let runtime = state.runtime();
        self.deployment_healthy.reset();
        self.circuit_state.reset();
        for name in runtime.models.deployment_names() {
            let health = state.health.get(name);
            self.deployment_healthy
                .with_label_values(&[name])
                .set(i64::from(health.is_healthy()));
            self.circuit_state
                .with_label_values(&[name])
                .set(i64::from(health.breaker.state().as_number()));
        }
        self.budget_limit.reset();
        self.budget_spent.reset();
        if self.key_labels {
            for (key, limit, spent) in state.governance.budgets(&runtime.config.keys) {
                let usd = crate::governance::pricing::usd;
                self.budget_limit
                    .with_label_values(&[&*key])
                    .set(usd(limit));
                self.budget_spent
                    .with_label_values(&[&*key])
                    .set(usd(spent));
            }
        }
        let (bytes, entries, evictions) = state.cache.stats();
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        catch_up(&self.cache_evictions, evictions);
        let ledger = &state.governance.writer.counts;
        catch_up(&self.ledger_written, ledger.written.load(Ordering::Relaxed));
        catch_up(&self.ledger_dropped, ledger.dropped.load(Ordering::Relaxed));
        catch_up(
            &self.ledger_errors,
            ledger.store_errors.load(Ordering::Relaxed),
        );
        catch_up(&self.ledger_pruned, ledger.pruned.load(Ordering::Relaxed));
        let health = state.governance.store.health();
        self.state_backend_up
            .with_label_values(&[state.governance.store_kind()])
            .set(i64::from(health.up));
        if let Some(redis) = &state.governance.redis {
            self.state_backend_up
                .with_label_values(&["redis"])
                .set(i64::from(redis.is_up()));
        }
        let mut out = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Brings a counter up to a total kept elsewhere.
fn catch_up(counter: &IntCounter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let metrics = Metrics::new(true, true);
        metrics
            .requests
            .with_label_values(&["/v1/chat/completions", "m", "p/m", "200"])
            .inc();
        metrics.count_tokens(
            "m",
            Some("svc"),
            &Usage {
                input: 3,
                output: 2,
                ..Usage::default()
            },
        );
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&metrics.registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("shepherd_requests_total{deployment=\"p/m\",model=\"m\",route=\"/v1/chat/completions\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("shepherd_tokens_total{model=\"m\",type=\"prompt\"} 3"));
        assert!(text.contains("shepherd_key_tokens_total{key=\"svc\",type=\"completion\"} 2"));
        assert!(
            !text.contains("type=\"cached\""),
            "zero counts are not created"
        );
        assert_eq!(Metrics::new(true, false).key_label("svc"), "");
    }
}
