//! Where cached answers live, behind `CacheStore`: in memory by default (`quick_cache`, bounded
//! by bytes, scan-resistant eviction), a shared Redis store next. Entries carry their own expiry,
//! checked on every read (tokio's clock, so tests pause it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::time::Instant;

use crate::translate::ir::{self, Part};

/// A cached answer: its canonical form (to replay as a stream or as a whole answer in the
/// client's protocol) and, when it was first served whole, the exact body.
#[derive(Debug)]
pub struct Entry {
    /// `None` for embeddings, which are replayed from `body` only.
    pub answer: Option<ir::Response>,
    pub body: Option<Bytes>,
    /// The deployment that produced it (its price tells what a hit saves).
    pub deployment: Arc<str>,
    pub expires_at: Instant,
}

impl Entry {
    /// Bytes the entry holds, roughly (what the memory bound counts).
    pub fn size(&self) -> u64 {
        let parts: usize = self
            .answer
            .iter()
            .flat_map(|answer| answer.choices())
            .flat_map(|choice| choice.parts)
            .map(|part| match part {
                Part::Text(text) => text.len(),
                Part::ToolCall(call) => call.id.len() + call.name.len() + call.arguments.len(),
                Part::Thinking { text, signature } => {
                    text.len() + signature.as_ref().map_or(0, String::len)
                }
                _ => 64,
            })
            .sum();
        (parts + self.body.as_ref().map_or(0, Bytes::len) + 256) as u64
    }

    pub fn is_fresh(&self) -> bool {
        Instant::now() < self.expires_at
    }
}

pub trait CacheStore: Send + Sync + std::fmt::Debug {
    /// A fresh entry for `key` (an expired one is removed and not returned).
    fn get(&self, key: &str) -> Option<Arc<Entry>>;
    fn put(&self, key: String, entry: Arc<Entry>);
    /// Bytes held now.
    fn bytes(&self) -> u64;
    fn entries(&self) -> usize;
    /// Entries evicted to stay within the bound so far.
    fn evictions(&self) -> u64;
}

#[derive(Debug, Clone)]
struct ByteWeight;

impl quick_cache::Weighter<String, Arc<Entry>> for ByteWeight {
    fn weight(&self, key: &String, entry: &Arc<Entry>) -> u64 {
        (key.len() as u64 + entry.size()).max(1)
    }
}

/// Counts evictions.
#[derive(Debug, Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl quick_cache::Lifecycle<String, Arc<Entry>> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, _state: &mut Self::RequestState, _key: String, _entry: Arc<Entry>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

type Memory = quick_cache::sync::Cache<
    String,
    Arc<Entry>,
    ByteWeight,
    quick_cache::DefaultHashBuilder,
    Evictions,
>;

/// The in-memory store, bounded by `max_bytes`.
#[derive(Debug)]
pub struct MemoryStore {
    cache: Memory,
    evictions: Evictions,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> MemoryStore {
        let evictions = Evictions::default();
        // A rough guess of the entry count helps the table size itself.
        let estimated = usize::try_from(max_bytes / 4096)
            .unwrap_or(1 << 20)
            .clamp(16, 1 << 20);
        MemoryStore {
            cache: Memory::with(
                estimated,
                max_bytes.max(1),
                ByteWeight,
                quick_cache::DefaultHashBuilder::default(),
                evictions.clone(),
            ),
            evictions,
        }
    }
}

impl CacheStore for MemoryStore {
    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let entry = self.cache.get(key)?;
        if entry.is_fresh() {
            Some(entry)
        } else {
            self.cache.remove(key);
            None
        }
    }

    fn put(&self, key: String, entry: Arc<Entry>) {
        self.cache.insert(key, entry);
    }

    fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    fn entries(&self) -> usize {
        self.cache.len()
    }

    fn evictions(&self) -> u64 {
        self.evictions.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::Finish;
    use std::time::Duration;

    fn entry(text: &str, ttl: Duration) -> Arc<Entry> {
        Arc::new(Entry {
            answer: Some(ir::Response {
                id: None,
                model: None,
                parts: vec![Part::Text(text.to_owned())],
                finish: Finish::Stop,
                stop_sequence: None,
                alternatives: Vec::new(),
                usage: None,
            }),
            body: None,
            deployment: "p/m".into(),
            expires_at: Instant::now() + ttl,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_with_their_ttl() {
        let store = MemoryStore::new(1 << 20);
        store.put("k".into(), entry("hello", Duration::from_secs(60)));
        assert!(store.get("k").is_some());
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(store.get("k").is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(store.get("k").is_none(), "expired");
        assert_eq!(store.entries(), 0, "and removed");
    }

    #[test]
    fn memory_stays_within_its_bound() {
        let bound = 64 * 1024;
        let store = MemoryStore::new(bound);
        for n in 0..5_000 {
            store.put(
                format!("key-{n}"),
                entry(&"x".repeat(300), Duration::from_secs(60)),
            );
            assert!(store.bytes() <= bound, "{} > {bound}", store.bytes());
        }
        assert!(store.evictions() > 4_000, "{}", store.evictions());
        assert!(store.entries() > 50);
    }
}
