//! Limits shared by replicas through Redis. One admission is one round trip: `admit.lua` checks
//! and takes every limit atomically on Redis' own clock (GCRA cells, the key's in-flight set,
//! its budget). Settlement (`settle.lua`) is queued and sent by a background task, pipelined,
//! off the request path.
//!
//! Requests in flight and budget reservations are leases: members of sorted sets scored by
//! when they expire (30 s), renewed every 10 s by the replica that holds them; a replica that
//! crashes stops renewing and its slots and reservations free themselves.
//!
//! While Redis is down (`SharedRedis` says so; a failed or slow command says so too) each
//! replica falls back to its memory limits at its share (`1/replicas` of every rate, slot and
//! remaining budget) with `on_redis_failure: open`, or refuses with 503 with `closed`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::Script;
use tokio::sync::Notify;

use super::{Ask, BudgetAsk, Denied, Granted, MemoryLimits, Take, Ticket as AnyTicket, Unit, show};
use crate::api::errors::ApiError;
use crate::config::{BudgetPeriod, RedisFailure};
use crate::governance::admission::RateHeaders;
use crate::governance::limiter::{Refusal, Standing};
use crate::store::redis::SharedRedis;

/// How long a slot or reservation lives without renewal.
const LEASE: Duration = Duration::from_secs(30);
/// How often held leases are renewed.
const RENEW_EVERY: Duration = Duration::from_secs(10);
/// Settlements sent in one pipeline.
const SETTLE_BATCH: usize = 256;
/// Budget counters outlive their period by this much (then Redis forgets them).
const BUDGET_TTL_SECS: u64 = 40 * 86_400;

const RENEW_SCRIPT: &str = "local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now_ms + tonumber(ARGV[1]), ARGV[i + 1])
end
return #KEYS";

/// Counters, for metrics and tests.
#[derive(Debug, Default)]
pub struct RedisCounts {
    /// Admissions decided by Redis.
    pub admitted_shared: AtomicU64,
    /// Admissions decided locally (or refused) because Redis was down.
    pub fallbacks: AtomicU64,
    /// Settlements that could not be sent (their leases expire by themselves).
    pub settlements_lost: AtomicU64,
}

/// Held leases, to renew: ticket -> (set, member) pairs.
type Leases = Mutex<HashMap<u64, Vec<(String, String)>>>;

/// Settlements waiting to be sent: requests push (a short lock, a wake-up only when the queue
/// was empty); one task takes them all and pipelines them.
#[derive(Debug, Default)]
struct Queue {
    items: Mutex<Vec<Settlement>>,
    wake: Notify,
    /// The limits are gone: the task sends what is left and stops.
    closed: std::sync::atomic::AtomicBool,
    /// Pushed and not yet sent.
    pending: AtomicU64,
}

impl Queue {
    fn push(&self, settlement: Settlement) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let was_empty = {
            let mut items = lock(&self.items);
            let was_empty = items.is_empty();
            items.push(settlement);
            was_empty
        };
        if was_empty {
            self.wake.notify_one();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[derive(Debug)]
pub struct RedisLimits {
    redis: Arc<SharedRedis>,
    fallback: MemoryLimits,
    admit: Script,
    queue: Arc<Queue>,
    leases: Arc<Leases>,
    next_ticket: AtomicU64,
    pub counts: Arc<RedisCounts>,
}

impl Drop for RedisLimits {
    fn drop(&mut self) {
        self.queue.closed.store(true, Ordering::Release);
        self.queue.wake.notify_one();
    }
}

/// What a settlement sends to `settle.lua`.
#[derive(Debug)]
struct Settlement {
    ticket: u64,
    member: String,
    /// Token limit keys, microseconds per token, tokens used minus reserved.
    tokens: Vec<(String, f64, i64)>,
    concurrency: Option<String>,
    /// Budget hash, reservation set, estimate, cost.
    budget: Option<(String, String, u64, u64)>,
}

/// An admission Redis granted; settled (or, dropped, settled with nothing used) through the
/// settlement queue.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    member: String,
    tokens: Vec<(String, f64, u64)>,
    concurrency: Option<String>,
    budget: Option<(String, String, u64)>,
    queue: Arc<Queue>,
    settled: bool,
}

impl Ticket {
    pub fn settle(mut self, used_tokens: u64, cost: u64) {
        self.send(used_tokens, cost);
    }

    fn send(&mut self, used_tokens: u64, cost: u64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        let settlement = Settlement {
            ticket: self.id,
            member: std::mem::take(&mut self.member),
            tokens: std::mem::take(&mut self.tokens)
                .into_iter()
                .map(|(key, unit, reserved)| {
                    let delta = i128::from(used_tokens) - i128::from(reserved);
                    let delta =
                        i64::try_from(delta).unwrap_or(if delta < 0 { i64::MIN } else { i64::MAX });
                    (key, unit, delta)
                })
                .collect(),
            concurrency: self.concurrency.take(),
            budget: self
                .budget
                .take()
                .map(|(hash, set, estimate)| (hash, set, estimate, cost)),
        };
        self.queue.push(settlement);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.send(0, 0);
    }
}

/// Microseconds one unit of `take` costs at its rate.
fn unit_micros(take: &Take) -> f64 {
    take.rate.period.as_secs_f64() * 1e6 / take.rate.amount.max(1) as f64
}

impl RedisLimits {
    /// Starts the settlement and lease-renewal tasks (on the current runtime).
    pub fn start(redis: Arc<SharedRedis>) -> RedisLimits {
        let queue: Arc<Queue> = Arc::default();
        let leases: Arc<Leases> = Arc::default();
        let counts = Arc::new(RedisCounts::default());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(send_settlements(
                redis.clone(),
                queue.clone(),
                leases.clone(),
                counts.clone(),
            ));
            runtime.spawn(renew_leases(Arc::downgrade(&redis), leases.clone()));
        }
        RedisLimits {
            redis,
            fallback: MemoryLimits::default(),
            admit: Script::new(include_str!("admit.lua")),
            queue,
            leases,
            next_ticket: AtomicU64::new(1),
            counts,
        }
    }

    pub fn local(&self) -> &MemoryLimits {
        &self.fallback
    }

    fn limit_key(&self, take: &Take) -> String {
        let unit = match take.unit {
            Unit::Requests => "r",
            Unit::Tokens => "t",
        };
        self.redis
            .key(&format!("rl:{}:{unit}:{}", take.scope.name(), take.subject))
    }

    pub async fn admit(&self, ask: &Ask) -> Result<Granted, Denied> {
        let Some(mut connection) = self.redis.connection() else {
            return self.fall_back(ask);
        };
        let id = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{id}", self.redis_replica());
        let mut invocation = self.admit.prepare_invoke();
        let limit_keys: Vec<String> = ask.takes.iter().map(|take| self.limit_key(take)).collect();
        for key in &limit_keys {
            invocation.key(key);
        }
        let concurrency_key = ask
            .concurrency
            .map(|_| self.redis.key(&format!("cc:{}", ask.key_id)));
        if let Some(key) = &concurrency_key {
            invocation.key(key);
        }
        let budget_keys = ask.budget.as_ref().map(|budget| {
            let period = format!("{}:{}", ask.key_id, budget.period_start_ms);
            (
                self.redis.key(&format!("bd:{period}")),
                self.redis.key(&format!("bl:{period}")),
            )
        });
        if let Some((hash, set)) = &budget_keys {
            invocation.key(hash).key(set);
        }
        let baseline = ask.budget.as_ref().map_or(0, |budget| {
            let spending = self.fallback.state(&ask.key_id).spending_now();
            if spending.period_start_ms == Some(budget.period_start_ms) {
                spending.spent
            } else {
                0
            }
        });
        invocation
            .arg(ask.takes.len())
            .arg(ask.concurrency.unwrap_or(0))
            .arg(ask.budget.as_ref().map_or(-1, |budget| {
                i64::try_from(budget.budget.nano_usd).unwrap_or(i64::MAX)
            }))
            .arg(ask.budget.as_ref().map_or(0, |budget| budget.estimate))
            .arg(baseline)
            .arg(
                match ask.budget.as_ref().map(|budget| budget.budget.period) {
                    Some(BudgetPeriod::Total) | None => 0,
                    Some(_) => BUDGET_TTL_SECS,
                },
            )
            .arg(&member)
            .arg(u64::try_from(LEASE.as_millis()).unwrap_or(30_000));
        for take in &ask.takes {
            invocation
                .arg(unit_micros(take))
                .arg(take.rate.burst)
                .arg(take.cost);
        }
        let reply: Option<Vec<i64>> = self
            .redis
            .within(invocation.invoke_async(&mut connection))
            .await;
        let Some(reply) = reply else {
            return self.fall_back(ask);
        };
        self.counts.admitted_shared.fetch_add(1, Ordering::Relaxed);
        let decision = decode(&reply, ask.takes.len());
        let headers = headers_of(ask, &decision.standings);
        if let (Some(budget), Some(spent)) = (&ask.budget, decision.spent) {
            self.fallback
                .state(&ask.key_id)
                .load_spending(budget.period_start_ms, spent);
        }
        if let Some(error) = refusal_of(ask, &decision) {
            return Err(Denied {
                error: Box::new(error),
                headers,
            });
        }
        let mut leased = Vec::new();
        if let Some(key) = &concurrency_key {
            leased.push((key.clone(), member.clone()));
        }
        let budget = match (budget_keys, &ask.budget) {
            (Some((hash, set)), Some(budget)) => {
                leased.push((set.clone(), format!("{member}|{}", budget.estimate)));
                Some((hash, set, budget.estimate))
            }
            _ => None,
        };
        if !leased.is_empty() {
            lock(&self.leases).insert(id, leased);
        }
        let tokens = ask
            .takes
            .iter()
            .zip(limit_keys)
            .filter(|(take, _)| take.unit == Unit::Tokens)
            .map(|(take, key)| (key, unit_micros(take), take.cost))
            .collect();
        Ok(Granted {
            ticket: AnyTicket::Redis(Ticket {
                id,
                member,
                tokens,
                concurrency: concurrency_key,
                budget,
                queue: self.queue.clone(),
                settled: false,
            }),
            headers,
        })
    }

    fn redis_replica(&self) -> &str {
        self.redis.replica_id()
    }

    /// Redis is down: this replica's share locally (open), or 503 (closed).
    fn fall_back(&self, ask: &Ask) -> Result<Granted, Denied> {
        self.counts.fallbacks.fetch_add(1, Ordering::Relaxed);
        if self.redis.config.on_failure == RedisFailure::Closed {
            return Err(Denied {
                error: Box::new(ApiError::state_unavailable()),
                headers: RateHeaders::default(),
            });
        }
        let share = self.redis.replicas();
        if share <= 1 {
            return self.fallback.admit(ask);
        }
        let spent = self.fallback.state(&ask.key_id).spending_now();
        let scaled = Ask {
            key_id: ask.key_id.clone(),
            takes: ask.takes.iter().map(|take| take.scaled(share)).collect(),
            concurrency: ask.concurrency.map(|max| max.div_ceil(share).max(1)),
            budget: ask.budget.as_ref().map(|budget| {
                let known = if spent.period_start_ms == Some(budget.period_start_ms) {
                    spent.spent
                } else {
                    0
                };
                let left = budget.budget.nano_usd.saturating_sub(known);
                let mut share_of = budget.budget;
                share_of.nano_usd = known.saturating_add(left / u64::from(share));
                BudgetAsk {
                    budget: share_of,
                    ..budget.clone()
                }
            }),
        };
        self.fallback.admit(&scaled)
    }

    /// Waits (up to `deadline`) until every queued settlement was sent.
    pub async fn flush(&self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        while self.queue.pending.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `admit.lua`'s answer, decoded.
#[derive(Debug)]
struct Decision {
    admitted: bool,
    /// Index of the refusing take (from 1), -1 concurrency, -2 budget.
    which: i64,
    values: [i64; 3],
    spent: Option<u64>,
    /// (remaining, reset in microseconds) per take.
    standings: Vec<(u64, u64)>,
}

fn decode(reply: &[i64], takes: usize) -> Decision {
    let get = |n: usize| reply.get(n).copied().unwrap_or(0);
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    let admitted = get(0) == 1;
    let first = if admitted { 2 } else { 5 };
    let standings = (0..takes)
        .map(|n| {
            (
                unsigned(get(first + 2 * n)),
                unsigned(get(first + 2 * n + 1)),
            )
        })
        .collect();
    let spent = if admitted { get(1) } else { get(4) };
    Decision {
        admitted,
        which: if admitted { 0 } else { get(1) },
        values: [get(2), get(3), get(4)],
        spent: (spent >= 0 && (admitted || get(1) == -2)).then(|| unsigned(spent)),
        standings,
    }
}

fn standing_of(take: &Take, (remaining, reset_us): (u64, u64)) -> Standing {
    Standing {
        limit: take.rate.burst,
        remaining,
        reset: Duration::from_micros(reset_us),
    }
}

fn headers_of(ask: &Ask, standings: &[(u64, u64)]) -> RateHeaders {
    let mut headers = RateHeaders::default();
    for (take, standing) in ask.takes.iter().zip(standings) {
        show(&mut headers, take, standing_of(take, *standing));
    }
    headers
}

fn refusal_of(ask: &Ask, decision: &Decision) -> Option<ApiError> {
    if decision.admitted {
        return None;
    }
    let [a, b, _] = decision.values;
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    Some(match decision.which {
        -1 => ApiError::concurrency_limited(u32::try_from(a).unwrap_or(u32::MAX)),
        -2 => match &ask.budget {
            Some(budget) => ApiError::budget_exhausted(&budget.budget, unsigned(a), unsigned(b)),
            None => ApiError::state_unavailable(),
        },
        which => {
            let index = usize::try_from(which - 1).unwrap_or(usize::MAX);
            match (ask.takes.get(index), decision.standings.get(index)) {
                (Some(take), Some(standing)) => take.refused(&Refusal {
                    retry_after: Duration::from_micros(unsigned(a)),
                    standing: standing_of(take, *standing),
                    too_large: b == 1,
                }),
                _ => ApiError::state_unavailable(),
            }
        }
    })
}

/// Sends queued settlements in pipelines; keeps them while Redis is down (the queue is bounded
/// by the requests that were admitted), drops what Redis refuses.
async fn send_settlements(
    redis: Arc<SharedRedis>,
    queue: Arc<Queue>,
    leases: Arc<Leases>,
    counts: Arc<RedisCounts>,
) {
    let script = Script::new(include_str!("settle.lua"));
    let mut batch: Vec<Settlement> = Vec::new();
    loop {
        if batch.is_empty() {
            let closed = queue.closed.load(Ordering::Acquire);
            batch = std::mem::take(&mut *lock(&queue.items));
            if batch.is_empty() {
                if closed {
                    return;
                }
                queue.wake.notified().await;
                continue;
            }
            let mut held = lock(&leases);
            for settlement in &batch {
                held.remove(&settlement.ticket);
            }
        }
        let Some(mut connection) = redis.connection() else {
            // Down: keep them (leases expire meanwhile; budgets are what matters) and retry.
            if queue.closed.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let take = batch.len().min(SETTLE_BATCH);
        let pipe = settlement_pipeline(&script, &batch[..take]);
        let mut sent: Result<(), redis::RedisError> = pipe.query_async(&mut connection).await;
        if matches!(&sent, Err(error) if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        {
            // A restarted Redis has an empty script cache: load it and send once more (no
            // settlement of the batch ran, the script is the same for all).
            sent = match script.prepare_invoke().load_async(&mut connection).await {
                Ok(_) => pipe.query_async(&mut connection).await,
                Err(error) => Err(error),
            };
        }
        match sent {
            Ok(()) => {}
            Err(error) if crate::store::redis::is_outage(&error) => {
                redis.failed(&error);
                continue;
            }
            Err(error) => {
                counts
                    .settlements_lost
                    .fetch_add(take as u64, Ordering::Relaxed);
                tracing::warn!(%error, count = take, "redis: settlements refused; their leases expire by themselves");
            }
        }
        batch.drain(..take);
        queue.pending.fetch_sub(take as u64, Ordering::AcqRel);
    }
}

/// One `EVALSHA settle.lua` per settlement, in one pipeline.
fn settlement_pipeline(script: &Script, batch: &[Settlement]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for settlement in batch {
        let mut invocation = script.prepare_invoke();
        for (key, _, _) in &settlement.tokens {
            invocation.key(key);
        }
        if let Some(key) = &settlement.concurrency {
            invocation.key(key);
        }
        if let Some((hash, set, _, _)) = &settlement.budget {
            invocation.key(hash).key(set);
        }
        invocation
            .arg(settlement.tokens.len())
            .arg(if settlement.concurrency.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(if settlement.budget.is_some() {
                "1"
            } else {
                "0"
            })
            .arg(&settlement.member)
            .arg(settlement.budget.as_ref().map_or(0, |b| b.2))
            .arg(settlement.budget.as_ref().map_or(0, |b| b.3));
        for (_, unit, delta) in &settlement.tokens {
            invocation.arg(*unit).arg(*delta);
        }
        pipe.invoke_script(&invocation).ignore();
    }
    pipe
}

/// Renews the leases this replica holds, every `RENEW_EVERY`, until the Redis handle is gone.
async fn renew_leases(redis: std::sync::Weak<SharedRedis>, leases: Arc<Leases>) {
    let script = Script::new(RENEW_SCRIPT);
    let mut ticks = tokio::time::interval(RENEW_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(redis) = redis.upgrade() else { return };
        let held: Vec<(String, String)> = lock(&leases).values().flatten().cloned().collect();
        if held.is_empty() {
            continue;
        }
        let Some(mut connection) = redis.connection() else {
            continue;
        };
        for chunk in held.chunks(1_000) {
            let mut invocation = script.prepare_invoke();
            invocation.arg(u64::try_from(LEASE.as_millis()).unwrap_or(30_000));
            for (set, member) in chunk {
                invocation.key(set).arg(member);
            }
            let renewed: Option<i64> = redis.within(invocation.invoke_async(&mut connection)).await;
            if renewed.is_none() {
                break;
            }
        }
    }
}
