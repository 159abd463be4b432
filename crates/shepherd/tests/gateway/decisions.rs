//! The judgment calls of the hardening, each as behaviour a client sees: fallbacks only to
//! models the key may use (unless the model says otherwise), no unpriced model past a spent
//! budget, a provider whose keys were all refused probed once per cool-down, and no Retry-After
//! on a request that can never fit.

use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};

use crate::common::*;

struct Gateway {
    server: shepherd::server::Running,
    client: reqwest::Client,
}

impl Gateway {
    async fn start(yaml: &str) -> Gateway {
        let config = shepherd::config::load_str(yaml, "decisions.yaml", &|_| None).unwrap();
        Gateway {
            server: shepherd::server::start(config).await.unwrap(),
            client: test_client(),
        }
    }

    async fn chat(&self, key: &str, model: &str, extra: Value) -> reqwest::Response {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        self.client
            .post(format!("http://{}/v1/chat/completions", self.server.addr))
            .bearer_auth(key)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_key_falls_back_only_to_models_it_may_use() {
    let primary = MockUpstream::start().await.unwrap();
    let spare = MockUpstream::start().await.unwrap();
    primary.set_behavior(Behavior {
        status: Some(503),
        ..Behavior::default()
    });
    let g = Gateway::start(&format!(
        "server: {{listen: 127.0.0.1:0}}
providers:
  main: {{kind: openai, base_url: '{}'}}
  other: {{kind: openai, base_url: '{}'}}
models:
  ft: {{deployments: [{{provider: main}}], fallbacks: [ft-b]}}
  open-ft: {{deployments: [{{provider: main}}], fallbacks: [ft-b], fallbacks_for_all_keys: true}}
  ft-b: {{deployments: [{{provider: other}}]}}
keys:
  - {{name: resident, key: sk-resident-key-1, models: [ft, open-ft]}}
  - {{name: anywhere, key: sk-anywhere-key-1}}
retry: {{attempts: 3, backoff: 1ms}}
",
        primary.base_url(),
        spare.base_url()
    ))
    .await;
    // A key allowed only `ft` is not served by `ft-b` (data residency): the primary's error.
    let refused = g.chat("sk-resident-key-1", "ft", json!({})).await;
    assert_eq!(refused.status(), 503);
    assert!(spare.requests().is_empty(), "the fallback was not used");
    // A key that may use `ft-b` falls back to it.
    let served = g.chat("sk-anywhere-key-1", "ft", json!({})).await;
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["x-shepherd-fallback"], "ft-b");
    // A model whose fallbacks serve every key it serves.
    let opted = g.chat("sk-resident-key-1", "open-ft", json!({})).await;
    assert_eq!(opted.status(), 200);
    assert_eq!(opted.headers()["x-shepherd-fallback"], "ft-b");
}

#[tokio::test]
async fn a_spent_budget_refuses_unpriced_models_too_and_huge_requests_get_no_retry_after() {
    let mock = MockUpstream::start().await.unwrap();
    let g = Gateway::start(&format!(
        "server: {{listen: 127.0.0.1:0}}
providers: {{up: {{kind: openai, base_url: '{}'}}}}
models:
  priced: {{deployments: [{{provider: up}}], price: {{input: 1, output: 1}}}}
  unpriced-local: {{deployments: [{{provider: up, model: my-local-llama}}]}}
keys:
  - {{name: thrifty, key: sk-thrifty-key-1, budget: {{usd: 0.0001, period: day}}}}
  - {{name: small, key: sk-small-key-1, limits: {{tpm: 1000}}}}
",
        mock.base_url()
    ))
    .await;
    // The unpriced model costs nothing, so it is served while the budget lasts.
    let free = g
        .chat("sk-thrifty-key-1", "unpriced-local", json!({}))
        .await;
    assert_eq!(free.status(), 200);
    // Spend the budget on the priced model: the estimate fits, the real usage (a million cached
    // prompt tokens, priced as input) spends it all.
    let priced = g
        .client
        .post(format!("http://{}/v1/chat/completions", g.server.addr))
        .bearer_auth("sk-thrifty-key-1")
        .header("x-mock-cache-read-tokens", "1000000")
        .body(
            json!({"model": "priced", "max_tokens": 5,
                     "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(priced.status(), 200);
    let _ = priced.bytes().await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    // Spent: the unpriced model is refused too.
    let refused = g
        .chat("sk-thrifty-key-1", "unpriced-local", json!({}))
        .await;
    assert_eq!(refused.status(), 429);
    assert_openai_error(&json_of(refused).await, "insufficient_quota");

    // A request that alone needs more tokens than the limit allows can never pass: a 429 with
    // no Retry-After (waiting does not help).
    let huge = g
        .chat(
            "sk-small-key-1",
            "unpriced-local",
            json!({"max_tokens": 50000}),
        )
        .await;
    assert_eq!(huge.status(), 429);
    assert!(
        huge.headers().get("retry-after").is_none(),
        "{:?}",
        huge.headers()
    );
    assert!(huge.headers().get("retry-after-ms").is_none());
    let body = json_of(huge).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("make it smaller"),
        "{body}"
    );
}

#[tokio::test]
async fn a_provider_whose_every_key_was_refused_is_probed_once_per_cooldown() {
    let mock = MockUpstream::start().await.unwrap();
    let g = Gateway::start(&format!(
        "server: {{listen: 127.0.0.1:0}}
providers: {{up: {{kind: openai, base_url: '{}', api_keys: [sk-only-key-0001]}}}}
models: {{m: {{deployments: [{{provider: up}}]}}}}
keys: [{{name: svc, key: {CLIENT_KEY}}}]
retry: {{attempts: 2}}
circuit: {{cooldown: 500ms, key_cooldown: 5m}}
",
        mock.base_url()
    ))
    .await;
    // One 401 benches the provider's only key for five minutes.
    mock.set_behavior(Behavior {
        status: Some(401),
        fail_times: Some(1),
        ..Behavior::default()
    });
    let refused = g.chat(CLIENT_KEY, "m", json!({})).await;
    assert_eq!(refused.status(), 502);
    // Within the cool-down: no upstream call.
    let waiting = g.chat(CLIENT_KEY, "m", json!({})).await;
    assert_eq!(waiting.status(), 503);
    assert_eq!(mock.requests().len(), 1);
    // After it, one request probes the key; it works again, and the key is back.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let probe = g.chat(CLIENT_KEY, "m", json!({})).await;
    assert_eq!(probe.status(), 200);
    let after = g.chat(CLIENT_KEY, "m", json!({})).await;
    assert_eq!(after.status(), 200);
    assert_eq!(mock.requests().len(), 3);
}
