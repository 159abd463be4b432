//! PostgreSQL: virtual keys and the usage ledger (`postgres_usage.rs`) in one database shared by
//! every replica.
//!
//! The synchronous `postgres` client runs its own small runtime and blocks on it, which panics on
//! a tokio runtime thread, and the store is called from async handlers, from the usage writer's
//! thread and at startup. So the clients live on threads of their own: each trait method sends a
//! job over a channel and waits for the answer (a blocking wait, as with SQLite's mutex). Two
//! connections, two threads: one for ledger writes (`append`, `prune`), so a large batch never
//! delays a key read or an admin call, and one for everything else. `watch_keys` adds a third,
//! listening for key changes.
//!
//! The store never takes the process down with it. A query that fails on a closed or broken
//! connection drops it; the next job connects again (with a connect timeout) and the failed one
//! returns an error meanwhile. Work that may run twice (reads, key upserts, prune slices) and
//! fails on a reused connection found broken is tried once more on a fresh one (a server
//! restart costs no error); ledger appends are not (the usage writer retries them). A connection
//! idle for a second is checked before use. `health` says whether the last write worked.
//!
//! Migrations run at open in one transaction under an advisory lock, so replicas starting
//! together on one database apply each of them once; `shepherd_schema` records how many are
//! applied. Key changes are announced with `NOTIFY shepherd_keys` in the transaction that makes
//! them, so every replica hears of them at once.
//!
//! TLS is out of scope: connections are made without it (`NoTls`); reach the database over a
//! trusted network or a local TLS proxy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config, NoTls};
use serde_json::Value;

use super::{KeyStore, StoreError, StoreHealth, StoredKey};

/// Schema migrations, applied in order; `shepherd_schema.version` counts those applied. The
/// same steps as SQLite's, so both say the same version.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_hash BYTEA NOT NULL,
        previous_hash BYTEA,
        previous_until BIGINT,
        models TEXT NOT NULL,
        rpm BIGINT,
        tpm BIGINT,
        concurrency BIGINT,
        budget_nano_usd BIGINT,
        budget_period TEXT,
        expires_at BIGINT,
        metadata TEXT NOT NULL,
        enabled BOOLEAN NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        revoked_at BIGINT
    );
    CREATE TABLE usage (
        request_id TEXT NOT NULL,
        ts_ms BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        key_name TEXT NOT NULL,
        model TEXT,
        deployment TEXT,
        route TEXT NOT NULL,
        status INTEGER NOT NULL,
        stream BOOLEAN NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL,
        usage_source TEXT,
        cost_nano_usd BIGINT NOT NULL,
        saved_nano_usd BIGINT NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        ttft_ms DOUBLE PRECISION,
        cache_hit BOOLEAN NOT NULL,
        fallback BOOLEAN NOT NULL
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
        requests BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        completion_tokens BIGINT NOT NULL,
        cached_tokens BIGINT NOT NULL,
        reasoning_tokens BIGINT NOT NULL,
        cost_nano_usd BIGINT NOT NULL,
        saved_nano_usd BIGINT NOT NULL,
        cache_hits BIGINT NOT NULL,
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

/// The advisory lock that serializes migrations ("SHEPHERD" in ASCII).
const MIGRATION_LOCK: i64 = 0x5348_4550_4845_5244;
/// The advisory lock that serializes prunes across replicas.
pub(super) const PRUNE_LOCK: i64 = MIGRATION_LOCK + 1;
/// The channel key changes are announced on.
const CHANNEL: &str = "shepherd_keys";
/// How long connecting may take, unless the URL says otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection unused for this long is checked (one round trip) before a job uses it.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How often the listener checks its connection while no notification comes.
const LISTEN_CHECK: Duration = Duration::from_secs(10);

/// Work for a connection thread.
pub(super) type Job = Box<dyn FnOnce(&mut Session) + Send>;

pub struct PostgresStore {
    /// Key reads and writes, reports, spending.
    pub(super) general: mpsc::Sender<Job>,
    /// Ledger writes: `append` and `prune`.
    pub(super) ledger: mpsc::Sender<Job>,
    config: Config,
    /// Where the database is, without the password (for logs).
    target: String,
    health: Mutex<StoreHealth>,
    /// Tells the listener threads to end (set on drop).
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The connection threads end when their channels close; the listeners see this.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// PostgreSQL integers are signed; counts and nano-dollars past `i64::MAX` are clamped.
pub(super) fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// What went wrong, for errors and `/readyz`: never the connection string.
fn describe(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("postgres: {} (SQLSTATE {})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(source) => format!("postgres: {error}: {source}"),
        None => format!("postgres: {error}"),
    }
}

pub(super) fn failure(error: &postgres::Error) -> StoreError {
    StoreError::Database(describe(error))
}

/// Whether an error means the connection cannot be used again.
fn broken(error: &postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => matches!(db.severity(), "FATAL" | "PANIC"),
        // Not an answer from the server: the connection failed (or is suspect).
        None => true,
    }
}

/// The connection settings of `url`: a connect timeout and an application name unless the URL
/// sets them. Errors never quote the URL (it may hold a password).
fn parse(url: &str) -> Result<Config, StoreError> {
    let mut config: Config = url.parse().map_err(|error: postgres::Error| {
        let cause = std::error::Error::source(&error)
            .map(|cause| format!(": {cause}"))
            .unwrap_or_default();
        StoreError::Database(format!("postgres: invalid connection URL{cause}"))
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("shepherd");
    }
    Ok(config)
}

/// `user@host:port/db` of a config, for logs.
fn target(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "postgres://{}@{}:{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        ports.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// The connection of one thread, made when a job needs it.
pub(super) struct Session {
    config: Config,
    client: Option<Client>,
    last_used: Instant,
}

impl Session {
    /// A usable connection: the current one if it still works, else a new one.
    fn client(&mut self) -> Result<(&mut Client, bool), StoreError> {
        let mut reused = false;
        if let Some(client) = self.client.as_mut() {
            reused = !client.is_closed()
                && (self.last_used.elapsed() < IDLE_CHECK
                    || client.is_valid(CONNECT_TIMEOUT).is_ok());
        }
        if !reused {
            self.client = None;
            self.client = Some(self.config.connect(NoTls).map_err(|e| failure(&e))?);
        }
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| StoreError::Database("postgres: no connection".to_owned()))?;
        Ok((client, reused))
    }

    /// Runs `work` on the connection; work that may run twice (`retry`) and fails on a reused
    /// connection found broken runs once more on a new one.
    fn run<T>(
        &mut self,
        retry: bool,
        mut work: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        loop {
            let (client, reused) = self.client()?;
            let result = work(client);
            self.last_used = Instant::now();
            let error = match result {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let closed = self.client.as_ref().is_none_or(Client::is_closed);
            if !(closed || broken(&error)) {
                return Err(failure(&error));
            }
            self.client = None;
            if !(retry && reused) {
                return Err(failure(&error));
            }
        }
    }
}

/// Starts a connection thread; jobs sent to it run in order.
fn spawn_worker(name: &str, config: &Config) -> Result<mpsc::Sender<Job>, StoreError> {
    let (sender, jobs) = mpsc::channel::<Job>();
    let mut session = Session {
        config: config.clone(),
        client: None,
        last_used: Instant::now(),
    };
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            while let Ok(job) = jobs.recv() {
                job(&mut session);
            }
        })
        .map_err(|error| {
            StoreError::Database(format!("postgres: cannot start a thread: {error}"))
        })?;
    Ok(sender)
}

fn stopped() -> StoreError {
    StoreError::Database("postgres: the connection thread stopped".to_owned())
}

/// Runs `work` on the thread behind `worker` and waits for its answer; `retry` for work that
/// may run twice (see `Session::run`).
pub(super) fn call<T: Send + 'static>(
    worker: &mpsc::Sender<Job>,
    retry: bool,
    work: impl FnMut(&mut Client) -> Result<T, postgres::Error> + Send + 'static,
) -> Result<T, StoreError> {
    let (answer, answered) = mpsc::sync_channel(1);
    let job: Job = Box::new(move |session: &mut Session| {
        let _ = answer.send(session.run(retry, work));
    });
    worker.send(job).map_err(|_| stopped())?;
    answered.recv().map_err(|_| stopped())?
}

/// Applies the migrations not applied yet, in one transaction under an advisory lock: processes
/// starting together on one database wait for each other and apply each migration once.
/// Returns the schema version.
fn apply_migrations(client: &mut Client) -> Result<usize, postgres::Error> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    transaction.batch_execute(
        "CREATE TABLE IF NOT EXISTS shepherd_schema (version INTEGER NOT NULL);
         INSERT INTO shepherd_schema (version)
            SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM shepherd_schema);",
    )?;
    let applied: Option<i32> = transaction
        .query_one("SELECT MAX(version) FROM shepherd_schema", &[])?
        .try_get(0)?;
    let applied = usize::try_from(applied.unwrap_or(0)).unwrap_or(0);
    for migration in MIGRATIONS.iter().skip(applied) {
        transaction.batch_execute(migration)?;
    }
    let version = applied.max(MIGRATIONS.len());
    if applied < MIGRATIONS.len() {
        let version = i32::try_from(version).unwrap_or(i32::MAX);
        transaction.execute("UPDATE shepherd_schema SET version = $1", &[&version])?;
    }
    transaction.commit()?;
    Ok(version)
}

/// Creates or updates the schema of the database at `url` and returns its version (for
/// `shepherd migrate`). Safe to call from anywhere, a tokio runtime included.
pub fn migrate(url: &str) -> Result<usize, StoreError> {
    let config = parse(url)?;
    let worker = spawn_worker("shepherd-pg-migrate", &config)?;
    call(&worker, false, apply_migrations)
}

/// The number of schema migrations this version knows.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

impl PostgresStore {
    /// Connects (both connections, so a wrong URL fails here) and migrates the schema.
    pub fn open(url: &str) -> Result<Arc<dyn super::Store>, StoreError> {
        let config = parse(url)?;
        let target = target(&config);
        let general = spawn_worker("shepherd-pg", &config)?;
        let ledger = spawn_worker("shepherd-pg-ledger", &config)?;
        let version = call(&general, false, apply_migrations)?;
        if version > MIGRATIONS.len() {
            tracing::warn!(database = %target, version, known = MIGRATIONS.len(),
                           "the database schema is newer than this version");
        }
        call(&ledger, false, |_| Ok(()))?;
        Ok(Arc::new(PostgresStore {
            general,
            ledger,
            config,
            target,
            health: Mutex::new(StoreHealth::up()),
            stop: Arc::new(AtomicBool::new(false)),
        }))
    }

    pub fn health(&self) -> StoreHealth {
        let health = self.health.lock();
        health.unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records how a write went.
    pub(super) fn wrote<T>(&self, result: &Result<T, StoreError>) {
        let health = match result {
            Ok(_) => StoreHealth::up(),
            Err(StoreError::Database(detail)) => StoreHealth::down(detail),
            Err(error) => StoreHealth::down(&error.to_string()),
        };
        let mut current = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if current.up != health.up {
            if health.up {
                tracing::info!(database = %self.target, "the usage database works again");
            } else {
                tracing::error!(database = %self.target, problem = %health.detail,
                                "the usage database fails; usage is kept in memory and retried");
            }
        }
        *current = health;
    }
}

impl super::Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }
}

impl KeyStore for PostgresStore {
    fn save_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let key = key.clone();
        let models = Value::from(key.models.clone()).to_string();
        let metadata = key.metadata.to_string();
        let saved = call(&self.general, true, move |client| {
            let mut transaction = client.transaction()?;
            transaction.execute(
                "INSERT INTO keys (id, name, secret_hash, previous_hash, previous_until, models,
                    rpm, tpm, concurrency, budget_nano_usd, budget_period, expires_at, metadata,
                    enabled, created_at, updated_at, revoked_at, default_model)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                    $17, $18)
                 ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,
                    secret_hash = EXCLUDED.secret_hash, previous_hash = EXCLUDED.previous_hash,
                    previous_until = EXCLUDED.previous_until, models = EXCLUDED.models,
                    rpm = EXCLUDED.rpm, tpm = EXCLUDED.tpm, concurrency = EXCLUDED.concurrency,
                    budget_nano_usd = EXCLUDED.budget_nano_usd,
                    budget_period = EXCLUDED.budget_period, expires_at = EXCLUDED.expires_at,
                    metadata = EXCLUDED.metadata, enabled = EXCLUDED.enabled,
                    created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at,
                    revoked_at = EXCLUDED.revoked_at, default_model = EXCLUDED.default_model",
                &[
                    &key.id,
                    &key.name,
                    &key.secret_hash,
                    &key.previous_hash,
                    &key.previous_until,
                    &models,
                    &key.rpm.map(int),
                    &key.tpm.map(int),
                    &key.concurrency.map(i64::from),
                    &key.budget_nano_usd.map(int),
                    &key.budget_period,
                    &key.expires_at,
                    &metadata,
                    &key.enabled,
                    &key.created_at,
                    &key.updated_at,
                    &key.revoked_at,
                    &key.default_model,
                ],
            )?;
            // Delivered to every listener when (and only if) the transaction commits.
            transaction.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &key.id])?;
            transaction.commit()
        });
        self.wrote(&saved);
        saved
    }

    fn load_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        call(&self.general, true, |client| {
            let rows = client.query(
                "SELECT id, name, secret_hash, previous_hash, previous_until, models, rpm, tpm,
                    concurrency, budget_nano_usd, budget_period, expires_at, metadata, enabled,
                    created_at, updated_at, revoked_at, default_model
                 FROM keys ORDER BY created_at, id COLLATE \"C\"",
                &[],
            )?;
            rows.iter()
                .map(|row| {
                    let models: String = row.try_get(5)?;
                    let metadata: String = row.try_get(12)?;
                    Ok(StoredKey {
                        id: row.try_get(0)?,
                        name: row.try_get(1)?,
                        secret_hash: row.try_get(2)?,
                        previous_hash: row.try_get(3)?,
                        previous_until: row.try_get(4)?,
                        models: serde_json::from_str(&models).unwrap_or_default(),
                        rpm: row.try_get::<_, Option<i64>>(6)?.map(uint),
                        tpm: row.try_get::<_, Option<i64>>(7)?.map(uint),
                        concurrency: row
                            .try_get::<_, Option<i64>>(8)?
                            .map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX)),
                        budget_nano_usd: row.try_get::<_, Option<i64>>(9)?.map(uint),
                        budget_period: row.try_get(10)?,
                        expires_at: row.try_get(11)?,
                        metadata: serde_json::from_str(&metadata).unwrap_or(Value::Null),
                        enabled: row.try_get(13)?,
                        created_at: row.try_get(14)?,
                        updated_at: row.try_get(15)?,
                        revoked_at: row.try_get(16)?,
                        default_model: row.try_get(17)?,
                    })
                })
                .collect()
        })
    }

    /// Listens for `NOTIFY shepherd_keys` on a connection of its own and calls `changed` for
    /// each burst of notifications, and after each (re)connection, the first included (changes
    /// made while not listening were missed). Hold the store weakly in `changed`: the listener
    /// ends when the store is dropped.
    fn watch_keys(&self, changed: Arc<dyn Fn() + Send + Sync>) -> bool {
        let config = self.config.clone();
        let stop = self.stop.clone();
        let target = self.target.clone();
        std::thread::Builder::new()
            .name("shepherd-pg-listen".to_owned())
            .spawn(move || listen(&config, &stop, &*changed, &target))
            .is_ok()
    }
}

/// Sleeps up to `duration`, waking early when told to stop; returns whether to stop.
fn pause(stop: &AtomicBool, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.load(Ordering::Relaxed)
}

/// The listener thread: connect, `LISTEN`, wait for notifications; reconnect a second after a
/// failure; end when the store is dropped.
fn listen(config: &Config, stop: &AtomicBool, changed: &(dyn Fn() + Send + Sync), target: &str) {
    let mut down = false;
    while !stop.load(Ordering::Relaxed) {
        let connected = config.connect(NoTls).and_then(|mut client| {
            client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(client)
        });
        let mut client = match connected {
            Ok(client) => client,
            Err(error) => {
                if !down {
                    tracing::warn!(database = %target, problem = %describe(&error),
                                   "cannot listen for key changes; trying again every second");
                    down = true;
                }
                if pause(stop, Duration::from_secs(1)) {
                    return;
                }
                continue;
            }
        };
        if down {
            tracing::info!(database = %target, "listening for key changes again");
        }
        changed();
        let mut checked = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // Some(true): notifications (a burst, taken whole); Some(false): none yet.
            let heard = {
                let mut notifications = client.notifications();
                let first = notifications
                    .timeout_iter(Duration::from_millis(500))
                    .next();
                match first {
                    Ok(Some(_)) => {
                        while let Ok(Some(_)) = notifications.iter().next() {}
                        Some(true)
                    }
                    Ok(None) => Some(false),
                    Err(_) => None,
                }
            };
            match heard {
                Some(true) => {
                    changed();
                    checked = Instant::now();
                }
                Some(false) if client.is_closed() => break,
                Some(false) if checked.elapsed() >= LISTEN_CHECK => {
                    if client.is_valid(CONNECT_TIMEOUT).is_err() {
                        break;
                    }
                    checked = Instant::now();
                }
                Some(false) => {}
                None => break,
            }
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
        tracing::warn!(database = %target, "lost the connection listening for key changes; reconnecting");
        down = true;
        if pause(stop, Duration::from_secs(1)) {
            return;
        }
    }
}
