//! Rate limiting with GCRA (the generic cell rate algorithm): each limit keeps one "theoretical
//! arrival time"; a request of cost `n` moves it `n` emission intervals ahead and is admitted
//! while it stays within `burst` intervals of now. Exact at the boundaries, O(1), one small lock
//! per limit. Unlike the `governor` crate, a taking can be settled afterwards (tokens are
//! reserved on an estimate and corrected with the real usage), which token limits need.
//! Time is tokio's, so tests pause it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Rate;

/// Where a limit stands after a decision (the `x-ratelimit-*` headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is whole again.
    pub reset: Duration,
}

/// A refusal: when the request would be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub retry_after: Duration,
    pub standing: Standing,
    /// The request alone is larger than the burst: it can never pass.
    pub too_large: bool,
}

/// One limit's state.
#[derive(Debug)]
pub struct Gcra {
    /// When the limit would be whole again; `None`: it is whole.
    tat: Mutex<Option<Instant>>,
}

impl Default for Gcra {
    fn default() -> Self {
        Gcra {
            tat: Mutex::new(None),
        }
    }
}

/// The time `cost` units take at `rate`, rounded down to the nanosecond.
fn interval(rate: &Rate, cost: u64) -> Duration {
    let nanos = rate.period.as_nanos() * u128::from(cost) / u128::from(rate.amount.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

fn standing(rate: &Rate, tat: Instant, now: Instant) -> Standing {
    let used = tat.saturating_duration_since(now);
    let capacity = interval(rate, rate.burst);
    let free = capacity.saturating_sub(used);
    let unit = interval(rate, 1).max(Duration::from_nanos(1));
    Standing {
        limit: rate.burst,
        remaining: u64::try_from(free.as_nanos() / unit.as_nanos()).unwrap_or(u64::MAX),
        reset: used,
    }
}

impl Gcra {
    fn with<T>(&self, f: impl FnOnce(&mut Option<Instant>) -> T) -> T {
        let mut tat = match self.tat.lock() {
            Ok(tat) => tat,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut tat)
    }

    /// Takes `cost` units if the limit allows.
    pub fn take(&self, rate: &Rate, cost: u64) -> Result<Standing, Refusal> {
        let now = Instant::now();
        self.with(|tat| {
            let base = tat.map_or(now, |tat| tat.max(now));
            let next = crate::bounds::later(base, interval(rate, cost));
            let capacity = interval(rate, rate.burst);
            let ahead = next.saturating_duration_since(now);
            if ahead > capacity {
                return Err(Refusal {
                    retry_after: ahead - capacity,
                    standing: standing(rate, base, now),
                    too_large: cost > rate.burst,
                });
            }
            *tat = Some(next);
            Ok(standing(rate, next, now))
        })
    }

    /// Gives back `units` taken earlier (a reservation larger than what was used).
    pub fn give_back(&self, rate: &Rate, units: u64) {
        let now = Instant::now();
        self.with(|tat| {
            if let Some(current) = *tat {
                let back = current.checked_sub(interval(rate, units)).unwrap_or(now);
                *tat = (back > now).then_some(back);
            }
        });
    }

    /// Takes `units` more, admitted or not (usage beyond a reservation still counts).
    pub fn charge(&self, rate: &Rate, units: u64) {
        let now = Instant::now();
        self.with(|tat| {
            let base = tat.map_or(now, |tat| tat.max(now));
            *tat = Some(crate::bounds::later(base, interval(rate, units)));
        });
    }

    pub fn standing(&self, rate: &Rate) -> Standing {
        let now = Instant::now();
        self.with(|tat| standing(rate, tat.map_or(now, |tat| tat.max(now)), now))
    }

    /// Whether the limit is whole (nothing to remember).
    fn is_idle(&self) -> bool {
        let now = Instant::now();
        self.with(|tat| tat.is_none_or(|tat| tat <= now))
    }
}

/// Limits keyed by something (client address, route, model), in shards; whole limits are
/// forgotten as the map grows, so a scan of many addresses cannot exhaust memory.
#[derive(Debug)]
pub struct Keyed<K> {
    shards: Vec<Mutex<HashMap<K, std::sync::Arc<Gcra>>>>,
}

const SHARDS: usize = 16;
/// Entries per shard before whole limits are swept out.
const SWEEP_AT: usize = 4096;

impl<K: Hash + Eq + Clone> Default for Keyed<K> {
    fn default() -> Self {
        Keyed {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    /// The limit of `key`.
    pub fn get(&self, key: &K) -> std::sync::Arc<Gcra> {
        use std::hash::{BuildHasher, RandomState};
        static STATE: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
        let shard = usize::try_from(STATE.get_or_init(RandomState::new).hash_one(key)).unwrap_or(0)
            % SHARDS;
        let mut map = match self.shards[shard].lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        if map.len() >= SWEEP_AT && !map.contains_key(key) {
            map.retain(|_, gcra| !gcra.is_idle());
        }
        map.entry(key.clone()).or_default().clone()
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |map| map.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(amount: u64, seconds: u64, burst: u64) -> Rate {
        Rate {
            amount,
            period: Duration::from_secs(seconds),
            burst,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_n_plus_first_is_refused_and_admitted_when_the_window_allows() {
        let limit = Gcra::default();
        let per_minute = rate(60, 60, 60);
        for n in 0..60 {
            let standing = limit.take(&per_minute, 1).unwrap();
            assert_eq!(standing.remaining, 59 - n);
        }
        let refused = limit.take(&per_minute, 1).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(refused.standing.remaining, 0);
        assert_eq!(refused.standing.reset, Duration::from_secs(60));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(
            limit.take(&per_minute, 1).is_err(),
            "not a millisecond early"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(limit.take(&per_minute, 1).unwrap().remaining, 0);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limit.standing(&per_minute).remaining, 60);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_smaller_than_the_rate() {
        let limit = Gcra::default();
        let per_second = rate(10, 1, 2);
        assert!(limit.take(&per_second, 1).is_ok());
        assert!(limit.take(&per_second, 1).is_ok());
        assert_eq!(
            limit.take(&per_second, 1).unwrap_err().retry_after,
            Duration::from_millis(100)
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limit.take(&per_second, 1).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn reservations_settle_both_ways() {
        let limit = Gcra::default();
        let tokens = rate(1000, 60, 1000);
        limit.take(&tokens, 800).unwrap();
        assert!(limit.take(&tokens, 300).is_err());
        limit.give_back(&tokens, 500);
        assert_eq!(limit.standing(&tokens).remaining, 700);
        limit.charge(&tokens, 900);
        assert!(
            limit.take(&tokens, 1).is_err(),
            "over the limit after charging real usage"
        );
        let too_large = Gcra::default().take(&tokens, 1001).unwrap_err();
        assert!(too_large.too_large);
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_limits_forget_whole_entries() {
        let keyed: Keyed<u32> = Keyed::default();
        let once = rate(1, 1, 1);
        for n in 0..(SHARDS * SWEEP_AT) as u32 {
            keyed.get(&n).take(&once, 1).unwrap();
        }
        let before = keyed.len();
        tokio::time::advance(Duration::from_secs(2)).await;
        for n in 0..(SHARDS as u32 * 4) {
            keyed.get(&(1_000_000 + n));
        }
        assert!(keyed.len() < before, "{} -> {}", before, keyed.len());
        assert!(keyed.get(&1_000_000).take(&once, 1).is_ok());
    }
}
