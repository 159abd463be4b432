//! Wire fidelity: upstreams that write their bytes differently from our own mock's compact shape
//! (Python-style spaced JSON, `\r\n` framing, JSON over several `data:` lines, comments, ids,
//! LiteLLM's usage chunk) are accounted to the token, and a stream that is not its protocol is an
//! upstream failure: failed over before its first byte, ended with an error event after.

use std::sync::Arc;
use std::time::Duration;

use mock_upstream::{Behavior, MockUpstream, Style};
use serde_json::{Value, json};

use crate::common::*;
use crate::governance::gov;

#[tokio::test]
async fn a_thousand_mixed_streams_from_a_spaced_upstream_add_up_in_the_ledger() {
    let g = gov(
        "  - {name: alpha, key: sk-alpha-1}
  - {name: beta, key: sk-beta-1}",
        "",
    )
    .await;
    g.mock.set_behavior(Behavior {
        style: Style::Spaced,
        ..Behavior::default()
    });
    let g = Arc::new(g);
    let mut tasks = Vec::new();
    for worker in 0..16usize {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..(1000 / 16 + usize::from(worker < 1000 % 16)) {
                let key = if n % 2 == 0 {
                    "sk-alpha-1"
                } else {
                    "sk-beta-1"
                };
                // Half the clients ask for usage; the others must not see the usage chunk,
                // which the gateway asked for anyway (and must still read).
                let wants_usage = n % 4 < 2;
                let cached = if n % 5 == 0 { 3 } else { 0 };
                let words = "word ".repeat(1 + n % 7);
                let mut body = json!({"model": "m", "stream": true,
                                      "messages": [{"role": "user", "content": words}]});
                if wants_usage {
                    body["stream_options"] = json!({"include_usage": true});
                }
                if n % 3 == 0 {
                    body["messages"][0]["content"] = json!("What is the weather in Paris?");
                    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather",
                        "parameters": {"type": "object", "properties": {}}}}]);
                }
                let response = g
                    .chat_as(key, body)
                    .header("x-mock-cache-read-tokens", cached.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let payloads = sse_payloads(response).await;
                assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
                let saw_usage = payloads
                    .iter()
                    .filter_map(|p| serde_json::from_str::<Value>(p).ok())
                    .any(|chunk| chunk["usage"].is_object());
                assert_eq!(saw_usage, wants_usage, "{payloads:?}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    g.server.state.governance.writer.flush();
    let rows = g
        .server
        .state
        .governance
        .report(&shepherd::store::UsageQuery {
            group_by: vec![shepherd::store::GroupBy::Key],
            ..Default::default()
        })
        .unwrap();
    let sum = |f: fn(&shepherd::store::UsageRow) -> u64| rows.iter().map(f).sum::<u64>();
    // What the upstream reported, counted by the upstream itself.
    let reported = g.mock.stats();
    assert_eq!(sum(|r| r.requests), 1000);
    assert_eq!(
        sum(|r| r.prompt_tokens),
        reported.prompt_tokens,
        "prompt tokens"
    );
    assert_eq!(
        sum(|r| r.completion_tokens),
        reported.completion_tokens,
        "completion tokens"
    );
    assert_eq!(
        sum(|r| r.cached_tokens),
        reported.cached_tokens,
        "cached tokens"
    );
    // 2 $/M uncached input, 0.5 $/M cached, 8 $/M output, in nano-dollars.
    let cost = (reported.prompt_tokens - reported.cached_tokens) * 2000
        + reported.cached_tokens * 500
        + reported.completion_tokens * 8000;
    assert_eq!(sum(|r| r.cost_nano_usd), cost, "cost");
    assert!(reported.completion_tokens > 1000, "{reported:?}");
}

/// Two deployments of one model, each on its own mock (`m0` then `m1`).
async fn two_deployments() -> (MockUpstream, MockUpstream, Harness2) {
    let first = MockUpstream::start().await.unwrap();
    let second = MockUpstream::start().await.unwrap();
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}
providers:
  a: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}
  b: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}
models:
  m:
    deployments: [{{provider: a, model: up-a}}, {{provider: b, model: up-b}}]
    strategy: round_robin
keys: [{{name: svc, key: {CLIENT_KEY}}}]
retry: {{attempts: 2, backoff: 1ms}}
circuit: {{failures: 1000}}
telemetry: {{access_log: off, log_level: error}}
",
        first.base_url(),
        second.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "two.yaml", &|_| None).unwrap();
    let server = shepherd::server::start(config).await.unwrap();
    (
        first,
        second,
        Harness2 {
            server,
            client: test_client(),
        },
    )
}

struct Harness2 {
    server: shepherd::server::Running,
    client: reqwest::Client,
}

impl Harness2 {
    fn stream(&self) -> reqwest::RequestBuilder {
        self.client
            .post(format!("http://{}/v1/chat/completions", self.server.addr))
            .bearer_auth(CLIENT_KEY)
            .body(
                json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi there"}]})
                    .to_string(),
            )
    }
}

#[tokio::test]
async fn a_malformed_stream_fails_over_before_its_first_byte() {
    let (first, second, h) = two_deployments().await;
    let broken = Behavior {
        malformed: true,
        ..Behavior::default()
    };
    first.set_behavior(broken.clone());
    second.set_behavior(broken);
    // Both broken: a 502 in OpenAI's shape, never a 200 with the broken bytes.
    let response = h.stream().send().await.unwrap();
    assert_eq!(response.status(), 502);
    assert_openai_error(&json_of(response).await, "upstream_bad_response");
    // Only one broken: served by the other, whichever was tried first.
    second.set_behavior(Behavior::default());
    for _ in 0..2 {
        let response = h.stream().send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["x-shepherd-deployment"], "b/up-b");
        let payloads = sse_payloads(response).await;
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
        assert!(
            payloads.iter().all(|p| !p.contains("not json")),
            "{payloads:?}"
        );
    }
}

#[tokio::test]
async fn a_malformed_event_after_the_first_byte_ends_the_stream_with_an_error_event() {
    let (first, second, h) = two_deployments().await;
    for mock in [&first, &second] {
        mock.set_behavior(Behavior {
            malformed_after: Some(2),
            style: Style::Spaced,
            ..Behavior::default()
        });
    }
    let response = h.stream().send().await.unwrap();
    assert_eq!(response.status(), 200);
    let payloads = sse_payloads(response).await;
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["code"], "upstream_stream_error",
        "{payloads:?}"
    );
    assert!(
        !payloads.iter().any(|p| p == "[DONE]"),
        "no fake end: {payloads:?}"
    );
    assert!(
        !payloads.iter().any(|p| p.contains("not json")),
        "{payloads:?}"
    );
    // The events before the broken one arrived.
    let text: String = payloads
        .iter()
        .filter_map(|p| serde_json::from_str::<Value>(p).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(text.starts_with("Mock reply"), "{payloads:?}");
    assert_eq!(
        first.requests().len() + second.requests().len(),
        1,
        "not retried"
    );
}
