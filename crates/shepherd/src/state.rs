//! `AppState`: what every handler shares, behind one `Arc`. The parts built from the config live
//! in a `Runtime` that a reload replaces whole (requests in flight keep the one they started
//! with); what must outlive a reload (breakers, latency, in-flight counts) lives in the health
//! registry, keyed by deployment and key name.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;

use crate::api::auth::KeyTable;
use crate::config::Config;
use crate::governance::Governance;
use crate::routing::ModelTable;
use crate::routing::health::Registry;

/// Everything built from one config.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub models: ModelTable,
    pub keys: KeyTable,
    /// Masks this config's secrets in whatever leaves the gateway.
    pub redactor: Arc<crate::redact::Redactor>,
    /// Unix time the config was loaded (the `created` of `/v1/models` entries).
    pub loaded_at: u64,
    /// Active health checks of this runtime's providers; stopped with it.
    health_checks: Vec<JoinHandle<()>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        for check in &self.health_checks {
            check.abort();
        }
    }
}

/// Config reloads so far, for metrics and logs.
#[derive(Debug, Default)]
pub struct ReloadCounts {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
}

#[derive(Debug)]
pub struct AppState {
    runtime: RwLock<Arc<Runtime>>,
    pub health: Registry,
    /// Keys, limits, budgets and the usage ledger (outlives reloads).
    pub governance: Arc<Governance>,
    /// The response cache (outlives reloads).
    pub cache: Arc<crate::cache::Cache>,
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Traces over OTLP, when `telemetry.otlp_endpoint` is set.
    pub traces: Option<Arc<crate::telemetry::traces::Traces>>,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight work drains.
    pub draining: Arc<AtomicBool>,
    /// Requests in flight (probes and scrapes excepted), counted by the listeners.
    pub active_requests: Arc<std::sync::atomic::AtomicUsize>,
    /// Turns true when the shutdown grace is over: running streams end with an error event
    /// (their usage so far recorded).
    pub end_streams: tokio::sync::watch::Sender<bool>,
    pub reloads: ReloadCounts,
    /// The config file, when the config came from one (reloads read it again).
    pub config_path: Option<PathBuf>,
    /// Started with `--allow-empty`: a config that serves nothing may be loaded.
    pub allow_empty: AtomicBool,
    /// Open console sessions (`/ui`).
    pub console: crate::api::console::Sessions,
    /// Responses API answers being written to the store (`api/stored.rs`).
    pub saving_responses: Arc<crate::api::stored::Saving>,
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    /// SIGHUP (or an explicit call): the operator means it.
    Signal,
    /// The file changed: it may be half written, so a change that removes every key or every
    /// model waits for a SIGHUP.
    FileChange,
}

impl AppState {
    pub fn new(config: Config, config_path: Option<PathBuf>) -> Result<Self, String> {
        let health = Registry::default();
        let governance = Arc::new(Governance::new(&config)?);
        let cache = Arc::new(crate::cache::Cache::new(
            &config.cache,
            governance.redis.clone(),
        ));
        let metrics = Arc::new(crate::telemetry::metrics::Metrics::new(
            config.telemetry.metrics,
            config.telemetry.key_labels,
        ));
        let traces = match &config.telemetry.traces {
            Some(traces) => Some(Arc::new(crate::telemetry::traces::Traces::start(traces)?)),
            None => None,
        };
        let runtime = build(config, &health)?;
        Ok(AppState {
            runtime: RwLock::new(Arc::new(runtime)),
            health,
            governance,
            cache,
            metrics,
            traces,
            draining: Arc::new(AtomicBool::new(false)),
            active_requests: Arc::default(),
            end_streams: tokio::sync::watch::Sender::new(false),
            reloads: ReloadCounts::default(),
            config_path,
            allow_empty: AtomicBool::new(false),
            console: crate::api::console::Sessions::default(),
            saving_responses: Arc::default(),
        })
    }

    /// The current runtime; a request keeps it until it is done.
    pub fn runtime(&self) -> Arc<Runtime> {
        match self.runtime.read() {
            Ok(runtime) => runtime.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the runtime with one built from `config`. Settings that only apply at start
    /// (listener, shutdown grace, CORS, log format) are reported and keep their old value.
    pub fn apply(&self, config: Config) -> Result<(), String> {
        let old = self.runtime();
        for note in restart_only_changes(&old.config, &config) {
            tracing::warn!(
                setting = note,
                "changed in the config file; takes effect at the next restart"
            );
        }
        self.governance.prime_static(&config.keys);
        let runtime = Arc::new(build(config, &self.health)?);
        let known: std::collections::HashSet<String> = old
            .models
            .providers()
            .iter()
            .flat_map(|provider| provider.key_labels())
            .collect();
        let fresh: Vec<(Arc<crate::providers::Provider>, usize)> = runtime
            .models
            .providers()
            .iter()
            .flat_map(|provider| {
                provider
                    .key_labels()
                    .enumerate()
                    .filter(|(_, label)| !known.contains(label))
                    .map(|(index, _)| (provider.clone(), index))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (provider, index) in &fresh {
            provider.hold_for_check(*index);
        }
        let mut names: std::collections::HashSet<String> = runtime
            .models
            .deployment_names()
            .map(str::to_owned)
            .collect();
        for provider in runtime.models.providers() {
            names.extend(provider.key_labels());
        }
        match self.runtime.write() {
            Ok(mut current) => *current = runtime,
            Err(poisoned) => *poisoned.into_inner() = runtime,
        }
        // Forget the state of deployments and keys that are gone.
        self.health.retain(|name| names.contains(name));
        if !fresh.is_empty() {
            tracing::info!(
                keys = fresh.len(),
                "new upstream keys: each serves once its provider's model list accepts it"
            );
            self.check_keys(fresh);
        }
        Ok(())
    }

    /// Checks upstream keys new in a reload against their provider's model list, in the
    /// background; each serves once it passed (or could not be checked), a refused one stays
    /// out of rotation. Logged and counted (`upstream_key_checks_total`).
    fn check_keys(&self, fresh: Vec<(Arc<crate::providers::Provider>, usize)>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (a synchronous caller): nothing can be checked, so nothing is held.
            for (provider, index) in fresh {
                provider.release_unchecked(index);
            }
            return;
        };
        let timeouts = self.runtime().config.server.timeouts;
        let timeout = (timeouts.connect + timeouts.first_byte).min(Duration::from_secs(10));
        for (provider, index) in fresh {
            let metrics = self.metrics.clone();
            runtime.spawn(async move {
                let check = provider.check_key(index, timeout).await;
                let label = provider.key_labels().nth(index).unwrap_or_default();
                match &check {
                    crate::providers::KeyCheck::Ok => {
                        tracing::info!(provider = %provider.name, key = %label, "upstream key accepted by its provider");
                    }
                    crate::providers::KeyCheck::Refused(status) => {
                        tracing::error!(provider = %provider.name, key = %label, status,
                                        "upstream key refused by its provider: kept out of rotation");
                    }
                    crate::providers::KeyCheck::Unverified(why) => {
                        tracing::warn!(provider = %provider.name, key = %label, why = %why,
                                       "upstream key could not be checked; serving with it");
                    }
                }
                metrics
                    .upstream_key_checks
                    .with_label_values(&[&*provider.name, check.result()])
                    .inc();
            });
        }
    }

    /// Reads the config file again and applies it (as a SIGHUP would); a bad file is refused
    /// and the running config keeps serving.
    pub fn reload(&self) -> Result<(), String> {
        self.reload_on(ReloadTrigger::Signal)
    }

    /// Reads the config file again and applies it; a bad file, one that serves nothing (unless
    /// started with `--allow-empty`), or, on a file event, one that removes every key or every
    /// model, is refused and the running config keeps serving.
    pub fn reload_on(&self, trigger: ReloadTrigger) -> Result<(), String> {
        let outcome = match &self.config_path {
            None => Err("the config did not come from a file".to_owned()),
            Some(path) => crate::config::load_file(path)
                .map_err(|problems| problems.to_string())
                .and_then(|config| self.vet(&config, trigger).map(|()| config))
                .and_then(|config| self.apply(config)),
        };
        match &outcome {
            Ok(()) => {
                self.reloads.succeeded.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!("config reloaded");
            }
            Err(problems) => {
                self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(%problems, "config reload refused; the running config keeps serving");
            }
        }
        outcome
    }
}

impl AppState {
    /// Whether `config` may replace the running one.
    fn vet(&self, config: &Config, trigger: ReloadTrigger) -> Result<(), String> {
        if config.serves_nothing() && !self.allow_empty.load(Ordering::Relaxed) {
            return Err(
                "the new config serves nothing (no models): an empty or truncated file? \
                 (start with --allow-empty to allow it)"
                    .to_owned(),
            );
        }
        if trigger == ReloadTrigger::FileChange {
            let old = self.runtime();
            let removes_keys = !old.config.keys.is_empty() && config.keys.is_empty();
            let removes_models = !old.config.models.is_empty() && config.models.is_empty();
            if removes_keys || removes_models {
                let what = if removes_keys {
                    "every key"
                } else {
                    "every model"
                };
                tracing::warn!(
                    removes = what,
                    "the changed config file removes {what}; send SIGHUP to apply it on purpose"
                );
                return Err(format!(
                    "the file change removes {what}; not applied without a SIGHUP"
                ));
            }
        }
        Ok(())
    }
}

fn build(config: Config, health: &Registry) -> Result<Runtime, String> {
    let models = ModelTable::new(&config, health)?;
    let keys = KeyTable::new(&config.keys);
    let health_checks = crate::routing::health::spawn_checks(&models, &config.circuit);
    Ok(Runtime {
        redactor: Arc::new(crate::redact::Redactor::of_config(&config)),
        config,
        models,
        keys,
        loaded_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        health_checks,
    })
}

/// Settings read once at start whose change a reload cannot apply.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.server.listen != new.server.listen {
        changed.push("server.listen");
    }
    if old.server.shutdown_grace != new.server.shutdown_grace {
        changed.push("server.shutdown_grace");
    }
    if format!("{:?}", old.server.cors) != format!("{:?}", new.server.cors) {
        changed.push("server.cors");
    }
    if old.cache.max_bytes != new.cache.max_bytes {
        changed.push("cache.max_bytes");
    }
    if old.state.database != new.state.database {
        changed.push("state.database");
    }
    if old.state.redis != new.state.redis {
        changed.push("state.redis");
    }
    if old.cache.backend != new.cache.backend {
        changed.push("cache.backend");
    }
    if old.server.admin_listen != new.server.admin_listen {
        changed.push("server.admin_listen");
    }
    if old.admin.as_ref().map(|a| a.key_secret.expose().to_owned())
        != new.admin.as_ref().map(|a| a.key_secret.expose().to_owned())
    {
        changed.push("admin.key_secret");
    }
    if old.telemetry.traces != new.telemetry.traces {
        changed.push("telemetry.otlp_endpoint");
    }
    if old.telemetry.metrics != new.telemetry.metrics
        || old.telemetry.metrics_listen != new.telemetry.metrics_listen
        || old.telemetry.key_labels != new.telemetry.key_labels
    {
        changed.push("telemetry.metrics");
    }
    if old.telemetry.access_log != new.telemetry.access_log
        || old.telemetry.log_format != new.telemetry.log_format
        || old.telemetry.log_level != new.telemetry.log_level
    {
        changed.push("telemetry");
    }
    changed
}
