//! Limits in this process's memory: one GCRA cell per limit, an atomic count of each key's
//! requests in flight, each key's spending under a small mutex. Takes are made in order and,
//! on a refusal, everything already taken is given back, so a refused request costs nothing.
//! No I/O: the embedded default, and each replica's fallback while Redis is down.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Ask, Denied, Granted, Scope, Subject, Take, Ticket as AnyTicket, Unit, show};
use crate::api::errors::ApiError;
use crate::config::{KeyLimits, Rate};
use crate::governance::admission::RateHeaders;
use crate::governance::limiter::{Gcra, Keyed};

/// The live state of one client key (survives reloads; keyed by key id).
#[derive(Debug, Default)]
pub struct KeyState {
    requests: Arc<Gcra>,
    tokens: Arc<Gcra>,
    inflight: AtomicU32,
    budget: Mutex<Spending>,
}

/// A key's spending in its current budget period, in nano-dollars.
#[derive(Debug, Default, Clone, Copy)]
pub struct Spending {
    /// Start of the period the figures belong to (unix ms); `None`: not loaded yet.
    pub period_start_ms: Option<i64>,
    pub spent: u64,
    pub reserved: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl KeyState {
    fn spending(&self) -> MutexGuard<'_, Spending> {
        lock(&self.budget)
    }

    /// Sets what the key spent since `period_start_ms` (from the ledger, or from Redis).
    pub fn load_spending(&self, period_start_ms: i64, spent: u64) {
        let mut spending = self.spending();
        spending.period_start_ms = Some(period_start_ms);
        spending.spent = spent;
    }

    pub fn spending_now(&self) -> Spending {
        *self.spending()
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Where the key's request and token limits stand now.
    pub fn standing(&self, limits: &KeyLimits) -> RateHeaders {
        RateHeaders {
            requests: limits.requests.map(|rate| self.requests.standing(&rate)),
            tokens: limits.tokens.map(|rate| self.tokens.standing(&rate)),
        }
    }
}

/// Every limit's state in this process.
#[derive(Debug, Default)]
pub struct MemoryLimits {
    states: Mutex<HashMap<Arc<str>, Arc<KeyState>>>,
    per_ip: Keyed<IpAddr>,
    per_route: Keyed<Arc<str>>,
    per_model_requests: Keyed<Arc<str>>,
    per_model_tokens: Keyed<Arc<str>>,
}

/// What an admitted request took here, given back or settled at its end.
#[derive(Debug)]
pub struct Ticket {
    /// Token limits and what was reserved on each.
    tokens: Vec<(Arc<Gcra>, Rate, u64)>,
    /// The key whose slot (in flight) and budget reservation this holds.
    state: Option<Arc<KeyState>>,
    holds_slot: bool,
    cost_reserved: u64,
    budget_period_start: Option<i64>,
}

impl MemoryLimits {
    /// The live state of a key.
    pub fn state(&self, id: &Arc<str>) -> Arc<KeyState> {
        lock(&self.states).entry(id.clone()).or_default().clone()
    }

    /// The cell of one limit.
    fn cell(&self, take: &Take, key: &mut Option<Arc<KeyState>>, key_id: &Arc<str>) -> Arc<Gcra> {
        match (take.scope, &take.subject, take.unit) {
            (Scope::Ip, Subject::Ip(ip), _) => self.per_ip.get(ip),
            (Scope::Key, _, unit) => {
                let state = key.get_or_insert_with(|| self.state(key_id));
                match unit {
                    Unit::Requests => state.requests.clone(),
                    Unit::Tokens => state.tokens.clone(),
                }
            }
            (Scope::Model, Subject::Name(model), Unit::Requests) => {
                self.per_model_requests.get(model)
            }
            (Scope::Model, Subject::Name(model), Unit::Tokens) => self.per_model_tokens.get(model),
            (_, Subject::Name(route), _) => self.per_route.get(route),
            (_, Subject::Ip(ip), _) => self.per_ip.get(ip),
        }
    }

    /// Admits `ask` or says why not, giving back whatever it took first.
    pub fn admit(&self, ask: &Ask) -> Result<Granted, Denied> {
        let mut key: Option<Arc<KeyState>> = None;
        let mut headers = RateHeaders::default();
        let mut taken: Vec<(Arc<Gcra>, Rate, u64)> = Vec::with_capacity(ask.takes.len());
        let give_back = |taken: &[(Arc<Gcra>, Rate, u64)]| {
            for (cell, rate, cost) in taken {
                cell.give_back(rate, *cost);
            }
        };
        for take in &ask.takes {
            let cell = self.cell(take, &mut key, &ask.key_id);
            match cell.take(&take.rate, take.cost) {
                Ok(standing) => {
                    show(&mut headers, take, standing);
                    taken.push((cell, take.rate, take.cost));
                }
                Err(refusal) => {
                    give_back(&taken);
                    let error = take.refused(&refusal);
                    show(&mut headers, take, refusal.standing);
                    return Err(Denied {
                        error: Box::new(error),
                        headers,
                    });
                }
            }
        }
        let mut ticket = Ticket {
            tokens: Vec::new(),
            state: None,
            holds_slot: false,
            cost_reserved: 0,
            budget_period_start: None,
        };
        if ask.concurrency.is_some() || ask.budget.is_some() {
            ticket.state = Some(key.get_or_insert_with(|| self.state(&ask.key_id)).clone());
        }
        if let (Some(max), Some(state)) = (ask.concurrency, &ticket.state) {
            let before = state.inflight.fetch_add(1, Ordering::AcqRel);
            ticket.holds_slot = true;
            if before >= max {
                give_back(&taken);
                return Err(Denied {
                    error: Box::new(ApiError::concurrency_limited(max)),
                    headers,
                });
            }
        }
        if let (Some(ask_budget), Some(state)) = (&ask.budget, &ticket.state) {
            let budget = ask_budget.budget;
            let start = ask_budget.period_start_ms;
            let estimate = ask_budget.estimate;
            let mut spending = state.spending();
            if spending.period_start_ms != Some(start) {
                // A new period began (or nothing was loaded: a new key).
                spending.period_start_ms = Some(start);
                spending.spent = 0;
            }
            // Spent (or reserved) to the limit: refused even for a model without a price.
            let committed = spending.spent.saturating_add(spending.reserved);
            if committed >= budget.nano_usd || committed.saturating_add(estimate) > budget.nano_usd
            {
                let left = budget.nano_usd.saturating_sub(committed);
                drop(spending);
                give_back(&taken);
                return Err(Denied {
                    error: Box::new(ApiError::budget_exhausted(&budget, left, estimate)),
                    headers,
                });
            }
            spending.reserved = spending.reserved.saturating_add(estimate);
            drop(spending);
            ticket.cost_reserved = estimate;
            ticket.budget_period_start = Some(start);
        }
        // Requests are not settled; tokens are.
        ticket.tokens = ask
            .takes
            .iter()
            .zip(taken)
            .filter(|(take, _)| take.unit == Unit::Tokens)
            .map(|(_, taken)| taken)
            .collect();
        Ok(Granted {
            ticket: AnyTicket::Memory(ticket),
            headers,
        })
    }
}

impl Ticket {
    /// Settles with `used_tokens` and `cost` (nano-dollars).
    pub fn settle(mut self, used_tokens: u64, cost: u64) {
        for (cell, rate, reserved) in &self.tokens {
            if used_tokens < *reserved {
                cell.give_back(rate, reserved - used_tokens);
            } else if used_tokens > *reserved {
                cell.charge(rate, used_tokens - reserved);
            }
        }
        if let Some(state) = &self.state {
            if let Some(start) = self.budget_period_start {
                let mut spending = state.spending();
                spending.reserved = spending.reserved.saturating_sub(self.cost_reserved);
                if spending.period_start_ms == Some(start) {
                    spending.spent = spending.spent.saturating_add(cost);
                }
            }
            if std::mem::take(&mut self.holds_slot) {
                state.inflight.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // A slot still held here was never settled (refused after taking it).
        if self.holds_slot
            && let Some(state) = &self.state
        {
            state.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::BudgetAsk;
    use super::*;
    use crate::config::{Budget, BudgetPeriod};
    use std::time::Duration;

    fn per_minute(amount: u64) -> Rate {
        Rate {
            amount,
            period: Duration::from_secs(60),
            burst: amount,
        }
    }

    fn ask(tokens: u64, concurrency: Option<u32>, budget: Option<BudgetAsk>) -> Ask {
        let key: Arc<str> = "static:k".into();
        Ask {
            key_id: key.clone(),
            takes: vec![
                Take {
                    scope: Scope::Key,
                    unit: Unit::Requests,
                    subject: Subject::Name(key.clone()),
                    rate: per_minute(10),
                    cost: 1,
                },
                Take {
                    scope: Scope::Key,
                    unit: Unit::Tokens,
                    subject: Subject::Name(key),
                    rate: per_minute(100),
                    cost: tokens,
                },
            ],
            concurrency,
            budget,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_gives_back_what_was_taken() {
        let limits = MemoryLimits::default();
        let first = limits.admit(&ask(60, Some(1), None)).unwrap();
        assert_eq!(first.headers.requests.unwrap().remaining, 9);
        assert_eq!(first.headers.tokens.unwrap().remaining, 40);
        // Too many tokens: refused, and the request it took is given back.
        let denied = limits.admit(&ask(60, Some(1), None)).unwrap_err();
        assert_eq!(denied.error.status, 429);
        let state = limits.state(&"static:k".into());
        assert_eq!(state.requests.standing(&per_minute(10)).remaining, 9);
        // One in flight: the next is refused for concurrency, and gives back its tokens.
        let denied = limits.admit(&ask(10, Some(1), None)).unwrap_err();
        assert_eq!(denied.error.code, "concurrency_limit_exceeded");
        assert_eq!(state.tokens.standing(&per_minute(100)).remaining, 40);
        // Settled with less than reserved: the difference comes back, the slot is free.
        first.ticket.settle(20, 0);
        assert_eq!(state.tokens.standing(&per_minute(100)).remaining, 80);
        assert_eq!(state.inflight(), 0);
    }

    #[test]
    fn budgets_reserve_then_settle() {
        // Each estimate is 10,000,000 nano-dollars; the budget fits 3.
        let budget = BudgetAsk {
            budget: Budget {
                nano_usd: 30_000_000,
                period: BudgetPeriod::Total,
            },
            period_start_ms: 0,
            estimate: 10_000_000,
        };
        let limits = MemoryLimits::default();
        let mut no_rates = ask(0, None, Some(budget.clone()));
        no_rates.takes.clear();
        let admitted: Vec<Granted> = (0..3).map(|_| limits.admit(&no_rates).unwrap()).collect();
        let denied = limits.admit(&no_rates).unwrap_err();
        assert_eq!(denied.error.code, "insufficient_quota");
        for granted in admitted {
            granted.ticket.settle(4, 4_000_000);
        }
        let spending = limits.state(&"static:k".into()).spending_now();
        assert_eq!((spending.spent, spending.reserved), (12_000_000, 0));
        // Room again: 18,000,000 left fits one more estimate.
        assert!(limits.admit(&no_rates).is_ok());
    }
}
