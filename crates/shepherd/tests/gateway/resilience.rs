//! Routing and resilience against mock-upstream fault injection: retries that honour
//! `Retry-After`, failover and circuit breakers, fallbacks, refused keys, canary, loop
//! protection, health checks and hot reload. Several mock servers stand for several providers.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};
use shepherd::server::Running;

use crate::common::*;

/// Mock servers and a gateway in front of them, built from a config template where `{mN}`
/// stands for the base URL of mock N.
struct Fleet {
    mocks: Vec<MockUpstream>,
    server: Running,
    client: reqwest::Client,
}

async fn fleet(mocks: usize, template: &str) -> Fleet {
    fleet_with(mocks, "", template).await
}

/// `server` holds extra `server:` settings, e.g. `timeouts: {first_byte: 300ms}`.
async fn fleet_with(mocks: usize, server: &str, template: &str) -> Fleet {
    let mut servers = Vec::new();
    for _ in 0..mocks {
        servers.push(MockUpstream::start().await.unwrap());
    }
    let yaml = fill(template, &servers, server);
    let config = shepherd::config::load_str(&yaml, "fleet.yaml", &|_| None).expect("config");
    Fleet {
        server: shepherd::server::start(config).await.unwrap(),
        mocks: servers,
        client: test_client(),
    }
}

fn fill(template: &str, mocks: &[MockUpstream], server: &str) -> String {
    let mut yaml = template.to_owned();
    for (n, mock) in mocks.iter().enumerate() {
        yaml = yaml.replace(&format!("{{m{n}}}"), &mock.base_url());
    }
    let server = if server.is_empty() {
        String::new()
    } else {
        format!(", {server}")
    };
    format!(
        "server: {{listen: 127.0.0.1:0{server}}}\n{yaml}keys: [{{name: svc, key: {CLIENT_KEY}}}]\n"
    )
}

impl Fleet {
    fn chat(&self, model: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("http://{}/v1/chat/completions", self.server.addr))
            .bearer_auth(CLIENT_KEY)
            .body(
                json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            )
    }

    fn received(&self, mock: usize) -> usize {
        self.mocks[mock].requests().len()
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map_or("", |v| v.to_str().unwrap())
}

fn failing(status: u16) -> Behavior {
    Behavior {
        status: Some(status),
        ..Behavior::default()
    }
}

#[tokio::test]
async fn a_429_storm_is_waited_out_as_retry_after_says_then_served() {
    let f = fleet(
        1,
        "providers: {p: {kind: openai, base_url: '{m0}', api_keys: [k1]}}
models: {m: {deployments: [{provider: p}]}}
retry: {attempts: 4, backoff: 10ms, max_retry_after: 5s}
",
    )
    .await;
    f.mocks[0].set_behavior(Behavior {
        status: Some(429),
        retry_after: Some("1".into()),
        fail_times: Some(2),
        ..Behavior::default()
    });
    let started = Instant::now();
    let response = f.chat("m").send().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-shepherd-attempts"), "3");
    assert_eq!(f.received(0), 3);
    assert!(
        elapsed >= Duration::from_secs(2),
        "waited {elapsed:?}, Retry-After said 1s twice"
    );
}

#[tokio::test]
async fn one_deployment_of_three_down_fails_no_request_and_comes_back_through_one_probe() {
    let f = fleet(
        3,
        "providers:
  p0: {kind: openai, base_url: '{m0}'}
  p1: {kind: openai, base_url: '{m1}'}
  p2: {kind: openai, base_url: '{m2}'}
models:
  m:
    deployments: [{provider: p0}, {provider: p1}, {provider: p2}]
    strategy: round_robin
retry: {attempts: 3, backoff: 1ms}
circuit: {failures: 3, cooldown: 1s}
",
    )
    .await;
    f.mocks[1].set_behavior(failing(500));
    for n in 0..30 {
        let response = f.chat("m").send().await.unwrap();
        assert_eq!(response.status(), 200, "request {n}");
    }
    // The breaker opened after 3 consecutive failures: p1 saw 3 requests, no more.
    assert_eq!(f.received(1), 3);
    assert_eq!(f.received(0) + f.received(2), 30);

    // After the cool-down, one probe goes through while other requests avoid p1.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let burst = join_all((0..12).map(|_| f.chat("m").send())).await;
    assert!(burst.iter().all(|r| r.as_ref().unwrap().status() == 200));
    assert_eq!(f.received(1), 4, "exactly one probe");

    // p1 heals; after the next cool-down its probe succeeds and it takes its share again.
    f.mocks[1].set_behavior(Behavior::default());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..12 {
        assert_eq!(f.chat("m").send().await.unwrap().status(), 200);
    }
    assert!(
        f.received(1) >= 4 + 3,
        "p1 back in rotation: {}",
        f.received(1)
    );
}

#[tokio::test]
async fn a_slow_first_byte_times_out_and_fails_over() {
    let f = fleet_with(
        2,
        "timeouts: {first_byte: 300ms}",
        "providers:
  slow: {kind: openai, base_url: '{m0}'}
  fast: {kind: openai, base_url: '{m1}'}
models:
  m:
    deployments: [{provider: slow}, {provider: fast}]
    strategy: round_robin
",
    )
    .await;
    f.mocks[0].set_behavior(Behavior {
        latency_ms: Some(3000),
        ..Behavior::default()
    });
    let started = Instant::now();
    let response = f.chat("m").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-shepherd-attempts"), "2");
    assert_eq!(header(&response, "x-shepherd-deployment"), "fast/m");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(f.received(0), 1);
}

#[tokio::test]
async fn a_stream_cut_after_its_first_byte_ends_with_an_error_event_and_is_not_retried() {
    let f = fleet(
        2,
        "providers:
  p0: {kind: openai, base_url: '{m0}'}
  p1: {kind: openai, base_url: '{m1}'}
models:
  m:
    deployments: [{provider: p0}, {provider: p1}]
    strategy: round_robin
",
    )
    .await;
    for mock in &f.mocks {
        mock.set_behavior(Behavior {
            cut_after: Some(2),
            chunks: Some(6),
            ..Behavior::default()
        });
    }
    let response = f
        .client
        .post(format!("http://{}/v1/chat/completions", f.server.addr))
        .bearer_auth(CLIENT_KEY)
        .body(
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-shepherd-attempts"), "1");
    let payloads = sse_payloads(response).await;
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{payloads:?}");
    assert!(!payloads.iter().any(|p| p == "[DONE]"));
    assert_eq!(
        f.received(0) + f.received(1),
        1,
        "no retry after the first byte"
    );
}

#[tokio::test]
async fn a_refused_key_leaves_rotation_while_the_other_key_keeps_serving() {
    let f = fleet(
        1,
        "providers: {p: {kind: openai, base_url: '{m0}', api_keys: [sk-old-key-0001, sk-new-key-0002]}}
models: {m: {deployments: [{provider: p}]}}
",
    )
    .await;
    f.mocks[0].set_behavior(Behavior {
        refuse_key: Some("sk-old-key-0001".into()),
        ..Behavior::default()
    });
    for n in 0..10 {
        let response = f.chat("m").send().await.unwrap();
        assert_eq!(response.status(), 200, "request {n}");
    }
    let with_old = f.mocks[0]
        .requests()
        .iter()
        .filter(|r| r.header("authorization") == Some("Bearer sk-old-key-0001"))
        .count();
    assert_eq!(with_old, 1, "the refused key was tried once, then left out");
    assert_eq!(f.received(0), 11);
}

#[tokio::test]
async fn nothing_healthy_left_is_a_503_with_retry_after_in_the_callers_protocol() {
    let f = fleet(
        1,
        "providers: {p: {kind: openai, base_url: '{m0}'}}
models: {m: {deployments: [{provider: p}]}}
retry: {attempts: 1}
circuit: {failures: 2, cooldown: 30s}
",
    )
    .await;
    f.mocks[0].set_behavior(failing(500));
    for _ in 0..2 {
        assert_eq!(f.chat("m").send().await.unwrap().status(), 500);
    }
    let response = f.chat("m").send().await.unwrap();
    assert_eq!(response.status(), 503);
    let retry_after: u64 = header(&response, "retry-after").parse().unwrap();
    assert!((29..=30).contains(&retry_after), "{retry_after}");
    assert_openai_error(&json_of(response).await, "no_healthy_deployment");
    let anthropic = f
        .client
        .post(format!("http://{}/v1/messages", f.server.addr))
        .header("x-api-key", CLIENT_KEY)
        .body(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 503);
    assert!(anthropic.headers().contains_key("retry-after"));
    let body = json_of(anthropic).await;
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");
    assert_eq!(f.received(0), 2, "open breakers send nothing upstream");
}

#[tokio::test]
async fn fallbacks_serve_when_the_model_cannot() {
    let f = fleet(
        2,
        "providers:
  main: {kind: openai, base_url: '{m0}'}
  spare: {kind: openai, base_url: '{m1}'}
models:
  big:
    deployments: [{provider: main}]
    fallbacks: [small]
    fallback_on_context_window: true
  strict:
    deployments: [{provider: main, model: big}]
    fallbacks: [small]
  small:
    deployments: [{provider: spare}]
retry: {attempts: 3, backoff: 1ms}
",
    )
    .await;
    f.mocks[0].set_behavior(failing(503));
    let response = f.chat("big").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-shepherd-fallback"), "small");
    assert_eq!(header(&response, "x-shepherd-deployment"), "spare/small");
    assert_eq!(header(&response, "x-shepherd-attempts"), "2");

    let too_long = json!({"error": {"message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}});
    f.mocks[0].set_behavior(Behavior {
        status: Some(400),
        body: Some(too_long.to_string()),
        ..Behavior::default()
    });
    let request = |model: &str| f.chat(model);
    let response = request("big").send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "context window errors fall back when asked"
    );
    assert_eq!(header(&response, "x-shepherd-fallback"), "small");
    let response = request("strict").send().await.unwrap();
    assert_eq!(response.status(), 400, "and stand otherwise");
    assert_eq!(
        json_of(response).await["error"]["code"],
        "context_length_exceeded"
    );
}

#[tokio::test]
async fn canary_by_header_and_the_headers_that_show_it() {
    let f = fleet(
        2,
        "providers:
  stable: {kind: openai, base_url: '{m0}'}
  next: {kind: openai, base_url: '{m1}'}
models:
  m:
    deployments: [{provider: stable}]
    canary: {deployments: [{provider: next, model: m-next}], by: header}
",
    )
    .await;
    let response = f.chat("m").send().await.unwrap();
    assert_eq!(header(&response, "x-shepherd-canary"), "false");
    assert_eq!(header(&response, "x-shepherd-deployment"), "stable/m");
    let response = f
        .chat("m")
        .header("x-shepherd-canary", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-shepherd-canary"), "true");
    assert_eq!(header(&response, "x-shepherd-deployment"), "next/m-next");
    assert_eq!(f.mocks[1].requests()[0].json().unwrap()["model"], "m-next");
}

#[tokio::test]
async fn chained_gateways_cannot_loop() {
    let f = fleet(
        1,
        "providers: {p: {kind: openai, base_url: '{m0}'}}
models: {m: {deployments: [{provider: p}]}}
",
    )
    .await;
    let response = f.chat("m").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        f.mocks[0].requests()[0].header("x-shepherd-hops"),
        Some("1")
    );
    let response = f
        .chat("m")
        .header("x-shepherd-hops", "4")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        f.mocks[0].requests()[1].header("x-shepherd-hops"),
        Some("5")
    );
    let looping = f
        .chat("m")
        .header("x-shepherd-hops", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(looping.status(), 508);
    assert_openai_error(&json_of(looping).await, "loop_detected");
    assert_eq!(f.received(0), 2);
}

#[tokio::test]
async fn a_failing_health_check_opens_the_breaker_before_traffic_does() {
    let f = fleet(
        2,
        "providers:
  sick: {kind: openai, base_url: '{m0}', health_check: {interval: 100ms, timeout: 1s}}
  well: {kind: openai, base_url: '{m1}', health_check: {interval: 100ms, timeout: 1s}}
models:
  m:
    deployments: [{provider: sick}, {provider: well}]
circuit: {failures: 2, cooldown: 30s}
",
    )
    .await;
    f.mocks[0].set_behavior(failing(500));
    let opened = eventually(|| {
        f.server
            .state
            .health
            .snapshot()
            .iter()
            .any(|(name, health)| {
                name == "sick/m"
                    && health.breaker.state() == shepherd::routing::circuit::CircuitState::Open
            })
    })
    .await;
    assert!(opened, "the sick provider's checks failed");
    for _ in 0..10 {
        let response = f.chat("m").send().await.unwrap();
        assert_eq!(header(&response, "x-shepherd-deployment"), "well/m");
    }
    let chats = f.mocks[0]
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count();
    assert_eq!(chats, 0, "no traffic to the unhealthy deployment");
    assert!(f.mocks[0].requests().iter().any(|r| r.path == "/v1/models"));
}
