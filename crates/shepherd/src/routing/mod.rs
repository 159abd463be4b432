//! Routing: the model table (alias -> deployments, canary, fallbacks) and the plan of one
//! request: its candidates in the order to try them (canary or stable set, ordered by the
//! model's strategy, then each fallback model's deployments). Breakers, strategies, retry policy
//! and health state live in the submodules; the attempt loop that walks the plan is in
//! `api/attempts.rs`.

pub mod canary;
pub mod circuit;
pub mod health;
pub mod retry;
pub mod strategy;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{CanaryRule, Config, DeploymentConfig, ModelConfig, Price};
use crate::providers::{Provider, SharedClient};
use canary::{Requester, chooses_canary};
use health::{Health, Registry};
use strategy::Pool;

/// One way to serve a model: a provider and the model name it knows.
#[derive(Debug)]
pub struct Deployment {
    /// `provider/upstream-model`, as shown in `x-shepherd-deployment`, logs and metrics.
    pub name: Arc<str>,
    pub provider: Arc<Provider>,
    pub upstream_model: Arc<str>,
    pub weight: u32,
    pub health: Arc<Health>,
    /// The price of what it serves: the model's configured price, else the catalog's for the
    /// upstream model (or the alias).
    pub price: Option<Price>,
}

#[derive(Debug)]
struct Route {
    stable: Pool,
    canary: Option<(CanaryRule, Pool)>,
    fallbacks: Vec<Arc<str>>,
    fallback_on_context_window: bool,
    /// Fallbacks serve every key that may use this model, even keys not allowed the fallback.
    fallbacks_for_all_keys: bool,
    cache: Option<crate::config::ModelCache>,
}

/// One deployment to try, and the model it serves.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub deployment: Arc<Deployment>,
    /// The model alias this candidate serves (the asked one, or a fallback).
    pub model: Arc<str>,
    pub fallback: bool,
}

/// The candidates of one request, in order.
#[derive(Debug)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    /// `Some(true)` when the canary set was chosen, `Some(false)` when the model has a canary
    /// and the stable set was chosen.
    pub canary: Option<bool>,
    pub fallback_on_context_window: bool,
}

/// Model aliases clients may ask for, each with its deployments.
#[derive(Debug)]
pub struct ModelTable {
    routes: HashMap<Arc<str>, Route>,
    /// Model names in config order, for `/v1/models`.
    names: Vec<Arc<str>>,
    /// Every provider, for health checks.
    providers: Vec<Arc<Provider>>,
}

impl ModelTable {
    pub fn new(config: &Config, registry: &Registry) -> Result<Self, String> {
        let mut providers = HashMap::new();
        let client = SharedClient::new(&config.server.timeouts, &config.server.upstream_pool);
        for provider in &config.providers {
            let built = Provider::new(provider, &client, registry)
                .map_err(|error| format!("provider `{}`: {error}", provider.name))?;
            providers.insert(provider.name.clone(), Arc::new(built));
        }
        let build = |model: &ModelConfig,
                     list: &[DeploymentConfig]|
         -> Result<Vec<Arc<Deployment>>, String> {
            list.iter()
                .map(|deployment| {
                    let provider = providers
                        .get(&deployment.provider)
                        .ok_or_else(|| format!("unknown provider `{}`", deployment.provider))?;
                    let name: Arc<str> =
                        format!("{}/{}", deployment.provider, deployment.upstream_model).into();
                    let price = model
                        .price
                        .or_else(|| crate::governance::pricing::catalog(&deployment.upstream_model))
                        .or_else(|| crate::governance::pricing::catalog(&model.name));
                    Ok(Arc::new(Deployment {
                        health: registry.get(&name),
                        name,
                        provider: provider.clone(),
                        upstream_model: deployment.upstream_model.clone(),
                        weight: deployment.weight,
                        price,
                    }))
                })
                .collect()
        };
        let mut routes = HashMap::new();
        let mut names = Vec::new();
        for model in &config.models {
            let canary = match &model.canary {
                Some(canary) => Some((
                    canary.rule.clone(),
                    Pool::new(build(model, &canary.deployments)?, model.strategy),
                )),
                None => None,
            };
            names.push(model.name.clone());
            routes.insert(
                model.name.clone(),
                Route {
                    stable: Pool::new(build(model, &model.deployments)?, model.strategy),
                    canary,
                    fallbacks: model.fallbacks.clone(),
                    fallback_on_context_window: model.fallback_on_context_window,
                    fallbacks_for_all_keys: model.fallbacks_for_all_keys,
                    cache: model.cache,
                },
            );
        }
        Ok(ModelTable {
            routes,
            names,
            providers: providers.into_values().collect(),
        })
    }

    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }

    pub fn contains(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// The configured name of `model` (shared, for labels), if it is one.
    pub fn name_of(&self, model: &str) -> Option<Arc<str>> {
        self.routes
            .get_key_value(model)
            .map(|(name, _)| name.clone())
    }

    /// The model's own cache setting, if it has one.
    pub fn cache_of(&self, model: &str) -> Option<crate::config::ModelCache> {
        self.routes.get(model).and_then(|route| route.cache)
    }

    /// Every deployment name in use, for pruning the health registry after a reload.
    pub fn deployment_names(&self) -> impl Iterator<Item = &str> {
        self.routes.values().flat_map(|route| {
            route
                .stable
                .deployments
                .iter()
                .chain(
                    route
                        .canary
                        .iter()
                        .flat_map(|(_, pool)| pool.deployments.iter()),
                )
                .map(|d| &*d.name)
        })
    }

    /// The state of every deployment served by `provider`.
    pub fn deployments_of(&self, provider: &str) -> Vec<Arc<Deployment>> {
        let mut out: Vec<Arc<Deployment>> = Vec::new();
        for route in self.routes.values() {
            let pools = std::iter::once(&route.stable).chain(route.canary.iter().map(|(_, p)| p));
            for deployment in pools.flat_map(|pool| pool.deployments.iter()) {
                if &*deployment.provider.name == provider
                    && !out.iter().any(|known| known.name == deployment.name)
                {
                    out.push(deployment.clone());
                }
            }
        }
        out
    }

    /// The plan of a request for `model`, or `None` for an unknown model.
    pub fn plan(&self, model: &str, requester: &Requester<'_>) -> Option<Plan> {
        let (alias, route) = self.routes.get_key_value(model)?;
        let (pool, canary) = match &route.canary {
            Some((rule, pool)) if chooses_canary(rule, requester) => (pool, Some(true)),
            Some(_) => (&route.stable, Some(false)),
            None => (&route.stable, None),
        };
        let mut candidates: Vec<Candidate> = pool
            .ordered()
            .into_iter()
            .map(|deployment| Candidate {
                deployment,
                model: alias.clone(),
                fallback: false,
            })
            .collect();
        for fallback in &route.fallbacks {
            // A key only reaches the models it may use (data residency), unless the model says
            // its fallbacks serve everyone.
            if !route.fallbacks_for_all_keys && !requester.may_use(fallback) {
                continue;
            }
            if let Some((alias, route)) = self.routes.get_key_value(fallback) {
                candidates.extend(
                    route
                        .stable
                        .ordered()
                        .into_iter()
                        .map(|deployment| Candidate {
                            deployment,
                            model: alias.clone(),
                            fallback: true,
                        }),
                );
            }
        }
        Some(Plan {
            candidates,
            canary,
            fallback_on_context_window: route.fallback_on_context_window,
        })
    }
}

/// A deployment on the built-in mock provider, for unit tests of routing.
#[cfg(test)]
pub fn test_deployment(name: &str, weight: u32) -> Arc<Deployment> {
    let provider = crate::config::ProviderConfig {
        name: "p".into(),
        kind: crate::config::ProviderKind::Mock,
        health_check: None,
    };
    let timeouts = crate::config::Timeouts {
        connect: std::time::Duration::from_secs(1),
        first_byte: std::time::Duration::from_secs(1),
        idle: std::time::Duration::from_secs(1),
        total: std::time::Duration::from_secs(1),
    };
    let registry = Registry::default();
    Arc::new(Deployment {
        name: name.into(),
        provider: Arc::new(
            Provider::new(
                &provider,
                &SharedClient::new(&timeouts, &Default::default()),
                &registry,
            )
            .unwrap_or_else(|e| unreachable!("{e}")),
        ),
        upstream_model: "m".into(),
        weight,
        health: registry.get(name),
        price: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_models() -> [crate::config::ModelPattern; 1] {
        [crate::config::ModelPattern::new("*".to_owned())]
    }
    use axum::http::HeaderMap;

    #[test]
    fn plans_hold_the_canary_or_the_stable_set_then_fallbacks() {
        let text = "\
providers: {a: {kind: mock}, b: {kind: mock}, c: {kind: mock}}
models:
  m:
    deployments: [{provider: a, weight: 3}, {provider: b, weight: 1}]
    fallbacks: [spare]
    canary: {deployments: [{provider: c}], by: key_name, keys: ['beta-*']}
  spare:
    deployments: [{provider: c, model: small}]
";
        let config = crate::config::load_str(text, "t.yaml", &|_| None).unwrap();
        let table = ModelTable::new(&config, &Registry::default()).unwrap();
        let headers = HeaderMap::new();
        let stable = Requester {
            key_models: &all_models(),
            key_name: "svc",
            headers: &headers,
            client_ip: None,
        };
        let plan = table.plan("m", &stable).unwrap();
        assert_eq!(plan.canary, Some(false));
        let names: Vec<&str> = plan
            .candidates
            .iter()
            .map(|c| &*c.deployment.name)
            .collect();
        assert_eq!(names.len(), 3);
        assert!(names[..2].contains(&"a/m") && names[..2].contains(&"b/m"));
        assert_eq!(names[2], "c/small");
        assert!(plan.candidates[2].fallback);
        assert_eq!(&*plan.candidates[2].model, "spare");

        let beta = Requester {
            key_models: &all_models(),
            key_name: "beta-svc",
            headers: &headers,
            client_ip: None,
        };
        let plan = table.plan("m", &beta).unwrap();
        assert_eq!(plan.canary, Some(true));
        assert_eq!(&*plan.candidates[0].deployment.name, "c/m");
        assert!(table.plan("other", &stable).is_none());
    }
}
