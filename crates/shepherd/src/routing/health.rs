//! What the gateway knows about each deployment and upstream key between requests: its breaker,
//! requests in flight, a moving average of time to first byte, and the verdict of the active
//! health check. Kept in a registry by name, outside the config, so a reload keeps the state of
//! everything that did not change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ModelTable;
use super::circuit::Breaker;
use crate::config::CircuitConfig;

/// The live state of one deployment or upstream key.
#[derive(Debug, Default)]
pub struct Health {
    pub breaker: Breaker,
    inflight: AtomicU64,
    /// Moving average of time to first byte, in microseconds (0: not measured yet).
    latency_us: AtomicU64,
    /// The last active health check failed.
    check_failed: AtomicBool,
}

impl Health {
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard(self.clone())
    }

    pub fn latency(&self) -> Option<Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Adds a time-to-first-byte sample to the moving average (weight 1/5).
    pub fn record_latency(&self, sample: Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    (old * 4 + sample) / 5
                })
            });
    }

    pub fn set_check_failed(&self, failed: bool) {
        self.check_failed.store(failed, Ordering::Relaxed);
    }

    /// Healthy: the breaker lets requests through and the last health check (if any) passed.
    pub fn is_healthy(&self) -> bool {
        !self.check_failed.load(Ordering::Relaxed) && self.breaker.is_available()
    }
}

/// A request in flight on a deployment.
#[derive(Debug)]
pub struct InflightGuard(Arc<Health>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every deployment's and key's state, by name; lives as long as the process.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Arc<Health>>>,
}

impl Registry {
    /// The state of `name`, created on first use.
    pub fn get(&self, name: &str) -> Arc<Health> {
        let mut entries = match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.entry(name.to_owned()).or_default().clone()
    }

    /// Forgets what is no longer configured (after a reload).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut entries = match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries.retain(|name, _| keep(name));
    }

    /// Every entry, for metrics.
    pub fn snapshot(&self) -> Vec<(String, Arc<Health>)> {
        let entries = match self.entries.lock() {
            Ok(entries) => entries,
            Err(poisoned) => poisoned.into_inner(),
        };
        entries
            .iter()
            .map(|(name, health)| (name.clone(), health.clone()))
            .collect()
    }
}

/// Starts the active health check of every provider that has one: every `interval`, its model
/// list is asked for; a failure counts as a failure of each of its deployments (their breakers
/// open as for real traffic), and marks them unhealthy until a check passes again.
pub fn spawn_checks(
    models: &ModelTable,
    circuit: &CircuitConfig,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Vec::new();
    };
    let mut handles = Vec::new();
    for provider in models.providers() {
        let Some(check) = provider.health_check else {
            continue;
        };
        let deployments = models.deployments_of(&provider.name);
        let provider = provider.clone();
        let circuit = *circuit;
        handles.push(runtime.spawn(async move {
            let mut ticks = tokio::time::interval(check.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let result = provider.check(check.timeout).await;
                if let Err(problem) = &result {
                    tracing::warn!(provider = %provider.name, %problem, "health check failed");
                }
                for deployment in &deployments {
                    deployment.health.set_check_failed(result.is_err());
                    if result.is_err() {
                        deployment.health.breaker.failure(&circuit, None);
                    }
                }
            }
        }));
    }
    handles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_and_latency() {
        let registry = Registry::default();
        let health = registry.get("p/m");
        assert!(Arc::ptr_eq(&health, &registry.get("p/m")));
        let first = health.start();
        let second = health.start();
        assert_eq!(health.inflight(), 2);
        drop(first);
        drop(second);
        assert_eq!(health.inflight(), 0);
        assert_eq!(health.latency(), None);
        health.record_latency(Duration::from_millis(100));
        health.record_latency(Duration::from_millis(200));
        assert_eq!(health.latency(), Some(Duration::from_millis(120)));
        registry.retain(|name| name != "p/m");
        assert!(!Arc::ptr_eq(&health, &registry.get("p/m")));
    }
}
