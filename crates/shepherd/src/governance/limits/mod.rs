//! Where limits are kept: every admission goes through `Limits`, which takes the whole
//! admission at once (every rate limit that applies, the key's requests in flight, its budget)
//! and returns a ticket that is settled later with the real usage. Admission code does not know
//! which backend holds the counters:
//!
//! - `memory.rs`: this process's memory (GCRA cells, an atomic in-flight count, a budget under
//!   a mutex); the embedded default, and the fallback while Redis is down.
//! - `redis.rs`: a shared Redis, one atomic Lua script per admission (one round trip), the
//!   settlement sent off the request path; limits hold across replicas.

pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;

use crate::api::errors::ApiError;
use crate::config::{Budget, Rate};

pub use memory::{KeyState, MemoryLimits, Spending};

use super::admission::RateHeaders;
use super::limiter::{Refusal, Standing};

/// What a limit is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ip,
    Route,
    Key,
    Model,
}

impl Scope {
    /// As `ratelimited_total{scope}` and error messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Route => "route",
            Scope::Key => "key",
            Scope::Model => "model",
        }
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
}

/// Who a limit belongs to within its scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Ip(IpAddr),
    /// A key id, a model or a route.
    Name(Arc<str>),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Ip(ip) => write!(f, "{ip}"),
            Subject::Name(name) => f.write_str(name),
        }
    }
}

/// One rate limit a request takes from.
#[derive(Debug, Clone)]
pub struct Take {
    pub scope: Scope,
    pub unit: Unit,
    pub subject: Subject,
    pub rate: Rate,
    pub cost: u64,
}

impl Take {
    /// The refusal of this limit as the client sees it.
    fn refused(&self, refusal: &Refusal) -> ApiError {
        let what = match (self.scope, self.unit) {
            (Scope::Key, Unit::Requests) => "requests per minute for this key",
            (Scope::Key, Unit::Tokens) => "tokens per minute for this key",
            (Scope::Model, Unit::Requests) => "requests per minute for this model",
            (Scope::Model, Unit::Tokens) => "tokens per minute for this model",
            (Scope::Route, _) => "requests on this route",
            (Scope::Ip, _) => "requests from this address",
        };
        let kind = match self.unit {
            Unit::Requests => "requests",
            Unit::Tokens => "tokens",
        };
        ApiError::rate_limited(
            kind,
            self.scope.name(),
            what,
            refusal.retry_after,
            refusal.too_large,
        )
    }

    /// Whether the key's own headers (`x-ratelimit-*`) show this limit.
    fn shown(&self) -> bool {
        self.scope == Scope::Key
    }

    /// The same limit at `1/share` of its rate (a replica's share while Redis is down).
    fn scaled(&self, share: u32) -> Take {
        let mut take = self.clone();
        take.rate.amount = take.rate.amount.div_ceil(u64::from(share)).max(1);
        take.rate.burst = take.rate.burst.div_ceil(u64::from(share)).max(1);
        take
    }
}

/// The key's budget, for an admission.
#[derive(Debug, Clone)]
pub struct BudgetAsk {
    pub budget: Budget,
    /// Start of the budget's current period (unix ms).
    pub period_start_ms: i64,
    /// The most this request may cost (nano-dollars).
    pub estimate: u64,
}

/// Everything one admission asks for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub key_id: Arc<str>,
    pub takes: Vec<Take>,
    /// The key's limit of requests in flight.
    pub concurrency: Option<u32>,
    pub budget: Option<BudgetAsk>,
}

/// A refusal, with where the key's own limits stand (for the response headers).
#[derive(Debug)]
pub struct Denied {
    pub error: Box<ApiError>,
    pub headers: RateHeaders,
}

/// What an admitted request holds until it is settled.
#[derive(Debug)]
pub enum Ticket {
    Memory(memory::Ticket),
    Redis(redis::Ticket),
}

impl Ticket {
    /// Reconciles with the real usage: unused tokens come back, the cost is spent, the slot
    /// is freed. A ticket dropped unsettled is settled with nothing used.
    pub fn settle(self, used_tokens: u64, cost: u64) {
        match self {
            Ticket::Memory(ticket) => ticket.settle(used_tokens, cost),
            Ticket::Redis(ticket) => ticket.settle(used_tokens, cost),
        }
    }
}

/// An admission granted.
#[derive(Debug)]
pub struct Granted {
    pub ticket: Ticket,
    pub headers: RateHeaders,
}

/// The backend of every limit.
#[derive(Debug)]
pub enum Limits {
    Memory(MemoryLimits),
    Redis(redis::RedisLimits),
}

impl Limits {
    /// Admits or refuses a request as a whole.
    pub async fn admit(&self, ask: &Ask) -> Result<Granted, Denied> {
        match self {
            Limits::Memory(memory) => memory.admit(ask),
            Limits::Redis(redis) => redis.admit(ask).await,
        }
    }

    /// The local state (the fallback's, under Redis): spending and requests in flight as this
    /// process knows them.
    pub fn local(&self) -> &MemoryLimits {
        match self {
            Limits::Memory(memory) => memory,
            Limits::Redis(redis) => redis.local(),
        }
    }

    /// Sends what is still to be settled (shutdown), within `deadline`.
    pub async fn flush(&self, deadline: std::time::Duration) {
        if let Limits::Redis(redis) = self {
            redis.flush(deadline).await;
        }
    }
}

/// The key's standing in `headers` for a take that shows there.
fn show(headers: &mut RateHeaders, take: &Take, standing: Standing) {
    if take.shown() {
        match take.unit {
            Unit::Requests => headers.requests = Some(standing),
            Unit::Tokens => headers.tokens = Some(standing),
        }
    }
}
