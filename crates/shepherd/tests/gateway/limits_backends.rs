//! The same behaviour from both limit backends: each case runs against the memory backend and
//! against a real Redis (`testkit::Redis`). Requests per minute with their headers, a refusal
//! that takes nothing, token reservations settled both ways, requests in flight, budgets with
//! reservations, a request that can never fit.

use std::sync::Arc;
use std::time::Duration;

use shepherd::config::{Budget, BudgetPeriod, Rate, RedisConfig, RedisFailure, Secret};
use shepherd::governance::limits::redis::RedisLimits;
use shepherd::governance::limits::{
    Ask, BudgetAsk, Granted, Limits, MemoryLimits, Scope, Subject, Take, Unit,
};
use shepherd::store::redis::SharedRedis;

/// A backend under test (the Redis server lives as long as it does).
struct Backend {
    limits: Limits,
    _redis: Option<testkit::Redis>,
}

async fn backends() -> Vec<(&'static str, Backend)> {
    let server = testkit::Redis::start();
    let shared = SharedRedis::start(&RedisConfig {
        url: Secret::new(server.url()),
        username: None,
        password: None,
        timeout: Duration::from_secs(2),
        on_failure: RedisFailure::Closed,
        prefix: "test:".to_owned(),
    });
    for _ in 0..100 {
        if shared.is_up() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(shared.is_up(), "redis up");
    vec![
        (
            "memory",
            Backend {
                limits: Limits::Memory(MemoryLimits::default()),
                _redis: None,
            },
        ),
        (
            "redis",
            Backend {
                limits: Limits::Redis(RedisLimits::start(shared)),
                _redis: Some(server),
            },
        ),
    ]
}

fn per_minute(amount: u64) -> Rate {
    Rate {
        amount,
        period: Duration::from_secs(60),
        burst: amount,
    }
}

fn key_take(unit: Unit, rate: Rate, cost: u64) -> Take {
    Take {
        scope: Scope::Key,
        unit,
        subject: Subject::Name(Arc::from("k1")),
        rate,
        cost,
    }
}

fn ask(takes: Vec<Take>) -> Ask {
    Ask {
        key_id: Arc::from("k1"),
        takes,
        concurrency: None,
        budget: None,
    }
}

/// Settles and waits until the backend applied it (Redis settles off the request path).
async fn settle(limits: &Limits, granted: Granted, used: u64, cost: u64) {
    granted.ticket.settle(used, cost);
    limits.flush(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn requests_per_minute_with_headers() {
    for (name, backend) in backends().await {
        let limits = &backend.limits;
        let rpm = ask(vec![key_take(Unit::Requests, per_minute(5), 1)]);
        for n in 0..5u64 {
            let granted = limits
                .admit(&rpm)
                .await
                .unwrap_or_else(|_| panic!("{name} #{n}"));
            assert_eq!(granted.headers.requests.unwrap().remaining, 4 - n, "{name}");
            assert_eq!(granted.headers.requests.unwrap().limit, 5, "{name}");
            settle(limits, granted, 0, 0).await;
        }
        let denied = limits.admit(&rpm).await.unwrap_err();
        assert_eq!(denied.error.status, 429, "{name}");
        assert_eq!(denied.error.code, "rate_limit_exceeded", "{name}");
        assert_eq!(denied.headers.requests.unwrap().remaining, 0, "{name}");
        let retry = denied.headers.requests.unwrap().reset;
        assert!(
            retry > Duration::from_secs(59) && retry <= Duration::from_secs(60),
            "{name}: {retry:?}"
        );
    }
}

#[tokio::test]
async fn a_refusal_takes_nothing() {
    for (name, backend) in backends().await {
        let limits = &backend.limits;
        let both = |tokens| {
            ask(vec![
                key_take(Unit::Requests, per_minute(10), 1),
                key_take(Unit::Tokens, per_minute(100), tokens),
            ])
        };
        let first = limits.admit(&both(60)).await.unwrap();
        assert_eq!(first.headers.requests.unwrap().remaining, 9);
        // The tokens refuse: the request it would have taken is not taken.
        assert!(limits.admit(&both(60)).await.is_err(), "{name}");
        let next = limits.admit(&both(10)).await.unwrap();
        assert_eq!(next.headers.requests.unwrap().remaining, 8, "{name}");
        assert_eq!(next.headers.tokens.unwrap().remaining, 30, "{name}");
    }
}

#[tokio::test]
async fn token_reservations_settle_both_ways() {
    for (name, backend) in backends().await {
        let limits = &backend.limits;
        let tokens = |cost| ask(vec![key_take(Unit::Tokens, per_minute(1000), cost)]);
        let big = limits.admit(&tokens(800)).await.unwrap();
        assert!(limits.admit(&tokens(300)).await.is_err(), "{name}");
        // Used 300 of the 800 reserved: 500 come back.
        settle(limits, big, 300, 0).await;
        let probe = limits.admit(&tokens(1)).await.unwrap();
        assert_eq!(probe.headers.tokens.unwrap().remaining, 699, "{name}");
        // Used more than reserved: charged beyond the reservation.
        settle(limits, probe, 400, 0).await;
        let probe = limits.admit(&tokens(1)).await.unwrap();
        assert_eq!(probe.headers.tokens.unwrap().remaining, 299, "{name}");
    }
}

#[tokio::test]
async fn requests_in_flight() {
    for (name, backend) in backends().await {
        let limits = &backend.limits;
        let mut two = ask(Vec::new());
        two.concurrency = Some(2);
        let a = limits.admit(&two).await.unwrap();
        let b = limits.admit(&two).await.unwrap();
        let denied = limits.admit(&two).await.unwrap_err();
        assert_eq!(denied.error.code, "concurrency_limit_exceeded", "{name}");
        settle(limits, a, 0, 0).await;
        let c = limits.admit(&two).await.unwrap();
        // Dropped unsettled: the slot comes back too.
        drop(b);
        limits.flush(Duration::from_secs(5)).await;
        let d = limits.admit(&two).await.unwrap();
        settle(limits, c, 0, 0).await;
        settle(limits, d, 0, 0).await;
    }
}

#[tokio::test]
async fn budgets_reserve_then_settle() {
    for (name, backend) in backends().await {
        let limits = &backend.limits;
        let mut spend = ask(Vec::new());
        spend.budget = Some(BudgetAsk {
            budget: Budget {
                nano_usd: 30_000_000,
                period: BudgetPeriod::Day,
            },
            period_start_ms: 1_000,
            estimate: 10_000_000,
        });
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(limits.admit(&spend).await.unwrap());
        }
        let denied = limits.admit(&spend).await.unwrap_err();
        assert_eq!(denied.error.code, "insufficient_quota", "{name}");
        for granted in held {
            settle(limits, granted, 4, 4_000_000).await;
        }
        // 12,000,000 spent: one estimate fits, not two.
        let one = limits.admit(&spend).await.unwrap();
        let denied = limits.admit(&spend).await.unwrap_err();
        assert_eq!(denied.error.code, "insufficient_quota", "{name}");
        settle(limits, one, 0, 0).await;
    }
}

#[tokio::test]
async fn a_request_that_can_never_fit_gets_no_retry_after() {
    for (name, backend) in backends().await {
        let limits = &backend.limits;
        let huge = ask(vec![key_take(Unit::Tokens, per_minute(100), 101)]);
        let denied = limits.admit(&huge).await.unwrap_err();
        assert!(
            denied.error.message.contains("alone"),
            "{name}: {}",
            denied.error.message
        );
        assert!(
            !denied
                .error
                .headers
                .iter()
                .any(|(name, _)| name == "retry-after"),
            "{name}"
        );
    }
}
