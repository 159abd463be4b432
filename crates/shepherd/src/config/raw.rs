//! Raw serde structs: the config file exactly as written (`deny_unknown_fields` everywhere).
//! `model.rs` turns them into validated domain types; nothing at request time sees these.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Top-level sections this version understands; anything else is reported as unknown.
pub const SECTIONS: &[&str] = &[
    "server",
    "admin",
    "state",
    "providers",
    "models",
    "keys",
    "routes",
    "limits",
    "retry",
    "circuit",
    "cache",
    "telemetry",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub max_body: Option<RawSize>,
    pub timeouts: Option<RawTimeouts>,
    pub shutdown_grace: Option<RawDuration>,
    pub cors: Option<RawCors>,
    /// Requests that already passed this many Shepherd gateways are refused (loop protection).
    pub max_hops: Option<u32>,
    /// The admin API on its own address (else under `/admin` on `listen`).
    pub admin_listen: Option<String>,
    /// How long clients may take: request head, request body, idle keep-alive.
    pub client_timeouts: Option<RawClientTimeouts>,
    /// Open client connections beyond which new ones get a 503 and are closed.
    pub max_connections: Option<usize>,
    /// The largest stream event and whole answer taken from an upstream.
    pub max_upstream_event: Option<RawSize>,
    pub max_upstream_body: Option<RawSize>,
    /// HTTPS: certificate chain and key (PEM files), reloaded when they change.
    pub tls: Option<RawTls>,
    /// Idle keep-alive connections kept to upstreams.
    pub upstream_pool: Option<RawUpstreamPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamPool {
    pub max_idle_per_host: Option<usize>,
    pub idle_timeout: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    /// The admin listener asks for a client certificate signed by this CA (PEM).
    pub admin_client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTimeouts {
    pub header: Option<RawDuration>,
    pub body: Option<RawDuration>,
    pub keep_alive: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub master_key: Option<String>,
    pub key_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    pub database: Option<String>,
    pub redis: Option<String>,
    /// Override the URL's credentials (e.g. `${REDIS_PASSWORD}`, no URL escaping needed).
    pub redis_username: Option<String>,
    pub redis_password: Option<String>,
    pub redis_timeout: Option<RawDuration>,
    pub redis_prefix: Option<String>,
    pub on_redis_failure: Option<RawRedisFailure>,
    /// Ledger rows older than this become per-day sums (`0s`: kept for ever).
    pub usage_retention: Option<RawDuration>,
    /// How long Responses API answers are kept for `previous_response_id` (`0s`: not kept).
    pub response_retention: Option<RawDuration>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawRedisFailure {
    Open,
    Closed,
}

/// A rate: `rps` or `rpm` (requests), `tpm` (tokens), with an optional burst.
#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub rps: Option<f64>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub burst: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub per_ip: Option<RawRate>,
    pub per_route: Option<BTreeMap<String, RawRate>>,
    pub per_model: Option<BTreeMap<String, RawRate>>,
    /// Output tokens reserved at admission when a request sets no `max_tokens`.
    pub reserve_output_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u32>,
    pub burst: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub usd: f64,
    pub period: Option<RawPeriod>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawPeriod {
    Day,
    Week,
    Month,
    Total,
}

/// USD per million tokens.
#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
    pub cached_input: Option<f64>,
    pub cache_write: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<RawDuration>,
    pub first_byte: Option<RawDuration>,
    pub idle: Option<RawDuration>,
    pub total: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allow_origins: Vec<String>,
    pub allow_headers: Option<Vec<String>>,
    pub max_age: Option<RawDuration>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawProviderKind {
    Openai,
    Anthropic,
    Gemini,
    Mock,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: RawProviderKind,
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Extra headers sent to this upstream on every request (e.g. an organisation id).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Anthropic: the `anthropic-version` header; Gemini: the API version in the path.
    pub version: Option<String>,
    /// Anthropic: `max_tokens` sent when the client gave none (Anthropic requires it).
    pub default_max_tokens: Option<u64>,
    /// OpenAI: the upstream offers `/responses`, so Responses API requests pass through.
    pub responses: Option<bool>,
    pub health_check: Option<RawHealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub interval: Option<RawDuration>,
    pub timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub deployments: Vec<RawDeployment>,
    pub strategy: Option<RawStrategy>,
    /// Other models tried, in order, when this one's deployments are exhausted.
    pub fallbacks: Option<Vec<String>>,
    /// Also fall back when the upstream says the prompt is too long for the model.
    pub fallback_on_context_window: Option<bool>,
    /// Fallbacks serve every key allowed this model, even keys not allowed the fallback.
    pub fallbacks_for_all_keys: Option<bool>,
    pub canary: Option<RawCanary>,
    pub price: Option<RawPrice>,
    pub cache: Option<RawModelCache>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelCache {
    pub enabled: Option<bool>,
    pub ttl: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// `memory` or `redis` (the Redis of `state.redis`).
    pub backend: Option<String>,
    pub max_bytes: Option<RawSize>,
    pub ttl: Option<RawDuration>,
    pub scope: Option<RawCacheScope>,
    pub routes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawCacheScope {
    Shared,
    Key,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawStrategy {
    Weighted,
    RoundRobin,
    LeastInflight,
    LowestLatency,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCanary {
    pub deployments: Vec<RawDeployment>,
    /// `10%` (or 0.1): the share of client keys sent to the canary (`by: key`).
    pub share: Option<RawShare>,
    pub by: Option<RawCanaryBy>,
    /// `by: key_name`: key names or one-`*` patterns sent to the canary.
    pub keys: Option<Vec<String>>,
    /// `by: ip`: client address ranges (CIDR) sent to the canary.
    pub ips: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawCanaryBy {
    Key,
    Header,
    KeyName,
    Ip,
}

/// A share: `10%` or a fraction (`0.1`).
#[derive(Debug, Clone, Copy)]
pub struct RawShare(pub f64);

impl<'de> Deserialize<'de> for RawShare {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Fraction(f64),
            Text(String),
        }
        let share = match Either::deserialize(deserializer)? {
            Either::Fraction(fraction) => fraction,
            Either::Text(text) => text
                .trim()
                .strip_suffix('%')
                .and_then(|number| number.trim().parse::<f64>().ok())
                .map(|percent| percent / 100.0)
                .ok_or_else(|| {
                    serde::de::Error::custom(format!("invalid share `{text}`; write e.g. 10%"))
                })?,
        };
        if !(0.0..=1.0).contains(&share) {
            return Err(serde::de::Error::custom("a share is between 0% and 100%"));
        }
        Ok(RawShare(share))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Upstream attempts per request, the first included.
    pub attempts: Option<u32>,
    pub backoff: Option<RawDuration>,
    pub max_backoff: Option<RawDuration>,
    /// Longest `Retry-After` the gateway waits for within a request.
    pub max_retry_after: Option<RawDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuit {
    /// Consecutive failures that open a breaker.
    pub failures: Option<u32>,
    pub cooldown: Option<RawDuration>,
    /// Failure share over `window` that opens a breaker (with at least `min_requests`).
    pub error_rate: Option<RawShare>,
    pub window: Option<RawDuration>,
    pub min_requests: Option<u32>,
    /// How long an upstream key refused by its provider (401/403, no quota) stays out.
    pub key_cooldown: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    pub provider: String,
    /// Upstream model name; defaults to the alias clients ask for.
    pub model: Option<String>,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub name: String,
    pub key: String,
    /// Model names or patterns (`gpt-*`, `*`); all models when absent.
    pub models: Option<Vec<String>>,
    pub limits: Option<RawKeyLimits>,
    pub budget: Option<RawBudget>,
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// RFC 3339 time after which the key is refused.
    pub expires: Option<String>,
    /// The model used when a request names none.
    pub default_model: Option<String>,
}

/// Rules of one client route (`routes: {/v1/embeddings: {...}}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The model used when a request on this route names none.
    pub default_model: Option<String>,
    /// The models this route serves (names or one-`*` patterns); all when absent.
    pub models: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub access_log: Option<RawLogFormat>,
    pub log_format: Option<RawLogFormat>,
    pub log_level: Option<String>,
    /// Serve `/metrics` (default true).
    pub metrics: Option<bool>,
    /// `/metrics` on its own address instead of the main listener.
    pub metrics_listen: Option<String>,
    /// Key names as metric labels (default true).
    pub key_labels: Option<bool>,
    /// OpenTelemetry collector (OTLP over gRPC), e.g. `http://otel-collector:4317`; no traces
    /// without it.
    pub otlp_endpoint: Option<String>,
    /// Share of requests traced (default 100%); a caller's sampled `traceparent` is followed.
    pub trace_sample: Option<RawShare>,
    /// `service.name` of the spans (default `shepherd`).
    pub service_name: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RawLogFormat {
    Json,
    Human,
    Off,
}

/// A human duration (`500ms`, `30s`, `10m`).
#[derive(Debug, Clone, Copy)]
pub struct RawDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let duration = humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "invalid duration `{text}` ({error}); write e.g. 500ms, 30s, 10m"
            ))
        })?;
        if duration > crate::bounds::MAX_CONFIG_DURATION {
            return Err(serde::de::Error::custom(format!(
                "`{text}` is longer than the maximum of {}",
                humantime::format_duration(crate::bounds::MAX_CONFIG_DURATION)
            )));
        }
        Ok(RawDuration(duration))
    }
}

/// A human size (`10MiB`, `512KB`) or a plain number of bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawSize(pub u64);

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bytes(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Bytes(bytes) => Ok(RawSize(bytes)),
            Either::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|size| RawSize(size.as_u64()))
                .map_err(|error| {
                    serde::de::Error::custom(format!(
                        "invalid size `{text}` ({error}); write e.g. 10MiB"
                    ))
                }),
        }
    }
}
