//! The embedded store: one SQLite database (a file in WAL mode, or in memory) holding virtual
//! keys and the usage ledger (`sqlite_usage.rs`). One connection behind a mutex: writes are
//! batched by the usage writer, key changes are rare, and reports run off the request path.
//!
//! The store never takes the process down with it. Migrations run in one `BEGIN IMMEDIATE`
//! transaction, so replicas starting together on one file apply them once. A file that cannot be
//! written (read-only, immutable) is opened read-only and `immutable` (no shared memory is
//! mapped, so nothing can raise SIGBUS): keys are read, usage writes fail and stay buffered, and
//! the store reports itself down. Before each write the file is checked to be the one opened:
//! deleted, the database is written back to its path from the open connection (`VACUUM INTO`)
//! and reopened, so neither keys nor usage are lost; replaced, the new file is opened.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, params};
use serde_json::Value;

use super::{KeyStore, StoreError, StoreHealth, StoredKey};
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
    // Per-day sums of the rows past `state.usage_retention` (reports by day outlive the rows).
    "CREATE TABLE usage_daily (
        day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_name TEXT NOT NULL,
        model TEXT NOT NULL,
        deployment TEXT NOT NULL,
        route TEXT NOT NULL,
        requests INTEGER NOT NULL,
        errors INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_nano_usd INTEGER NOT NULL,
        saved_nano_usd INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL,
        PRIMARY KEY (day, key_id, model, deployment, route)
    );
    CREATE INDEX usage_daily_key ON usage_daily (key_id, day);",
    // Stored Responses API answers (`previous_response_id`), per key, until they expire.
    "CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        response TEXT NOT NULL,
        input TEXT NOT NULL
    );
    CREATE INDEX responses_expiry ON responses (expires_ms);",
];

#[derive(Debug)]
pub struct SqliteStore {
    pub(super) connection: Mutex<Connection>,
    /// The database file, when it is one.
    file: Option<FileWatch>,
    /// Opened read-only: writes fail at once.
    read_only: bool,
    health: Mutex<StoreHealth>,
}

/// The file the connection has open, to notice it deleted or replaced.
#[derive(Debug)]
struct FileWatch {
    path: PathBuf,
    identity: Mutex<Option<(u64, u64)>>,
}

pub(super) fn db(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// SQLite integers are signed; counts and nano-dollars stay far below `i64::MAX`.
pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The device and inode of a file.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|metadata| (metadata.dev(), metadata.ino()))
}

impl SqliteStore {
    pub fn open(database: &Database) -> Result<SqliteStore, StoreError> {
        let (connection, file, read_only) = match database {
            Database::SqliteMemory => (Connection::open_in_memory().map_err(db)?, None, false),
            Database::Sqlite(path) => {
                let (connection, read_only) = open_file(path)?;
                let watch = FileWatch {
                    path: path.clone(),
                    identity: Mutex::new(identity(path)),
                };
                (connection, Some(watch), read_only)
            }
            Database::Postgres(_) => {
                return Err(StoreError::Database(
                    "not a SQLite database (open it through store::open)".to_owned(),
                ));
            }
        };
        if read_only {
            check_schema(&connection)?;
        } else {
            migrate(&connection)?;
        }
        let health = if read_only {
            tracing::error!(database = %database_name(database),
                            "the database cannot be written: keys are read, usage is kept in memory and not saved");
            StoreHealth::down("the database file cannot be written (read-only)")
        } else {
            StoreHealth::up()
        };
        Ok(SqliteStore {
            connection: Mutex::new(connection),
            file,
            read_only,
            health: Mutex::new(health),
        })
    }

    pub(super) fn connection(&self) -> MutexGuard<'_, Connection> {
        match self.connection.lock() {
            Ok(connection) => connection,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn health(&self) -> StoreHealth {
        match self.health.lock() {
            Ok(health) => health.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn set_health(&self, health: StoreHealth) {
        let mut current = match self.health.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.up != health.up {
            if health.up {
                tracing::info!("the usage database works again");
            } else {
                tracing::error!(problem = %health.detail, "the usage database fails; usage is kept in memory and retried");
            }
        }
        *current = health;
    }

    /// Before a write: fails at once when read-only, and makes sure the connection still has
    /// the file at the configured path (written back if deleted, reopened if replaced).
    pub(super) fn ready_to_write(&self) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::Database(
                "the database file cannot be written (read-only)".to_owned(),
            ));
        }
        let Some(file) = &self.file else {
            return Ok(());
        };
        let now = identity(&file.path);
        let mut known = match file.identity.lock() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        if now.is_some() && now == *known {
            return Ok(());
        }
        let mut connection = self.connection();
        if now.is_none() {
            tracing::error!(database = %file.path.display(),
                            "the database file was deleted; writing it back from the open connection");
            let target = file.path.to_string_lossy().into_owned();
            connection
                .execute("VACUUM INTO ?1", params![target])
                .map_err(|error| {
                    StoreError::Database(format!(
                        "the database file was deleted and cannot be written back: {error}"
                    ))
                })?;
        } else {
            tracing::warn!(database = %file.path.display(),
                           "the database file was replaced; opening the new one");
        }
        let (reopened, read_only) = open_file(&file.path)?;
        if read_only {
            return Err(StoreError::Database(
                "the new database file cannot be written".to_owned(),
            ));
        }
        migrate(&reopened)?;
        *connection = reopened;
        *known = identity(&file.path);
        Ok(())
    }
}

fn database_name(database: &Database) -> String {
    match database {
        Database::SqliteMemory => "sqlite::memory:".to_owned(),
        Database::Sqlite(path) => path.display().to_string(),
        Database::Postgres(url) => crate::redact::url_without_password(url.expose()).into_owned(),
    }
}

/// Opens a database file for writing (WAL), or, when it cannot be written, read-only and
/// immutable; returns whether it is read-only.
fn open_file(path: &Path) -> Result<(Connection, bool), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|error| {
            StoreError::Database(format!("cannot create {}: {error}", dir.display()))
        })?;
    }
    let writable = !path.exists()
        || std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .is_ok();
    if !writable {
        let uri = format!("file:{}?immutable=1", path.display());
        let connection = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|error| StoreError::Database(format!("{}: {error}", path.display())))?;
        return Ok((connection, true));
    }
    let connection = Connection::open(path)
        .map_err(|error| StoreError::Database(format!("{}: {error}", path.display())))?;
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)?;
    // Switching to WAL needs the file to itself for a moment: processes starting together
    // may find it busy (SQLite does not wait for this one), so try again a little later.
    let mut tries = 0;
    while let Err(error) = connection.pragma_update(None, "journal_mode", "WAL") {
        tries += 1;
        if tries >= 100 {
            return Err(db(error));
        }
        std::thread::sleep(std::time::Duration::from_millis(20 + fastrand::u64(..30)));
    }
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(db)?;
    // 2 MiB of page cache: the ledger's indexes grow at their right edge (time, key + time), so
    // the pages an insert touches stay cached and inserts cost the same at 5 million rows
    // (bench `--ledger-rows 5000000`); a bigger cache only held memory (16 MiB: +14 MB of RSS).
    connection
        .pragma_update(None, "cache_size", -2_048)
        .map_err(db)?;
    Ok((connection, false))
}

/// Applies the migrations not applied yet, in one write transaction: two processes starting at
/// once on one file wait for each other and apply each migration once.
fn migrate(connection: &Connection) -> Result<(), StoreError> {
    connection
        .busy_timeout(std::time::Duration::from_secs(30))
        .map_err(db)?;
    connection.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
    let applied = (|| {
        let applied: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(db)?;
        for (n, migration) in MIGRATIONS.iter().enumerate().skip(uint(applied) as usize) {
            connection.execute_batch(migration).map_err(db)?;
            connection
                .pragma_update(None, "user_version", int(n as u64 + 1))
                .map_err(db)?;
        }
        Ok(())
    })();
    match applied {
        Ok(()) => connection.execute_batch("COMMIT").map_err(db)?,
        Err(error) => {
            let _ = connection.execute_batch("ROLLBACK");
            return Err(error);
        }
    }
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db)
}

/// A read-only database must already have the schema this version writes.
fn check_schema(connection: &Connection) -> Result<(), StoreError> {
    let applied: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db)?;
    if uint(applied) < MIGRATIONS.len() as u64 {
        return Err(StoreError::Database(format!(
            "the database is read-only and its schema is older than this version ({applied} of {} migrations)",
            MIGRATIONS.len()
        )));
    }
    Ok(())
}

/// The number of schema migrations this version knows.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

impl super::Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

impl KeyStore for SqliteStore {
    fn save_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        self.ready_to_write()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path() -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("shepherd-store-{}", fastrand::u64(..)));
        let path = dir.join("nested").join("shepherd.db");
        (dir, path)
    }

    pub(crate) fn key(id: &str) -> StoredKey {
        StoredKey {
            id: id.into(),
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
        }
    }

    #[test]
    fn keys_round_trip_and_migrations_are_idempotent() {
        let (dir, path) = temp_path();
        let store = SqliteStore::open(&Database::Sqlite(path.clone())).unwrap();
        let key = key("abcdefghijkl");
        store.save_key(&key).unwrap();
        drop(store);
        let reopened = SqliteStore::open(&Database::Sqlite(path)).unwrap();
        assert_eq!(reopened.load_keys().unwrap(), vec![key]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn processes_starting_together_apply_each_migration_once() {
        let (dir, path) = temp_path();
        let starts: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&Database::Sqlite(path)).map(|_| ()))
            })
            .collect();
        for start in starts {
            start.join().unwrap().unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_deleted_database_file_is_written_back_with_its_keys() {
        let (dir, path) = temp_path();
        let store = SqliteStore::open(&Database::Sqlite(path.clone())).unwrap();
        store.save_key(&key("keptthrough1")).unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        store.save_key(&key("afterdelete2")).unwrap();
        assert!(path.exists(), "the file is back");
        drop(store);
        let reopened = SqliteStore::open(&Database::Sqlite(path)).unwrap();
        let ids: std::collections::BTreeSet<String> = reopened
            .load_keys()
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(
            ids,
            ["afterdelete2", "keptthrough1"].map(str::to_owned).into()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
