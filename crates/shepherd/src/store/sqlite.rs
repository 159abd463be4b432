//! The embedded store: one SQLite database (a file in WAL mode, or in memory) holding virtual
//! keys and the usage ledger. One connection behind a mutex: writes are batched by the usage
//! writer, key changes are rare, and reports run off the request path.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::Value;

use super::{
    GroupBy, KeyStore, StoreError, StoredKey, UsageQuery, UsageRecord, UsageRow, UsageStore,
};
use crate::config::Database;

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash BLOB NOT NULL,
        previous_hash BLOB,
        previous_until INTEGER,
        models TEXT NOT NULL,
        rpm INTEGER,
        tpm INTEGER,
        concurrency INTEGER,
        budget_nano_usd INTEGER,
        budget_period TEXT,
        expires_at INTEGER,
        metadata TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE usage (
        request_id TEXT NOT NULL,
        ts_ms INTEGER NOT NULL,
        key_id TEXT NOT NULL,
        key_name TEXT NOT NULL,
        model TEXT,
        deployment TEXT,
        route TEXT NOT NULL,
        status INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        usage_source TEXT,
        cost_nano_usd INTEGER NOT NULL,
        saved_nano_usd INTEGER NOT NULL,
        latency_ms REAL NOT NULL,
        ttft_ms REAL,
        cache_hit INTEGER NOT NULL,
        fallback INTEGER NOT NULL
    );
    CREATE INDEX usage_ts ON usage (ts_ms);
    CREATE INDEX usage_key_ts ON usage (key_id, ts_ms);",
    "ALTER TABLE keys ADD COLUMN default_model TEXT;",
];

#[derive(Debug)]
pub struct SqliteStore {
    connection: Mutex<Connection>,
}

fn db(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// SQLite integers are signed; counts and nano-dollars stay far below `i64::MAX`.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl SqliteStore {
    pub fn open(database: &Database) -> Result<SqliteStore, StoreError> {
        let connection = match database {
            Database::SqliteMemory => Connection::open_in_memory().map_err(db)?,
            Database::Sqlite(path) => open_file(path)?,
        };
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        migrate(&connection)?;
        Ok(SqliteStore {
            connection: Mutex::new(connection),
        })
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        match self.connection.lock() {
            Ok(connection) => connection,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

fn open_file(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| {
            StoreError::Database(format!("cannot create {}: {error}", dir.display()))
        })?;
    }
    let connection = Connection::open(path)
        .map_err(|error| StoreError::Database(format!("{}: {error}", path.display())))?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(db)?;
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(db)?;
    Ok(connection)
}

fn migrate(connection: &Connection) -> Result<(), StoreError> {
    let applied: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db)?;
    for (n, migration) in MIGRATIONS.iter().enumerate().skip(uint(applied) as usize) {
        connection.execute_batch(migration).map_err(db)?;
        connection
            .pragma_update(
                None,
                "user_version",
                i64::try_from(n + 1).unwrap_or(i64::MAX),
            )
            .map_err(db)?;
    }
    Ok(())
}

impl KeyStore for SqliteStore {
    fn save_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let models = Value::from(key.models.clone()).to_string();
        self.connection()
            .execute(
                "INSERT OR REPLACE INTO keys (id, name, secret_hash, previous_hash, previous_until,
                    models, rpm, tpm, concurrency, budget_nano_usd, budget_period, expires_at,
                    metadata, enabled, created_at, updated_at, revoked_at, default_model)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                    ?18)",
                params![
                    key.id,
                    key.name,
                    key.secret_hash,
                    key.previous_hash,
                    key.previous_until,
                    models,
                    key.rpm.map(int),
                    key.tpm.map(int),
                    key.concurrency,
                    key.budget_nano_usd.map(int),
                    key.budget_period,
                    key.expires_at,
                    key.metadata.to_string(),
                    key.enabled,
                    key.created_at,
                    key.updated_at,
                    key.revoked_at,
                    key.default_model,
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    fn load_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let connection = self.connection();
        let mut statement = connection
            .prepare(
                "SELECT id, name, secret_hash, previous_hash, previous_until, models, rpm, tpm,
                    concurrency, budget_nano_usd, budget_period, expires_at, metadata, enabled,
                    created_at, updated_at, revoked_at, default_model
                 FROM keys ORDER BY created_at, id",
            )
            .map_err(db)?;
        let rows = statement
            .query_map([], |row| {
                let models: String = row.get(5)?;
                let metadata: String = row.get(12)?;
                Ok(StoredKey {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    secret_hash: row.get(2)?,
                    previous_hash: row.get(3)?,
                    previous_until: row.get(4)?,
                    models: serde_json::from_str(&models).unwrap_or_default(),
                    rpm: row.get::<_, Option<i64>>(6)?.map(uint),
                    tpm: row.get::<_, Option<i64>>(7)?.map(uint),
                    concurrency: row.get(8)?,
                    budget_nano_usd: row.get::<_, Option<i64>>(9)?.map(uint),
                    budget_period: row.get(10)?,
                    expires_at: row.get(11)?,
                    metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
                    enabled: row.get(13)?,
                    created_at: row.get(14)?,
                    updated_at: row.get(15)?,
                    revoked_at: row.get(16)?,
                    default_model: row.get(17)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(db)
    }
}

impl UsageStore for SqliteStore {
    fn append(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(db)?;
        {
            let mut insert = transaction
                .prepare(
                    "INSERT INTO usage (request_id, ts_ms, key_id, key_name, model, deployment,
                        route, status, stream, prompt_tokens, completion_tokens, cached_tokens,
                        reasoning_tokens, usage_source, cost_nano_usd, saved_nano_usd, latency_ms,
                        ttft_ms, cache_hit, fallback)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                        ?16, ?17, ?18, ?19, ?20)",
                )
                .map_err(db)?;
            for r in records {
                insert
                    .execute(params![
                        r.request_id,
                        r.ts_ms,
                        r.key_id,
                        r.key_name,
                        r.model,
                        r.deployment,
                        r.route,
                        r.status,
                        r.stream,
                        int(r.prompt_tokens),
                        int(r.completion_tokens),
                        int(r.cached_tokens),
                        int(r.reasoning_tokens),
                        r.usage_source,
                        int(r.cost_nano_usd),
                        int(r.saved_nano_usd),
                        r.latency_ms,
                        r.ttft_ms,
                        r.cache_hit,
                        r.fallback,
                    ])
                    .map_err(db)?;
            }
        }
        transaction.commit().map_err(db)
    }

    fn spent(&self, key_id: &str, since_ms: i64) -> Result<u64, StoreError> {
        let spent: Option<i64> = self
            .connection()
            .query_row(
                "SELECT SUM(cost_nano_usd) FROM usage WHERE key_id = ?1 AND ts_ms >= ?2",
                params![key_id, since_ms],
                |row| row.get(0),
            )
            .optional()
            .map_err(db)?
            .flatten();
        Ok(spent.map_or(0, uint))
    }

    fn report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let columns: Vec<&str> = query
            .group_by
            .iter()
            .map(|group| match group {
                GroupBy::Key => "key_name",
                GroupBy::Model => "COALESCE(model, '')",
                GroupBy::Deployment => "COALESCE(deployment, '')",
                GroupBy::Day => "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')",
                GroupBy::Hour => "strftime('%Y-%m-%dT%H:00', ts_ms / 1000, 'unixepoch')",
            })
            .collect();
        let mut conditions = vec!["1 = 1".to_owned()];
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(from) = query.from_ms {
            values.push(from.into());
            conditions.push(format!("ts_ms >= ?{}", values.len()));
        }
        if let Some(to) = query.to_ms {
            values.push(to.into());
            conditions.push(format!("ts_ms < ?{}", values.len()));
        }
        if let Some(key) = &query.key_id {
            values.push(key.clone().into());
            conditions.push(format!("key_id = ?{}", values.len()));
        }
        let selected = columns
            .iter()
            .map(|column| format!("{column}, "))
            .collect::<String>();
        let group = if columns.is_empty() {
            String::new()
        } else {
            format!(
                " GROUP BY {0} ORDER BY {0}",
                (1..=columns.len())
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let sql = format!(
            "SELECT {selected}COUNT(*), SUM(status >= 400), SUM(prompt_tokens),
                SUM(completion_tokens), SUM(cached_tokens), SUM(reasoning_tokens),
                SUM(cost_nano_usd), SUM(saved_nano_usd), SUM(cache_hit)
             FROM usage WHERE {}{group}",
            conditions.join(" AND ")
        );
        let connection = self.connection();
        let mut statement = connection.prepare(&sql).map_err(db)?;
        let width = columns.len();
        let rows = statement
            .query_map(params_from_iter(values), |row| {
                let mut groups = Vec::with_capacity(width);
                for (n, group) in query.group_by.iter().enumerate() {
                    groups.push((group.name().to_owned(), row.get::<_, String>(n)?));
                }
                let sum = |n: usize| -> rusqlite::Result<u64> {
                    Ok(row.get::<_, Option<i64>>(width + n)?.map_or(0, uint))
                };
                Ok(UsageRow {
                    groups,
                    requests: sum(0)?,
                    errors: sum(1)?,
                    prompt_tokens: sum(2)?,
                    completion_tokens: sum(3)?,
                    cached_tokens: sum(4)?,
                    reasoning_tokens: sum(5)?,
                    cost_nano_usd: sum(6)?,
                    saved_nano_usd: sum(7)?,
                    cache_hits: sum(8)?,
                })
            })
            .map_err(db)?;
        let rows = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
        // An empty ledger reports no line, not one line of zeros.
        Ok(rows.into_iter().filter(|row| row.requests > 0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, model: &str, ts_ms: i64, cost: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("r{ts_ms}"),
            ts_ms,
            key_id: key.to_owned(),
            key_name: format!("name-{key}"),
            model: Some(model.to_owned()),
            deployment: Some(format!("p/{model}")),
            route: "/v1/chat/completions".to_owned(),
            status: 200,
            stream: false,
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 2,
            reasoning_tokens: 1,
            usage_source: Some("reported"),
            cost_nano_usd: cost,
            saved_nano_usd: 0,
            latency_ms: 12.5,
            ttft_ms: Some(3.0),
            cache_hit: false,
            fallback: false,
        }
    }

    #[test]
    fn keys_round_trip_and_migrations_are_idempotent() {
        let dir = std::env::temp_dir().join(format!("shepherd-store-{}", fastrand::u64(..)));
        let path = dir.join("nested").join("shepherd.db");
        let store = SqliteStore::open(&Database::Sqlite(path.clone())).unwrap();
        let key = StoredKey {
            id: "abcdefghijkl".into(),
            name: "svc".into(),
            secret_hash: vec![1; 32],
            previous_hash: None,
            previous_until: None,
            models: vec!["gpt-*".into()],
            rpm: Some(60),
            tpm: None,
            concurrency: Some(3),
            budget_nano_usd: Some(5_000_000_000),
            budget_period: Some("month".into()),
            expires_at: None,
            metadata: serde_json::json!({"team": "search"}),
            default_model: Some("gpt-4.1".into()),
            enabled: true,
            created_at: 1,
            updated_at: 1,
            revoked_at: None,
        };
        store.save_key(&key).unwrap();
        drop(store);
        let reopened = SqliteStore::open(&Database::Sqlite(path)).unwrap();
        assert_eq!(reopened.load_keys().unwrap(), vec![key]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn usage_sums_and_groups() {
        let store = SqliteStore::open(&Database::SqliteMemory).unwrap();
        assert!(store.report(&UsageQuery::default()).unwrap().is_empty());
        let day = 86_400_000;
        store
            .append(&[
                record("a", "m1", 1000, 100),
                record("a", "m2", 2000, 200),
                record("b", "m1", day + 5, 400),
            ])
            .unwrap();
        assert_eq!(store.spent("a", 0).unwrap(), 300);
        assert_eq!(store.spent("a", 1500).unwrap(), 200);
        assert_eq!(store.spent("nobody", 0).unwrap(), 0);
        let rows = store
            .report(&UsageQuery {
                group_by: vec![GroupBy::Key, GroupBy::Day],
                ..UsageQuery::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].groups,
            vec![
                ("key".into(), "name-a".into()),
                ("day".into(), "1970-01-01".into())
            ]
        );
        assert_eq!(
            (
                rows[0].requests,
                rows[0].prompt_tokens,
                rows[0].cost_nano_usd
            ),
            (2, 20, 300)
        );
        assert_eq!(rows[1].groups[1].1, "1970-01-02");
        let total = store
            .report(&UsageQuery {
                from_ms: Some(1500),
                ..UsageQuery::default()
            })
            .unwrap();
        assert_eq!((total[0].requests, total[0].cost_nano_usd), (2, 600));
    }
}
