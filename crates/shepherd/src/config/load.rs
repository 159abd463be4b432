//! Loading: YAML -> raw sections (each entry on its own, so one bad entry does not hide the
//! next) -> validated `Config`. Every problem carries file, line and field.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::*;
use super::problems::{Problem, Problems};
use super::raw::*;
use super::yaml::{self, LineIndex, index_path, join_path};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_BODY: usize = 10 * 1024 * 1024;
const DEFAULT_MAX_HOPS: u32 = 5;
/// Open client connections at most, by default.
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The largest upstream stream event, by default.
const DEFAULT_MAX_UPSTREAM_EVENT: usize = 16 * 1024 * 1024;
/// The largest whole upstream answer, by default (large embedding batches run to tens of MB).
const DEFAULT_MAX_UPSTREAM_BODY: usize = 64 * 1024 * 1024;

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Config, Problems> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| {
        Problems(vec![Problem {
            file: file.clone(),
            line: 0,
            field: String::new(),
            message: format!("cannot read file: {error}"),
        }])
    })?;
    let base = path.parent().map(Path::to_path_buf);
    load(&text, &file, &|name| std::env::var(name).ok(), base)
}

/// Validates config text; `file` names it in problems, `env` fills `${VAR}`.
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Problems> {
    load(text, file, env, None)
}

/// `base`: the config file's folder, against which relative paths (the database) resolve;
/// without one, the default database is in memory.
fn load(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base: Option<std::path::PathBuf>,
) -> Result<Config, Problems> {
    let mut loader = Loader {
        problems: Vec::new(),
        lines: LineIndex::default(),
        base,
    };
    let config = loader.load(text, env);
    let mut problems = loader.problems;
    problems.sort_by_key(|problem| problem.line);
    for problem in &mut problems {
        problem.file = file.to_owned();
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(Problems(problems)),
    }
}

pub(super) struct Loader {
    problems: Vec<Problem>,
    lines: LineIndex,
    /// The config file's folder, if the config came from a file.
    pub(super) base: Option<std::path::PathBuf>,
}

impl Loader {
    pub(super) fn problem(&mut self, field: &str, message: impl Into<String>) {
        let line = self.lines.line_of(field);
        self.problems.push(Problem::at(line, field, message));
    }

    /// Deserializes one node; a failure becomes a problem at the exact field that failed.
    pub(super) fn section<T: DeserializeOwned>(&mut self, value: Value, path: &str) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let inner = error.path().to_string();
                let mut field = match inner.as_str() {
                    "." => path.to_owned(),
                    rel if rel.starts_with('[') => format!("{path}{rel}"),
                    rel if path.is_empty() => rel.to_owned(),
                    rel => format!("{path}.{rel}"),
                };
                let message = error.into_inner().to_string();
                if let Some(unknown) = unknown_field_name(&message)
                    && !field.ends_with(unknown)
                {
                    field = join_path(&field, unknown);
                }
                self.problem(&field, message);
                None
            }
        }
    }

    fn load(&mut self, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Option<Config> {
        let (root, lines) = match yaml::parse(text, env, &mut self.problems) {
            Ok(parsed) => parsed,
            Err(problem) => {
                self.problems.push(problem);
                return None;
            }
        };
        self.lines = lines;
        let mut root = match root {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            _ => {
                self.problem("", "the config must be a mapping of sections");
                return None;
            }
        };
        for section in root.keys().cloned().collect::<Vec<_>>() {
            if !SECTIONS.contains(&section.as_str()) {
                self.problem(
                    &section,
                    format!(
                        "unknown section `{section}`, expected one of: {}",
                        SECTIONS.join(", ")
                    ),
                );
            }
        }
        let mut take = |name: &str| root.remove(name).unwrap_or(Value::Null);
        let server = self.server(take("server"));
        let admin = self.admin(take("admin"));
        let state = self.state(take("state"));
        let providers = self.providers(take("providers"));
        let models = self.models(take("models"), &providers);
        let keys = self.keys(take("keys"), &models);
        let routes = self.routes(take("routes"), &models);
        let limits = self.limits(take("limits"), &models);
        let retry = self.retry(take("retry"));
        let circuit = self.circuit(take("circuit"));
        let cache = self.cache(take("cache"));
        let telemetry = self.telemetry(take("telemetry"));
        if let (Some(cache), Some(state)) = (&cache, &state)
            && cache.backend == CacheBackend::Redis
            && state.redis.is_none()
        {
            self.problem("cache.backend", "redis needs state.redis");
        }
        Some(Config {
            server: server?,
            admin: admin?,
            state: state?,
            providers,
            models,
            keys,
            routes,
            limits: limits?,
            retry: retry?,
            circuit: circuit?,
            cache: cache?,
            telemetry: telemetry?,
        })
    }

    fn server(&mut self, value: Value) -> Option<ServerConfig> {
        let raw: RawServer = if value.is_null() {
            RawServer::default()
        } else {
            self.section(value, "server")?
        };
        let listen_text = raw.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.problem(
                    "server.listen",
                    format!("`{listen_text}` is not an address; write e.g. 0.0.0.0:8080"),
                );
                return None;
            }
        };
        let max_body = raw.max_body.map_or(DEFAULT_MAX_BODY, |size| {
            usize::try_from(size.0).unwrap_or(usize::MAX)
        });
        if max_body == 0 {
            self.problem("server.max_body", "must be greater than zero");
        }
        let t = raw.timeouts.unwrap_or_default();
        let pick = |value: Option<RawDuration>, default: u64| {
            value.map_or(Duration::from_secs(default), |d| d.0)
        };
        let timeouts = Timeouts {
            connect: pick(t.connect, 5),
            first_byte: pick(t.first_byte, 60),
            idle: pick(t.idle, 60),
            total: pick(t.total, 600),
        };
        for (name, value) in [
            ("connect", timeouts.connect),
            ("first_byte", timeouts.first_byte),
            ("idle", timeouts.idle),
            ("total", timeouts.total),
        ] {
            if value.is_zero() {
                self.problem(
                    &format!("server.timeouts.{name}"),
                    "must be greater than zero",
                );
            }
        }
        let cors = raw.cors.map(|cors| CorsConfig {
            allow_origins: cors.allow_origins,
            allow_headers: cors.allow_headers.unwrap_or_default(),
            max_age: cors.max_age.map_or(Duration::from_secs(600), |d| d.0),
        });
        if let Some(cors) = &cors {
            for (n, origin) in cors.allow_origins.iter().enumerate() {
                let valid = origin == "*"
                    || ((origin.starts_with("http://") || origin.starts_with("https://"))
                        && !origin.ends_with('/'));
                if !valid {
                    self.problem(
                        &format!("server.cors.allow_origins[{n}]"),
                        format!("`{origin}` is not an origin; write e.g. https://app.example.com (no trailing slash) or *"),
                    );
                }
            }
        }
        if raw.max_hops == Some(0) {
            self.problem("server.max_hops", "must be at least 1");
        }
        let admin_listen = match raw.admin_listen.as_deref().map(str::parse::<SocketAddr>) {
            None => None,
            Some(Ok(addr)) => Some(addr),
            Some(Err(_)) => {
                self.problem(
                    "server.admin_listen",
                    "not an address; write e.g. 127.0.0.1:8081",
                );
                None
            }
        };
        let c = raw.client_timeouts.unwrap_or_default();
        let client_timeouts = ClientTimeouts {
            header: pick(c.header, 10),
            body: pick(c.body, 60),
            keep_alive: pick(c.keep_alive, 75),
        };
        for (name, value) in [
            ("header", client_timeouts.header),
            ("body", client_timeouts.body),
            ("keep_alive", client_timeouts.keep_alive),
        ] {
            if value.is_zero() {
                self.problem(
                    &format!("server.client_timeouts.{name}"),
                    "must be greater than zero",
                );
            }
        }
        if raw.max_connections == Some(0) {
            self.problem("server.max_connections", "must be at least 1");
        }
        let size = |value: Option<RawSize>, default: usize| {
            value.map_or(default, |size| {
                usize::try_from(size.0).unwrap_or(usize::MAX)
            })
        };
        let max_upstream_event = size(raw.max_upstream_event, DEFAULT_MAX_UPSTREAM_EVENT);
        let max_upstream_body = size(raw.max_upstream_body, DEFAULT_MAX_UPSTREAM_BODY);
        for (name, value) in [
            ("max_upstream_event", max_upstream_event),
            ("max_upstream_body", max_upstream_body),
        ] {
            if value < 1024 {
                self.problem(&format!("server.{name}"), "must be at least 1KiB");
            }
        }
        let tls = raw
            .tls
            .and_then(|tls| self.tls(tls, admin_listen.is_some()));
        let pool = raw.upstream_pool.unwrap_or_default();
        let defaults = UpstreamPool::default();
        let upstream_pool = UpstreamPool {
            max_idle_per_host: pool.max_idle_per_host.unwrap_or(defaults.max_idle_per_host),
            idle_timeout: pool.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
        };
        if upstream_pool.idle_timeout.is_zero() {
            self.problem(
                "server.upstream_pool.idle_timeout",
                "must be greater than zero (keep no idle connection with max_idle_per_host: 0)",
            );
        }
        Some(ServerConfig {
            listen,
            max_body,
            timeouts,
            shutdown_grace: raw.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
            cors,
            max_hops: raw.max_hops.unwrap_or(DEFAULT_MAX_HOPS),
            admin_listen,
            client_timeouts,
            max_connections: raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            max_upstream_event,
            max_upstream_body,
            tls,
            upstream_pool,
        })
    }

    /// `server.tls`: both files given, readable and valid (the server reads them again at start).
    fn tls(&mut self, raw: RawTls, admin_listener: bool) -> Option<TlsConfig> {
        // Relative paths are relative to the config file's folder.
        let base = self.base.clone();
        let path_of = |given: Option<String>| {
            given.map(|given| {
                let path = std::path::PathBuf::from(given);
                match &base {
                    Some(base) if path.is_relative() => base.join(path),
                    _ => path,
                }
            })
        };
        let cert = path_of(raw.cert);
        let key = path_of(raw.key);
        let admin_client_ca = path_of(raw.admin_client_ca);
        let (Some(cert), Some(key)) = (cert, key) else {
            self.problem("server.tls", "needs both cert and key (PEM files)");
            return None;
        };
        let tls = TlsConfig {
            cert,
            key,
            admin_client_ca,
        };
        if let Err((field, message)) = crate::server::tls::check(&tls) {
            self.problem(&format!("server.tls.{field}"), message);
            return None;
        }
        if tls.admin_client_ca.is_some() && !admin_listener {
            self.problem(
                "server.tls.admin_client_ca",
                "needs server.admin_listen (client certificates guard the admin listener)",
            );
            return None;
        }
        Some(tls)
    }

    fn providers(&mut self, value: Value) -> Vec<ProviderConfig> {
        let entries = match value {
            Value::Null => return Vec::new(),
            Value::Object(map) => map,
            _ => {
                self.problem(
                    "providers",
                    "must be a mapping of provider name -> settings",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (name, value) in entries {
            let path = join_path("providers", &name);
            let Some(raw) = self.section::<RawProvider>(value, &path) else {
                continue;
            };
            let health_check = raw.health_check.as_ref().map(|check| HealthCheckConfig {
                interval: check.interval.map_or(Duration::from_secs(30), |d| d.0),
                timeout: check.timeout.map_or(Duration::from_secs(5), |d| d.0),
            });
            if let Some(check) = &health_check
                && (check.interval.is_zero() || check.timeout.is_zero())
            {
                self.problem(
                    &join_path(&path, "health_check"),
                    "interval and timeout must be greater than zero",
                );
            }
            let wire = match raw.kind {
                RawProviderKind::Mock => {
                    if raw.base_url.is_some()
                        || !raw.api_keys.is_empty()
                        || raw.version.is_some()
                        || raw.default_max_tokens.is_some()
                        || raw.responses.is_some()
                        || health_check.is_some()
                    {
                        self.problem(
                            &path,
                            "a `mock` provider takes no base_url, api_keys, version, default_max_tokens or health_check",
                        );
                    }
                    out.push(ProviderConfig {
                        name: name.into(),
                        kind: ProviderKind::Mock,
                        health_check: None,
                    });
                    continue;
                }
                RawProviderKind::Openai => Wire::OpenAi,
                RawProviderKind::Anthropic => Wire::Anthropic,
                RawProviderKind::Gemini => Wire::Gemini,
            };
            let Some(remote) = self.remote_provider(&path, wire, raw) else {
                continue;
            };
            let kind = ProviderKind::Remote(remote);
            out.push(ProviderConfig {
                name: name.into(),
                kind,
                health_check,
            });
        }
        out
    }

    fn remote_provider(
        &mut self,
        path: &str,
        wire: Wire,
        raw: RawProvider,
    ) -> Option<RemoteProvider> {
        let (default_url, default_version) = match wire {
            Wire::OpenAi => (None, ""),
            Wire::Anthropic => (Some("https://api.anthropic.com"), "2023-06-01"),
            Wire::Gemini => (Some("https://generativelanguage.googleapis.com"), "v1beta"),
        };
        let Some(base_url) = raw.base_url.or(default_url.map(str::to_owned)) else {
            self.problem(
                path,
                "missing field `base_url` (e.g. https://api.openai.com/v1)",
            );
            return None;
        };
        if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            || base_url.parse::<axum::http::Uri>().is_err()
        {
            self.problem(
                &join_path(path, "base_url"),
                format!("`{base_url}` is not an http(s) URL"),
            );
        }
        for (n, key) in raw.api_keys.iter().enumerate() {
            if key.trim().is_empty() {
                self.problem(
                    &index_path(&join_path(path, "api_keys"), n),
                    "empty upstream key",
                );
            }
        }
        if wire != Wire::Anthropic && raw.default_max_tokens.is_some() {
            self.problem(
                &join_path(path, "default_max_tokens"),
                "only `anthropic` providers take default_max_tokens",
            );
        }
        if wire != Wire::OpenAi && raw.responses.is_some() {
            self.problem(
                &join_path(path, "responses"),
                "only `openai` providers take responses (whether the upstream offers /responses)",
            );
        }
        if raw.default_max_tokens == Some(0) {
            self.problem(&join_path(path, "default_max_tokens"), "must be at least 1");
        }
        if wire == Wire::OpenAi && raw.version.is_some() {
            self.problem(
                &join_path(path, "version"),
                "`openai` providers take no version (put it in base_url)",
            );
        }
        Some(RemoteProvider {
            wire,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_keys: raw.api_keys.into_iter().map(Secret::new).collect(),
            headers: raw.headers.into_iter().collect(),
            version: raw.version.unwrap_or_else(|| default_version.to_owned()),
            default_max_tokens: raw.default_max_tokens.unwrap_or(4096),
            responses: raw.responses.unwrap_or(false),
        })
    }

    fn telemetry(&mut self, value: Value) -> Option<TelemetryConfig> {
        let raw: RawTelemetry = if value.is_null() {
            RawTelemetry::default()
        } else {
            self.section(value, "telemetry")?
        };
        let format = |raw: Option<RawLogFormat>| match raw {
            Some(RawLogFormat::Human) => LogFormat::Human,
            Some(RawLogFormat::Off) => LogFormat::Off,
            Some(RawLogFormat::Json) | None => LogFormat::Json,
        };
        let metrics_listen = match raw.metrics_listen.as_deref().map(str::parse::<SocketAddr>) {
            None => None,
            Some(Ok(addr)) => Some(addr),
            Some(Err(_)) => {
                self.problem(
                    "telemetry.metrics_listen",
                    "not an address; write e.g. 0.0.0.0:9090",
                );
                None
            }
        };
        let traces = match raw.otlp_endpoint {
            None => None,
            Some(endpoint) => {
                let valid = endpoint.parse::<axum::http::Uri>().is_ok_and(|uri| {
                    matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
                });
                if !valid {
                    self.problem(
                        "telemetry.otlp_endpoint",
                        "not a URL; write the collector's OTLP/gRPC address, e.g. http://otel-collector:4317",
                    );
                }
                Some(TracesConfig {
                    endpoint,
                    sample: raw.trace_sample.map_or(1.0, |share| share.0),
                    service_name: raw.service_name.unwrap_or_else(|| "shepherd".to_owned()),
                })
            }
        };
        Some(TelemetryConfig {
            access_log: format(raw.access_log),
            log_format: format(raw.log_format),
            log_level: raw.log_level.unwrap_or_else(|| "info".to_owned()),
            metrics: raw.metrics.unwrap_or(true),
            metrics_listen,
            key_labels: raw.key_labels.unwrap_or(true),
            traces,
        })
    }
}

/// `unknown field `foo`, expected ...` -> `foo`.
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "OPENAI_KEY").then(|| "sk-upstream".to_owned())
    }

    const GOOD: &str = "\
server:
  listen: 127.0.0.1:9999
  max_body: 1MiB
  timeouts: {connect: 2s, first_byte: 10s}
providers:
  openai: {kind: openai, base_url: 'https://api.openai.com/v1/', api_keys: ['${OPENAI_KEY}']}
  demo: {kind: mock}
models:
  gpt-4.1:
    deployments: [{provider: openai}]
  mock-small:
    deployments: [{provider: demo, model: tiny, weight: 3}]
keys:
  - {name: reviews, key: sk-client-1, models: ['gpt-*']}
  - {name: all, key: sk-client-2}
";

    #[test]
    fn good_config_loads() {
        let config = load_str(GOOD, "good.yaml", &env).unwrap();
        assert_eq!(config.server.listen.port(), 9999);
        assert_eq!(config.server.max_body, 1024 * 1024);
        assert_eq!(config.server.timeouts.first_byte, Duration::from_secs(10));
        assert_eq!(config.server.timeouts.idle, Duration::from_secs(60));
        assert_eq!(config.providers.len(), 2);
        let ProviderKind::Remote(remote) = &config.providers[0].kind else {
            panic!("expected openai: {:?}", config.providers);
        };
        assert_eq!(remote.wire, Wire::OpenAi);
        assert_eq!(remote.base_url, "https://api.openai.com/v1");
        assert_eq!(remote.api_keys[0].expose(), "sk-upstream");
        assert_eq!(&*config.models[0].deployments[0].upstream_model, "gpt-4.1");
        assert_eq!(config.models[1].deployments[0].weight, 3);
        assert!(config.keys[1].models[0].matches("anything"));
    }

    #[test]
    fn upstream_pool_has_defaults_and_takes_bounds() {
        let config = load_str(GOOD, "good.yaml", &env).unwrap();
        assert_eq!(config.server.upstream_pool, UpstreamPool::default());
        assert_eq!(config.server.upstream_pool.max_idle_per_host, 64);
        let text = GOOD.replace(
            "  max_body: 1MiB\n",
            "  max_body: 1MiB\n  upstream_pool: {max_idle_per_host: 0, idle_timeout: 5s}\n",
        );
        let config = load_str(&text, "good.yaml", &env).unwrap();
        assert_eq!(config.server.upstream_pool.max_idle_per_host, 0);
        assert_eq!(
            config.server.upstream_pool.idle_timeout,
            Duration::from_secs(5)
        );
        let found = problems(&GOOD.replace(
            "  max_body: 1MiB\n",
            "  max_body: 1MiB\n  upstream_pool: {idle_timeout: 0s, max_idle: 3}\n",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("max_idle"), "{found:?}");
        let found = problems(&GOOD.replace(
            "  max_body: 1MiB\n",
            "  max_body: 1MiB\n  upstream_pool: {idle_timeout: 0s}\n",
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("server.upstream_pool.idle_timeout: must be greater than zero"),
            "{found:?}"
        );
    }

    fn problems(text: &str) -> Vec<String> {
        load_str(text, "bad.yaml", &env)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn every_problem_named_with_file_line_field() {
        let text = "\
server:
  listen: 127.0.0.1:8080
  max_bodyy: 1MiB
providers:
  openai: {kind: openai, base_url: 'https://x/v1', api_keys: ['${MISSING_KEY}']}
  weird: {kind: smoke}
models:
  a:
    deployments:
      - {provider: nowhere}
  b:
    deployments: [{provider: openai, weight: many}]
keys:
  - {name: one, key: k1}
  - {name: one, key: k2}
";
        let found = problems(text);
        let expect = [
            "bad.yaml: line 3: server.max_bodyy: unknown field `max_bodyy`",
            "bad.yaml: line 5: providers.openai.api_keys[0]: environment variable `MISSING_KEY` is not set",
            "bad.yaml: line 6: providers.weird.kind: unknown variant `smoke`",
            "bad.yaml: line 10: models.a.deployments[0].provider: unknown provider `nowhere`",
            "bad.yaml: line 12: models.b.deployments[0].weight: invalid type",
            "bad.yaml: line 15: keys[1].name: duplicate key name `one`",
        ];
        assert_eq!(found.len(), expect.len(), "{found:#?}");
        for (found, expect) in found.iter().zip(expect) {
            assert!(
                found.starts_with(expect),
                "{found}\n  should start with\n{expect}"
            );
        }
    }

    #[test]
    fn unknown_section_and_bad_values() {
        let found = problems("servr: {}\nserver: {listen: nope, timeouts: {idle: 5 parsecs}}\n");
        assert!(
            found[0].starts_with("bad.yaml: line 1: servr: unknown section"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("bad.yaml: line 2: server.timeouts.idle: invalid duration"),
            "{found:?}"
        );
    }
}
