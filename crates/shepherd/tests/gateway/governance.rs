//! Governance against a real gateway: virtual keys through the admin API (create, rotate with
//! overlap, revoke), rate limits with their headers, per-key isolation, concurrency, budgets under
//! concurrency, and the usage ledger's totals after a thousand mixed requests.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};
use shepherd::server::Running;

use crate::common::*;

pub const MASTER_KEY: &str = "master-key-for-tests-0123456789";
pub const KEY_SECRET: &str = "hash-secret-for-tests-0123456789";

/// A gateway with the admin API on, one model on mock-upstream, and `keys` as static keys.
pub struct Gov {
    pub mock: MockUpstream,
    pub server: Running,
    pub client: reqwest::Client,
}

pub async fn gov(keys: &str, extra: &str) -> Gov {
    let mock = MockUpstream::start().await.unwrap();
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}
admin: {{master_key: {MASTER_KEY}, key_secret: {KEY_SECRET}}}
providers: {{up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}}}
models:
  m:
    deployments: [{{provider: up, model: up-m}}]
    price: {{input: 2, output: 8, cached_input: 0.5}}
keys:
{keys}
{extra}",
        mock.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "gov.yaml", &|_| None).expect("config");
    Gov {
        server: shepherd::server::start(config).await.unwrap(),
        mock,
        client: test_client(),
    }
}

impl Gov {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    pub fn chat_as(&self, key: &str, body: Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .body(body.to_string())
    }

    pub fn hello(&self, key: &str) -> reqwest::RequestBuilder {
        self.chat_as(
            key,
            json!({"model": "m", "messages": [{"role": "user", "content": "hello there"}]}),
        )
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(MASTER_KEY)
    }

    pub async fn create_key(&self, spec: Value) -> (String, String) {
        let response = self
            .admin(reqwest::Method::POST, "/admin/keys")
            .header("content-type", "application/json")
            .body(spec.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body = json_of(response).await;
        (
            body["id"].as_str().unwrap().to_owned(),
            body["key"].as_str().unwrap().to_owned(),
        )
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .map_or("", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_admin_api_needs_the_master_key_and_shows_no_secret() {
    let g = gov("  - {name: static, key: sk-static-1}", "").await;
    let anonymous = g.client.get(g.url("/admin/keys")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = g
        .client
        .get(g.url("/admin/keys"))
        .bearer_auth("sk-static-1")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401, "a client key is not the master key");

    let (id, text) = g
        .create_key(
            json!({"name": "reviews", "models": ["m"], "limits": {"rpm": 100},
                           "budget": {"usd": 5, "period": "day"}, "metadata": {"team": "search"}}),
        )
        .await;
    assert!(text.starts_with("sk-shep-") && text.contains(&id));
    let listed = json_of(
        g.admin(reqwest::Method::GET, "/admin/keys")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["data"][0]["name"], "reviews");
    assert_eq!(listed["data"][0]["budget"]["usd"], 5.0);
    let shown = listed.to_string();
    let secret = text.rsplit('-').next().unwrap();
    assert!(
        !shown.contains(secret) && !shown.contains("hash"),
        "{shown}"
    );

    // The new key works at once, for its models only.
    assert_eq!(g.hello(&text).send().await.unwrap().status(), 200);
    let patched = g
        .admin(reqwest::Method::PATCH, &format!("/admin/keys/{id}"))
        .header("content-type", "application/json")
        .body(json!({"models": ["other-*"]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    assert_eq!(g.hello(&text).send().await.unwrap().status(), 403);

    let bad = g
        .admin(reqwest::Method::POST, "/admin/keys")
        .header("content-type", "application/json")
        .body(json!({"name": "x", "limits": {"rpm": 0}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let unknown_field = g
        .admin(reqwest::Method::POST, "/admin/keys")
        .header("content-type", "application/json")
        .body(json!({"name": "x", "colour": "blue"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_field.status(), 400);
    assert!(
        json_of(unknown_field).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    let missing = g
        .admin(reqwest::Method::GET, "/admin/keys/nope")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn rotation_overlap_then_only_the_new_secret_and_revocation_at_once() {
    let g = gov("  - {name: static, key: sk-static-1}", "").await;
    let (id, old) = g.create_key(json!({"name": "rotating"})).await;
    assert_eq!(g.hello(&old).send().await.unwrap().status(), 200);
    let rotated = json_of(
        g.admin(reqwest::Method::POST, &format!("/admin/keys/{id}/rotate"))
            .header("content-type", "application/json")
            .body(json!({"overlap": "2s"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let new = rotated["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(
        g.hello(&old).send().await.unwrap().status(),
        200,
        "old works during the overlap"
    );
    assert_eq!(g.hello(&new).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = g.hello(&old).send().await.unwrap();
    assert_eq!(expired.status(), 401, "old refused after the overlap");
    assert!(!json_of(expired).await.to_string().contains(&old));
    assert_eq!(g.hello(&new).send().await.unwrap().status(), 200);

    let revoked = g
        .admin(reqwest::Method::DELETE, &format!("/admin/keys/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(
        g.hello(&new).send().await.unwrap().status(),
        401,
        "refused at once"
    );
}

#[tokio::test]
async fn a_limit_refuses_with_headers_and_admits_again_when_the_window_allows() {
    let g = gov(
        "  - {name: limited, key: sk-limited-1, limits: {rpm: 60, burst: 2, tpm: 100000}}",
        "",
    )
    .await;
    for remaining in ["1", "0"] {
        let response = g.hello("sk-limited-1").send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "2");
        assert_eq!(
            header(&response, "x-ratelimit-remaining-requests"),
            remaining
        );
        assert!(header(&response, "x-ratelimit-reset-requests").ends_with('s'));
        assert_eq!(header(&response, "x-ratelimit-limit-tokens"), "100000");
    }
    let refused = g.hello("sk-limited-1").send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests"), "0");
    let body = json_of(refused).await;
    assert_openai_error(&body, "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(
        g.mock.requests().len(),
        2,
        "a refused request never reaches the upstream"
    );

    // The Anthropic route says it in Anthropic's words.
    let anthropic = g
        .client
        .post(g.url("/v1/messages"))
        .header("x-api-key", "sk-limited-1")
        .body(json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(anthropic.status(), 429);
    assert_eq!(
        header(&anthropic, "anthropic-ratelimit-requests-limit"),
        "2"
    );
    assert_eq!(
        json_of(anthropic).await["error"]["type"],
        "rate_limit_error"
    );

    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        g.hello("sk-limited-1").send().await.unwrap().status(),
        200,
        "one more after 1s"
    );
}

#[tokio::test]
async fn one_key_flooding_its_limit_does_not_touch_another() {
    let g = gov(
        "  - {name: noisy, key: sk-noisy-1, limits: {rpm: 5}}
  - {name: quiet, key: sk-quiet-1}",
        "",
    )
    .await;
    let flood = join_all((0..60).map(|_| g.hello("sk-noisy-1").send()));
    let quiet = join_all((0..20).map(|_| g.hello("sk-quiet-1").send()));
    let (flood, quiet) = tokio::join!(flood, quiet);
    let admitted = flood
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == 200)
        .count();
    assert_eq!(admitted, 5);
    assert!(
        flood
            .iter()
            .all(|r| matches!(r.as_ref().unwrap().status().as_u16(), 200 | 429))
    );
    assert!(
        quiet.iter().all(|r| r.as_ref().unwrap().status() == 200),
        "the quiet key is never refused"
    );
}

#[tokio::test]
async fn requests_in_flight_are_limited_per_key() {
    let g = gov(
        "  - {name: careful, key: sk-careful-1, limits: {concurrency: 2}}",
        "",
    )
    .await;
    g.mock.set_behavior(Behavior {
        latency_ms: Some(400),
        ..Behavior::default()
    });
    let answers = join_all((0..3).map(|_| g.hello("sk-careful-1").send())).await;
    let statuses: Vec<u16> = answers
        .iter()
        .map(|r| r.as_ref().unwrap().status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    let refused = answers
        .into_iter()
        .map(Result::unwrap)
        .find(|r| r.status() == 429)
        .unwrap();
    assert_openai_error(&json_of(refused).await, "concurrency_limit_exceeded");
    assert_eq!(
        g.hello("sk-careful-1").send().await.unwrap().status(),
        200,
        "slots come back"
    );
}

/// The estimate a request reserves: its body's length / 4 (prompt) + `max_tokens`.
fn estimated_tokens(body: &Value) -> u64 {
    let prompt = body.to_string().len().div_ceil(4) as u64;
    prompt + body["max_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn a_budget_that_fits_ten_admits_ten_of_a_hundred_concurrent() {
    // Price 2 $/M in, 8 $/M out: the reservation is prompt*2000 + max_tokens*8000 nano-dollars.
    let body = json!({"model": "m", "max_tokens": 50,
                      "messages": [{"role": "user", "content": "how much is this"}]});
    let prompt = estimated_tokens(&body) - 50;
    let estimate = prompt * 2000 + 50 * 8000;
    let budget_usd = (estimate * 10) as f64 / 1e9;
    let g = gov(
        &format!(
            "  - {{name: thrifty, key: sk-thrifty-1, budget: {{usd: {budget_usd}, period: day}}}}"
        ),
        "",
    )
    .await;
    g.mock.set_behavior(Behavior {
        latency_ms: Some(500),
        ..Behavior::default()
    });
    let answers = join_all((0..100).map(|_| g.chat_as("sk-thrifty-1", body.clone()).send())).await;
    let mut admitted = 0;
    for answer in answers {
        let answer = answer.unwrap();
        match answer.status().as_u16() {
            200 => admitted += 1,
            429 => assert_openai_error(&json_of(answer).await, "insufficient_quota"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        admitted, 10,
        "reservations hold the budget exactly under concurrency"
    );
    // The slack: the real usage is below the estimate, so the spent amount is under budget
    // and the difference is available to the next requests.
    g.server.state.governance.writer.flush();
    let rows = g
        .server
        .state
        .governance
        .report(&Default::default())
        .unwrap();
    let spent = rows[0].cost_nano_usd;
    assert!(
        spent > 0 && spent < estimate * 10,
        "{spent} < {}",
        estimate * 10
    );
    assert_eq!(
        g.chat_as("sk-thrifty-1", body.clone())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_ledger_adds_up_after_a_thousand_mixed_requests() {
    let g = gov(
        "  - {name: alpha, key: sk-alpha-1}
  - {name: beta, key: sk-beta-1}",
        "",
    )
    .await;
    let g = Arc::new(g);
    let mut tasks = Vec::new();
    for worker in 0..16usize {
        let g = g.clone();
        tasks.push(tokio::spawn(async move {
            let mut totals = (0u64, 0u64, 0u64, 0u64);
            for n in 0..(1000 / 16 + usize::from(worker < 1000 % 16)) {
                let key = if n % 2 == 0 {
                    "sk-alpha-1"
                } else {
                    "sk-beta-1"
                };
                let stream = n % 3 == 0;
                let cached = if n % 5 == 0 { 3 } else { 0 };
                let words = "word ".repeat(1 + n % 7);
                let body = json!({"model": "m", "stream": stream,
                                  "stream_options": {"include_usage": true},
                                  "messages": [{"role": "user", "content": words}]});
                let response = g
                    .chat_as(key, body)
                    .header("x-mock-cache-read-tokens", cached.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let usage = if stream {
                    let payloads = sse_payloads(response).await;
                    let last = &payloads[payloads.len() - 2];
                    serde_json::from_str::<Value>(last).unwrap()["usage"].clone()
                } else {
                    json_of(response).await["usage"].clone()
                };
                let prompt = usage["prompt_tokens"].as_u64().unwrap();
                let completion = usage["completion_tokens"].as_u64().unwrap();
                let cached = usage["prompt_tokens_details"]["cached_tokens"]
                    .as_u64()
                    .unwrap_or(0);
                // 2 $/M uncached input, 0.5 $/M cached, 8 $/M output, in nano-dollars.
                let cost = (prompt - cached) * 2000 + cached * 500 + completion * 8000;
                totals.0 += prompt;
                totals.1 += completion;
                totals.2 += cached;
                totals.3 += cost;
            }
            totals
        }));
    }
    let mut expected = (0u64, 0u64, 0u64, 0u64);
    for task in tasks {
        let t = task.await.unwrap();
        expected = (
            expected.0 + t.0,
            expected.1 + t.1,
            expected.2 + t.2,
            expected.3 + t.3,
        );
    }
    // Every request's context is dropped once its answer is read; give the last ones a moment.
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
    assert_eq!(rows.len(), 2);
    let sum = |f: fn(&shepherd::store::UsageRow) -> u64| rows.iter().map(f).sum::<u64>();
    assert_eq!(sum(|r| r.requests), 1000);
    assert_eq!(sum(|r| r.prompt_tokens), expected.0, "prompt tokens");
    assert_eq!(
        sum(|r| r.completion_tokens),
        expected.1,
        "completion tokens"
    );
    assert_eq!(sum(|r| r.cached_tokens), expected.2, "cached tokens");
    assert_eq!(sum(|r| r.cost_nano_usd), expected.3, "cost");
    assert_eq!(
        g.server
            .state
            .governance
            .writer
            .counts
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    let report = json_of(
        g.admin(
            reqwest::Method::GET,
            "/admin/usage?group_by=key,model&from=1h",
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    let lines = report["data"].as_array().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["key"], "alpha");
    assert_eq!(lines[0]["model"], "m");
    let cost: f64 = lines.iter().map(|l| l["cost_usd"].as_f64().unwrap()).sum();
    assert!((cost - expected.3 as f64 / 1e9).abs() < 1e-9);
}

#[tokio::test]
async fn addresses_and_routes_have_limits_too() {
    let g = gov(
        "  - {name: svc, key: sk-svc-1}",
        "limits: {per_ip: {rps: 1, burst: 3}, per_route: {/v1/embeddings: {rpm: 1}}}",
    )
    .await;
    let answers = join_all((0..5).map(|_| g.hello("sk-svc-1").send())).await;
    let refused: Vec<&reqwest::Response> = answers
        .iter()
        .map(|r| r.as_ref().unwrap())
        .filter(|r| r.status() == 429)
        .collect();
    assert_eq!(refused.len(), 2, "burst of 3 from one address");
    assert!(!refused[0].headers().get("retry-after").unwrap().is_empty());
}
