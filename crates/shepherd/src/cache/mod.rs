//! The response cache: exact-match answers keyed on the canonical request (`key.rs`), kept in
//! this process's bounded memory (`store.rs`) or in the shared Redis (`redis_store.rs`),
//! replayed whole or as a stream (`replay.rs`). Only complete, successful answers are stored.
//! Concurrent identical misses are coalesced: one request (the leader) calls upstream, the
//! others wait for it, within their own deadline, and share its answer; with Redis, across
//! replicas too (a short lock in Redis names the leader). `Cache-Control: no-cache` skips the lookup, `no-store` the store, and
//! `x-shepherd-cache-ttl` sets the entry's lifetime.

pub mod key;
pub mod redis_store;
pub mod replay;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::errors::ApiError;
use crate::bounds;

use axum::http::HeaderMap;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{CacheBackend, CacheConfig, CacheScope};
use crate::providers::Endpoint;
use crate::store::redis::SharedRedis;
use crate::translate::ir;
use redis_store::RedisCache;
use store::{CacheStore, Entry, MemoryStore};

/// The response header that says whether an answer came from the cache.
pub const CACHE_HEADER: &str = "x-cache";
/// A request header that sets how long its answer is kept.
pub const TTL_HEADER: &str = "x-shepherd-cache-ttl";

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheCounts {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    /// Requests that waited for an identical one in flight.
    pub coalesced: AtomicU64,
}

/// Where entries live.
#[derive(Debug)]
enum Backend {
    Memory(MemoryStore),
    Redis(RedisCache),
}

#[derive(Debug)]
pub struct Cache {
    backend: Backend,
    /// Keys being filled now, and the signal that they are done.
    inflight: Mutex<HashMap<String, watch::Receiver<bool>>>,
    pub counts: CacheCounts,
}

/// What a request asks of the cache.
#[derive(Debug, Clone)]
pub struct Ask {
    pub key: String,
    /// `Cache-Control: no-cache`: do not answer from the cache.
    pub skip_lookup: bool,
    /// `Cache-Control: no-store`: do not keep the answer.
    pub skip_store: bool,
    pub ttl: Duration,
}

/// The outcome of a lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(Arc<Entry>),
    /// Go upstream; store the answer through the fill (if it is to be stored).
    Miss(Option<Fill>),
}

impl Cache {
    /// The cache of `config`; `redis` is the shared Redis, when `state.redis` is set.
    pub fn new(config: &CacheConfig, redis: Option<Arc<SharedRedis>>) -> Cache {
        let backend = match (config.backend, redis) {
            (CacheBackend::Redis, Some(redis)) => Backend::Redis(RedisCache::new(redis)),
            _ => Backend::Memory(MemoryStore::new(config.max_bytes)),
        };
        Cache {
            backend,
            inflight: Mutex::new(HashMap::new()),
            counts: CacheCounts::default(),
        }
    }

    /// Bytes held, entries and evictions of this process's store (all zero with Redis, whose
    /// own metrics say it).
    pub fn stats(&self) -> (u64, usize, u64) {
        match &self.backend {
            Backend::Memory(store) => (store.bytes(), store.entries(), store.evictions()),
            Backend::Redis(_) => (0, 0, 0),
        }
    }

    async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        match &self.backend {
            Backend::Memory(store) => store.get(key),
            Backend::Redis(store) => store.get(key).await,
        }
    }

    /// With Redis: the fill lock of `key` for this replica (`Ok(None)`: Redis is down, fill
    /// without one), or, when another replica holds it, whatever it stored by `deadline`.
    async fn lead_across_replicas(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<String>, Option<Arc<Entry>>> {
        let Backend::Redis(store) = &self.backend else {
            return Ok(None);
        };
        loop {
            if let Some(token) = store.lock(key).await {
                return Ok(Some(token));
            }
            if !store.is_up() {
                return Ok(None);
            }
            // Another replica is filling it: wait for its lock to go, then read its answer. The
            // holder stores the answer before it lets the lock go, so the lock is read first: an
            // answer read first could be missing, and the lock gone by the next read (the
            // holder stored and let go in between), and this replica would fill the key again.
            loop {
                if Instant::now() + redis_store::POLL > deadline {
                    return Err(None);
                }
                tokio::time::sleep(redis_store::POLL).await;
                if store.locked(key).await {
                    continue;
                }
                if let Some(entry) = store.get(key).await {
                    return Err(Some(entry));
                }
                // Let go without an answer (the fill failed, or its lock expired): lead.
                break;
            }
        }
    }

    /// What this request asks of the cache, if its route and model are cached; a malformed or
    /// too long `x-shepherd-cache-ttl` is a 400 that names it.
    pub fn ask(
        config: &CacheConfig,
        model_ttl: Option<Duration>,
        endpoint: Endpoint,
        key_id: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<Ask>, ApiError> {
        let route = endpoint.route();
        if !config.routes.iter().any(|r| r == route) {
            return Ok(None);
        }
        let control = headers
            .get_all(axum::http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|directive| directive.trim().to_ascii_lowercase())
            .collect::<Vec<_>>();
        let scope = match config.scope {
            CacheScope::Shared => "shared".to_owned(),
            CacheScope::Key => format!("key:{key_id}"),
        };
        let asked = match headers.get(TTL_HEADER) {
            None => None,
            Some(value) => {
                let text = value.to_str().unwrap_or("(not text)");
                Some(
                    bounds::duration(TTL_HEADER, text, bounds::MAX_CACHE_TTL)
                        .map_err(|message| ApiError::invalid_header(TTL_HEADER, &message))?,
                )
            }
        };
        let ttl = asked
            .or(model_ttl)
            .unwrap_or(config.ttl)
            .min(bounds::MAX_CACHE_TTL);
        let Some(key) = key::of(route, &scope, body) else {
            return Ok(None);
        };
        Ok(Some(Ask {
            key,
            skip_lookup: control.iter().any(|d| d == "no-cache"),
            skip_store: control.iter().any(|d| d == "no-store") || ttl.is_zero(),
            ttl,
        }))
    }

    /// Looks `ask` up; on a miss the caller may become the leader that fills the key, or wait
    /// (until `deadline`) for the leader already filling it and share its answer.
    pub async fn lookup(self: &Arc<Self>, ask: &Ask, deadline: Instant) -> Lookup {
        enum Role {
            Leader(watch::Sender<bool>),
            Follower(watch::Receiver<bool>),
            /// `no-cache`: neither waits nor makes others wait.
            Alone,
        }
        let mut waited = false;
        loop {
            if !ask.skip_lookup
                && let Some(entry) = self.get(&ask.key).await
            {
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                if waited {
                    self.counts.coalesced.fetch_add(1, Ordering::Relaxed);
                }
                return Lookup::Hit(entry);
            }
            if ask.skip_store {
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                return Lookup::Miss(None);
            }
            let role = {
                let mut inflight = lock(&self.inflight);
                match inflight.get(&ask.key) {
                    Some(_) if ask.skip_lookup => Role::Alone,
                    Some(done) => Role::Follower(done.clone()),
                    None => {
                        let (signal, done) = watch::channel(false);
                        inflight.insert(ask.key.clone(), done);
                        Role::Leader(signal)
                    }
                }
            };
            let signal = match role {
                Role::Leader(signal) => {
                    match self.lead_across_replicas(&ask.key, deadline).await {
                        Ok(lock) => {
                            self.counts.misses.fetch_add(1, Ordering::Relaxed);
                            return Lookup::Miss(Some(self.fill(ask, Some(signal), lock)));
                        }
                        Err(Some(entry)) => {
                            // Filled by another replica; this one's waiters read it too.
                            self.counts.hits.fetch_add(1, Ordering::Relaxed);
                            self.counts.coalesced.fetch_add(1, Ordering::Relaxed);
                            drop(self.fill(ask, Some(signal), None));
                            return Lookup::Hit(entry);
                        }
                        Err(None) => {
                            self.counts.misses.fetch_add(1, Ordering::Relaxed);
                            return Lookup::Miss(Some(self.fill(ask, Some(signal), None)));
                        }
                    }
                }
                Role::Alone => None,
                Role::Follower(mut done) => {
                    let finished = tokio::time::timeout_at(deadline, done.wait_for(|d| *d)).await;
                    if finished.is_err() {
                        // Out of time waiting: go upstream alone (and store, if it can).
                        self.counts.misses.fetch_add(1, Ordering::Relaxed);
                        return Lookup::Miss(Some(self.fill(ask, None, None)));
                    }
                    waited = true;
                    continue;
                }
            };
            self.counts.misses.fetch_add(1, Ordering::Relaxed);
            return Lookup::Miss(Some(self.fill(ask, signal, None)));
        }
    }

    fn fill(
        self: &Arc<Self>,
        ask: &Ask,
        signal: Option<watch::Sender<bool>>,
        lock: Option<String>,
    ) -> Fill {
        Fill {
            cache: self.clone(),
            key: ask.key.clone(),
            ttl: ask.ttl,
            signal,
            lock,
        }
    }
}

/// The right (and duty) to store the answer of a missed key; dropping it (stored or not)
/// wakes the requests that wait for this key.
#[derive(Debug)]
pub struct Fill {
    cache: Arc<Cache>,
    key: String,
    ttl: Duration,
    signal: Option<watch::Sender<bool>>,
    /// The fill lock in Redis, let go once stored (or when the fill ends without storing).
    lock: Option<String>,
}

impl Fill {
    /// Stores a complete, successful answer.
    pub fn store(
        mut self,
        answer: Option<ir::Response>,
        body: Option<Bytes>,
        deployment: Arc<str>,
    ) {
        let entry = Entry {
            answer,
            body,
            deployment,
            expires_at: bounds::later(Instant::now(), self.ttl),
        };
        match &self.cache.backend {
            Backend::Memory(store) => store.put(self.key.clone(), Arc::new(entry)),
            Backend::Redis(store) => store.put(&self.key, &entry, self.ttl, self.lock.take()),
        }
        self.cache.counts.stores.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        if let (Backend::Redis(store), Some(lock)) = (&self.cache.backend, self.lock.take()) {
            store.unlock(&self.key, Some(lock));
        }
        let Some(signal) = self.signal.take() else {
            return;
        };
        {
            let mut inflight = lock(&self.cache.inflight);
            let ours = inflight
                .get(&self.key)
                .is_some_and(|done| done.same_channel(&signal.subscribe()));
            if ours {
                inflight.remove(&self.key);
            }
        }
        let _ = signal.send(true);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
