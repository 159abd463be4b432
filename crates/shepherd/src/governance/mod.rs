//! Governance: who may call (static and virtual keys), how much (rate limits per key, client
//! address, route and model; requests in flight; budgets) and what it cost (prices, the usage
//! ledger). Keys and spending are kept in memory and checked there; the store (`store/`) is
//! read at start and on refresh, and written by the admin API and the batched usage writer.

pub mod admission;
pub mod keys;
pub mod limiter;
pub mod manage;
pub mod period;
pub mod pricing;
pub mod usage;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::HeaderMap;

use crate::api::errors::ApiError;
use crate::config::{BudgetPeriod, Config, KeyLimits, ModelPattern, Rate};
use crate::state::Runtime;
use crate::store::sqlite::SqliteStore;
use crate::store::{KeyStore, StoredKey, UsageStore};
use admission::{Admission, Demand, KeyState, now_ms};
use keys::{ClientKey, Hasher, parse_virtual};
use limiter::{Gcra, Keyed};
use usage::UsageWriter;

/// A virtual key as the gateway holds it in memory.
#[derive(Debug)]
pub struct VirtualKey {
    pub stored: StoredKey,
    pub client: Arc<ClientKey>,
}

#[derive(Debug)]
pub struct Governance {
    pub store: Arc<SqliteStore>,
    pub writer: Arc<UsageWriter>,
    /// Hashes virtual key secrets; `None` without `admin.key_secret` (no virtual keys).
    hasher: Option<Hasher>,
    virtual_keys: RwLock<HashMap<String, Arc<VirtualKey>>>,
    states: Mutex<HashMap<Arc<str>, Arc<KeyState>>>,
    per_ip: Keyed<IpAddr>,
    per_route: Keyed<String>,
    per_model_requests: Keyed<Arc<str>>,
    per_model_tokens: Keyed<Arc<str>>,
}

impl Governance {
    pub fn new(config: &Config) -> Result<Governance, String> {
        let store = Arc::new(
            SqliteStore::open(&config.state.database)
                .map_err(|error| format!("state.database: {error}"))?,
        );
        let writer = Arc::new(UsageWriter::start(store.clone()));
        let governance = Governance {
            hasher: config
                .admin
                .as_ref()
                .map(|admin| Hasher::new(admin.key_secret.expose())),
            store,
            writer,
            virtual_keys: RwLock::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            per_ip: Keyed::default(),
            per_route: Keyed::default(),
            per_model_requests: Keyed::default(),
            per_model_tokens: Keyed::default(),
        };
        governance.refresh()?;
        let statics: Vec<ClientKey> = config.keys.iter().map(ClientKey::of_config).collect();
        governance.prime_budgets(statics.iter());
        Ok(governance)
    }

    /// Reads the virtual keys from the store again (keys changed by another process, such as
    /// `shepherd keys` on the same database).
    pub fn refresh(&self) -> Result<(), String> {
        let stored = self
            .store
            .load_keys()
            .map_err(|error| format!("cannot read keys: {error}"))?;
        let mut fresh = HashMap::with_capacity(stored.len());
        for key in stored {
            let client = Arc::new(client_of(&key));
            fresh.insert(
                key.id.clone(),
                Arc::new(VirtualKey {
                    stored: key,
                    client,
                }),
            );
        }
        let added: Vec<Arc<ClientKey>> = {
            let known = self.read_virtual();
            fresh
                .values()
                .filter(|key| !known.contains_key(&key.stored.id))
                .map(|key| key.client.clone())
                .collect()
        };
        self.prime_budgets(added.iter().map(AsRef::as_ref));
        match self.virtual_keys.write() {
            Ok(mut keys) => *keys = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    fn read_virtual(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<VirtualKey>>> {
        match self.virtual_keys.read() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Puts (or replaces) one virtual key in memory, as the admin API changed it.
    pub fn remember(&self, stored: StoredKey) {
        let client = Arc::new(client_of(&stored));
        let mut keys = match self.virtual_keys.write() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        keys.insert(stored.id.clone(), Arc::new(VirtualKey { stored, client }));
    }

    pub fn virtual_key(&self, id: &str) -> Option<Arc<VirtualKey>> {
        self.read_virtual().get(id).cloned()
    }

    pub fn virtual_keys(&self) -> Vec<Arc<VirtualKey>> {
        let mut keys: Vec<Arc<VirtualKey>> = self.read_virtual().values().cloned().collect();
        keys.sort_by(|a, b| {
            (a.stored.created_at, &a.stored.id).cmp(&(b.stored.created_at, &b.stored.id))
        });
        keys
    }

    /// The kind of store keys and usage live in, as metrics name it.
    pub fn store_kind(&self) -> &'static str {
        "sqlite"
    }

    /// Rolls ledger rows older than `retention` up into per-day sums (blocking: run it off
    /// the request threads).
    pub fn prune(&self, retention: std::time::Duration) -> Result<u64, String> {
        let cutoff =
            now_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let removed = self
            .store
            .prune(cutoff)
            .map_err(|error| error.to_string())?;
        self.writer
            .counts
            .pruned
            .fetch_add(removed, std::sync::atomic::Ordering::Relaxed);
        Ok(removed)
    }

    pub fn hasher(&self) -> Option<&Hasher> {
        self.hasher.as_ref()
    }

    /// Loads what each key with a budget spent in its current period (from the ledger).
    fn prime_budgets<'a>(&self, keys: impl Iterator<Item = &'a ClientKey>) {
        for key in keys {
            let Some(budget) = key.budget else { continue };
            let start = period::start_ms(budget.period, now_ms());
            match self.store.spent(&key.id, start) {
                Ok(spent) => self.state(&key.id).load_spending(start, spent),
                Err(error) => {
                    tracing::error!(key = %key.name, %error, "cannot read the key's spending; counting from zero");
                }
            }
        }
    }

    /// The live state of a key.
    pub fn state(&self, id: &Arc<str>) -> Arc<KeyState> {
        let mut states = match self.states.lock() {
            Ok(states) => states,
            Err(poisoned) => poisoned.into_inner(),
        };
        states.entry(id.clone()).or_default().clone()
    }

    /// The key a request presents: a virtual key (checked against its HMAC, current or, during
    /// a rotation's overlap, previous), else a static key of the config. 401 otherwise.
    pub fn authenticate(
        &self,
        runtime: &Runtime,
        headers: &HeaderMap,
    ) -> Result<Arc<ClientKey>, ApiError> {
        let presented =
            crate::api::auth::presented_key(headers).ok_or_else(ApiError::missing_key)?;
        let now = now_ms() / 1000;
        let key = match (parse_virtual(presented), &self.hasher) {
            (Some(virtual_key), Some(hasher)) => {
                let found = self
                    .virtual_key(virtual_key.id)
                    .ok_or_else(ApiError::invalid_key)?;
                let stored = &found.stored;
                let current = hasher.matches(virtual_key.secret, &stored.secret_hash);
                let previous = stored.previous_until.is_some_and(|until| now < until)
                    && stored
                        .previous_hash
                        .as_deref()
                        .is_some_and(|hash| hasher.matches(virtual_key.secret, hash));
                if !(current || previous) || !stored.enabled {
                    return Err(ApiError::invalid_key());
                }
                found.client.clone()
            }
            _ => runtime
                .keys
                .lookup(presented)
                .ok_or_else(ApiError::invalid_key)?,
        };
        if key.is_expired(now) {
            return Err(ApiError::expired_key());
        }
        Ok(key)
    }

    /// The per-address limit, checked before anything else.
    pub fn check_ip(&self, runtime: &Runtime, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let (Some(rate), Some(ip)) = (runtime.config.limits.per_ip, ip) else {
            return Ok(());
        };
        self.per_ip
            .get(&ip)
            .take(&rate, 1)
            .map(|_| ())
            .map_err(|refusal| {
                ApiError::rate_limited(
                    "requests",
                    "ip",
                    "requests from this address",
                    refusal.retry_after,
                    false,
                )
            })
    }

    /// The per-route limit.
    pub fn check_route(&self, runtime: &Runtime, route: &str) -> Result<(), ApiError> {
        let Some((_, rate)) = runtime
            .config
            .limits
            .per_route
            .iter()
            .find(|(name, _)| name == route)
        else {
            return Ok(());
        };
        self.per_route
            .get(&route.to_owned())
            .take(rate, 1)
            .map(|_| ())
            .map_err(|refusal| {
                ApiError::rate_limited(
                    "requests",
                    "route",
                    "requests on this route",
                    refusal.retry_after,
                    false,
                )
            })
    }

    /// Admits a request of `key` for `model` (key and model limits, requests in flight,
    /// budget), reserving the estimate in `demand`.
    pub fn admit(
        &self,
        runtime: &Runtime,
        key: Arc<ClientKey>,
        model: &str,
        demand: &Demand,
    ) -> Result<Admission, ApiError> {
        let model_limits = runtime
            .config
            .limits
            .per_model
            .iter()
            .find(|(name, _, _)| &**name == model)
            .map_or((None, None), |(name, requests, tokens)| {
                (
                    requests.map(|rate| (self.model_limit(&self.per_model_requests, name), rate)),
                    tokens.map(|rate| (self.model_limit(&self.per_model_tokens, name), rate)),
                )
            });
        let state = self.state(&key.id);
        Admission::admit(key, state, demand, model_limits)
    }

    /// Where a key's own limits stand, for the headers of a refusal.
    pub fn standing(&self, key: &ClientKey) -> admission::RateHeaders {
        self.state(&key.id).standing(&key.limits)
    }

    /// Primes the budgets of keys new to this config (after a reload).
    pub fn prime_static(&self, keys: &[crate::config::KeyConfig]) {
        let fresh: Vec<ClientKey> = keys
            .iter()
            .map(ClientKey::of_config)
            .filter(|key| {
                key.budget.is_some() && self.state(&key.id).spending_now().period_start_ms.is_none()
            })
            .collect();
        self.prime_budgets(fresh.iter());
    }

    fn model_limit(&self, limits: &Keyed<Arc<str>>, model: &Arc<str>) -> Arc<Gcra> {
        limits.get(model)
    }

    /// Every key with a budget, static (of `keys`) and virtual: its name, the budget and what it
    /// spent in the current period, both in nano-dollars.
    pub fn budgets(&self, keys: &[crate::config::KeyConfig]) -> Vec<(Arc<str>, u64, u64)> {
        let now = now_ms();
        let statics = keys.iter().map(|key| Arc::new(ClientKey::of_config(key)));
        let virtuals = self
            .virtual_keys()
            .into_iter()
            .map(|key| key.client.clone());
        statics
            .chain(virtuals)
            .filter_map(|key| {
                let budget = key.budget?;
                let spending = self.state(&key.id).spending_now();
                let current =
                    spending.period_start_ms == Some(period::start_ms(budget.period, now));
                let spent = if current { spending.spent } else { 0 };
                Some((key.name.clone(), budget.nano_usd, spent))
            })
            .collect()
    }

    /// Writes what is left of the ledger and stops the writer (shutdown).
    pub fn close(&self) {
        self.writer.close();
    }
}

/// The in-memory form of a stored virtual key.
pub fn client_of(stored: &StoredKey) -> ClientKey {
    let minute = std::time::Duration::from_secs(60);
    let rate = |amount: Option<u64>| {
        amount.map(|amount| Rate {
            amount,
            period: minute,
            burst: amount,
        })
    };
    let models = if stored.models.is_empty() {
        vec![ModelPattern::new("*".to_owned())]
    } else {
        stored
            .models
            .iter()
            .cloned()
            .map(ModelPattern::new)
            .collect()
    };
    ClientKey {
        id: stored.id.as_str().into(),
        name: stored.name.as_str().into(),
        models,
        limits: KeyLimits {
            requests: rate(stored.rpm),
            tokens: rate(stored.tpm),
            concurrency: stored.concurrency,
        },
        budget: stored
            .budget_nano_usd
            .map(|nano_usd| crate::config::Budget {
                nano_usd,
                period: stored
                    .budget_period
                    .as_deref()
                    .and_then(BudgetPeriod::parse)
                    .unwrap_or(BudgetPeriod::Month),
            }),
        metadata: stored.metadata.clone(),
        expires_at: stored.expires_at,
        default_model: stored.default_model.as_deref().map(Arc::from),
    }
}
