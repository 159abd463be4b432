//! Governance: who may call (static and virtual keys), how much (rate limits per key, client
//! address, route and model; requests in flight; budgets) and what it cost (prices, the usage
//! ledger). Keys and spending are kept in memory and checked there; the store (`store/`) is
//! read at start and on refresh, and written by the admin API and the batched usage writer.

pub mod admission;
pub mod keys;
pub mod limiter;
pub mod limits;
pub mod manage;
pub mod period;
pub mod pricing;
pub mod usage;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use axum::http::HeaderMap;

use crate::api::errors::ApiError;
use crate::config::{BudgetPeriod, Config, KeyLimits, ModelPattern, Rate};
use crate::state::Runtime;
use crate::store::redis::SharedRedis;
use crate::store::{Store, StoredKey};
use admission::{Admission, Demand, now_ms};
use keys::{ClientKey, Hasher, parse_virtual};
use limits::{Ask, BudgetAsk, KeyState, Limits, Scope, Subject, Take, Unit};
use usage::UsageWriter;

/// A virtual key as the gateway holds it in memory.
#[derive(Debug)]
pub struct VirtualKey {
    pub stored: StoredKey,
    pub client: Arc<ClientKey>,
}

#[derive(Debug)]
pub struct Governance {
    pub store: Arc<dyn Store>,
    pub writer: Arc<UsageWriter>,
    /// Hashes virtual key secrets; `None` without `admin.key_secret` (no virtual keys).
    hasher: Option<Hasher>,
    virtual_keys: RwLock<HashMap<String, Arc<VirtualKey>>>,
    /// Where every limit is counted: memory, or the shared Redis.
    pub limits: Limits,
    /// The shared Redis of `state.redis`, if any (limits, and the cache when it is there).
    pub redis: Option<Arc<SharedRedis>>,
}

impl Governance {
    pub fn new(config: &Config) -> Result<Governance, String> {
        let store = crate::store::open(&config.state.database)
            .map_err(|error| format!("state.database: {error}"))?;
        let writer = Arc::new(UsageWriter::start(store.clone()));
        let redis = config.state.redis.as_ref().map(SharedRedis::start);
        let limits = match &redis {
            Some(redis) => Limits::Redis(limits::redis::RedisLimits::start(redis.clone())),
            None => Limits::Memory(limits::MemoryLimits::default()),
        };
        let governance = Governance {
            hasher: config
                .admin
                .as_ref()
                .map(|admin| Hasher::new(admin.key_secret.expose())),
            store,
            writer,
            virtual_keys: RwLock::new(HashMap::new()),
            limits,
            redis,
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
        self.store.kind()
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

    /// The live state of a key in this process.
    pub fn state(&self, id: &Arc<str>) -> Arc<KeyState> {
        self.limits.local().state(id)
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

    /// The per-address limit, checked before anything else (before the key is read).
    pub async fn check_ip(&self, runtime: &Runtime, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let (Some(rate), Some(ip)) = (runtime.config.limits.per_ip, ip) else {
            return Ok(());
        };
        self.check_one(Scope::Ip, Subject::Ip(ip), rate).await
    }

    /// The per-route limit.
    pub async fn check_route(&self, runtime: &Runtime, route: &str) -> Result<(), ApiError> {
        let Some((_, rate)) = runtime
            .config
            .limits
            .per_route
            .iter()
            .find(|(name, _)| name == route)
        else {
            return Ok(());
        };
        self.check_one(Scope::Route, Subject::Name(route.into()), *rate)
            .await
    }

    /// Takes one request from a limit that is not the key's.
    async fn check_one(&self, scope: Scope, subject: Subject, rate: Rate) -> Result<(), ApiError> {
        let ask = Ask {
            key_id: Arc::from(""),
            takes: vec![Take {
                scope,
                unit: Unit::Requests,
                subject,
                rate,
                cost: 1,
            }],
            concurrency: None,
            budget: None,
        };
        match self.limits.admit(&ask).await {
            Ok(granted) => {
                // Nothing to settle for a request count.
                granted.ticket.settle(0, 0);
                Ok(())
            }
            Err(denied) => Err(*denied.error),
        }
    }

    /// Admits a request of `key` for `model` (key and model limits, requests in flight,
    /// budget) as a whole, reserving the estimate in `demand`. A refusal carries the key's
    /// rate-limit headers.
    pub async fn admit(
        &self,
        runtime: &Runtime,
        key: Arc<ClientKey>,
        model: &str,
        demand: &Demand,
    ) -> Result<Admission, limits::Denied> {
        let mut takes = Vec::with_capacity(4);
        let subject = Subject::Name(key.id.clone());
        if let Some(rate) = key.limits.requests {
            takes.push(Take {
                scope: Scope::Key,
                unit: Unit::Requests,
                subject: subject.clone(),
                rate,
                cost: 1,
            });
        }
        if let Some(rate) = key.limits.tokens {
            takes.push(Take {
                scope: Scope::Key,
                unit: Unit::Tokens,
                subject,
                rate,
                cost: demand.tokens,
            });
        }
        if let Some((name, requests, tokens)) = runtime
            .config
            .limits
            .per_model
            .iter()
            .find(|(name, _, _)| &**name == model)
        {
            for (unit, rate, cost) in [
                (Unit::Requests, requests, 1),
                (Unit::Tokens, tokens, demand.tokens),
            ] {
                if let Some(rate) = rate {
                    takes.push(Take {
                        scope: Scope::Model,
                        unit,
                        subject: Subject::Name(name.clone()),
                        rate: *rate,
                        cost,
                    });
                }
            }
        }
        let budget = key.budget.map(|budget| BudgetAsk {
            budget,
            period_start_ms: period::start_ms(budget.period, now_ms()),
            estimate: pricing::cost(
                &demand.price,
                &crate::translate::ir::Usage {
                    input: demand.prompt_tokens,
                    output: demand.output_tokens,
                    ..Default::default()
                },
            ),
        });
        let ask = Ask {
            key_id: key.id.clone(),
            takes,
            concurrency: key.limits.concurrency,
            budget,
        };
        let granted = self.limits.admit(&ask).await?;
        Ok(Admission::new(key, granted.ticket, granted.headers))
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
