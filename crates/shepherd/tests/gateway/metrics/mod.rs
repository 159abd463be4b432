//! `/metrics` against known traffic: successes, a stream, upstream errors with retries, a
//! rate-limited request and cache hits; every counter and histogram count is checked exactly.

use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};
use shepherd::server::Running;

use crate::common::*;
use crate::shutdown::temp_file;
pub use scrape::Scrape;

mod dashboard;
mod scrape;

pub const SERVICE_KEY: &str = "sk-metrics-service-1";
pub const TIGHT_KEY: &str = "sk-metrics-tight-1";
const CHAT: &str = "/v1/chat/completions";
const DEPLOYMENT: &str = "up/up-m";

pub struct Observed {
    pub mock: MockUpstream,
    pub server: Running,
    pub client: reqwest::Client,
}

pub async fn observed(telemetry: &str) -> Observed {
    let mock = MockUpstream::start().await.unwrap();
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}
providers:
  up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}
  dead: {{kind: openai, base_url: 'http://127.0.0.1:9/v1', api_keys: [sk-dead]}}
models:
  m: {{deployments: [{{provider: up, model: up-m}}], price: {{input: 2, output: 8}}, cache: {{enabled: false}}}}
  c: {{deployments: [{{provider: up, model: up-c}}], price: {{input: 1, output: 1}}}}
  f: {{deployments: [{{provider: dead}}], fallbacks: [m], cache: {{enabled: false}}}}
keys:
  - {{name: service, key: {SERVICE_KEY}, budget: {{usd: 1, period: month}}}}
  - {{name: tight, key: {TIGHT_KEY}, limits: {{rpm: 1, burst: 1}}}}
retry: {{attempts: 2, backoff: 1ms}}
circuit: {{failures: 100}}
cache: {{ttl: 1h}}
telemetry: {{access_log: off, log_level: warn{telemetry}}}
",
        mock.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "metrics.yaml", &|_| None).expect("config");
    Observed {
        server: shepherd::server::start(config).await.unwrap(),
        mock,
        client: test_client(),
    }
}

impl Observed {
    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("http://{}{CHAT}", self.server.addr))
            .bearer_auth(key)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    pub async fn scrape(&self) -> Scrape {
        Scrape::fetch(&self.client, &format!("http://{}", self.server.addr)).await
    }
}

pub fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "how many tokens is this?"}]})
}

#[derive(Default)]
struct Tokens {
    prompt: u64,
    completion: u64,
}

impl Tokens {
    fn add(&mut self, usage: &Value) {
        self.prompt += usage["prompt_tokens"].as_u64().unwrap();
        self.completion += usage["completion_tokens"].as_u64().unwrap();
    }
}

#[tokio::test]
async fn known_traffic_gives_exact_counters_and_histogram_counts() {
    let o = observed("").await;
    let mut tokens = Tokens::default();
    // Three plain successes.
    for _ in 0..3 {
        let response = o.chat(SERVICE_KEY, hello("m")).await;
        assert_eq!(response.status(), 200);
        tokens.add(&json_of(response).await["usage"]);
    }
    // One stream, with its usage.
    let mut stream = hello("m");
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let response = o.chat(SERVICE_KEY, stream).await;
    assert_eq!(response.status(), 200);
    let payloads = sse_payloads(response).await;
    let usage_chunk = payloads
        .iter()
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str::<Value>(p).unwrap())
        .find(|chunk| chunk["usage"].is_object())
        .expect("a usage chunk");
    tokens.add(&usage_chunk["usage"]);
    // One upstream error that a retry heals.
    o.mock.set_behavior(Behavior {
        status: Some(500),
        fail_times: Some(1),
        ..Behavior::default()
    });
    let response = o.chat(SERVICE_KEY, hello("m")).await;
    assert_eq!(response.status(), 200);
    tokens.add(&json_of(response).await["usage"]);
    // Two requests whose both attempts fail.
    o.mock.set_behavior(Behavior {
        status: Some(500),
        fail_times: Some(4),
        ..Behavior::default()
    });
    for _ in 0..2 {
        assert_eq!(o.chat(SERVICE_KEY, hello("m")).await.status(), 500);
    }
    o.mock.set_behavior(Behavior::default());
    // The tight key: one request passes, the next is limited.
    let response = o.chat(TIGHT_KEY, hello("m")).await;
    assert_eq!(response.status(), 200);
    let tight_usage = json_of(response).await["usage"].clone();
    assert_eq!(o.chat(TIGHT_KEY, hello("m")).await.status(), 429);
    // A miss then a hit on the cached model.
    let response = o.chat(SERVICE_KEY, hello("c")).await;
    assert_eq!(response.status(), 200);
    let cached_usage = json_of(response).await["usage"].clone();
    let response = o.chat(SERVICE_KEY, hello("c")).await;
    assert_eq!(response.headers()["x-cache"], "HIT");
    let _ = response.bytes().await.unwrap();

    let s = o.scrape().await;
    let on_m = [("route", CHAT), ("model", "m")];
    let status = |code: &str| {
        s.value(
            "shepherd_requests_total",
            &[("route", CHAT), ("model", "m"), ("status", code)],
        )
    };
    assert_eq!(status("200"), 6.0);
    assert_eq!(status("500"), 2.0);
    assert_eq!(status("429"), 1.0);
    assert_eq!(
        s.value(
            "shepherd_requests_total",
            &[
                ("model", "m"),
                ("deployment", DEPLOYMENT),
                ("status", "200")
            ]
        ),
        6.0,
        "served requests name their deployment"
    );
    assert_eq!(
        s.value(
            "shepherd_requests_total",
            &[("model", "c"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        s.value("shepherd_request_duration_seconds_count", &on_m),
        9.0
    );
    assert_eq!(
        s.value(
            "shepherd_request_duration_seconds_bucket",
            &[("route", CHAT), ("model", "m"), ("le", "+Inf")]
        ),
        9.0
    );
    // Time to first token: the six answers of `m` and the one miss of `c`; hits and errors
    // have none.
    assert_eq!(
        s.value(
            "shepherd_time_to_first_token_seconds_count",
            &[("model", "m")]
        ),
        6.0
    );
    assert_eq!(
        s.value(
            "shepherd_time_to_first_token_seconds_count",
            &[("model", "c")]
        ),
        1.0
    );
    // Upstream attempts: 3 + 1 + (1 failed + 1) + 2 x 2 failed + 1 = 11.
    assert_eq!(
        s.value(
            "shepherd_upstream_duration_seconds_count",
            &[("deployment", DEPLOYMENT)]
        ),
        11.0
    );
    assert_eq!(
        s.value(
            "shepherd_retries_total",
            &[("deployment", DEPLOYMENT), ("reason", "server_error")]
        ),
        3.0
    );
    assert_eq!(s.find("shepherd_fallbacks_total", &[]), None);
    assert_eq!(
        s.value("shepherd_ratelimited_total", &[("scope", "key")]),
        1.0
    );
    assert_eq!(
        s.value("shepherd_cache_requests_total", &[("result", "hit")]),
        1.0
    );
    assert_eq!(
        s.value("shepherd_cache_requests_total", &[("result", "miss")]),
        1.0
    );
    assert_eq!(s.value("shepherd_cache_entries", &[]), 1.0);
    assert_eq!(
        s.value("shepherd_inflight_requests", &[("model", "m")]),
        0.0
    );
    assert_eq!(
        s.value("shepherd_inflight_requests", &[("model", "c")]),
        0.0
    );

    tokens.add(&tight_usage);
    let prompt = |model| {
        s.value(
            "shepherd_tokens_total",
            &[("model", model), ("type", "prompt")],
        )
    };
    let completion = |model| {
        s.value(
            "shepherd_tokens_total",
            &[("model", model), ("type", "completion")],
        )
    };
    assert_eq!(prompt("m"), tokens.prompt as f64);
    assert_eq!(completion("m"), tokens.completion as f64);
    assert_eq!(prompt("c"), cached_usage["prompt_tokens"].as_f64().unwrap());
    let key_tokens =
        |key, kind| s.value("shepherd_key_tokens_total", &[("key", key), ("type", kind)]);
    let field = |usage: &Value, name: &str| usage[name].as_f64().unwrap();
    assert_eq!(
        key_tokens("tight", "prompt"),
        field(&tight_usage, "prompt_tokens")
    );
    assert_eq!(
        key_tokens("service", "completion"),
        tokens.completion as f64 - field(&tight_usage, "completion_tokens")
            + field(&cached_usage, "completion_tokens")
    );
    // Cost by key: $2 and $8 per million tokens on `m`, $1 and $1 on `c` (the hit is free).
    let usd = |prompt: f64, completion: f64, input: f64, output: f64| {
        (prompt * input + completion * output) / 1e6
    };
    let tight = usd(
        tight_usage["prompt_tokens"].as_f64().unwrap(),
        tight_usage["completion_tokens"].as_f64().unwrap(),
        2.0,
        8.0,
    );
    let service_m = usd(tokens.prompt as f64, tokens.completion as f64, 2.0, 8.0) - tight;
    let service_c = usd(
        cached_usage["prompt_tokens"].as_f64().unwrap(),
        cached_usage["completion_tokens"].as_f64().unwrap(),
        1.0,
        1.0,
    );
    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-12, "{got} != {want}");
    close(
        s.value(
            "shepherd_cost_usd_total",
            &[("model", "m"), ("key", "service")],
        ),
        service_m,
    );
    close(
        s.value(
            "shepherd_cost_usd_total",
            &[("model", "m"), ("key", "tight")],
        ),
        tight,
    );
    close(
        s.value(
            "shepherd_cost_usd_total",
            &[("model", "c"), ("key", "service")],
        ),
        service_c,
    );
    close(
        s.value(
            "shepherd_cache_saved_usd_total",
            &[("model", "c"), ("key", "service")],
        ),
        service_c,
    );
    assert_eq!(
        s.value("shepherd_budget_limit_usd", &[("key", "service")]),
        1.0
    );
    close(
        s.value("shepherd_budget_spent_usd", &[("key", "service")]),
        service_m + service_c,
    );
    assert_eq!(
        s.find("shepherd_budget_limit_usd", &[("key", "tight")]),
        None
    );
    assert_eq!(
        s.value("shepherd_deployment_healthy", &[("deployment", DEPLOYMENT)]),
        1.0
    );
    assert_eq!(
        s.value("shepherd_circuit_state", &[("deployment", DEPLOYMENT)]),
        0.0
    );
    assert_eq!(
        s.value(
            "shepherd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Scrapes are not requests of a model, and the upstream key never shows.
    assert_eq!(
        s.find("shepherd_requests_total", &[("route", "/metrics")]),
        None
    );
    assert!(!s.text.contains(UPSTREAM_KEY));
    assert!(!s.text.contains(SERVICE_KEY));
}

#[tokio::test]
async fn unknown_models_and_paths_share_one_label_and_keys_can_be_left_out() {
    let o = observed(", key_labels: false").await;
    for i in 0..5 {
        let response = o.chat(SERVICE_KEY, hello(&format!("made-up-{i}"))).await;
        assert_eq!(response.status(), 404);
    }
    for i in 0..3 {
        let response = o
            .client
            .get(format!("http://{}/v1/nothing-{i}", o.server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
    assert_eq!(o.chat(SERVICE_KEY, hello("m")).await.status(), 200);
    let s = o.scrape().await;
    assert_eq!(
        s.value(
            "shepherd_requests_total",
            &[("route", CHAT), ("model", "other"), ("status", "404")]
        ),
        5.0
    );
    assert_eq!(
        s.value(
            "shepherd_requests_total",
            &[("route", "other"), ("status", "404")]
        ),
        3.0
    );
    assert!(
        !s.text.contains("made-up"),
        "client-chosen names never become labels"
    );
    assert!(!s.text.contains("nothing-"));
    assert!(s.value("shepherd_cost_usd_total", &[("model", "m"), ("key", "")]) > 0.0);
    assert!(!s.text.contains("key=\"service\""));
}

#[tokio::test]
async fn config_reloads_are_counted_by_result() {
    let good = "server: {listen: 127.0.0.1:0}
providers: {builtin: {kind: mock}}
models: {m: {deployments: [{provider: builtin}]}}
telemetry: {access_log: off, log_level: warn}
";
    let file = temp_file("shepherd.yaml", good);
    let loaded = shepherd::config::load_file(&file.path).unwrap();
    let server = shepherd::server::start_watching(loaded, file.path.clone())
        .await
        .unwrap();
    let client = test_client();
    let base = format!("http://{}", server.addr);
    let reloads = || async {
        let s = Scrape::fetch(&client, &base).await;
        let count = |result| s.find("shepherd_config_reloads_total", &[("result", result)]);
        (count("success"), count("failure"))
    };
    // The server watches its file: each edit is one reload, counted by its result.
    let settled = |want: (Option<f64>, Option<f64>)| async move {
        for _ in 0..100 {
            if reloads().await == want {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    };
    assert_eq!(
        reloads().await,
        (Some(0.0), Some(0.0)),
        "both series exist from the start"
    );
    std::fs::write(&file.path, good.replace("m:", "m2:")).unwrap();
    assert!(
        settled((Some(1.0), Some(0.0))).await,
        "{:?}",
        reloads().await
    );
    std::fs::write(&file.path, "models: [not, a, map").unwrap();
    assert!(
        settled((Some(1.0), Some(1.0))).await,
        "{:?}",
        reloads().await
    );
}

#[tokio::test]
async fn metrics_can_have_their_own_listener_or_be_off() {
    let port = free_port();
    let o = observed(&format!(", metrics_listen: '127.0.0.1:{port}'")).await;
    let main = o
        .client
        .get(format!("http://{}/metrics", o.server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(main.status(), 404, "not on the main listener");
    assert_eq!(o.chat(SERVICE_KEY, hello("m")).await.status(), 200);
    let s = Scrape::fetch(&o.client, &format!("http://127.0.0.1:{port}")).await;
    assert_eq!(
        s.value(
            "shepherd_requests_total",
            &[("model", "m"), ("status", "200")]
        ),
        1.0
    );
    let off = observed(", metrics: false").await;
    let response = off
        .client
        .get(format!("http://{}/metrics", off.server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(off.chat(SERVICE_KEY, hello("m")).await.status(), 200);
    let state = &off.server.state;
    let kept = Scrape::parse(&state.metrics.render(state));
    assert_eq!(
        kept.find("shepherd_requests_total", &[]),
        None,
        "off: requests are not even counted"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn an_open_circuit_shows_as_an_unhealthy_deployment() {
    let yaml = "server: {listen: 127.0.0.1:0, timeouts: {connect: 1s}}
providers:
  dead: {kind: openai, base_url: 'http://127.0.0.1:9/v1', api_keys: [sk-dead]}
  builtin: {kind: mock}
models:
  down: {deployments: [{provider: dead, model: gone}]}
  up: {deployments: [{provider: builtin}]}
keys: [{name: svc, key: sk-circuit-1}]
retry: {attempts: 1}
circuit: {failures: 1, cooldown: 1h}
telemetry: {access_log: off, log_level: warn}
";
    let config = shepherd::config::load_str(yaml, "circuit.yaml", &|_| None).unwrap();
    let server = shepherd::server::start(config).await.unwrap();
    let client = test_client();
    let response = client
        .post(format!("http://{}{CHAT}", server.addr))
        .bearer_auth("sk-circuit-1")
        .body(hello("down").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let s = Scrape::fetch(&client, &format!("http://{}", server.addr)).await;
    assert_eq!(
        s.value("shepherd_circuit_state", &[("deployment", "dead/gone")]),
        1.0
    );
    assert_eq!(
        s.value(
            "shepherd_deployment_healthy",
            &[("deployment", "dead/gone")]
        ),
        0.0
    );
    assert_eq!(
        s.value(
            "shepherd_deployment_healthy",
            &[("deployment", "builtin/up")]
        ),
        1.0
    );
    assert_eq!(
        s.find("shepherd_retries_total", &[]),
        None,
        "one attempt: nothing retried"
    );
}
