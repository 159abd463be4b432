//! Secrets never leave: the real binary, configured with recognisable secrets (upstream keys of
//! each protocol, the master key, the key secret, a static client key), is driven through a run
//! of errors in which upstreams quote their key in every way they can (plainly, JSON-escaped,
//! in a stream's error event, in response headers). Then every answer's body and headers, every
//! log line, the metrics and the database files are scanned: none holds a secret.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mock_upstream::{Behavior, MockUpstream};
use serde_json::json;

use crate::common::*;
use crate::shutdown::temp_file;

/// Each secret's distinctive core: escaping a `-` or `/` cannot hide it.
const CORES: [&str; 6] = [
    "CANARYOPENAI1111",
    "CANARYANTHROPIC2222",
    "CANARYGEMINI3333",
    "CANARYMASTER4444",
    "CANARYHASH5555",
    "CANARYCLIENT6666",
];
const OPENAI_KEY: &str = "sk-upstream-CANARYOPENAI1111";
const ANTHROPIC_KEY: &str = "anthropic-CANARYANTHROPIC2222";
const GEMINI_KEY: &str = "AIza-CANARYGEMINI3333";
const MASTER: &str = "master-CANARYMASTER4444";
const HASH_SECRET: &str = "hash-CANARYHASH5555";
const CLIENT: &str = "client-CANARYCLIENT6666";

fn leaks(text: &str) -> Vec<&'static str> {
    CORES
        .iter()
        .copied()
        .filter(|core| text.contains(core))
        .collect()
}

#[tokio::test]
async fn no_secret_leaves_through_bodies_headers_logs_metrics_or_the_database() {
    let mock = MockUpstream::start().await.unwrap();
    let base = mock.base_url();
    let root = mock.url();
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0, timeouts: {{first_byte: 2s, idle: 2s}}}}
admin: {{master_key: {MASTER}, key_secret: {HASH_SECRET}}}
providers:
  up: {{kind: openai, base_url: '{base}', api_keys: ['{OPENAI_KEY}']}}
  anth: {{kind: anthropic, base_url: '{root}', api_keys: ['{ANTHROPIC_KEY}']}}
  gem: {{kind: gemini, base_url: '{root}', api_keys: ['{GEMINI_KEY}']}}
models:
  gpt: {{deployments: [{{provider: up}}]}}
  claude: {{deployments: [{{provider: anth}}]}}
  gemini: {{deployments: [{{provider: gem}}]}}
keys: [{{name: svc, key: {CLIENT}}}]
retry: {{attempts: 1}}
circuit: {{failures: 1000000, key_cooldown: 0s}}
telemetry: {{access_log: json, log_format: json, log_level: debug}}
"
    );
    let config = temp_file("shepherd.yaml", &yaml);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(["serve", "--config"])
        .arg(&config.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_tx = lines_tx.clone();
    let readers = [
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        }),
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        }),
    ];
    let mut logs = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .unwrap()
            .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        logs.push(line);
        if entry["message"] == "ready" {
            break entry["addr"].as_str().unwrap().to_owned();
        }
    };
    let client = test_client();
    let mut seen = Vec::new();
    let record = |what: String, response: reqwest::Response| async move {
        let mut text = format!("{what}\n");
        for (name, value) in response.headers() {
            text.push_str(&format!(
                "{name}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        text.push_str(&response.text().await.unwrap_or_default());
        text
    };
    let chat = |model: &str, stream: bool| {
        client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(CLIENT)
            .body(
                json!({"model": model, "stream": stream,
                         "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            )
    };
    let messages = |model: &str, stream: bool| {
        client
            .post(format!("http://{addr}/v1/messages"))
            .header("x-api-key", CLIENT)
            .header("anthropic-version", "2023-06-01")
            .body(
                json!({"model": model, "max_tokens": 20, "stream": stream,
                         "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            )
    };
    // Upstream errors quoting the key, plainly and JSON-escaped, with the key echoed in headers,
    // for every upstream protocol, passed through (same protocol) and translated.
    for model in ["gpt", "claude", "gemini"] {
        for status in ["401", "403", "500"] {
            for echo in ["1", "escaped"] {
                for stream in [false, true] {
                    let openai = chat(model, stream)
                        .header("x-mock-status", status)
                        .header("x-mock-echo-key", echo)
                        .send()
                        .await
                        .unwrap();
                    seen.push(record(format!("chat {model} {status} {echo}"), openai).await);
                    let anthropic = messages(model, stream)
                        .header("x-mock-status", status)
                        .header("x-mock-echo-key", echo)
                        .send()
                        .await
                        .unwrap();
                    seen.push(record(format!("messages {model} {status} {echo}"), anthropic).await);
                }
            }
        }
    }
    // Error events inside 200 streams that quote the key (escaped too).
    for (model, events) in [
        (
            "gpt",
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"hi\"}}}}]}}\n\ndata: {{\"error\":{{\"message\":\"key {}\",\"type\":\"server_error\"}}}}\n\n",
                OPENAI_KEY.replace('-', "\\u002d")
            ),
        ),
        (
            "claude",
            format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"m\",\"usage\":{{\"input_tokens\":1}}}}}}\n\nevent: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"key {ANTHROPIC_KEY}\"}}}}\n\n"
            ),
        ),
    ] {
        mock.set_behavior(Behavior {
            sse_body: Some(events),
            ..Behavior::default()
        });
        let response = if model == "gpt" {
            chat(model, true).send().await.unwrap()
        } else {
            messages(model, true).send().await.unwrap()
        };
        seen.push(record(format!("stream error event {model}"), response).await);
        // And first, before any other event (answered as a plain error).
        mock.set_behavior(Behavior {
            sse_body: Some(format!(
                "data: {{\"error\":{{\"message\":\"key {OPENAI_KEY}\",\"type\":\"server_error\"}}}}\n\n"
            )),
            ..Behavior::default()
        });
        let response = chat("gpt", true).send().await.unwrap();
        seen.push(record("first event is an error".to_owned(), response).await);
    }
    mock.set_behavior(Behavior::default());
    // The admin API with a wrong master key and the right one.
    let wrong = client
        .get(format!("http://{addr}/admin/keys"))
        .bearer_auth(CLIENT)
        .send()
        .await
        .unwrap();
    seen.push(record("admin with a client key".to_owned(), wrong).await);
    let keys = client
        .get(format!("http://{addr}/admin/keys"))
        .bearer_auth(MASTER)
        .send()
        .await
        .unwrap();
    seen.push(record("admin keys".to_owned(), keys).await);
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    seen.push(record("metrics".to_owned(), metrics).await);
    assert!(seen.len() > 70);

    // Stop the binary, collect every log line it wrote.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    for reader in readers {
        let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    }
    while let Ok(line) = lines.try_recv() {
        logs.push(line);
    }
    assert!(logs.len() > 50, "the run was logged: {} lines", logs.len());
    assert!(
        logs.iter().any(|l| l.contains("\"status\":502")),
        "the errors reached the access log"
    );

    for text in &seen {
        assert!(
            leaks(text).is_empty(),
            "a secret left in an answer:\n{text}"
        );
    }
    for line in &logs {
        assert!(leaks(line).is_empty(), "a secret in a log line:\n{line}");
    }
    // The database and its write-ahead log hold no secret either.
    let folder = config.path.parent().unwrap();
    let mut scanned = 0;
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("shepherd.db"))
        {
            let bytes = std::fs::read(&path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(leaks(&text).is_empty(), "a secret in {}", path.display());
            scanned += 1;
        }
    }
    assert!(scanned >= 1, "the database was scanned");
}
