//! The shared Redis (`state.redis`): one multiplexed connection per process (the `redis` crate's
//! `ConnectionManager`, which pipelines concurrent commands and reconnects by itself), whether
//! Redis is up, and how many replicas share it.
//!
//! A background task connects (the gateway starts even when Redis is down), then every second
//! writes this replica's heartbeat and counts the live ones (a sorted set scored by the last
//! beat). That beat is the health check: while it fails, or after any command failed, Redis is
//! down and callers use their local fallback without waiting on it; the first beat that works
//! brings it back. Transitions are logged once each.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError};

use super::StoreHealth;
use crate::config::RedisConfig;

/// How often the heartbeat runs (and so how soon a recovered Redis is used again).
const BEAT: Duration = Duration::from_secs(1);
/// A replica whose last beat is older than this no longer counts.
const REPLICA_TTL_MS: i64 = 5_000;

#[derive(Debug)]
pub struct SharedRedis {
    pub config: RedisConfig,
    client: Option<Client>,
    manager: OnceLock<ConnectionManager>,
    up: AtomicBool,
    /// Replicas seen at the last beat (at least 1: this one).
    replicas: AtomicU32,
    replica_id: String,
    detail: Mutex<String>,
}

impl SharedRedis {
    /// Prepares the connection and starts the heartbeat (on the current tokio runtime, if any).
    pub fn start(config: &RedisConfig) -> Arc<SharedRedis> {
        let client = client_of(config);
        let detail = match &client {
            Ok(_) => "connecting".to_owned(),
            Err(error) => format!("redis: {error}"),
        };
        if let Err(error) = &client {
            tracing::error!(%error, "state.redis: cannot use this URL");
        }
        let redis = Arc::new(SharedRedis {
            config: config.clone(),
            client: client.ok(),
            manager: OnceLock::new(),
            up: AtomicBool::new(false),
            replicas: AtomicU32::new(1),
            replica_id: format!("{:016x}", fastrand::u64(..)),
            detail: Mutex::new(detail),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(heartbeat(Arc::downgrade(&redis)));
        }
        redis
    }

    /// The connection, while Redis is up; `None` means use the fallback.
    pub fn connection(&self) -> Option<ConnectionManager> {
        if self.up.load(Ordering::Acquire) {
            self.manager.get().cloned()
        } else {
            None
        }
    }

    /// The connection even while Redis counts as down (background work that may retry).
    pub fn any_connection(&self) -> Option<ConnectionManager> {
        self.manager.get().cloned()
    }

    /// This process's id among the replicas.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A command failed: Redis counts as down until the next beat works.
    pub fn failed(&self, error: &RedisError) {
        self.set_down(&error.to_string());
    }

    /// A command took longer than `state.redis_timeout`.
    pub fn timed_out(&self) {
        self.set_down("timed out");
    }

    fn set_down(&self, why: &str) {
        *lock(&self.detail) = format!("redis: {why}");
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::error!(
                error = why,
                on_failure = ?self.config.on_failure,
                "state.redis is down: limits fall back to this replica's share (open) or refuse (closed) until it is back"
            );
        }
    }

    fn set_up(&self, replicas: u32) {
        self.replicas.store(replicas.max(1), Ordering::Relaxed);
        *lock(&self.detail) = "ok".to_owned();
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(replicas, "state.redis is up");
        }
    }

    /// Replicas sharing this Redis at the last beat (1 when unknown).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// `prefix` + `name`: every key Shepherd writes.
    pub fn key(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.config.prefix.len() + name.len());
        key.push_str(&self.config.prefix);
        key.push_str(name);
        key
    }

    /// Runs `command` within `state.redis_timeout`; a connection failure or a timeout marks
    /// Redis down (an error Redis answered does not: it is logged).
    pub async fn within<T>(
        &self,
        command: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.config.timeout, command).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) if is_outage(&error) => {
                self.failed(&error);
                None
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis answered with an error");
                None
            }
            Err(_) => {
                self.timed_out();
                None
            }
        }
    }

    pub fn health(&self) -> StoreHealth {
        if self.is_up() {
            StoreHealth::up()
        } else {
            StoreHealth::down(&lock(&self.detail))
        }
    }
}

/// Whether `error` means Redis cannot be reached (rather than an answer it gave).
pub fn is_outage(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The client of `config`: its URL, with `redis_username`/`redis_password` when given.
fn client_of(config: &RedisConfig) -> Result<Client, String> {
    let info = config
        .url
        .expose()
        .into_connection_info()
        .map_err(|error| error.to_string())?;
    let mut settings = info.redis_settings().clone();
    if let Some(username) = &config.username {
        settings = settings.set_username(username.expose());
    }
    if let Some(password) = &config.password {
        settings = settings.set_password(password.expose());
    }
    Client::open(info.set_redis_settings(settings)).map_err(|error| error.to_string())
}

/// Connects (retrying), then beats every second until the `SharedRedis` is dropped.
async fn heartbeat(redis: Weak<SharedRedis>) {
    let mut ticks = tokio::time::interval(BEAT);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(redis) = redis.upgrade() else { return };
        let Some(client) = redis.client.clone() else {
            return;
        };
        if redis.manager.get().is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(redis.config.timeout.max(Duration::from_secs(1))))
                .set_response_timeout(Some(redis.config.timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            match client.get_connection_manager_with_config(config).await {
                Ok(manager) => {
                    let _ = redis.manager.set(manager);
                }
                Err(error) => {
                    redis.failed(&error);
                    continue;
                }
            }
        }
        beat(&redis).await;
    }
}

/// Writes this replica's beat and counts the live replicas.
async fn beat(redis: &SharedRedis) {
    let Some(mut connection) = redis.any_connection() else {
        return;
    };
    let key = redis.key("replicas");
    let now_ms = crate::governance::admission::now_ms();
    let mut pipe = redis::pipe();
    pipe.zadd(&key, &redis.replica_id, now_ms)
        .ignore()
        .zrembyscore(&key, "-inf", now_ms - REPLICA_TTL_MS)
        .ignore()
        .pexpire(&key, REPLICA_TTL_MS * 2)
        .ignore()
        .zcard(&key);
    let counted: Option<(u32,)> = redis.within(pipe.query_async(&mut connection)).await;
    if let Some((replicas,)) = counted {
        redis.set_up(replicas);
    }
}
