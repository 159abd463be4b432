//! `/metrics` against known traffic: successes, a stream, upstream errors with retries, a
//! rate-limited request and cache hits; every counter and histogram count is checked exactly.

use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};
use shepherd::server::Running;

use crate::common::*;
use crate::shutdown::temp_file;

const SERVICE_KEY: &str = "sk-metrics-service-1";
const TIGHT_KEY: &str = "sk-metrics-tight-1";
const CHAT: &str = "/v1/chat/completions";
const DEPLOYMENT: &str = "up/up-m";

struct Observed {
    mock: MockUpstream,
    server: Running,
    client: reqwest::Client,
}

async fn observed(telemetry: &str) -> Observed {
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
    async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("http://{}{CHAT}", self.server.addr))
            .bearer_auth(key)
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }

    async fn scrape(&self) -> Scrape {
        let response = self
            .client
            .get(format!("http://{}/metrics", self.server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        Scrape::parse(&response.text().await.unwrap())
    }
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "how many tokens is this?"}]})
}

/// One series of a scrape: its name, its labels, its value.
type Series = (String, Vec<(String, String)>, f64);

/// A parsed scrape: one entry per series, labels sorted as Prometheus writes them.
pub struct Scrape {
    pub text: String,
    series: Vec<Series>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').unwrap();
                        (key.to_owned(), value.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value.parse::<f64>().unwrap())
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            series,
        }
    }

    /// The sum over the series of `name` whose labels include `labels`; `None` when none does.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .series
            .iter()
            .filter(|(series, have, _)| {
                series == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }

    /// Every series name in the scrape, and every family its `# TYPE` lines declare.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let families = self
            .text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next());
        self.series
            .iter()
            .map(|(name, _, _)| name.as_str())
            .chain(families)
            .map(str::to_owned)
            .collect()
    }
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
    let url = format!("http://{}/metrics", server.addr);
    let reloads = || async {
        let text = client.get(&url).send().await.unwrap().text().await.unwrap();
        let s = Scrape::parse(&text);
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
    let text = o
        .client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let s = Scrape::parse(&text);
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
    let text = client
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let s = Scrape::parse(&text);
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

/// Every `shepherd_*` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("shepherd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `expr` of the dashboard's panels (rows included).
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut queries = Vec::new();
    let mut stack = vec![dashboard];
    while let Some(node) = stack.pop() {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    queries.push(expr.clone());
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    queries
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_use_only_exposed_metrics() {
    let o = observed("").await;
    // Traffic that brings every family to life: a fallback, a retry, a hit, a refusal.
    assert_eq!(o.chat(SERVICE_KEY, hello("f")).await.status(), 200);
    o.mock.set_behavior(Behavior {
        status: Some(500),
        fail_times: Some(1),
        ..Behavior::default()
    });
    assert_eq!(o.chat(SERVICE_KEY, hello("m")).await.status(), 200);
    for _ in 0..2 {
        let _ = o.chat(SERVICE_KEY, hello("c")).await.bytes().await;
        let _ = o.chat(TIGHT_KEY, hello("m")).await.bytes().await;
    }
    let s = o.scrape().await;
    assert_eq!(
        s.value("shepherd_fallbacks_total", &[("from", "f"), ("to", "m")]),
        1.0
    );
    let exposed = s.names();

    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/shepherd.json")).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = std::collections::BTreeSet::new();
    for query in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "a query on no Shepherd metric: {query}");
        for name in names {
            assert!(
                exposed.contains(&name),
                "the dashboard asks for {name}, which /metrics lacks: {query}"
            );
            used.insert(name);
        }
    }
    for wanted in [
        "shepherd_requests_total",
        "shepherd_request_duration_seconds_bucket",
        "shepherd_time_to_first_token_seconds_bucket",
        "shepherd_tokens_total",
        "shepherd_key_tokens_total",
        "shepherd_cost_usd_total",
        "shepherd_cache_requests_total",
        "shepherd_ratelimited_total",
        "shepherd_deployment_healthy",
        "shepherd_inflight_requests",
    ] {
        assert!(used.contains(wanted), "the dashboard shows no {wanted}");
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            for name in metric_names(query) {
                assert!(
                    exposed.contains(&name),
                    "variable {}: {name}",
                    variable["name"]
                );
            }
        }
    }

    let alerts = repo_file("deploy/prometheus/alerts.yml");
    let exprs: Vec<&str> = alerts
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    let alert_names = metric_names(&exprs.join("\n"));
    for name in &alert_names {
        // Annotations mention metrics too; every one of them must exist.
        assert!(
            exposed.contains(name),
            "alerts.yml names {name}, which /metrics lacks"
        );
    }
    assert!(alert_names.contains("shepherd_budget_spent_usd"));
}
