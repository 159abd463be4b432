//! Shared harness of the black-box tests: a real Shepherd server (in-process, port 0) in front of
//! a real mock-upstream, and small helpers to read answers and event streams.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use futures_util::StreamExt;
use mock_upstream::MockUpstream;
use serde_json::Value;
use shepherd::server::Running;

pub const UPSTREAM_KEY: &str = "sk-upstream-secret-0123456789";
pub const CLIENT_KEY: &str = "sk-client-all-abcdef";
pub const LIMITED_KEY: &str = "sk-client-limited-abcdef";

pub struct Harness {
    pub mock: MockUpstream,
    pub server: Running,
    pub client: reqwest::Client,
}

/// The config of the harness; `server_extra` goes under `server:` (indented by the caller).
pub fn config_yaml(upstream_base: &str, server_extra: &str) -> String {
    let upstream_root = upstream_base.trim_end_matches("/v1");
    format!(
        "\
server:
  listen: 127.0.0.1:0
  max_body: 64KiB
  timeouts: {{connect: 1s, first_byte: 2s, idle: 1s, total: 30s}}
  shutdown_grace: 10s
  cors: {{allow_origins: ['https://app.example.com']}}
{server_extra}
providers:
  up: {{kind: openai, base_url: '{upstream_base}', api_keys: ['{UPSTREAM_KEY}']}}
  anth: {{kind: anthropic, base_url: '{upstream_root}', api_keys: ['{UPSTREAM_KEY}'], default_max_tokens: 256}}
  gem: {{kind: gemini, base_url: '{upstream_root}', api_keys: ['{UPSTREAM_KEY}']}}
  resp: {{kind: openai, base_url: '{upstream_base}', api_keys: ['{UPSTREAM_KEY}'], responses: true}}
  dead: {{kind: openai, base_url: 'http://127.0.0.1:9/v1', api_keys: ['sk-dead-upstream-key-000']}}
  builtin: {{kind: mock}}
models:
  gpt-4.1:
    deployments: [{{provider: up, model: upstream-gpt-4.1}}]
  gpt-embed:
    deployments: [{{provider: up, model: text-embedding-3-small}}]
  gpt-dead:
    deployments: [{{provider: dead}}]
  local-mock:
    deployments: [{{provider: builtin, model: mock-1}}]
  claude-x:
    deployments: [{{provider: anth, model: claude-sonnet-4-5}}]
  gemini-x:
    deployments: [{{provider: gem, model: gemini-2.5-flash}}]
  gpt-resp:
    deployments: [{{provider: resp, model: upstream-gpt-resp}}]
  gemini-embed:
    deployments: [{{provider: gem, model: text-embedding-004}}]
  cached-gpt:
    deployments: [{{provider: up, model: upstream-gpt-4.1}}]
    cache: {{ttl: 1h}}
keys:
  - {{name: all-models, key: {CLIENT_KEY}}}
  - {{name: limited, key: {LIMITED_KEY}, models: ['local-*']}}
retry: {{attempts: 1}}
circuit: {{failures: 1000000, key_cooldown: 0s}}
telemetry: {{access_log: off, log_level: warn}}
"
    )
}

pub async fn start() -> Harness {
    start_with("").await
}

pub async fn start_with(server_extra: &str) -> Harness {
    let mock = MockUpstream::start().await.expect("mock upstream");
    let yaml = config_yaml(&mock.base_url(), server_extra);
    let config = shepherd::config::load_str(&yaml, "test.yaml", &|_| None).expect("config");
    let server = shepherd::server::start(config).await.expect("server");
    let client = test_client();
    Harness {
        mock,
        server,
        client,
    }
}

/// A plain HTTP client with its own connection pool.
pub fn test_client() -> reqwest::Client {
    shepherd::providers::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

impl Harness {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.addr, path)
    }

    pub fn post(&self, path: &str, body: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(CLIENT_KEY)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    pub fn chat(&self, body: Value) -> reqwest::RequestBuilder {
        self.post("/v1/chat/completions", &body.to_string())
    }
}

pub async fn json_of(response: reqwest::Response) -> Value {
    let bytes = response.bytes().await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
}

/// The events of a complete event stream as (name, data), read as the HTML standard says (any
/// line ending, comments, several `data:` lines joined with `\n`); independent of the gateway's
/// own parser.
pub fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        if line.is_empty() {
            if let Some(data) = data.take() {
                events.push((name.take(), data));
            }
            name = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = Some(value.to_owned()),
            "data" => {
                data = Some(match data.take() {
                    None => value.to_owned(),
                    Some(earlier) => format!("{earlier}\n{value}"),
                })
            }
            _ => {}
        }
    }
    events
}

/// Reads an SSE response to its end; returns the `data:` payloads in order.
pub async fn sse_payloads(response: reqwest::Response) -> Vec<String> {
    let text = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();
    sse_events(&text)
        .into_iter()
        .map(|(_, data)| data)
        .collect()
}

/// Reads the next whole event's data from a streaming response.
pub struct EventReader {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl EventReader {
    pub fn new(response: reqwest::Response) -> Self {
        EventReader {
            stream: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    pub async fn next_data(&mut self) -> Option<String> {
        loop {
            let normalized = self.buffer.replace("\r\n", "\n");
            if let Some(end) = normalized.find("\n\n") {
                let event = normalized[..end + 2].to_owned();
                self.buffer = normalized[end + 2..].to_owned();
                if let Some((_, data)) = sse_events(&event).pop() {
                    return Some(data);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("stream stalled in test")?;
            self.buffer
                .push_str(std::str::from_utf8(&chunk.ok()?).unwrap());
        }
    }
}

/// Asserts an OpenAI error body: exactly message/type/param/code, with the given code.
pub fn assert_openai_error(body: &Value, code: &str) {
    let error = body["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert_eq!(error["code"], code, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
}

/// Waits (bounded) until `condition` holds.
pub async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    condition()
}
