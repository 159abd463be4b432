//! The last API requests this process answered (not its admin or console calls), in memory,
//! for the console's live tail and its latency figures (`GET /admin/requests`,
//! `GET /admin/overview`). A bounded ring: the oldest
//! request leaves when a new one arrives past `CAPACITY`. Per replica, like the access log it
//! mirrors; it never holds a key, only its name.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::access::AccessRecord;

/// Requests kept.
pub const CAPACITY: usize = 1_000;

/// One request as the live tail shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RecentRequest {
    /// Unix milliseconds when it ended.
    pub time_ms: i64,
    pub request_id: RequestId,
    pub key: Option<Arc<str>>,
    pub route: &'static str,
    pub model: Option<Arc<str>>,
    pub deployment: Option<Arc<str>>,
    pub status: u16,
    pub stream: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: Option<f64>,
    pub total_ms: f64,
    /// Time to the upstream's first byte (first token, for streams).
    pub first_byte_ms: Option<f64>,
    pub outcome: &'static str,
    pub error: Option<&'static str>,
}

/// A request id kept inline (ids longer than 48 bytes are cut): kept requests hold no memory
/// of their own, so a thousand of them do not spread the process's working set.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; 48],
}

impl RequestId {
    pub fn of(id: &str) -> Self {
        let mut end = id.len().min(48);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; 48];
        bytes[..end].copy_from_slice(&id.as_bytes()[..end]);
        RequestId {
            len: u8::try_from(end).unwrap_or(48),
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Which requests a reader wants.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub key: Option<&'a str>,
    pub model: Option<&'a str>,
    /// `2xx`, `4xx`, `5xx`, or one status such as `429`.
    pub status: Option<&'a str>,
}

impl Filter<'_> {
    fn admits(&self, request: &RecentRequest) -> bool {
        let key_ok = self
            .key
            .is_none_or(|key| request.key.as_deref() == Some(key));
        let model_ok = self
            .model
            .is_none_or(|model| request.model.as_deref() == Some(model));
        let status_ok = self
            .status
            .is_none_or(|status| status_matches(status, request.status));
        key_ok && model_ok && status_ok
    }
}

fn status_matches(wanted: &str, status: u16) -> bool {
    match wanted.as_bytes() {
        [class @ b'1'..=b'5', b'x', b'x'] => u16::from(class - b'0') == status / 100,
        _ => wanted.parse::<u16>().is_ok_and(|exact| exact == status),
    }
}

/// The kept requests: `items` fills up to `CAPACITY`, then each new request takes the place of
/// the oldest (at `next`) where it lies; nothing is moved or read back as requests come and go.
struct Ring {
    items: Vec<RecentRequest>,
    next: usize,
}

impl Ring {
    fn keep(&mut self, request: RecentRequest) {
        if self.items.len() < CAPACITY {
            self.items.push(request);
        } else if let Some(oldest) = self.items.get_mut(self.next) {
            *oldest = request;
        }
        self.next = (self.next + 1) % CAPACITY;
    }

    /// Newest first.
    fn newest_first(&self) -> impl Iterator<Item = &RecentRequest> {
        let (older, newer) = self.items.split_at(self.next.min(self.items.len()));
        older.iter().rev().chain(newer.iter().rev())
    }
}

static RING: Mutex<Ring> = Mutex::new(Ring {
    items: Vec::new(),
    next: 0,
});

fn ring() -> MutexGuard<'static, Ring> {
    match RING.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

impl RecentRequest {
    /// The numbers of an access record; the caller moves in the strings it owns (no copies on
    /// the request path).
    pub fn numbers_of(record: &AccessRecord<'_>) -> Self {
        RecentRequest {
            time_ms: now_ms(),
            request_id: RequestId::of(record.request_id),
            key: None,
            route: "",
            model: None,
            deployment: None,
            status: record.status,
            stream: record.stream,
            prompt_tokens: record.usage.as_ref().map_or(0, |usage| usage.prompt_tokens),
            completion_tokens: record
                .usage
                .as_ref()
                .map_or(0, |usage| usage.completion_tokens),
            cost_usd: record.cost_usd,
            total_ms: record.total_ms,
            first_byte_ms: record.upstream_first_byte_ms,
            outcome: record.outcome,
            error: record.error,
        }
    }
}

/// Keeps one finished request of a client route (`route` is its path; the `&'static str` of
/// the route table, so that nothing is copied).
pub fn keep(request: RecentRequest) {
    if request.route.is_empty() {
        return;
    }
    ring().keep(request);
}

/// The newest requests first, at most `limit`, that pass `filter`.
pub fn newest(filter: &Filter<'_>, limit: usize) -> Vec<RecentRequest> {
    ring()
        .newest_first()
        .filter(|request| filter.admits(request))
        .take(limit)
        .cloned()
        .collect()
}

/// Percentiles (p50, p95, p99) of the kept requests' latency and of streams' time to first
/// byte, in milliseconds; `None` when there is nothing to measure.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub samples: usize,
}

fn percentiles(mut values: Vec<f64>) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((values.len() as f64) * q).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    Some(Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        samples: values.len(),
    })
}

/// Latency of all kept requests, and time to first byte of the kept streams.
pub fn latency() -> (Option<Percentiles>, Option<Percentiles>) {
    let ring = ring();
    let total = ring
        .newest_first()
        .map(|request| request.total_ms)
        .collect();
    let first = ring
        .newest_first()
        .filter(|request| request.stream)
        .filter_map(|request| request.first_byte_ms)
        .collect();
    drop(ring);
    (percentiles(total), percentiles(first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_filters_by_class_or_exact_code() {
        assert!(status_matches("2xx", 200));
        assert!(status_matches("5xx", 503));
        assert!(!status_matches("4xx", 500));
        assert!(status_matches("429", 429));
        assert!(!status_matches("429", 428));
        assert!(!status_matches("abc", 200));
    }

    #[test]
    fn request_ids_are_kept_inline_and_cut_on_a_character() {
        assert_eq!(RequestId::of("abc").as_str(), "abc");
        let long = "é".repeat(30);
        let kept = RequestId::of(&long);
        assert_eq!(kept.as_str(), "é".repeat(24));
    }

    fn numbered(n: usize) -> RecentRequest {
        RecentRequest {
            time_ms: 0,
            request_id: RequestId::of(&n.to_string()),
            key: None,
            route: "/v1/chat/completions",
            model: None,
            deployment: None,
            status: 200,
            stream: false,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost_usd: None,
            total_ms: 0.0,
            first_byte_ms: None,
            outcome: "ok",
            error: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_gives_them_newest_first() {
        let mut ring = Ring {
            items: Vec::new(),
            next: 0,
        };
        let ids = |ring: &Ring| -> Vec<String> {
            ring.newest_first()
                .map(|request| request.request_id.as_str().to_owned())
                .collect()
        };
        for n in 0..3 {
            ring.keep(numbered(n));
        }
        assert_eq!(ids(&ring), ["2", "1", "0"]);
        for n in 3..CAPACITY + 5 {
            ring.keep(numbered(n));
        }
        let kept = ids(&ring);
        assert_eq!(kept.len(), CAPACITY);
        assert_eq!(kept[0], (CAPACITY + 4).to_string());
        assert_eq!(kept[CAPACITY - 1], "5", "the oldest five are gone");
        let expected: Vec<String> = (5..CAPACITY + 5).rev().map(|n| n.to_string()).collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let got = percentiles(values).unwrap_or_else(|| panic!("values"));
        assert_eq!(
            (got.p50, got.p95, got.p99, got.samples),
            (50.0, 95.0, 99.0, 100)
        );
        assert_eq!(percentiles(Vec::new()), None);
    }
}
