//! Admission and settlement. A request is admitted as a whole by the limits backend
//! (`limits/`): its key's limits (requests, tokens, requests in flight) and budget, and the
//! model's limits; tokens and cost are reserved on an estimate (prompt estimate + `max_tokens`)
//! and settled with the real usage when the request ends. A refusal takes nothing, so a refused
//! request costs nothing. The embedded backend is memory and atomics; the shared one is one
//! Redis round trip. No database on the request path.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::keys::ClientKey;
use super::limiter::Standing;
use super::limits::Ticket;
use super::pricing;
use crate::api::errors::ClientProtocol;
use crate::config::Price;
use crate::translate::ir::Usage;

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

/// Header names per protocol, limit kind (requests, tokens) and field (limit, remaining, reset).
const OPENAI_HEADERS: [[&str; 3]; 2] = [
    [
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    ],
    [
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    ],
];
const ANTHROPIC_HEADERS: [[&str; 3]; 2] = [
    [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
    ],
    [
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
    ],
];

impl RateHeaders {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for OpenAI clients,
    /// `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` for Anthropic ones.
    pub fn apply(&self, headers: &mut HeaderMap, protocol: ClientProtocol) {
        let names = match protocol {
            ClientProtocol::OpenAi => &OPENAI_HEADERS,
            ClientProtocol::Anthropic => &ANTHROPIC_HEADERS,
        };
        for (standing, [limit, remaining, reset]) in
            [self.requests, self.tokens].into_iter().zip(names)
        {
            let Some(standing) = standing else { continue };
            let reset_value = match protocol {
                ClientProtocol::OpenAi => openai_duration(standing.reset),
                ClientProtocol::Anthropic => {
                    humantime::format_rfc3339_seconds(SystemTime::now() + standing.reset)
                        .to_string()
                }
            };
            headers.insert(
                HeaderName::from_static(limit),
                HeaderValue::from(standing.limit),
            );
            headers.insert(
                HeaderName::from_static(remaining),
                HeaderValue::from(standing.remaining),
            );
            if let Ok(value) = HeaderValue::from_str(&reset_value) {
                headers.insert(HeaderName::from_static(reset), value);
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

/// An admitted request: its ticket, settled when the request ends (or, dropped unsettled,
/// settled with nothing used: reserved tokens and cost come back, the slot is freed).
#[derive(Debug)]
pub struct Admission {
    pub key: Arc<ClientKey>,
    ticket: Option<Ticket>,
    pub headers: RateHeaders,
}

impl Admission {
    pub fn new(key: Arc<ClientKey>, ticket: Ticket, headers: RateHeaders) -> Admission {
        Admission {
            key,
            ticket: Some(ticket),
            headers,
        }
    }

    /// Settles with what the request really used; returns its cost at `price`.
    pub fn settle(mut self, usage: Option<&Usage>, price: Option<&Price>) -> u64 {
        let used_tokens = usage.map_or(0, Usage::total);
        let cost = match (usage, price) {
            (Some(usage), Some(price)) => pricing::cost(price, usage),
            _ => 0,
        };
        if let Some(ticket) = self.ticket.take() {
            ticket.settle(used_tokens, cost);
        }
        cost
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.settle(0, 0);
        }
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

    #[test]
    fn openai_reset_durations() {
        assert_eq!(openai_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(openai_duration(Duration::from_secs(1)), "1s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(openai_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(openai_duration(Duration::from_secs(3723)), "1h2m3s");
    }
}
