//! Routing: the model table (alias -> deployments) and the choice of a deployment for a request.
//! Weighted random choice today; retries, fallbacks, breakers and canaries build on this table.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::providers::Provider;

/// One way to serve a model: a provider and the model name it knows.
#[derive(Debug)]
pub struct Deployment {
    /// `provider/upstream-model`, as shown in `x-shepherd-deployment`, logs and metrics.
    pub name: Arc<str>,
    pub provider: Arc<Provider>,
    pub upstream_model: Arc<str>,
    pub weight: u32,
}

#[derive(Debug)]
struct Route {
    deployments: Vec<Deployment>,
    total_weight: u32,
}

/// Model aliases clients may ask for, each with its deployments.
#[derive(Debug)]
pub struct ModelTable {
    routes: HashMap<Arc<str>, Route>,
    /// Model names in config order, for `/v1/models`.
    names: Vec<Arc<str>>,
}

impl ModelTable {
    pub fn new(config: &Config) -> Result<Self, String> {
        let mut providers = HashMap::new();
        for provider in &config.providers {
            let built = Provider::new(provider, &config.server.timeouts)
                .map_err(|error| format!("provider `{}`: {error}", provider.name))?;
            providers.insert(provider.name.clone(), Arc::new(built));
        }
        let mut routes = HashMap::new();
        let mut names = Vec::new();
        for model in &config.models {
            let mut deployments = Vec::new();
            for deployment in &model.deployments {
                let provider = providers
                    .get(&deployment.provider)
                    .ok_or_else(|| format!("unknown provider `{}`", deployment.provider))?;
                deployments.push(Deployment {
                    name: format!("{}/{}", deployment.provider, deployment.upstream_model).into(),
                    provider: provider.clone(),
                    upstream_model: deployment.upstream_model.clone(),
                    weight: deployment.weight,
                });
            }
            let total_weight = deployments.iter().map(|d| d.weight).sum();
            names.push(model.name.clone());
            routes.insert(
                model.name.clone(),
                Route {
                    deployments,
                    total_weight,
                },
            );
        }
        Ok(ModelTable { routes, names })
    }

    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }

    pub fn contains(&self, model: &str) -> bool {
        self.routes.contains_key(model)
    }

    /// Picks a deployment of `model` at random, in proportion to the weights.
    pub fn pick(&self, model: &str) -> Option<&Deployment> {
        let route = self.routes.get(model)?;
        if route.deployments.len() == 1 {
            return route.deployments.first();
        }
        let mut ticket = fastrand::u32(0..route.total_weight.max(1));
        for deployment in &route.deployments {
            if ticket < deployment.weight {
                return Some(deployment);
            }
            ticket -= deployment.weight;
        }
        route.deployments.last()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_choice_follows_weights() {
        let text = "providers: {a: {kind: mock}, b: {kind: mock}}\nmodels:\n  m:\n    deployments: [{provider: a, weight: 3}, {provider: b, weight: 1}]\n";
        let config = crate::config::load_str(text, "t.yaml", &|_| None).unwrap();
        let table = ModelTable::new(&config).unwrap();
        let picks_of_a = (0..4000)
            .filter(|_| &*table.pick("m").unwrap().provider.name == "a")
            .count();
        assert!((2700..3300).contains(&picks_of_a), "{picks_of_a}");
        assert!(table.pick("other").is_none());
    }
}
