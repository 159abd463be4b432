//! Validated domain types of the config. Built once by `load.rs`; request-time code reads these
//! (names as `Arc<str>`, durations as `Duration`, enums where a choice is made), never raw YAML.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A secret value from config. Prints as `****` so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: Option<AdminConfig>,
    pub state: StateConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub keys: Vec<KeyConfig>,
    /// Rules per client route: a default model and the models allowed.
    pub routes: Vec<RouteRule>,
    pub limits: LimitsConfig,
    pub retry: RetryConfig,
    pub circuit: CircuitConfig,
    pub cache: CacheConfig,
    pub telemetry: TelemetryConfig,
}

impl Config {
    /// A config with no model serves nothing (an empty or truncated file parses as one).
    pub fn serves_nothing(&self) -> bool {
        self.models.is_empty()
    }
}

/// Whether answers are shared between client keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    Shared,
    /// Each client key has its own entries.
    Key,
}

/// The response cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// On for every model (the `cache` section is there); models can still opt in or out.
    pub enabled: bool,
    pub backend: CacheBackend,
    pub max_bytes: u64,
    pub ttl: Duration,
    pub scope: CacheScope,
    /// Routes whose answers are cached.
    pub routes: Vec<String>,
}

/// Where cached answers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheBackend {
    /// This process's memory, bounded by `max_bytes`.
    Memory,
    /// The shared Redis of `state.redis`, bounded by Redis' own `maxmemory`.
    Redis,
}

/// A model's own cache setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelCache {
    pub enabled: bool,
    pub ttl: Option<Duration>,
}

/// The admin API's master key and the server secret that hashes client keys.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub master_key: Secret,
    pub key_secret: Secret,
}

/// Where keys and the usage ledger live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(std::path::PathBuf),
    /// An in-memory SQLite database (tests, and configs not read from a file).
    SqliteMemory,
    /// A PostgreSQL connection URL (`postgres://user:password@host:port/db?sslmode=...`).
    Postgres(Secret),
}

impl Database {
    /// The backend's name, as metrics and `/readyz` say it.
    pub fn kind(&self) -> &'static str {
        match self {
            Database::Sqlite(_) | Database::SqliteMemory => "sqlite",
            Database::Postgres(_) => "postgres",
        }
    }
}

/// What requests meet while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFailure {
    /// Served under local limits, each replica enforcing its share.
    Open,
    /// Refused with 503 until Redis is back.
    Closed,
}

/// The shared Redis (`state.redis`): limits, concurrency, budgets and, with
/// `cache.backend: redis`, the response cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS).
    pub url: Secret,
    pub username: Option<Secret>,
    pub password: Option<Secret>,
    /// How long one command may take before Redis counts as down.
    pub timeout: Duration,
    pub on_failure: RedisFailure,
    /// Prefix of every key Shepherd writes (several gateways can share one Redis).
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub database: Database,
    pub redis: Option<RedisConfig>,
    /// Ledger rows older than this are rolled up per day and removed; `None`: kept for ever.
    pub usage_retention: Option<Duration>,
    /// How long Responses API answers are kept (`previous_response_id`, `GET /v1/responses/{id}`);
    /// `None`: not kept.
    pub response_retention: Option<Duration>,
}

/// A rate limit: `amount` per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub amount: u64,
    pub period: Duration,
    pub burst: u64,
}

/// Limits beyond the client keys' own.
#[derive(Debug, Clone, Default)]
pub struct LimitsConfig {
    /// Requests per client address.
    pub per_ip: Option<Rate>,
    /// Requests per route (`/v1/chat/completions`...).
    pub per_route: Vec<(String, Rate)>,
    /// Requests and tokens per model.
    pub per_model: Vec<(Arc<str>, Option<Rate>, Option<Rate>)>,
    /// Output tokens reserved at admission when a request sets no `max_tokens`.
    pub reserve_output_tokens: u64,
}

/// A client key's own limits.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KeyLimits {
    /// Requests.
    pub requests: Option<Rate>,
    /// Tokens (prompt and completion).
    pub tokens: Option<Rate>,
    /// Requests in flight at once.
    pub concurrency: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Week,
    Month,
    Total,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "day",
            BudgetPeriod::Week => "week",
            BudgetPeriod::Month => "month",
            BudgetPeriod::Total => "total",
        }
    }

    pub fn parse(text: &str) -> Option<BudgetPeriod> {
        match text {
            "day" => Some(BudgetPeriod::Day),
            "week" => Some(BudgetPeriod::Week),
            "month" => Some(BudgetPeriod::Month),
            "total" => Some(BudgetPeriod::Total),
            _ => None,
        }
    }
}

/// Spending allowed per period, in nano-dollars (exact integer arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub nano_usd: u64,
    pub period: BudgetPeriod,
}

/// A model's price, in nano-dollars per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
}

impl Price {
    /// From USD per million tokens (one nano-dollar per token is $0.001 per million).
    pub fn per_million(input: f64, output: f64, cached_input: f64, cache_write: f64) -> Price {
        let nano = |usd_per_million: f64| (usd_per_million * 1000.0).round().max(0.0) as u64;
        Price {
            input: nano(input),
            output: nano(output),
            cached_input: nano(cached_input),
            cache_write: nano(cache_write),
        }
    }
}

/// The attempt loop: how often and how patiently a request is retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryConfig {
    /// Upstream attempts per request, the first included.
    pub attempts: u32,
    /// Base of the exponential backoff (full jitter).
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Longest `Retry-After` waited for within a request.
    pub max_retry_after: Duration,
}

/// Circuit breakers of deployments and upstream keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitConfig {
    /// Consecutive failures that open a breaker.
    pub failures: u32,
    pub cooldown: Duration,
    /// Failure share over `window` (with at least `min_requests`) that opens a breaker.
    pub error_rate: f64,
    pub window: Duration,
    pub min_requests: u32,
    /// How long a key refused by its provider (401/403, no quota) stays out of rotation.
    pub key_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body: usize,
    pub timeouts: Timeouts,
    pub shutdown_grace: Duration,
    pub cors: Option<CorsConfig>,
    /// Requests that passed this many Shepherd gateways already are refused.
    pub max_hops: u32,
    /// The admin API on its own address.
    pub admin_listen: Option<SocketAddr>,
    pub client_timeouts: ClientTimeouts,
    /// Open client connections beyond which new ones are refused with a 503.
    pub max_connections: usize,
    /// The largest stream event (bytes between two empty lines) taken from an upstream.
    pub max_upstream_event: usize,
    /// The largest whole (non-streamed) answer taken from an upstream.
    pub max_upstream_body: usize,
    /// HTTPS on every listener.
    pub tls: Option<TlsConfig>,
    pub upstream_pool: UpstreamPool,
}

/// `server.upstream_pool`: the idle keep-alive connections kept to upstreams, shared by every
/// provider that reaches the same scheme and host. Connections in use are not limited; one
/// returned while `max_idle_per_host` others wait idle is closed, and an idle one is closed
/// after `idle_timeout` (as nginx's `keepalive` and `keepalive_timeout` do).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamPool {
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

impl Default for UpstreamPool {
    fn default() -> Self {
        UpstreamPool {
            max_idle_per_host: 64,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// `server.tls`: PEM files, read at start and again whenever they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// Clients of the admin listener must present a certificate signed by this CA.
    pub admin_client_ca: Option<std::path::PathBuf>,
}

/// How long clients may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// From a connection's opening (or a request's first byte) to its complete request head.
    pub header: Duration,
    /// To receive a request's whole body.
    pub body: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keep_alive: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (and TLS) connect to an upstream.
    pub connect: Duration,
    /// From sending the request to the response head (and, for streams, the first chunk).
    pub first_byte: Duration,
    /// Longest silence between two stream chunks.
    pub idle: Duration,
    /// Whole request, stream included.
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins, or `*` for any.
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub health_check: Option<HealthCheckConfig>,
}

/// An active health check of a provider: its model list, every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// An upstream reached over HTTP.
    Remote(RemoteProvider),
    /// Answers inside the process (OpenAI protocol): no network, no key.
    Mock,
}

/// The protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions and friends (OpenAI, DeepSeek, Groq, vLLM, Ollama, relays…).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RemoteProvider {
    pub wire: Wire,
    /// Without a trailing slash: `https://api.openai.com/v1`, `https://api.anthropic.com`,
    /// `https://generativelanguage.googleapis.com`.
    pub base_url: String,
    pub api_keys: Vec<Secret>,
    pub headers: Vec<(String, String)>,
    /// Anthropic: `anthropic-version`; Gemini: API version (`v1beta`); OpenAI: unused.
    pub version: String,
    /// Anthropic: `max_tokens` when the client gave none.
    pub default_max_tokens: u64,
    /// OpenAI: the upstream offers the Responses API (`/responses`): those requests pass through
    /// instead of being translated to chat completions.
    pub responses: bool,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name clients ask for.
    pub name: Arc<str>,
    pub deployments: Vec<DeploymentConfig>,
    pub strategy: Strategy,
    /// Other models tried, in order, when this one's deployments are exhausted.
    pub fallbacks: Vec<Arc<str>>,
    /// Fall back also when the prompt is too long for the model.
    pub fallback_on_context_window: bool,
    /// Fallbacks serve every key that may use this model (else a key only falls back to models
    /// it may use).
    pub fallbacks_for_all_keys: bool,
    pub canary: Option<CanaryConfig>,
    /// The price of this model, overriding the built-in catalog.
    pub price: Option<Price>,
    pub cache: Option<ModelCache>,
}

/// How a model's deployments (and a provider's keys) are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// At random, in proportion to the weights.
    #[default]
    Weighted,
    RoundRobin,
    /// The deployment with the fewest requests in flight.
    LeastInflight,
    /// The deployment with the lowest moving average of time to first byte.
    LowestLatency,
}

/// A second deployment set for part of a model's traffic.
#[derive(Debug, Clone)]
pub struct CanaryConfig {
    pub deployments: Vec<DeploymentConfig>,
    pub rule: CanaryRule,
}

/// Which requests go to the canary.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryRule {
    /// This share of client keys, by a hash of the key (sticky).
    KeyShare(f64),
    /// Requests with `x-shepherd-canary: true` (or `1`).
    Header,
    /// Keys whose name matches one of these.
    KeyNames(Vec<ModelPattern>),
    /// Clients whose address is in one of these ranges.
    Ips(Vec<Cidr>),
}

/// An address range, `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr.parse().ok()?, prefix.parse().ok()?),
            None => {
                let addr: std::net::IpAddr = text.parse().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(addr, std::net::IpAddr::V4(_)) {
            32
        } else {
            128
        };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (_, ip) => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    pub provider: Arc<str>,
    pub upstream_model: Arc<str>,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub name: Arc<str>,
    pub key: Secret,
    pub models: Vec<ModelPattern>,
    pub limits: KeyLimits,
    pub budget: Option<Budget>,
    pub metadata: serde_json::Value,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// The model used when a request names none.
    pub default_model: Option<Arc<str>>,
}

/// The rules of one client route.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// `/v1/chat/completions`…
    pub path: String,
    /// The model used when a request on this route names none (after the key's own).
    pub default_model: Option<Arc<str>>,
    /// The models this route serves; empty: all.
    pub models: Vec<ModelPattern>,
}

impl RouteRule {
    pub fn allows(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|pattern| pattern.matches(model))
    }
}

/// A model name, or a pattern with one `*` wildcard (`gpt-*`, `*-mini`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPattern(String);

impl ModelPattern {
    pub fn new(pattern: String) -> Self {
        ModelPattern(pattern)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, model: &str) -> bool {
        match self.0.split_once('*') {
            None => self.0 == model,
            Some((prefix, suffix)) => {
                model.len() >= prefix.len() + suffix.len()
                    && model.starts_with(prefix)
                    && model.ends_with(suffix)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Human,
    Off,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Format of the per-request access log line (`off` disables it).
    pub access_log: LogFormat,
    /// Format of every other log line.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `shepherd=debug`.
    pub log_level: String,
    /// Serve `/metrics`.
    pub metrics: bool,
    /// `/metrics` on its own address.
    pub metrics_listen: Option<SocketAddr>,
    /// Key names as metric labels.
    pub key_labels: bool,
    /// Traces over OTLP, when configured.
    pub traces: Option<TracesConfig>,
}

/// Where and how much to trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TracesConfig {
    /// The collector's OTLP/gRPC endpoint.
    pub endpoint: String,
    /// Share of requests traced, 0 to 1.
    pub sample: f64,
    pub service_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s: &str| ModelPattern::new(s.to_owned());
        assert!(p("gpt-4.1").matches("gpt-4.1"));
        assert!(!p("gpt-4.1").matches("gpt-4.1-mini"));
        assert!(p("gpt-*").matches("gpt-4.1-mini"));
        assert!(!p("gpt-*").matches("claude"));
        assert!(p("*-mini").matches("gpt-4.1-mini"));
        assert!(p("*").matches("anything"));
        assert!(!p("a*a").matches("a"));
    }

    #[test]
    fn cidr_ranges() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("192.168.1.1".parse().unwrap()));
        let one = Cidr::parse("192.168.1.1").unwrap();
        assert!(one.contains("192.168.1.1".parse().unwrap()));
        assert!(!one.contains("192.168.1.2".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope/8").is_none());
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("sk-live-123".to_owned());
        assert_eq!(format!("{secret:?}"), "****");
    }
}
