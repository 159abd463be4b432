//! The usage ledger's writer: requests append their record to a shared buffer (a short lock,
//! no wake-up, never waiting on the database); a background thread takes the buffer every 200 ms
//! and writes it in batches. When the store fails, records are kept and retried with backoff, up
//! to a bound; past it the oldest are dropped, counted and logged. `flush` waits until
//! everything handed over so far is written; `close` flushes and stops (shutdown). Once quiet
//! for 2 s after writing, the writer lets the store give its caches back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::store::{UsageRecord, UsageStore};

/// Records waiting for the writer before new ones are dropped (the writer is stuck).
const BUFFER: usize = 65_536;
/// Records kept for retry while the store fails.
const MAX_PENDING: usize = 100_000;
/// Records per transaction.
const BATCH: usize = 1_000;
/// How often the writer takes what was handed over.
const INTERVAL: Duration = Duration::from_millis(200);
/// Takes without a record after a write before the store's caches are given back (2 s).
const QUIET_TAKES: u32 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Counters of the writer, for metrics and tests.
#[derive(Debug, Default)]
pub struct LedgerCounts {
    pub written: AtomicU64,
    /// Records lost: the buffer was full, or past the retry bound.
    pub dropped: AtomicU64,
    /// Failed writes (each retried).
    pub store_errors: AtomicU64,
    /// Rows rolled up into per-day sums by the retention.
    pub pruned: AtomicU64,
}

#[derive(Debug, Default)]
struct Shared {
    buffer: Mutex<Vec<UsageRecord>>,
    /// Wakes the writer early: a flush or the stop.
    wake: Condvar,
    flushes: Mutex<Vec<SyncSender<()>>>,
    stop: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[derive(Debug)]
pub struct UsageWriter {
    shared: Arc<Shared>,
    pub counts: Arc<LedgerCounts>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl UsageWriter {
    pub fn start(store: Arc<dyn UsageStore>) -> UsageWriter {
        let shared = Arc::new(Shared::default());
        let counts = Arc::new(LedgerCounts::default());
        let (thread_shared, thread_counts) = (shared.clone(), counts.clone());
        let thread = std::thread::Builder::new()
            .name("usage-writer".to_owned())
            .spawn(move || run(store.as_ref(), &thread_shared, &thread_counts))
            .ok();
        UsageWriter {
            shared,
            counts,
            thread: Mutex::new(thread),
        }
    }

    /// Hands a record over; never blocks on the database.
    pub fn record(&self, record: UsageRecord) {
        let mut buffer = lock(&self.shared.buffer);
        if buffer.len() >= BUFFER {
            drop(buffer);
            let dropped = self.counts.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(
                    dropped,
                    "usage ledger: the writer is behind; records dropped"
                );
            }
            return;
        }
        buffer.push(record);
    }

    /// Waits (bounded) until every record handed over before this call is written.
    pub fn flush(&self) {
        let (done, wait) = sync_channel(1);
        lock(&self.shared.flushes).push(done);
        self.shared.wake.notify_one();
        let _ = wait.recv_timeout(Duration::from_secs(30));
    }

    /// Writes what is left and stops the writer.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_one();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

struct Writer<'a> {
    store: &'a dyn UsageStore,
    counts: &'a LedgerCounts,
    pending: VecDeque<UsageRecord>,
    failures: u32,
    next_try: Instant,
}

impl Writer<'_> {
    fn keep(&mut self, records: Vec<UsageRecord>) {
        if self.pending.is_empty() {
            // The usual case: no copy, and no capacity kept from a burst long gone.
            self.pending = VecDeque::from(records);
            return;
        }
        for record in records {
            if self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
                let dropped = self.counts.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::error!(
                        dropped,
                        "usage ledger: the store keeps failing; oldest records dropped"
                    );
                }
            }
            self.pending.push_back(record);
        }
    }

    /// Writes pending records in batches; on failure keeps them and backs off.
    fn write(&mut self, force: bool) {
        if !force && Instant::now() < self.next_try {
            return;
        }
        while !self.pending.is_empty() {
            let size = self.pending.len().min(BATCH);
            let batch = self.pending.make_contiguous();
            match self.store.append(&batch[..size]) {
                Ok(()) => {
                    self.pending.drain(..size);
                    self.counts
                        .written
                        .fetch_add(size as u64, Ordering::Relaxed);
                    self.failures = 0;
                }
                Err(error) => {
                    self.counts.store_errors.fetch_add(1, Ordering::Relaxed);
                    self.failures += 1;
                    let backoff = Duration::from_millis(100)
                        .saturating_mul(1 << self.failures.min(6))
                        .min(MAX_BACKOFF);
                    self.next_try = Instant::now() + backoff;
                    tracing::warn!(%error, pending = self.pending.len(), retry_in = ?backoff,
                                   "usage ledger: write failed; records kept for retry");
                    return;
                }
            }
        }
    }
}

fn run(store: &dyn UsageStore, shared: &Shared, counts: &LedgerCounts) {
    let mut writer = Writer {
        store,
        counts,
        pending: VecDeque::new(),
        failures: 0,
        next_try: Instant::now(),
    };
    // Takes in a row that brought nothing, since the last write (None: released already).
    let mut quiet: Option<u32> = None;
    loop {
        let taken = {
            let buffer = lock(&shared.buffer);
            let asked = shared.stop.load(Ordering::Relaxed) || !lock(&shared.flushes).is_empty();
            let mut buffer = if asked {
                buffer
            } else {
                match shared.wake.wait_timeout(buffer, INTERVAL) {
                    Ok((buffer, _)) => buffer,
                    Err(poisoned) => poisoned.into_inner().0,
                }
            };
            // The next batch is likely as big as this one: room for it now, so that requests
            // do not grow the buffer (and copy it) as they hand records over.
            let room = buffer.len();
            std::mem::replace(&mut *buffer, Vec::with_capacity(room))
        };
        quiet = match (taken.is_empty() && writer.pending.is_empty(), quiet) {
            (false, _) => Some(0),
            (true, Some(takes)) if takes + 1 >= QUIET_TAKES => {
                store.release_memory();
                None
            }
            (true, takes) => takes.map(|takes| takes + 1),
        };
        writer.keep(taken);
        let flushes: Vec<SyncSender<()>> = std::mem::take(&mut *lock(&shared.flushes));
        let stopping = shared.stop.load(Ordering::Relaxed);
        if flushes.is_empty() && !stopping {
            writer.write(false);
            continue;
        }
        // A flush or the stop: take what arrived meanwhile too, and insist a little.
        writer.keep(std::mem::take(&mut *lock(&shared.buffer)));
        for attempt in 0..3 {
            writer.write(true);
            if writer.pending.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50 << attempt));
        }
        for done in flushes {
            let _ = done.send(());
        }
        if stopping {
            if !writer.pending.is_empty() {
                tracing::error!(
                    lost = writer.pending.len(),
                    "usage ledger: records not written at shutdown"
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{StoreError, UsageQuery, UsageRow};
    use std::sync::atomic::AtomicBool;

    #[derive(Debug, Default)]
    struct Flaky {
        failing: AtomicBool,
        rows: Mutex<Vec<UsageRecord>>,
        releases: AtomicU64,
    }

    impl UsageStore for Flaky {
        fn append(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(StoreError::Database("disk full".into()));
            }
            self.rows.lock().unwrap().extend_from_slice(records);
            Ok(())
        }
        fn spent(&self, _: &str, _: i64) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn report(&self, _: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
            Ok(Vec::new())
        }
        fn prune(&self, _: i64) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn health(&self) -> crate::store::StoreHealth {
            crate::store::StoreHealth::up()
        }
        fn release_memory(&self) {
            self.releases.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record(n: usize) -> UsageRecord {
        UsageRecord {
            request_id: format!("r{n}"),
            ts_ms: 0,
            key_id: "k".into(),
            key_name: "k".into(),
            model: None,
            deployment: None,
            route: "/v1/chat/completions".into(),
            status: 200,
            stream: false,
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_tokens: 0,
            reasoning_tokens: 0,
            usage_source: None,
            cost_nano_usd: 0,
            saved_nano_usd: 0,
            latency_ms: 0.0,
            ttft_ms: None,
            cache_hit: false,
            fallback: false,
        }
    }

    #[test]
    fn records_survive_a_failing_store_and_flush_writes_them_all() {
        let store = Arc::new(Flaky::default());
        store.failing.store(true, Ordering::Relaxed);
        let writer = UsageWriter::start(store.clone());
        for n in 0..2500 {
            writer.record(record(n));
        }
        std::thread::sleep(Duration::from_millis(400));
        assert!(writer.counts.store_errors.load(Ordering::Relaxed) > 0);
        assert!(store.rows.lock().unwrap().is_empty());
        store.failing.store(false, Ordering::Relaxed);
        writer.flush();
        assert_eq!(store.rows.lock().unwrap().len(), 2500);
        assert_eq!(writer.counts.written.load(Ordering::Relaxed), 2500);
        assert_eq!(writer.counts.dropped.load(Ordering::Relaxed), 0);
        writer.record(record(9999));
        writer.close();
        assert_eq!(
            store.rows.lock().unwrap().len(),
            2501,
            "close writes what is left"
        );
    }

    #[test]
    fn caches_are_given_back_once_after_writes_go_quiet() {
        let store = Arc::new(Flaky::default());
        let writer = UsageWriter::start(store.clone());
        std::thread::sleep(INTERVAL * (QUIET_TAKES + 3));
        assert_eq!(
            store.releases.load(Ordering::Relaxed),
            0,
            "nothing to give back before any write"
        );
        writer.record(record(1));
        std::thread::sleep(INTERVAL * 3);
        assert_eq!(store.releases.load(Ordering::Relaxed), 0, "not yet quiet");
        std::thread::sleep(INTERVAL * (QUIET_TAKES + 3));
        assert_eq!(store.releases.load(Ordering::Relaxed), 1);
        std::thread::sleep(INTERVAL * (QUIET_TAKES + 3));
        assert_eq!(
            store.releases.load(Ordering::Relaxed),
            1,
            "once per quiet spell"
        );
        writer.record(record(2));
        std::thread::sleep(INTERVAL * (QUIET_TAKES + 4));
        assert_eq!(store.releases.load(Ordering::Relaxed), 2);
        writer.close();
    }
}
