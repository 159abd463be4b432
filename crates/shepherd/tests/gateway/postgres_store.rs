//! The PostgreSQL store against a real private cluster (`testkit::Postgres`, one per test):
//! keys round trip, key changes reach another store through NOTIFY within a second, replicas
//! starting together migrate once, the ledger answers exactly as SQLite's for the same records
//! (reports in every grouping, spending, pruning into rollups), huge values are clamped, an
//! outage fails writes and reports the store down until the server is back (no reopening), and
//! every method works from inside a tokio runtime.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use shepherd::config::Database;
use shepherd::store::postgres::{self as pg_store, PostgresStore};
use shepherd::store::sqlite::SqliteStore;
use shepherd::store::{GroupBy, StoredKey, UsageQuery, UsageRecord, UsageStore};
use testkit::Postgres;

const DAY: i64 = 86_400_000;
/// 2023-11-14T22:13:20Z: not on a day boundary.
const START: i64 = 1_700_000_000_000;

/// A cluster with a fresh database `name`, and its URL.
fn database(name: &str) -> (Postgres, String) {
    let postgres = Postgres::start();
    postgres.create_database(name);
    let url = postgres.url(name);
    (postgres, url)
}

fn key(id: &str, created_at: i64) -> StoredKey {
    StoredKey {
        id: id.to_owned(),
        name: format!("svc-{id}"),
        secret_hash: vec![7; 32],
        previous_hash: Some(vec![3; 32]),
        previous_until: Some(1_700_000_100),
        models: vec!["gpt-*".to_owned(), "claude".to_owned()],
        rpm: Some(60),
        tpm: None,
        concurrency: Some(3),
        budget_nano_usd: Some(5_000_000_000),
        budget_period: Some("month".to_owned()),
        expires_at: None,
        metadata: serde_json::json!({"team": "search", "tags": ["a", 1]}),
        default_model: Some("gpt-4.1".to_owned()),
        enabled: true,
        created_at,
        updated_at: created_at,
        revoked_at: None,
    }
}

fn record(n: u64, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{n}"),
        ts_ms,
        key_id: "k1".into(),
        key_name: "one".into(),
        model: Some("gpt-4.1".to_owned()),
        deployment: Some("openai/gpt-4.1".into()),
        route: "/v1/chat/completions".to_owned(),
        status: 200,
        stream: false,
        prompt_tokens: 10,
        completion_tokens: 5,
        cached_tokens: 2,
        reasoning_tokens: 1,
        usage_source: Some("reported"),
        cost_nano_usd: 1_000,
        saved_nano_usd: 0,
        latency_ms: 12.5,
        ttft_ms: Some(3.0),
        cache_hit: false,
        fallback: false,
    }
}

/// Varied records over five days from `start`: keys (one renamed), models and deployments
/// (some missing, mixed case, non-ASCII), statuses, cache hits, streams.
fn records(seed: u64, count: usize, start: i64, span: i64) -> Vec<UsageRecord> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let keys = [
        ("k1", "alpha"),
        ("k2", "Beta"),
        ("k2", "beta"),
        ("k3", "_gamma"),
        ("k4", "Zeta"),
    ];
    let models = [
        Some("gpt-4.1"),
        Some("Claude"),
        None,
        Some("émbed"),
        Some("gpt-4.1-mini"),
    ];
    let deployments = [Some("openai/a"), Some("Anthropic/b"), None, Some("local/ü")];
    let statuses = [200, 200, 200, 201, 400, 429, 500, 503];
    let sources = [Some("reported"), Some("estimated"), None];
    (0..count)
        .map(|n| {
            let (key_id, key_name) = keys[rng.usize(..keys.len())];
            UsageRecord {
                request_id: format!("req-{seed}-{n}"),
                ts_ms: start + rng.i64(0..span),
                key_id: key_id.into(),
                key_name: key_name.into(),
                model: models[rng.usize(..models.len())].map(str::to_owned),
                deployment: deployments[rng.usize(..deployments.len())].map(Into::into),
                route: if rng.bool() {
                    "/v1/chat/completions"
                } else {
                    "/v1/embeddings"
                }
                .to_owned(),
                status: statuses[rng.usize(..statuses.len())],
                stream: rng.bool(),
                prompt_tokens: rng.u64(0..5_000),
                completion_tokens: rng.u64(0..2_000),
                cached_tokens: rng.u64(0..100),
                reasoning_tokens: rng.u64(0..50),
                usage_source: sources[rng.usize(..sources.len())],
                cost_nano_usd: rng.u64(0..10_000_000),
                saved_nano_usd: rng.u64(0..1_000),
                latency_ms: rng.f64() * 1000.0,
                ttft_ms: rng.bool().then(|| rng.f64() * 100.0),
                cache_hit: rng.u8(..10) == 0,
                fallback: rng.u8(..20) == 0,
            }
        })
        .collect()
}

fn append_in_batches(store: &(impl UsageStore + ?Sized), records: &[UsageRecord]) {
    for batch in records.chunks(1_000) {
        store.append(batch).unwrap();
    }
}

/// Every grouping and filter a report takes, the same answers from both stores.
fn assert_same_reports(postgres: &(impl UsageStore + ?Sized), sqlite: &SqliteStore, when: &str) {
    use GroupBy::*;
    let groupings: [&[GroupBy]; 11] = [
        &[],
        &[Key],
        &[Model],
        &[Deployment],
        &[Day],
        &[Hour],
        &[Key, Day],
        &[Model, Hour],
        &[Deployment, Key, Day],
        &[Day, Model, Deployment],
        &[Hour, Key],
    ];
    let filters = [
        (None, None, None),
        (Some(START + DAY + DAY / 2), None, None),
        (None, Some(START + 3 * DAY + DAY / 5), None),
        (Some(START + DAY / 3), Some(START + 4 * DAY), Some("k2")),
        (None, None, Some("k4")),
        (Some(START + 10 * DAY), None, None),
    ];
    for group_by in groupings {
        for (from_ms, to_ms, key_id) in filters {
            let query = UsageQuery {
                group_by: group_by.to_vec(),
                from_ms,
                to_ms,
                key_id: key_id.map(str::to_owned),
            };
            let expected = sqlite.report(&query).unwrap();
            let got = postgres.report(&query).unwrap();
            assert_eq!(got, expected, "{when}: {query:?}");
        }
    }
    for key_id in ["k1", "k2", "k3", "k4", "nobody"] {
        for since in [
            0,
            START,
            START + DAY + 1,
            START + 2 * DAY + DAY / 2,
            START + 9 * DAY,
        ] {
            assert_eq!(
                postgres.spent(key_id, since).unwrap(),
                sqlite.spent(key_id, since).unwrap(),
                "{when}: spent by {key_id} since {since}"
            );
        }
    }
}

#[test]
fn keys_round_trip_update_and_revoke() {
    let (postgres, url) = database("keys");
    let store = PostgresStore::open(&url).unwrap();
    assert_eq!(store.kind(), "postgres");
    assert!(store.load_keys().unwrap().is_empty());
    let first = key("aaaaaaaaaaaa", 20);
    let mut second = key("bbbbbbbbbbbb", 10);
    second.previous_hash = None;
    second.previous_until = None;
    second.default_model = None;
    second.budget_nano_usd = Some(u64::MAX);
    store.save_key(&first).unwrap();
    store.save_key(&second).unwrap();
    let mut clamped = second.clone();
    clamped.budget_nano_usd = Some(i64::MAX as u64);
    assert_eq!(
        store.load_keys().unwrap(),
        vec![clamped.clone(), first.clone()]
    );

    let mut updated = first.clone();
    updated.name = "renamed".to_owned();
    updated.models = vec!["*".to_owned()];
    updated.tpm = Some(100_000);
    updated.updated_at = 30;
    store.save_key(&updated).unwrap();
    let mut revoked = clamped.clone();
    revoked.enabled = false;
    revoked.revoked_at = Some(40);
    revoked.updated_at = 40;
    store.save_key(&revoked).unwrap();
    assert_eq!(
        store.load_keys().unwrap(),
        vec![revoked.clone(), updated.clone()]
    );
    drop(store);

    // Another process sees the same keys; the rows are one per key.
    let reopened = PostgresStore::open(&url).unwrap();
    assert_eq!(reopened.load_keys().unwrap(), vec![revoked, updated]);
    assert_eq!(postgres.psql("keys", "SELECT count(*) FROM keys"), "2");
}

#[test]
fn key_changes_reach_another_store_within_a_second() {
    let (postgres, url) = database("notify");
    let writer = PostgresStore::open(&url).unwrap();
    let reader = PostgresStore::open(&url).unwrap();
    let (tx, rx) = mpsc::channel::<Instant>();
    assert!(reader.watch_keys(Arc::new(move || {
        let _ = tx.send(Instant::now());
    })));
    // Called once listening (changes before then were missed).
    rx.recv_timeout(Duration::from_secs(10))
        .expect("called after connecting");
    for step in 0..3 {
        while rx.try_recv().is_ok() {}
        let mut changed = key("cccccccccccc", 1);
        changed.updated_at = step;
        changed.enabled = step < 2;
        let saved = Instant::now();
        writer.save_key(&changed).unwrap();
        let heard = rx
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_else(|_| panic!("change {step} not heard within a second"));
        assert!(heard.duration_since(saved) < Duration::from_secs(1));
        assert_eq!(reader.load_keys().unwrap(), vec![changed]);
    }
    // The listener's connection closes with the store.
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shepherd'";
    while postgres.psql("notify", count) != "2" {
        assert!(
            Instant::now() < deadline,
            "the reader's connections stay open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(writer);
}

#[test]
fn replicas_starting_together_all_migrate_to_one_version() {
    let (postgres, url) = database("together");
    let barrier = Arc::new(Barrier::new(6));
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::open(&url).map(|store| store.kind())
            })
        })
        .collect();
    for start in starts {
        assert_eq!(start.join().unwrap().unwrap(), "postgres");
    }
    let version = pg_store::schema_version();
    assert_eq!(version, shepherd::store::sqlite::schema_version());
    assert_eq!(
        postgres.psql(
            "together",
            "SELECT count(*), max(version) FROM shepherd_schema"
        ),
        format!("1|{version}")
    );
    assert_eq!(pg_store::migrate(&url).unwrap(), version);
}

#[test]
fn the_ledger_answers_as_sqlite_does() {
    // A database whose own collation is not byte order (ICU), in another time zone: text is
    // still ordered as SQLite orders it, days and hours are still UTC.
    let postgres = Postgres::start();
    postgres.psql(
        "postgres",
        "CREATE DATABASE ledger TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.UTF-8'
         LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
    );
    postgres.psql(
        "postgres",
        "ALTER DATABASE ledger SET timezone TO 'Pacific/Auckland'",
    );
    let url = postgres.url("ledger");
    let store = PostgresStore::open(&url).unwrap();
    let sqlite = SqliteStore::open(&Database::SqliteMemory).unwrap();
    assert_same_reports(&*store, &sqlite, "empty");
    assert!(store.report(&UsageQuery::default()).unwrap().is_empty());

    let first = records(1, 40_000, START, 5 * DAY);
    append_in_batches(&*store, &first);
    append_in_batches(&sqlite, &first);
    assert_eq!(
        postgres.psql("ledger", "SELECT count(*) FROM usage"),
        "40000"
    );
    assert_same_reports(&*store, &sqlite, "rows only");

    // Part of the second day becomes rollups, the rest stays rows.
    let cutoff = START + DAY + DAY / 2;
    let pruned = store.prune(cutoff).unwrap();
    assert_eq!(pruned, sqlite.prune(cutoff).unwrap());
    assert!(pruned > 5_000, "{pruned}");
    assert_same_reports(&*store, &sqlite, "after the first prune");

    // Late records on days already rolled up, then a prune past several slices.
    let late = records(2, 3_000, START, 2 * DAY);
    append_in_batches(&*store, &late);
    append_in_batches(&sqlite, &late);
    let cutoff = START + 4 * DAY + DAY / 2;
    let pruned = store.prune(cutoff).unwrap();
    assert_eq!(pruned, sqlite.prune(cutoff).unwrap());
    assert!(pruned > 20_000, "more than one slice: {pruned}");
    assert_same_reports(&*store, &sqlite, "after the second prune");
    assert_eq!(store.prune(cutoff).unwrap(), 0);
    assert_same_reports(&*store, &sqlite, "after pruning again");
}

#[test]
fn values_past_i64_are_clamped() {
    let (postgres, url) = database("clamp");
    let store = PostgresStore::open(&url).unwrap();
    let sqlite = SqliteStore::open(&Database::SqliteMemory).unwrap();
    let mut huge = record(1, START);
    huge.prompt_tokens = u64::MAX;
    huge.completion_tokens = 1 << 63;
    huge.cost_nano_usd = u64::MAX;
    huge.saved_nano_usd = (1 << 63) + 5;
    store.append(std::slice::from_ref(&huge)).unwrap();
    sqlite.append(std::slice::from_ref(&huge)).unwrap();
    assert_eq!(
        postgres.psql(
            "clamp",
            "SELECT prompt_tokens, completion_tokens, cost_nano_usd FROM usage"
        ),
        "9223372036854775807|9223372036854775807|9223372036854775807"
    );
    assert_same_reports(&*store, &sqlite, "one huge record");
    let max = i64::MAX as u64;
    let rows = store.report(&UsageQuery::default()).unwrap();
    assert_eq!((rows[0].prompt_tokens, rows[0].cost_nano_usd), (max, max));

    // Sums past the limit stay at it (rows, rollups, and rows with rollups).
    store.append(&[huge.clone(), record(2, START + 1)]).unwrap();
    assert_eq!(store.spent("k1", 0).unwrap(), max);
    assert_eq!(store.prune(START + DAY).unwrap(), 3);
    assert_eq!(store.spent("k1", 0).unwrap(), max);
    store.append(&[huge.clone()]).unwrap();
    assert_eq!(store.prune(START + DAY).unwrap(), 1);
    assert_eq!(store.spent("k1", 0).unwrap(), max);
    store.append(&[huge]).unwrap();
    let rows = store
        .report(&UsageQuery {
            group_by: vec![GroupBy::Day],
            ..UsageQuery::default()
        })
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].requests, rows[0].cost_nano_usd), (5, max));
    assert_eq!(rows[0].saved_nano_usd, max);
    // Rows and rollups are each clamped, then added as u64 (saturating), as with SQLite.
    assert_eq!(store.spent("k1", 0).unwrap(), max + max);
}

#[test]
fn an_outage_fails_writes_until_the_server_is_back() {
    let (mut postgres, url) = database("outage");
    let store = PostgresStore::open(&url).unwrap();
    store.save_key(&key("dddddddddddd", 1)).unwrap();
    let (tx, rx) = mpsc::channel::<()>();
    assert!(store.watch_keys(Arc::new(move || {
        let _ = tx.send(());
    })));
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    store.append(&[record(1, START)]).unwrap();
    assert!(store.health().up);

    postgres.kill();
    let failed = store.append(&[record(2, START + 1)]);
    assert!(failed.is_err(), "{failed:?}");
    let health = store.health();
    assert!(!health.up);
    assert!(health.detail.starts_with("postgres: "), "{}", health.detail);
    assert!(store.append(&[record(3, START + 2)]).is_err());
    assert!(!store.health().up);
    assert!(store.load_keys().is_err());
    assert!(store.report(&UsageQuery::default()).is_err());

    postgres.resume();
    // The same store, no reopening: the next write connects again.
    store.append(&[record(4, START + 3)]).unwrap();
    assert_eq!(store.health(), shepherd::store::StoreHealth::up());
    let rows = store.report(&UsageQuery::default()).unwrap();
    assert_eq!(rows[0].requests, 2);
    assert_eq!(store.load_keys().unwrap().len(), 1);
    assert_eq!(store.spent("k1", 0).unwrap(), 2_000);
    // The listener connected again and said so (changes may have been missed).
    rx.recv_timeout(Duration::from_secs(15))
        .expect("called after reconnecting");
    while rx.try_recv().is_ok() {}
    let mut revoked = key("dddddddddddd", 1);
    revoked.enabled = false;
    store.save_key(&revoked).unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("listening again after the outage");
}

#[test]
fn errors_never_show_the_password() {
    let port = testkit::free_port();
    let secret = "Sup3r-Secret-Pw";
    for url in [
        format!("postgres://shepherd:{secret}@127.0.0.1:{port}/nowhere"),
        format!("postgres://shepherd:{secret}@127.0.0.1:notaport/nowhere"),
        format!("host=127.0.0.1 port={port} password={secret} bogus_option=1"),
    ] {
        let opened = PostgresStore::open(&url).unwrap_err().to_string();
        let migrated = pg_store::migrate(&url).unwrap_err().to_string();
        for message in [opened, migrated] {
            assert!(message.contains("postgres"), "{message}");
            assert!(!message.contains(secret), "{message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_works_inside_a_tokio_runtime() {
    let (_postgres, url) = database("tokio");
    assert_eq!(pg_store::migrate(&url).unwrap(), pg_store::schema_version());
    let store = PostgresStore::open(&url).unwrap();
    let task = tokio::spawn(async move {
        store.save_key(&key("eeeeeeeeeeee", 1)).unwrap();
        assert_eq!(store.load_keys().unwrap().len(), 1);
        let (tx, rx) = mpsc::channel::<()>();
        assert!(store.watch_keys(Arc::new(move || {
            let _ = tx.send(());
        })));
        store
            .append(&[record(1, START), record(2, START + DAY)])
            .unwrap();
        assert_eq!(store.spent("k1", 0).unwrap(), 2_000);
        let rows = store
            .report(&UsageQuery {
                group_by: vec![GroupBy::Day, GroupBy::Key],
                ..UsageQuery::default()
            })
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(store.prune(START + 1).unwrap(), 1);
        assert!(store.health().up);
        tokio::time::sleep(Duration::from_millis(50)).await;
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        store
    });
    let store = task.await.unwrap();
    // Dropped on a runtime thread: the connections close on their own threads.
    drop(store);
}
