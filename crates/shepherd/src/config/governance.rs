//! Loading the governance sections: `admin` (master key, key-hashing secret), `state` (the
//! database), static client `keys` (with limits, budget, metadata, expiry) and `limits` (per
//! client address, route and model).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::load::Loader;
use super::model::*;
use super::raw::*;
use super::yaml::{index_path, join_path};

/// Secrets shorter than this are refused: they would be guessed.
const MIN_SECRET_LEN: usize = 16;

impl Loader {
    pub(super) fn admin(&mut self, value: Value) -> Option<Option<AdminConfig>> {
        if value.is_null() {
            return Some(None);
        }
        let raw: RawAdmin = self.section(value, "admin")?;
        let mut secret = |field: &str, given: Option<String>| -> Option<Secret> {
            let path = join_path("admin", field);
            match given {
                None => {
                    self.problem(&path, "required (e.g. ${SHEPHERD_MASTER_KEY})");
                    None
                }
                Some(text) if text.len() < MIN_SECRET_LEN => {
                    self.problem(
                        &path,
                        format!("too short: use at least {MIN_SECRET_LEN} random characters"),
                    );
                    None
                }
                Some(text) => Some(Secret::new(text)),
            }
        };
        let master_key = secret("master_key", raw.master_key);
        let key_secret = secret("key_secret", raw.key_secret);
        match (master_key, key_secret) {
            (Some(master_key), Some(key_secret)) => Some(Some(AdminConfig {
                master_key,
                key_secret,
            })),
            _ => Some(None),
        }
    }

    pub(super) fn state(&mut self, value: Value) -> Option<StateConfig> {
        let raw: RawState = if value.is_null() {
            RawState::default()
        } else {
            self.section(value, "state")?
        };
        let redis = self.redis(&raw);
        let database = match raw.database.as_deref() {
            None => match &self.base {
                Some(base) => Database::Sqlite(base.join("shepherd.db")),
                None => Database::SqliteMemory,
            },
            Some("sqlite::memory:") => Database::SqliteMemory,
            Some(url) => match url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
            {
                Some(path) if !path.is_empty() => {
                    let path = std::path::PathBuf::from(path);
                    match &self.base {
                        Some(base) if path.is_relative() => Database::Sqlite(base.join(path)),
                        _ => Database::Sqlite(path),
                    }
                }
                _ if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    Database::Postgres(Secret::new(url.to_owned()))
                }
                _ => {
                    self.problem(
                        "state.database",
                        format!(
                            "`{}` is not supported; write sqlite://FILE, sqlite::memory: or postgres://USER@HOST/DB",
                            crate::redact::url_without_password(url)
                        ),
                    );
                    return None;
                }
            },
        };
        let usage_retention = match raw.usage_retention {
            None => Some(Duration::from_secs(90 * 86_400)),
            Some(RawDuration(zero)) if zero.is_zero() => None,
            Some(RawDuration(retention)) if retention < Duration::from_secs(86_400) => {
                self.problem(
                    "state.usage_retention",
                    "must be at least 1d (or 0s to keep every row)",
                );
                None
            }
            Some(RawDuration(retention)) => Some(retention),
        };
        let response_retention = match raw.response_retention {
            None => Some(Duration::from_secs(30 * 86_400)),
            Some(RawDuration(zero)) if zero.is_zero() => None,
            Some(RawDuration(retention)) => Some(retention),
        };
        Some(StateConfig {
            database,
            redis,
            usage_retention,
            response_retention,
        })
    }

    /// `state.redis` and its companions.
    fn redis(&mut self, raw: &RawState) -> Option<RedisConfig> {
        let Some(url) = raw.redis.as_deref() else {
            for (field, given) in [
                ("state.redis_username", raw.redis_username.is_some()),
                ("state.redis_password", raw.redis_password.is_some()),
                ("state.redis_timeout", raw.redis_timeout.is_some()),
                ("state.redis_prefix", raw.redis_prefix.is_some()),
                ("state.on_redis_failure", raw.on_redis_failure.is_some()),
            ] {
                if given {
                    self.problem(field, "needs state.redis");
                }
            }
            return None;
        };
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            self.problem(
                "state.redis",
                format!(
                    "`{}` is not a Redis URL; write redis://HOST:PORT/DB or rediss:// (TLS)",
                    crate::redact::url_without_password(url)
                ),
            );
            return None;
        }
        let timeout = match raw.redis_timeout {
            None => Duration::from_millis(500),
            Some(RawDuration(timeout))
                if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(60) =>
            {
                self.problem("state.redis_timeout", "must be between 1ms and 60s");
                return None;
            }
            Some(RawDuration(timeout)) => timeout,
        };
        let prefix = raw
            .redis_prefix
            .clone()
            .unwrap_or_else(|| "shepherd:".to_owned());
        if prefix.len() > 64 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.problem(
                "state.redis_prefix",
                "at most 64 characters, no spaces or control characters",
            );
            return None;
        }
        Some(RedisConfig {
            url: Secret::new(url.to_owned()),
            username: raw.redis_username.clone().map(Secret::new),
            password: raw.redis_password.clone().map(Secret::new),
            timeout,
            on_failure: match raw.on_redis_failure {
                Some(RawRedisFailure::Closed) => RedisFailure::Closed,
                Some(RawRedisFailure::Open) | None => RedisFailure::Open,
            },
            prefix,
        })
    }

    /// `routes`: per client route, a default model and the models served.
    pub(super) fn routes(&mut self, value: Value, models: &[ModelConfig]) -> Vec<RouteRule> {
        let entries = match value {
            Value::Null => return Vec::new(),
            Value::Object(entries) => entries,
            _ => {
                self.problem(
                    "routes",
                    "must map routes to rules, e.g. {/v1/embeddings: {default_model: m}}",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (route, value) in entries {
            let path = join_path("routes", &route);
            if !crate::api::ROUTES.contains(&route.as_str()) {
                self.problem(
                    &path,
                    format!("unknown route; one of {}", crate::api::ROUTES.join(", ")),
                );
                continue;
            }
            let raw: RawRoute = if value.is_null() {
                RawRoute::default()
            } else {
                match self.section(value, &path) {
                    Some(raw) => raw,
                    None => continue,
                }
            };
            let patterns = self.patterns(raw.models.unwrap_or_default(), &path);
            let default_model = self.default_model(
                raw.default_model,
                models,
                &join_path(&path, "default_model"),
            );
            if let Some(default) = &default_model {
                let rule_allows =
                    patterns.is_empty() || patterns.iter().any(|p| p.matches(default));
                if !rule_allows {
                    self.problem(
                        &join_path(&path, "default_model"),
                        format!("`{default}` is not among the route's `models`"),
                    );
                }
            }
            out.push(RouteRule {
                path: route,
                default_model,
                models: patterns,
            });
        }
        out
    }

    /// Model patterns (one `*` at most each).
    fn patterns(&mut self, patterns: Vec<String>, path: &str) -> Vec<ModelPattern> {
        for (m, pattern) in patterns.iter().enumerate() {
            if pattern.matches('*').count() > 1 {
                self.problem(
                    &index_path(&join_path(path, "models"), m),
                    "a pattern may hold one `*` at most",
                );
            }
        }
        patterns.into_iter().map(ModelPattern::new).collect()
    }

    /// A default model, which must be one of the config's models.
    fn default_model(
        &mut self,
        name: Option<String>,
        models: &[ModelConfig],
        path: &str,
    ) -> Option<Arc<str>> {
        let name = name?;
        match models.iter().find(|model| *model.name == *name) {
            Some(model) => Some(model.name.clone()),
            None => {
                self.problem(path, format!("unknown model `{name}`"));
                None
            }
        }
    }

    pub(super) fn keys(&mut self, value: Value, models: &[ModelConfig]) -> Vec<KeyConfig> {
        let items = match value {
            Value::Null => return Vec::new(),
            Value::Array(items) => items,
            _ => {
                self.problem("keys", "must be a list of {name, key, models}");
                return Vec::new();
            }
        };
        let mut names = HashSet::new();
        let mut secrets = HashSet::new();
        let mut out = Vec::new();
        for (n, value) in items.into_iter().enumerate() {
            let path = index_path("keys", n);
            let Some(raw) = self.section::<RawKey>(value, &path) else {
                continue;
            };
            if !names.insert(raw.name.clone()) {
                self.problem(
                    &join_path(&path, "name"),
                    format!("duplicate key name `{}`", raw.name),
                );
            }
            if raw.key.trim().is_empty() {
                self.problem(&join_path(&path, "key"), "empty client key");
            } else if !secrets.insert(raw.key.clone()) {
                self.problem(
                    &join_path(&path, "key"),
                    "the same key value is given twice",
                );
            }
            let patterns = self.patterns(raw.models.unwrap_or_else(|| vec!["*".to_owned()]), &path);
            let default_model = self.default_model(
                raw.default_model,
                models,
                &join_path(&path, "default_model"),
            );
            if let Some(default) = &default_model
                && !patterns.iter().any(|p| p.matches(default))
            {
                self.problem(
                    &join_path(&path, "default_model"),
                    format!("`{default}` is not among the key's `models`"),
                );
            }
            let limits = raw
                .limits
                .map(|limits| self.key_limits(&limits, &join_path(&path, "limits")))
                .unwrap_or_default();
            let budget = raw
                .budget
                .and_then(|budget| self.budget(&budget, &join_path(&path, "budget")));
            let expires_at =
                raw.expires
                    .as_deref()
                    .and_then(|text| match humantime::parse_rfc3339_weak(text) {
                        Ok(time) => Some(unix_seconds(time)),
                        Err(_) => {
                            self.problem(
                                &join_path(&path, "expires"),
                                format!("`{text}` is not a time; write e.g. 2027-01-31T00:00:00Z"),
                            );
                            None
                        }
                    });
            out.push(KeyConfig {
                name: raw.name.into(),
                key: Secret::new(raw.key),
                models: patterns,
                default_model,
                limits,
                budget,
                metadata: Value::Object(raw.metadata.unwrap_or_default()),
                expires_at,
            });
        }
        out
    }

    fn key_limits(&mut self, raw: &RawKeyLimits, path: &str) -> KeyLimits {
        let minute = Duration::from_secs(60);
        let rate = |amount: Option<u64>, burst: Option<u64>| {
            amount.map(|amount| Rate {
                amount,
                period: minute,
                burst: burst.unwrap_or(amount),
            })
        };
        for (field, value) in [("rpm", raw.rpm), ("tpm", raw.tpm)] {
            if value == Some(0) {
                self.problem(&join_path(path, field), "must be at least 1");
            }
        }
        if raw.concurrency == Some(0) {
            self.problem(&join_path(path, "concurrency"), "must be at least 1");
        }
        KeyLimits {
            requests: rate(raw.rpm, raw.burst),
            tokens: rate(raw.tpm, None),
            concurrency: raw.concurrency,
        }
    }

    fn budget(&mut self, raw: &RawBudget, path: &str) -> Option<Budget> {
        if !(raw.usd.is_finite() && raw.usd >= 0.0) {
            self.problem(&join_path(path, "usd"), "must be a positive amount");
            return None;
        }
        Some(Budget {
            nano_usd: (raw.usd * 1e9).round() as u64,
            period: match raw.period {
                Some(RawPeriod::Day) => BudgetPeriod::Day,
                Some(RawPeriod::Week) => BudgetPeriod::Week,
                Some(RawPeriod::Total) => BudgetPeriod::Total,
                Some(RawPeriod::Month) | None => BudgetPeriod::Month,
            },
        })
    }

    /// A request rate from `rps`/`rpm` (and `burst`); `tpm` is read by the caller.
    fn request_rate(&mut self, raw: &RawRate, path: &str) -> Option<Rate> {
        let rate = match (raw.rps, raw.rpm) {
            (Some(_), Some(_)) => {
                self.problem(path, "give `rps` or `rpm`, not both");
                return None;
            }
            (Some(rps), None) if rps > 0.0 && rps.is_finite() => {
                // Per second, kept exact for fractional rates: `rps: 0.5` is 1 per 2 s.
                let (amount, period) = if rps.fract() == 0.0 {
                    (rps as u64, Duration::from_secs(1))
                } else {
                    ((rps * 1000.0).round() as u64, Duration::from_secs(1000))
                };
                Rate {
                    amount,
                    period,
                    burst: raw.burst.unwrap_or_else(|| rps.ceil() as u64),
                }
            }
            (None, Some(rpm)) if rpm > 0 => Rate {
                amount: rpm,
                period: Duration::from_secs(60),
                burst: raw.burst.unwrap_or(rpm),
            },
            (None, None) => return None,
            _ => {
                self.problem(path, "the rate must be greater than zero");
                return None;
            }
        };
        if rate.burst == 0 {
            self.problem(&join_path(path, "burst"), "must be at least 1");
        }
        Some(rate)
    }

    pub(super) fn limits(&mut self, value: Value, models: &[ModelConfig]) -> Option<LimitsConfig> {
        let raw: RawLimits = if value.is_null() {
            RawLimits::default()
        } else {
            self.section(value, "limits")?
        };
        let mut limits = LimitsConfig {
            reserve_output_tokens: raw.reserve_output_tokens.unwrap_or(256),
            ..LimitsConfig::default()
        };
        if let Some(per_ip) = raw.per_ip {
            if per_ip.tpm.is_some() {
                self.problem(
                    "limits.per_ip.tpm",
                    "client addresses are limited by requests only",
                );
            }
            limits.per_ip = self.request_rate(&per_ip, "limits.per_ip");
        }
        for (route, rate) in raw.per_route.unwrap_or_default() {
            let path = join_path("limits.per_route", &route);
            if !crate::api::ROUTES.contains(&route.as_str()) {
                self.problem(
                    &path,
                    format!("unknown route; one of {}", crate::api::ROUTES.join(", ")),
                );
            }
            if let Some(rate) = self.request_rate(&rate, &path) {
                limits.per_route.push((route, rate));
            }
        }
        for (model, rate) in raw.per_model.unwrap_or_default() {
            let path = join_path("limits.per_model", &model);
            if !models.iter().any(|m| *m.name == *model) {
                self.problem(&path, format!("unknown model `{model}`"));
            }
            let requests = self.request_rate(&rate, &path);
            let tokens = rate.tpm.map(|tpm| Rate {
                amount: tpm,
                period: Duration::from_secs(60),
                burst: tpm,
            });
            limits.per_model.push((model.into(), requests, tokens));
        }
        Some(limits)
    }
}

fn unix_seconds(time: std::time::SystemTime) -> i64 {
    match time.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    #[test]
    fn governance_sections_load() {
        let text = "\
admin: {master_key: master-key-0123456789, key_secret: hash-secret-0123456789}
state: {database: 'sqlite://data/shepherd.db'}
providers: {a: {kind: mock}}
models:
  m: {deployments: [{provider: a}], price: {input: 2.5, output: 10, cached_input: 1.25}}
keys:
  - name: svc
    key: sk-svc
    limits: {rpm: 60, tpm: 1000, concurrency: 2}
    budget: {usd: 12.5, period: day}
    metadata: {team: search}
    expires: 2030-01-01T00:00:00Z
limits:
  per_ip: {rps: 30, burst: 50}
  per_route: {/v1/chat/completions: {rpm: 600}}
  per_model: {m: {rpm: 100, tpm: 50000}}
";
        let config = load_str(text, "g.yaml", &|_| None).unwrap();
        assert_eq!(
            config.admin.unwrap().master_key.expose(),
            "master-key-0123456789"
        );
        assert_eq!(
            config.state.database,
            Database::Sqlite("data/shepherd.db".into())
        );
        let key = &config.keys[0];
        assert_eq!(key.limits.requests.unwrap().amount, 60);
        assert_eq!(key.limits.tokens.unwrap().amount, 1000);
        assert_eq!(key.limits.concurrency, Some(2));
        assert_eq!(key.budget.unwrap().nano_usd, 12_500_000_000);
        assert_eq!(key.budget.unwrap().period, BudgetPeriod::Day);
        assert_eq!(key.metadata["team"], "search");
        assert_eq!(key.expires_at, Some(1_893_456_000));
        assert_eq!(config.models[0].price.unwrap().input, 2500);
        assert_eq!(config.models[0].price.unwrap().cached_input, 1250);
        let per_ip = config.limits.per_ip.unwrap();
        assert_eq!((per_ip.amount, per_ip.burst), (30, 50));
        assert_eq!(config.limits.per_route[0].1.amount, 600);
        assert_eq!(config.limits.per_model[0].2.unwrap().amount, 50_000);
        assert_eq!(config.limits.reserve_output_tokens, 256);
        // Without a file, the default database is in memory.
        let bare = load_str("providers: {}", "b.yaml", &|_| None).unwrap();
        assert_eq!(bare.state.database, Database::SqliteMemory);
    }

    #[test]
    fn governance_problems_are_named() {
        let text = "\
admin: {master_key: short}
state: {database: 'mysql://db/shepherd', redis: 'http://r', redis_timeout: 2m}
keys:
  - {name: a, key: k, limits: {rpm: 0}, budget: {usd: -1}, expires: someday}
limits:
  per_route: {/v2/everything: {rpm: 5}}
  per_model: {ghost: {rps: 1}}
";
        let problems: Vec<String> = load_str(text, "g.yaml", &|_| None)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        for expected in [
            "g.yaml: line 1: admin.master_key: too short",
            "g.yaml: line 1: admin.key_secret: required",
            "g.yaml: line 2: state.database: `mysql://db/shepherd` is not supported",
            "g.yaml: line 2: state.redis: `http://r` is not a Redis URL",
            "g.yaml: line 4: keys[0].limits.rpm: must be at least 1",
            "g.yaml: line 4: keys[0].budget.usd: must be a positive amount",
            "g.yaml: line 4: keys[0].expires: `someday` is not a time",
            "g.yaml: line 6: limits.per_route./v2/everything: unknown route",
            "g.yaml: line 7: limits.per_model.ghost: unknown model `ghost`",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "missing {expected} in {problems:#?}"
            );
        }
    }

    #[test]
    fn shared_state_settings() {
        let text = "\
state:
  database: postgres://app:pw@db:5432/shepherd
  redis: rediss://r:6380/1
  redis_password: s3cret
  on_redis_failure: closed
cache: {backend: redis}
";
        let config = load_str(text, "s.yaml", &|_| None).unwrap();
        assert_eq!(config.state.database.kind(), "postgres");
        let redis = config.state.redis.unwrap();
        assert_eq!(redis.on_failure, RedisFailure::Closed);
        assert_eq!(redis.timeout, std::time::Duration::from_millis(500));
        assert_eq!(redis.prefix, "shepherd:");
        assert_eq!(redis.password.unwrap().expose(), "s3cret");
        assert_eq!(config.cache.backend, CacheBackend::Redis);

        let lonely = "state: {on_redis_failure: open}\ncache: {backend: redis}\n";
        let problems: Vec<String> = load_str(lonely, "l.yaml", &|_| None)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("state.on_redis_failure: needs state.redis")),
            "{problems:#?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("cache.backend: redis needs state.redis")),
            "{problems:#?}"
        );
        let leaky = "state: {database: 'mysql://u:hunter2hunter2@db/x'}\n";
        let problems = load_str(leaky, "p.yaml", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(!problems.contains("hunter2"), "{problems}");
    }
}
