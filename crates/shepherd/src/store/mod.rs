//! Durable state behind small traits: virtual keys (`KeyStore`) and the usage ledger
//! (`UsageStore`). The embedded default is SQLite (`sqlite.rs`); PostgreSQL (`postgres.rs`),
//! shared by replicas, implements the same traits. Stored Responses API answers
//! (`ResponseStore`, for `previous_response_id`) live there too. Nothing outside this module names a backend:
//! `open` picks it from the config. Nothing on a request's path calls these: keys are cached in
//! memory and usage is written in batches by a background writer.

pub mod postgres;
mod postgres_responses;
mod postgres_usage;
pub mod redis;
pub mod sqlite;
mod sqlite_responses;
mod sqlite_usage;

use std::sync::Arc;

use crate::config::Database;

use serde::Serialize;
use serde_json::Value;

/// A virtual key as stored: never its secret, only HMACs of it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub secret_hash: Vec<u8>,
    /// The secret before the last rotation, valid until `previous_until` (unix seconds).
    pub previous_hash: Option<Vec<u8>>,
    pub previous_until: Option<i64>,
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u32>,
    pub budget_nano_usd: Option<u64>,
    pub budget_period: Option<String>,
    pub expires_at: Option<i64>,
    pub metadata: Value,
    /// The model used when a request names none.
    pub default_model: Option<String>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub revoked_at: Option<i64>,
}

/// One request in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRecord {
    pub request_id: String,
    /// Unix milliseconds.
    pub ts_ms: i64,
    /// Shared with the key and the route table: no copy per request.
    pub key_id: Arc<str>,
    pub key_name: Arc<str>,
    pub model: Option<String>,
    pub deployment: Option<Arc<str>>,
    pub route: String,
    pub status: u16,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// `reported`, `estimated`, or none (no upstream answer).
    pub usage_source: Option<&'static str>,
    pub cost_nano_usd: u64,
    /// What a cache hit saved.
    pub saved_nano_usd: u64,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub cache_hit: bool,
    pub fallback: bool,
}

/// What a usage report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Key,
    Model,
    Deployment,
    Day,
    Hour,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<GroupBy> {
        match text.trim() {
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "deployment" => Some(GroupBy::Deployment),
            "day" => Some(GroupBy::Day),
            "hour" => Some(GroupBy::Hour),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GroupBy::Key => "key",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment",
            GroupBy::Day => "day",
            GroupBy::Hour => "hour",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub group_by: Vec<GroupBy>,
    /// Unix milliseconds, inclusive.
    pub from_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub to_ms: Option<i64>,
    /// Only this key (by id).
    pub key_id: Option<String>,
}

/// One line of a usage report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageRow {
    /// The value of each `group_by` field, in order.
    pub groups: Vec<(String, String)>,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    pub cost_nano_usd: u64,
    pub saved_nano_usd: u64,
    pub cache_hits: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(String),
    #[error("no key with id `{0}`")]
    NotFound(String),
}

pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces a key (and tells every process watching the store).
    fn save_key(&self, key: &StoredKey) -> Result<(), StoreError>;
    fn load_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Calls `changed` whenever a key changes in the store, from any process, and after the
    /// store comes back from an outage; returns false when the store cannot tell (the caller
    /// then reads the keys again every few seconds).
    fn watch_keys(&self, changed: Arc<dyn Fn() + Send + Sync>) -> bool {
        let _ = changed;
        false
    }
}

/// A Responses API answer kept so a conversation can continue from it (`previous_response_id`)
/// on any upstream and any replica. Only the key that made it can read or delete it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// `resp_…`.
    pub id: String,
    pub key_id: String,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds; past it, the response is gone.
    pub expires_ms: i64,
    /// The `response` object as the client got it (JSON).
    pub response: String,
    /// The conversation items that led to it (JSON array): the earlier turns and this
    /// request's input; continuing appends this response's output and the new input.
    pub input: String,
}

pub trait ResponseStore: Send + Sync {
    /// Inserts (or replaces) a stored response.
    fn save_response(&self, stored: &StoredResponse) -> Result<(), StoreError>;
    /// The response `id` of `key_id`, unless it expired before `now_ms`.
    fn load_response(
        &self,
        id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<Option<StoredResponse>, StoreError>;
    /// Removes the response `id` of `key_id`; whether there was one.
    fn delete_response(&self, id: &str, key_id: &str) -> Result<bool, StoreError>;
    /// Removes the responses expired before `now_ms`; returns how many.
    fn prune_responses(&self, now_ms: i64) -> Result<u64, StoreError>;
}

/// Keys, usage and stored responses together: what a database backend provides.
pub trait Store: KeyStore + UsageStore + ResponseStore {
    /// The backend's name, as metrics and `/readyz` say it.
    fn kind(&self) -> &'static str;
}

/// Creates or upgrades the schema of `database`; returns its version.
pub fn migrate(database: &Database) -> Result<usize, StoreError> {
    match database {
        Database::Sqlite(_) | Database::SqliteMemory => {
            sqlite::SqliteStore::open(database)?;
            Ok(sqlite::schema_version())
        }
        Database::Postgres(url) => postgres::migrate(url.expose()),
    }
}

/// Opens (creating and migrating when needed) the database of `database`.
pub fn open(database: &Database) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match database {
        Database::Sqlite(_) | Database::SqliteMemory => {
            Arc::new(sqlite::SqliteStore::open(database)?)
        }
        Database::Postgres(url) => postgres::PostgresStore::open(url.expose())?,
    })
}

pub trait UsageStore: Send + Sync + std::fmt::Debug {
    /// Appends records in one transaction.
    fn append(&self, records: &[UsageRecord]) -> Result<(), StoreError>;
    /// What a key spent since `since_ms`, in nano-dollars (rolled-up days included).
    fn spent(&self, key_id: &str, since_ms: i64) -> Result<u64, StoreError>;
    fn report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;
    /// Rolls records older than `before_ms` up into per-day sums and removes them; returns how
    /// many were removed.
    fn prune(&self, before_ms: i64) -> Result<u64, StoreError>;
    /// Whether the last write worked.
    fn health(&self) -> StoreHealth;
    /// Gives caches back after a burst (the writer calls it once it has been quiet a while).
    fn release_memory(&self) {}
}

/// Whether a store's writes work, and what is wrong when they do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    pub up: bool,
    pub detail: String,
}

impl StoreHealth {
    pub fn up() -> Self {
        StoreHealth {
            up: true,
            detail: "ok".to_owned(),
        }
    }

    pub fn down(detail: &str) -> Self {
        StoreHealth {
            up: false,
            detail: detail.to_owned(),
        }
    }
}
