//! The response cache against a real gateway: hits and misses by the canonical request, streams
//! stored and replayed (as streams or whole), coalesced misses, what is never stored, the
//! request-level controls, the byte bound, and the ledger's view of a hit.

use std::time::Duration;

use futures_util::future::join_all;
use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};
use shepherd::server::Running;

use crate::common::*;

struct Cached {
    mock: MockUpstream,
    server: Running,
    client: reqwest::Client,
}

async fn cached(cache: &str) -> Cached {
    let mock = MockUpstream::start().await.unwrap();
    let root = mock.url();
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}
providers:
  up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}
  anth: {{kind: anthropic, base_url: '{root}', api_keys: ['{UPSTREAM_KEY}']}}
models:
  m: {{deployments: [{{provider: up, model: up-m}}], price: {{input: 2, output: 8}}}}
  c: {{deployments: [{{provider: anth, model: claude-sonnet-4-5}}]}}
  uncached: {{deployments: [{{provider: up}}], cache: {{enabled: false}}}}
keys:
  - {{name: a, key: sk-cache-a}}
  - {{name: b, key: sk-cache-b}}
retry: {{attempts: 1}}
{cache}
",
        mock.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "cache.yaml", &|_| None).expect("config");
    Cached {
        server: shepherd::server::start(config).await.unwrap(),
        mock,
        client: test_client(),
    }
}

impl Cached {
    fn post(&self, key: &str, body: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("http://{}/v1/chat/completions", self.server.addr))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    fn calls(&self) -> usize {
        self.mock.requests().len()
    }
}

fn cache_status(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache")
        .map_or("-".into(), |v| v.to_str().unwrap().to_owned())
}

const QUESTION: &str = r#"{"model":"m","messages":[{"role":"user","content":"What is the capital of France?"}],"temperature":0}"#;

#[tokio::test]
async fn repeats_hit_and_different_questions_miss() {
    let c = cached("cache: {ttl: 1h}").await;
    let first = c.post("sk-cache-a", QUESTION).send().await.unwrap();
    assert_eq!(cache_status(&first), "MISS");
    let first_body = first.bytes().await.unwrap();
    let again = c.post("sk-cache-a", QUESTION).send().await.unwrap();
    assert_eq!(cache_status(&again), "HIT");
    assert_eq!(again.headers()["x-shepherd-attempts"], "0");
    assert_eq!(
        again.bytes().await.unwrap(),
        first_body,
        "the very same body"
    );
    assert_eq!(c.calls(), 1);

    // Key order, whitespace, `stream_options` and `user` do not change the question.
    let reordered = "{ \"temperature\": 0,\n  \"user\": \"someone\",\n  \"messages\": [{\"content\": \"What is the capital of France?\", \"role\": \"user\"}],\n  \"model\": \"m\" }";
    assert_eq!(
        cache_status(&c.post("sk-cache-b", reordered).send().await.unwrap()),
        "HIT"
    );
    assert_eq!(c.calls(), 1, "shared scope: another key hits too");

    let warmer = QUESTION.replace("\"temperature\":0", "\"temperature\":0.7");
    assert_eq!(
        cache_status(&c.post("sk-cache-a", &warmer).send().await.unwrap()),
        "MISS"
    );
    let with_tools = QUESTION.replace(
        "\"temperature\":0",
        r#""temperature":0,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#,
    );
    assert_eq!(
        cache_status(&c.post("sk-cache-a", &with_tools).send().await.unwrap()),
        "MISS"
    );
    assert_eq!(c.calls(), 3);

    let off = QUESTION.replace("\"model\":\"m\"", "\"model\":\"uncached\"");
    for _ in 0..2 {
        let response = c.post("sk-cache-a", &off).send().await.unwrap();
        assert_eq!(
            cache_status(&response),
            "-",
            "a model with the cache off says nothing"
        );
    }
    assert_eq!(c.calls(), 5);
}

#[tokio::test]
async fn per_key_scope_keeps_answers_apart() {
    let c = cached("cache: {scope: key}").await;
    assert_eq!(
        cache_status(&c.post("sk-cache-a", QUESTION).send().await.unwrap()),
        "MISS"
    );
    assert_eq!(
        cache_status(&c.post("sk-cache-b", QUESTION).send().await.unwrap()),
        "MISS"
    );
    assert_eq!(
        cache_status(&c.post("sk-cache-b", QUESTION).send().await.unwrap()),
        "HIT"
    );
    assert_eq!(c.calls(), 2);
}

fn stream_body(include_usage: bool) -> String {
    json!({"model": "m", "stream": true, "stream_options": {"include_usage": include_usage},
           "messages": [{"role": "user", "content": "Stream me, then cache me"}]})
    .to_string()
}

#[tokio::test]
async fn a_stream_is_stored_once_and_replayed_as_a_stream_or_whole() {
    let c = cached("cache: {ttl: 1h}").await;
    let first = c
        .post("sk-cache-a", &stream_body(true))
        .header("x-mock-chunks", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&first), "MISS");
    let original = sse_payloads(first).await;
    let text_of = |payloads: &[String]| -> String {
        payloads
            .iter()
            .filter(|p| *p != "[DONE]")
            .filter_map(|p| serde_json::from_str::<Value>(p).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    };
    let usage_of = |payloads: &[String]| -> Value {
        let chunk: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
        let usage = &chunk["usage"];
        json!([
            usage["prompt_tokens"],
            usage["completion_tokens"],
            usage["total_tokens"]
        ])
    };

    let replayed = c
        .post("sk-cache-a", &stream_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&replayed), "HIT");
    assert_eq!(replayed.headers()["content-type"], "text/event-stream");
    let replay = sse_payloads(replayed).await;
    assert_eq!(replay.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(text_of(&replay), text_of(&original));
    assert_eq!(usage_of(&replay), usage_of(&original), "usage included");
    let first_chunk: Value = serde_json::from_str(&replay[0]).unwrap();
    assert_eq!(first_chunk["object"], "chat.completion.chunk");
    assert_eq!(first_chunk["choices"][0]["delta"]["role"], "assistant");

    // No usage asked: none shown. Whole asked: a whole answer from the cached stream.
    let quiet = sse_payloads(
        c.post("sk-cache-a", &stream_body(false))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(quiet.iter().all(|p| !p.contains("\"prompt_tokens\"")));
    let whole_body = stream_body(true).replace("\"stream\":true,", "");
    let whole = c.post("sk-cache-a", &whole_body).send().await.unwrap();
    assert_eq!(cache_status(&whole), "HIT");
    let whole = json_of(whole).await;
    assert_eq!(whole["object"], "chat.completion");
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        text_of(&original)
    );
    assert_eq!(whole["usage"]["completion_tokens"], usage_of(&original)[1]);
    assert_eq!(c.calls(), 1);

    // And the reverse: a whole answer replayed as a stream.
    let asked_whole = c.post("sk-cache-a", QUESTION).send().await.unwrap();
    let whole_text = json_of(asked_whole).await["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let streamed = QUESTION.replace("\"temperature\":0", "\"temperature\":0,\"stream\":true");
    let replay = sse_payloads(c.post("sk-cache-a", &streamed).send().await.unwrap()).await;
    assert_eq!(text_of(&replay), whole_text);
    assert_eq!(c.calls(), 2);
}

#[tokio::test]
async fn anthropic_answers_are_cached_in_their_protocol() {
    let c = cached("cache: {ttl: 1h}").await;
    let body = json!({"model": "c", "max_tokens": 100, "messages": [{"role": "user", "content": "Hello Claude"}]});
    let ask = |stream: bool| {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        c.client
            .post(format!("http://{}/v1/messages", c.server.addr))
            .header("x-api-key", "sk-cache-a")
            .body(body.to_string())
    };
    let first = ask(false).send().await.unwrap();
    assert_eq!(cache_status(&first), "MISS");
    let first = json_of(first).await;
    let replay = ask(true).send().await.unwrap();
    assert_eq!(cache_status(&replay), "HIT");
    let text = replay.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(text.contains(first["content"][0]["text"].as_str().unwrap()));
    assert_eq!(c.calls(), 1);
}

#[tokio::test]
async fn fifty_concurrent_identical_misses_make_one_upstream_call() {
    let c = cached("cache: {ttl: 1h}").await;
    c.mock.set_behavior(Behavior {
        latency_ms: Some(300),
        ..Behavior::default()
    });
    let answers = join_all((0..50).map(|_| c.post("sk-cache-a", QUESTION).send())).await;
    let mut bodies = Vec::new();
    let mut statuses = Vec::new();
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(answer.status(), 200);
        statuses.push(cache_status(&answer));
        bodies.push(answer.bytes().await.unwrap());
    }
    assert_eq!(c.calls(), 1, "one upstream call for fifty requests");
    assert_eq!(statuses.iter().filter(|s| *s == "MISS").count(), 1);
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "everyone shares the answer"
    );
    let counts = &c.server.state.cache.counts;
    assert_eq!(
        counts.coalesced.load(std::sync::atomic::Ordering::Relaxed),
        49
    );
}

#[tokio::test]
async fn errors_and_cut_streams_are_never_cached() {
    let c = cached("cache: {ttl: 1h}").await;
    let failing = c
        .post("sk-cache-a", QUESTION)
        .header("x-mock-status", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(failing.status(), 500);
    let cut = c
        .post("sk-cache-a", &stream_body(true))
        .header("x-mock-cut-after", "2")
        .header("x-mock-chunks", "6")
        .send()
        .await
        .unwrap();
    let payloads = sse_payloads(cut).await;
    assert!(payloads.last().unwrap().contains("\"error\""));
    assert_eq!(c.server.state.cache.stats().1, 0);
    // Both asked again: answered by the upstream, now successfully.
    assert_eq!(
        cache_status(&c.post("sk-cache-a", QUESTION).send().await.unwrap()),
        "MISS"
    );
    assert_eq!(
        cache_status(
            &c.post("sk-cache-a", &stream_body(true))
                .send()
                .await
                .unwrap()
        ),
        "MISS"
    );
    assert_eq!(c.calls(), 4);
}

#[tokio::test]
async fn no_cache_no_store_and_ttl_headers() {
    let c = cached("cache: {ttl: 1h}").await;
    let fresh = c
        .post("sk-cache-a", QUESTION)
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&fresh), "MISS");
    assert_eq!(
        cache_status(&c.post("sk-cache-a", QUESTION).send().await.unwrap()),
        "MISS",
        "no-store kept nothing"
    );
    assert_eq!(
        cache_status(&c.post("sk-cache-a", QUESTION).send().await.unwrap()),
        "HIT"
    );
    let bypass = c
        .post("sk-cache-a", QUESTION)
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&bypass), "MISS", "no-cache asks the upstream");
    assert_eq!(c.calls(), 3);

    let short = QUESTION.replace("France", "Italy");
    let first = c
        .post("sk-cache-a", &short)
        .header("x-shepherd-cache-ttl", "300ms")
        .send()
        .await
        .unwrap();
    assert_eq!(cache_status(&first), "MISS");
    assert_eq!(
        cache_status(&c.post("sk-cache-a", &short).send().await.unwrap()),
        "HIT"
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        cache_status(&c.post("sk-cache-a", &short).send().await.unwrap()),
        "MISS",
        "expired"
    );
}

#[tokio::test]
async fn memory_stays_under_its_bound_in_a_flood_of_distinct_requests() {
    let bound = 32 * 1024;
    let c = cached(&format!("cache: {{max_bytes: {bound}}}")).await;
    for n in 0..300 {
        let body = QUESTION.replace("France", &format!("country number {n}"));
        assert_eq!(
            c.post("sk-cache-a", &body).send().await.unwrap().status(),
            200
        );
        assert!(c.server.state.cache.stats().0 <= bound);
    }
    assert!(c.server.state.cache.stats().2 > 0);
}

#[tokio::test]
async fn a_hit_costs_nothing_and_saves_what_the_miss_cost() {
    let c = cached("cache: {ttl: 1h}").await;
    for _ in 0..2 {
        c.post("sk-cache-a", QUESTION)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.server.state.governance.writer.flush();
    let rows = c
        .server
        .state
        .governance
        .report(&shepherd::store::UsageQuery::default())
        .unwrap();
    let row = &rows[0];
    assert_eq!((row.requests, row.cache_hits), (2, 1));
    assert!(row.cost_nano_usd > 0);
    assert_eq!(
        row.saved_nano_usd, row.cost_nano_usd,
        "the hit saved exactly what the miss cost"
    );
}
