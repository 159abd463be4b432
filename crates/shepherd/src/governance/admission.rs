//! Admission and settlement. A request is admitted against its key's limits (requests, tokens,
//! requests in flight) and budget, and against the route's and model's limits; tokens and cost
//! are reserved on an estimate (prompt estimate + `max_tokens`) and settled with the real usage
//! when the request ends. A refusal gives back whatever was already taken, so a refused request
//! costs nothing. Everything here is memory and atomics: no database on the request path.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::keys::ClientKey;
use super::limiter::{Gcra, Refusal, Standing};
use super::period;
use super::pricing;
use crate::api::errors::{ApiError, ClientProtocol};
use crate::config::{Price, Rate};
use crate::translate::ir::Usage;

/// The live state of one client key (survives reloads; keyed by key id).
#[derive(Debug, Default)]
pub struct KeyState {
    requests: Gcra,
    tokens: Gcra,
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

impl KeyState {
    fn spending(&self) -> std::sync::MutexGuard<'_, Spending> {
        match self.budget.lock() {
            Ok(spending) => spending,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Sets what the key spent since `period_start_ms` (from the ledger, at start).
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
    pub fn standing(&self, limits: &crate::config::KeyLimits) -> RateHeaders {
        RateHeaders {
            requests: limits.requests.map(|rate| self.requests.standing(&rate)),
            tokens: limits.tokens.map(|rate| self.tokens.standing(&rate)),
        }
    }
}

/// What the admission wants to know about a request.
#[derive(Debug)]
pub struct Demand {
    /// Prompt tokens (estimated) plus the output tokens the request may use.
    pub tokens: u64,
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    /// The highest price among the deployments that may serve it.
    pub price: Price,
}

/// The rate-limit standing shown in response headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateHeaders {
    pub requests: Option<Standing>,
    pub tokens: Option<Standing>,
}

impl RateHeaders {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for OpenAI clients,
    /// `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` for Anthropic ones.
    pub fn apply(&self, headers: &mut HeaderMap, protocol: ClientProtocol) {
        for (kind, standing) in [("requests", self.requests), ("tokens", self.tokens)] {
            let Some(standing) = standing else { continue };
            let reset = match protocol {
                ClientProtocol::OpenAi => openai_duration(standing.reset),
                ClientProtocol::Anthropic => {
                    humantime::format_rfc3339_seconds(SystemTime::now() + standing.reset)
                        .to_string()
                }
            };
            let values = [
                ("limit", standing.limit.to_string()),
                ("remaining", standing.remaining.to_string()),
                ("reset", reset),
            ];
            for (field, value) in values {
                let name = match protocol {
                    ClientProtocol::OpenAi => format!("x-ratelimit-{field}-{kind}"),
                    ClientProtocol::Anthropic => format!("anthropic-ratelimit-{kind}-{field}"),
                };
                if let (Ok(name), Ok(value)) =
                    (HeaderName::try_from(name), HeaderValue::from_str(&value))
                {
                    headers.insert(name, value);
                }
            }
        }
    }
}

/// A duration the way OpenAI's reset headers write it: `12ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`.
pub fn openai_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        let text = format!("{seconds:.3}");
        let text = text.trim_end_matches('0').trim_end_matches('.');
        return format!("{text}s");
    }
    let whole = duration.as_secs();
    let (hours, minutes, seconds) = (whole / 3600, whole % 3600 / 60, whole % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else {
        format!("{minutes}m{seconds}s")
    }
}

/// A limit and its rate.
pub type Limit = (Arc<Gcra>, Rate);

/// The model's request and token limits, when it has them.
pub type ModelLimits = (Option<Limit>, Option<Limit>);

/// Taken and reserved for one admitted request; settled when the request ends, given back if
/// it is dropped unsettled.
#[derive(Debug)]
pub struct Admission {
    pub key: Arc<ClientKey>,
    state: Arc<KeyState>,
    tokens_reserved: u64,
    model_requests: Option<Limit>,
    model_tokens: Option<Limit>,
    model_tokens_reserved: u64,
    cost_reserved: u64,
    holds_slot: bool,
    budget_period_start: Option<i64>,
    /// Still being admitted: a drop now is a refusal, and gives back the request it took.
    admitting: bool,
    took_request: bool,
    settled: bool,
    pub headers: RateHeaders,
}

fn refused(refusal: &Refusal, kind: &'static str, scope: &'static str, what: &str) -> ApiError {
    ApiError::rate_limited(kind, scope, what, refusal.retry_after, refusal.too_large)
}

impl Admission {
    /// Admits a request of `key` or says why not (giving back whatever it took first).
    pub fn admit(
        key: Arc<ClientKey>,
        state: Arc<KeyState>,
        demand: &Demand,
        model_limits: ModelLimits,
    ) -> Result<Admission, ApiError> {
        let mut admission = Admission {
            key,
            state,
            tokens_reserved: 0,
            model_requests: None,
            model_tokens: None,
            model_tokens_reserved: 0,
            cost_reserved: 0,
            holds_slot: false,
            budget_period_start: None,
            admitting: true,
            took_request: false,
            settled: false,
            headers: RateHeaders::default(),
        };
        let limits = admission.key.limits;
        if let Some(rate) = limits.requests {
            let standing =
                admission.state.requests.take(&rate, 1).map_err(|r| {
                    refused(&r, "requests", "key", "requests per minute for this key")
                })?;
            admission.took_request = true;
            admission.headers.requests = Some(standing);
        }
        if let Some(rate) = limits.tokens {
            let standing = admission
                .state
                .tokens
                .take(&rate, demand.tokens)
                .map_err(|r| refused(&r, "tokens", "key", "tokens per minute for this key"))?;
            admission.tokens_reserved = demand.tokens;
            admission.headers.tokens = Some(standing);
        }
        let (model_requests, model_tokens) = model_limits;
        if let Some((limit, rate)) = model_requests {
            limit.take(&rate, 1).map_err(|r| {
                refused(
                    &r,
                    "requests",
                    "model",
                    "requests per minute for this model",
                )
            })?;
            admission.model_requests = Some((limit, rate));
        }
        if let Some((limit, rate)) = model_tokens {
            limit
                .take(&rate, demand.tokens)
                .map_err(|r| refused(&r, "tokens", "model", "tokens per minute for this model"))?;
            admission.model_tokens = Some((limit, rate));
            admission.model_tokens_reserved = demand.tokens;
        }
        if let Some(max) = limits.concurrency {
            let before = admission.state.inflight.fetch_add(1, Ordering::AcqRel);
            admission.holds_slot = true;
            if before >= max {
                return Err(ApiError::concurrency_limited(max));
            }
        }
        if let Some(budget) = admission.key.budget {
            let estimate = pricing::cost(
                &demand.price,
                &Usage {
                    input: demand.prompt_tokens,
                    output: demand.output_tokens,
                    ..Usage::default()
                },
            );
            let start = period::start_ms(budget.period, now_ms());
            let mut spending = admission.state.spending();
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
                return Err(ApiError::budget_exhausted(&budget, left, estimate));
            }
            spending.reserved = spending.reserved.saturating_add(estimate);
            drop(spending);
            admission.cost_reserved = estimate;
            admission.budget_period_start = Some(start);
        }
        admission.admitting = false;
        Ok(admission)
    }

    /// Settles with what the request really used; returns its cost at `price`.
    pub fn settle(mut self, usage: Option<&Usage>, price: Option<&Price>) -> u64 {
        self.settled = true;
        let used_tokens = usage.map_or(0, Usage::total);
        let cost = match (usage, price) {
            (Some(usage), Some(price)) => pricing::cost(price, usage),
            _ => 0,
        };
        if let Some(rate) = self.key.limits.tokens {
            settle_tokens(&self.state.tokens, &rate, self.tokens_reserved, used_tokens);
        }
        if let Some((limit, rate)) = &self.model_tokens {
            settle_tokens(limit, rate, self.model_tokens_reserved, used_tokens);
        }
        if self.key.budget.is_some() {
            let mut spending = self.state.spending();
            spending.reserved = spending.reserved.saturating_sub(self.cost_reserved);
            if spending.period_start_ms == self.budget_period_start {
                spending.spent = spending.spent.saturating_add(cost);
            }
        }
        self.release_slot();
        cost
    }

    fn release_slot(&mut self) {
        if std::mem::take(&mut self.holds_slot) {
            self.state.inflight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn settle_tokens(limit: &Gcra, rate: &Rate, reserved: u64, used: u64) {
    if used < reserved {
        limit.give_back(rate, reserved - used);
    } else if used > reserved {
        limit.charge(rate, used - reserved);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Refused, or dropped before any accounting: give back what was reserved (and, for a
        // refusal, the request itself).
        if self.admitting {
            if let (Some(rate), true) = (self.key.limits.requests, self.took_request) {
                self.state.requests.give_back(&rate, 1);
            }
            if let Some((limit, rate)) = &self.model_requests {
                limit.give_back(rate, 1);
            }
        }
        if let Some(rate) = self.key.limits.tokens {
            self.state.tokens.give_back(&rate, self.tokens_reserved);
        }
        if let Some((limit, rate)) = &self.model_tokens {
            limit.give_back(rate, self.model_tokens_reserved);
        }
        if self.key.budget.is_some() {
            let mut spending = self.state.spending();
            spending.reserved = spending.reserved.saturating_sub(self.cost_reserved);
        }
        self.release_slot();
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Budget, BudgetPeriod, KeyLimits, ModelPattern};

    fn key(limits: KeyLimits, budget: Option<Budget>) -> Arc<ClientKey> {
        Arc::new(ClientKey {
            id: "static:k".into(),
            name: "k".into(),
            models: vec![ModelPattern::new("*".into())],
            limits,
            budget,
            metadata: serde_json::Value::Null,
            expires_at: None,
            default_model: None,
        })
    }

    fn demand(tokens: u64) -> Demand {
        Demand {
            tokens,
            prompt_tokens: tokens / 2,
            output_tokens: tokens - tokens / 2,
            price: Price::per_million(1000.0, 1000.0, 1000.0, 1000.0),
        }
    }

    #[test]
    fn openai_reset_durations() {
        assert_eq!(openai_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_gives_back_what_was_taken() {
        let limits = KeyLimits {
            requests: Some(Rate {
                amount: 10,
                period: Duration::from_secs(60),
                burst: 10,
            }),
            tokens: Some(Rate {
                amount: 100,
                period: Duration::from_secs(60),
                burst: 100,
            }),
            concurrency: Some(1),
        };
        let key = key(limits, None);
        let state = Arc::new(KeyState::default());
        let first =
            Admission::admit(key.clone(), state.clone(), &demand(60), (None, None)).unwrap();
        assert_eq!(first.headers.requests.unwrap().remaining, 9);
        assert_eq!(first.headers.tokens.unwrap().remaining, 40);
        // Too many tokens: refused, and the request it took is given back.
        let error =
            Admission::admit(key.clone(), state.clone(), &demand(60), (None, None)).unwrap_err();
        assert_eq!(error.status, 429);
        assert_eq!(
            state.requests.standing(&limits.requests.unwrap()).remaining,
            9
        );
        // One in flight: the second is refused for concurrency.
        let error =
            Admission::admit(key.clone(), state.clone(), &demand(10), (None, None)).unwrap_err();
        assert_eq!(error.code, "concurrency_limit_exceeded");
        // Settled with less than reserved: the difference comes back.
        first.settle(
            Some(&Usage {
                input: 10,
                output: 10,
                ..Usage::default()
            }),
            None,
        );
        assert_eq!(state.tokens.standing(&limits.tokens.unwrap()).remaining, 80);
        assert_eq!(state.inflight(), 0);
    }

    #[test]
    fn budgets_reserve_then_settle() {
        // Each estimate: 10 tokens at $1000/M = 10,000,000 nano-dollars; budget fits 3.
        let budget = Budget {
            nano_usd: 30_000_000,
            period: BudgetPeriod::Total,
        };
        let key = key(KeyLimits::default(), Some(budget));
        let state = Arc::new(KeyState::default());
        let admitted: Vec<Admission> = (0..3)
            .map(|_| {
                Admission::admit(key.clone(), state.clone(), &demand(10), (None, None)).unwrap()
            })
            .collect();
        let error =
            Admission::admit(key.clone(), state.clone(), &demand(10), (None, None)).unwrap_err();
        assert_eq!(error.code, "insufficient_quota");
        let price = Price::per_million(1000.0, 1000.0, 1000.0, 1000.0);
        for admission in admitted {
            admission.settle(
                Some(&Usage {
                    input: 2,
                    output: 2,
                    ..Usage::default()
                }),
                Some(&price),
            );
        }
        let spending = state.spending_now();
        assert_eq!((spending.spent, spending.reserved), (12_000_000, 0));
        // Room again: 18,000,000 left fits one more estimate.
        assert!(Admission::admit(key, state, &demand(10), (None, None)).is_ok());
    }
}
