//! The usage ledger's insert cost as the table grows: batches of 1,000 records (as the writer
//! sends them) timed on an empty ledger, then after filling it to `--rows` (default 5 million),
//! on the same SQLite file and settings the gateway uses. Prints JSON.
//!
//! ```sh
//! cargo run --release --example ledger_insert -- --rows 5000000
//! ```
//!
//! `--keep FILE` leaves the filled ledger at FILE (the bench's ledger-size dimension starts the
//! gateway on it) instead of removing it.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use shepherd::config::Database;
use shepherd::store::sqlite::SqliteStore;
use shepherd::store::{UsageRecord, UsageStore};

const BATCH: usize = 1_000;
const TIMED_BATCHES: usize = 50;

fn record(n: u64, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        request_id: format!("{n:032x}"),
        ts_ms,
        key_id: format!("key{}", n % 50).into(),
        key_name: format!("service-{}", n % 50).into(),
        model: Some(["gpt-4.1", "claude-sonnet", "gemini-flash"][(n % 3) as usize].to_owned()),
        deployment: Some("openai/gpt-4.1".into()),
        route: "/v1/chat/completions".to_owned(),
        status: 200,
        stream: n.is_multiple_of(2),
        prompt_tokens: 100 + n % 900,
        completion_tokens: 20 + n % 300,
        cached_tokens: n % 50,
        reasoning_tokens: 0,
        usage_source: Some("reported"),
        cost_nano_usd: 1_000 + n % 10_000,
        saved_nano_usd: 0,
        latency_ms: 120.5,
        ttft_ms: Some(35.0),
        cache_hit: false,
        fallback: false,
    }
}

/// CPU time of this process (user + system).
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// Microseconds of CPU per record over `TIMED_BATCHES` batches, starting at record `first`.
fn timed(store: &SqliteStore, first: u64, now_ms: i64) -> f64 {
    let batches: Vec<Vec<UsageRecord>> = (0..TIMED_BATCHES)
        .map(|b| {
            (0..BATCH as u64)
                .map(|i| {
                    let n = first + (b * BATCH) as u64 + i;
                    record(n, now_ms + i64::try_from(n).unwrap())
                })
                .collect()
        })
        .collect();
    let (started, wall) = (cpu(), Instant::now());
    for batch in &batches {
        store.append(batch).unwrap();
    }
    let spent = cpu() - started;
    let per_record = spent.as_secs_f64() * 1e6 / (TIMED_BATCHES * BATCH) as f64;
    eprintln!(
        "  {} records: {:.2} µs CPU each, {:.2} µs wall",
        TIMED_BATCHES * BATCH,
        per_record,
        wall.elapsed().as_secs_f64() * 1e6 / (TIMED_BATCHES * BATCH) as f64
    );
    per_record
}

fn main() {
    let rows: u64 = std::env::args()
        .skip_while(|a| a != "--rows")
        .nth(1)
        .map_or(5_000_000, |v| v.parse().unwrap());
    let keep = std::env::args()
        .skip_while(|a| a != "--keep")
        .nth(1)
        .map(std::path::PathBuf::from);
    let dir = std::env::temp_dir().join(format!("shepherd-ledger-bench-{}", std::process::id()));
    let path = keep.clone().unwrap_or_else(|| dir.join("shepherd.db"));
    let store = SqliteStore::open(&Database::Sqlite(path.clone())).unwrap();
    // Recent enough that the gateway's retention (90 days) keeps every row when it opens a kept
    // ledger.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
        - 86_400_000;
    eprintln!("empty ledger:");
    let empty = timed(&store, 0, now_ms);
    eprintln!("filling to {rows} rows...");
    let mut n = (TIMED_BATCHES * BATCH) as u64;
    while n < rows {
        let batch: Vec<UsageRecord> = (0..20_000u64)
            .map(|i| record(n + i, now_ms + i64::try_from(n + i).unwrap()))
            .collect();
        store.append(&batch).unwrap();
        n += 20_000;
    }
    let size_mb = std::fs::metadata(&path).map_or(0, |m| m.len()) as f64 / 1e6;
    eprintln!("{n} rows, {size_mb:.0} MB; timed again:");
    let full = timed(&store, n, now_ms);
    println!(
        "{{\"empty_us_per_record\": {empty:.2}, \"rows\": {n}, \"file_mb\": {size_mb:.0}, \"full_us_per_record\": {full:.2}, \"ratio\": {:.2}}}",
        full / empty
    );
    drop(store);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(dir);
    }
}
