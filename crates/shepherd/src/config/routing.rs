//! Loading the routing sections: models (deployments, strategy, fallbacks, canary), `retry` and
//! `circuit`. Same rules as the rest of the loader: every problem gets file, line and field.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use super::load::Loader;
use super::model::*;
use super::raw::*;
use super::yaml::{index_path, join_path};

impl Loader {
    pub(super) fn models(
        &mut self,
        value: Value,
        providers: &[ProviderConfig],
    ) -> Vec<ModelConfig> {
        let entries = match value {
            Value::Null => return Vec::new(),
            Value::Object(map) => map,
            _ => {
                self.problem("models", "must be a mapping of model name -> deployments");
                return Vec::new();
            }
        };
        let known: HashSet<&str> = providers.iter().map(|p| &*p.name).collect();
        let names: HashSet<String> = entries.keys().cloned().collect();
        let mut out = Vec::new();
        for (name, value) in entries {
            let path = join_path("models", &name);
            let Some(raw) = self.section::<RawModel>(value, &path) else {
                continue;
            };
            if raw.deployments.is_empty() {
                self.problem(
                    &join_path(&path, "deployments"),
                    "needs at least one deployment",
                );
            }
            let deployments = self.deployments(
                raw.deployments,
                &join_path(&path, "deployments"),
                &name,
                &known,
            );
            let mut fallbacks = Vec::new();
            for (n, fallback) in raw.fallbacks.unwrap_or_default().into_iter().enumerate() {
                let at = index_path(&join_path(&path, "fallbacks"), n);
                if fallback == name {
                    self.problem(&at, "a model cannot fall back to itself");
                } else if !names.contains(&fallback) {
                    self.problem(&at, format!("unknown model `{fallback}`"));
                }
                fallbacks.push(fallback.into());
            }
            let canary = raw
                .canary
                .map(|canary| self.canary(canary, &join_path(&path, "canary"), &name, &known));
            let price = raw.price.map(|p| {
                Price::per_million(
                    p.input,
                    p.output,
                    p.cached_input.unwrap_or(p.input),
                    p.cache_write.unwrap_or(p.input),
                )
            });
            if let Some(raw_price) = raw.price {
                let all = [
                    Some(raw_price.input),
                    Some(raw_price.output),
                    raw_price.cached_input,
                    raw_price.cache_write,
                ];
                if all
                    .iter()
                    .flatten()
                    .any(|usd| !(usd.is_finite() && *usd >= 0.0))
                {
                    self.problem(
                        &join_path(&path, "price"),
                        "prices are amounts of USD per million tokens, 0 or more",
                    );
                }
            }
            out.push(ModelConfig {
                cache: raw.cache.map(|cache| ModelCache {
                    enabled: cache.enabled.unwrap_or(true),
                    ttl: cache.ttl.map(|d| d.0),
                }),
                name: name.into(),
                deployments,
                price,
                strategy: match raw.strategy {
                    None | Some(RawStrategy::Weighted) => Strategy::Weighted,
                    Some(RawStrategy::RoundRobin) => Strategy::RoundRobin,
                    Some(RawStrategy::LeastInflight) => Strategy::LeastInflight,
                    Some(RawStrategy::LowestLatency) => Strategy::LowestLatency,
                },
                fallbacks,
                fallback_on_context_window: raw.fallback_on_context_window.unwrap_or(false),
                fallbacks_for_all_keys: raw.fallbacks_for_all_keys.unwrap_or(false),
                canary,
            });
        }
        out
    }

    fn deployments(
        &mut self,
        raw: Vec<RawDeployment>,
        path: &str,
        model: &str,
        providers: &HashSet<&str>,
    ) -> Vec<DeploymentConfig> {
        let mut seen = HashSet::new();
        let mut out = Vec::with_capacity(raw.len());
        for (n, deployment) in raw.into_iter().enumerate() {
            let at = index_path(path, n);
            if !providers.contains(deployment.provider.as_str()) {
                self.problem(
                    &join_path(&at, "provider"),
                    format!("unknown provider `{}`", deployment.provider),
                );
            }
            if deployment.weight == Some(0) {
                self.problem(&join_path(&at, "weight"), "must be at least 1");
            }
            let upstream_model = deployment.model.as_deref().unwrap_or(model);
            if !seen.insert((deployment.provider.clone(), upstream_model.to_owned())) {
                self.problem(
                    &at,
                    format!(
                        "`{}/{upstream_model}` is listed twice; give it a weight instead",
                        deployment.provider
                    ),
                );
            }
            out.push(DeploymentConfig {
                provider: deployment.provider.into(),
                upstream_model: upstream_model.into(),
                weight: deployment.weight.unwrap_or(1),
            });
        }
        out
    }

    fn canary(
        &mut self,
        raw: RawCanary,
        path: &str,
        model: &str,
        providers: &HashSet<&str>,
    ) -> CanaryConfig {
        if raw.deployments.is_empty() {
            self.problem(
                &join_path(path, "deployments"),
                "needs at least one deployment",
            );
        }
        let deployments = self.deployments(
            raw.deployments,
            &join_path(path, "deployments"),
            model,
            providers,
        );
        let by = raw.by.unwrap_or(RawCanaryBy::Key);
        let rule = match by {
            RawCanaryBy::Key => match raw.share {
                Some(share) => CanaryRule::KeyShare(share.0),
                None => {
                    self.problem(path, "`by: key` needs a `share` (e.g. 10%)");
                    CanaryRule::KeyShare(0.0)
                }
            },
            RawCanaryBy::Header => CanaryRule::Header,
            RawCanaryBy::KeyName => {
                let keys = raw.keys.unwrap_or_default();
                if keys.is_empty() {
                    self.problem(path, "`by: key_name` needs `keys` (names or `prefix-*`)");
                }
                CanaryRule::KeyNames(keys.into_iter().map(ModelPattern::new).collect())
            }
            RawCanaryBy::Ip => {
                let mut ranges = Vec::new();
                for (n, text) in raw.ips.unwrap_or_default().into_iter().enumerate() {
                    match Cidr::parse(&text) {
                        Some(range) => ranges.push(range),
                        None => self.problem(
                            &index_path(&join_path(path, "ips"), n),
                            format!("`{text}` is not an address range; write e.g. 10.0.0.0/8"),
                        ),
                    }
                }
                if ranges.is_empty() {
                    self.problem(path, "`by: ip` needs `ips` (e.g. [10.0.0.0/8])");
                }
                CanaryRule::Ips(ranges)
            }
        };
        if raw.share.is_some() && by != RawCanaryBy::Key {
            self.problem(
                &join_path(path, "share"),
                "`share` applies to `by: key` only",
            );
        }
        CanaryConfig { deployments, rule }
    }

    pub(super) fn retry(&mut self, value: Value) -> Option<RetryConfig> {
        let raw: RawRetry = if value.is_null() {
            RawRetry::default()
        } else {
            self.section(value, "retry")?
        };
        let attempts = raw.attempts.unwrap_or(3);
        if attempts == 0 {
            self.problem("retry.attempts", "must be at least 1 (the first attempt)");
        }
        let backoff = raw.backoff.map_or(Duration::from_millis(500), |d| d.0);
        let max_backoff = raw.max_backoff.map_or(Duration::from_secs(8), |d| d.0);
        if max_backoff < backoff {
            self.problem("retry.max_backoff", "must not be below `backoff`");
        }
        Some(RetryConfig {
            attempts,
            backoff,
            max_backoff,
            max_retry_after: raw.max_retry_after.map_or(Duration::from_secs(30), |d| d.0),
        })
    }

    pub(super) fn cache(&mut self, value: Value) -> Option<CacheConfig> {
        let enabled = !value.is_null();
        let raw: RawCache = if value.is_null() {
            RawCache::default()
        } else {
            self.section(value, "cache")?
        };
        let backend = match raw.backend.as_deref() {
            None | Some("memory") => CacheBackend::Memory,
            Some("redis") => CacheBackend::Redis,
            Some(backend) => {
                self.problem(
                    "cache.backend",
                    format!("`{backend}` is not a cache backend; memory or redis"),
                );
                CacheBackend::Memory
            }
        };
        let routes = match raw.routes {
            None => crate::api::CACHEABLE_ROUTES
                .iter()
                .map(|r| (*r).to_owned())
                .collect(),
            Some(routes) => {
                for (n, route) in routes.iter().enumerate() {
                    if !crate::api::CACHEABLE_ROUTES.contains(&route.as_str()) {
                        self.problem(
                            &index_path("cache.routes", n),
                            format!(
                                "`{route}` cannot be cached; one of {}",
                                crate::api::CACHEABLE_ROUTES.join(", ")
                            ),
                        );
                    }
                }
                routes
            }
        };
        Some(CacheConfig {
            enabled,
            backend,
            max_bytes: raw.max_bytes.map_or(256 * 1024 * 1024, |size| size.0),
            ttl: raw.ttl.map_or(Duration::from_secs(3600), |d| d.0),
            scope: match raw.scope {
                Some(RawCacheScope::Key) => CacheScope::Key,
                Some(RawCacheScope::Shared) | None => CacheScope::Shared,
            },
            routes,
        })
    }

    pub(super) fn circuit(&mut self, value: Value) -> Option<CircuitConfig> {
        let raw: RawCircuit = if value.is_null() {
            RawCircuit::default()
        } else {
            self.section(value, "circuit")?
        };
        let failures = raw.failures.unwrap_or(5);
        if failures == 0 {
            self.problem("circuit.failures", "must be at least 1");
        }
        let window = raw.window.map_or(Duration::from_secs(60), |d| d.0);
        if window.is_zero() {
            self.problem("circuit.window", "must be greater than zero");
        }
        Some(CircuitConfig {
            failures,
            cooldown: raw.cooldown.map_or(Duration::from_secs(30), |d| d.0),
            error_rate: raw.error_rate.map_or(0.5, |share| share.0),
            window,
            min_requests: raw.min_requests.unwrap_or(20),
            key_cooldown: raw.key_cooldown.map_or(Duration::from_secs(300), |d| d.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::*;

    const ROUTED: &str = "\
providers: {a: {kind: mock}, b: {kind: mock}}
models:
  main:
    deployments: [{provider: a, weight: 3}, {provider: b}]
    strategy: least_inflight
    fallbacks: [spare]
    canary: {deployments: [{provider: b, model: next}], share: 10%}
  spare:
    deployments: [{provider: b}]
    canary: {deployments: [{provider: a}], by: ip, ips: [10.0.0.0/8]}
retry: {attempts: 4, backoff: 100ms, max_backoff: 2s}
circuit: {failures: 3, cooldown: 10s}
";

    #[test]
    fn routing_sections_load() {
        let config = load_str(ROUTED, "r.yaml", &|_| None).unwrap();
        let main = &config.models[0];
        assert_eq!(main.strategy, Strategy::LeastInflight);
        assert_eq!(&*main.fallbacks[0], "spare");
        let canary = main.canary.as_ref().unwrap();
        assert_eq!(canary.rule, CanaryRule::KeyShare(0.1));
        assert_eq!(&*canary.deployments[0].upstream_model, "next");
        let CanaryRule::Ips(ranges) = &config.models[1].canary.as_ref().unwrap().rule else {
            panic!("expected ip rule");
        };
        assert!(ranges[0].contains("10.2.3.4".parse().unwrap()));
        assert_eq!(config.retry.attempts, 4);
        assert_eq!(
            config.retry.max_retry_after,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(config.circuit.failures, 3);
        assert_eq!(config.circuit.error_rate, 0.5);
    }

    #[test]
    fn routing_problems_are_named() {
        let text = "\
providers: {a: {kind: mock}}
models:
  m:
    deployments: [{provider: a}, {provider: a}]
    fallbacks: [m, ghost]
    canary: {deployments: [{provider: a, model: x}], by: ip, ips: [nope]}
retry: {attempts: 0}
";
        let problems: Vec<String> = load_str(text, "r.yaml", &|_| None)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        let expect = [
            "r.yaml: line 4: models.m.deployments[1]: `a/m` is listed twice",
            "r.yaml: line 5: models.m.fallbacks[0]: a model cannot fall back to itself",
            "r.yaml: line 5: models.m.fallbacks[1]: unknown model `ghost`",
            "r.yaml: line 6: models.m.canary.ips[0]: `nope` is not an address range",
            "r.yaml: line 6: models.m.canary: `by: ip` needs `ips`",
            "r.yaml: line 7: retry.attempts: must be at least 1",
        ];
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        for (found, expect) in problems.iter().zip(expect) {
            assert!(
                found.starts_with(expect),
                "{found}\n  should start with\n{expect}"
            );
        }
    }
}
