//! The real binary: SIGTERM drains in-flight streams while probes answer 503; streams still
//! running when the grace period ends get an error event and a ledger record.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use mock_upstream::MockUpstream;
use serde_json::json;

use crate::common::*;

/// A file in a fresh temporary folder, removed with the folder when dropped.
pub struct TempFile {
    pub path: std::path::PathBuf,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn temp_file(name: &str, contents: &str) -> TempFile {
    let unique = format!("shepherd-test-{}-{}", std::process::id(), fastrand::u64(..));
    let dir = std::env::temp_dir().join(unique);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    TempFile { path }
}

/// Kills the server if the test fails before it exits by itself.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_streams_and_refuses_new_work() {
    let mock = MockUpstream::start().await.unwrap();
    let yaml = config_yaml(&mock.base_url(), "")
        .replace("access_log: off", "access_log: json")
        .replace("log_level: warn", "log_level: info");
    let config = temp_file("shepherd.yaml", &yaml);
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_shepherd"))
            .args(["serve", "--config"])
            .arg(&config.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .unwrap()
            .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        if entry["message"] == "ready" {
            break entry["addr"].as_str().unwrap().to_owned();
        }
    };
    let client = test_client();
    let response = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-mock-chunks", "10")
        .header("x-mock-chunk-delay-ms", "150")
        .body(json!({"model": "gpt-4.1", "stream": true, "messages": [{"role": "user", "content": "long"}]}).to_string())
        .send()
        .await
        .unwrap();
    let mut events = EventReader::new(response);
    events.next_data().await.unwrap();

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Draining: probes are still answered (load balancers must see readiness fail, not a
    // refused connection), and answers ask clients to close their connections.
    let fresh = test_client();
    let ready = fresh
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["connection"], "close");
    assert_eq!(json_of(ready).await["status"], "draining");
    let alive = fresh
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(alive.status(), 200);

    let mut rest = Vec::new();
    while let Some(data) = events.next_data().await {
        rest.push(data);
    }
    assert_eq!(
        rest.last().map(String::as_str),
        Some("[DONE]"),
        "in-flight stream cut by shutdown: {rest:?}"
    );
    assert_eq!(mock.stats().streams_completed, 1);

    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // The last lines are written at exit; wait until the pipe is drained to its end.
    tokio::task::spawn_blocking(move || reader.join())
        .await
        .unwrap()
        .unwrap();
    let mut access_lines = Vec::new();
    while let Ok(line) = lines.try_recv() {
        access_lines.push(line);
    }
    let access: Vec<serde_json::Value> = access_lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["target"] == "shepherd::access")
        .collect();
    let stream_line = access
        .iter()
        .find(|l| l["stream"] == true)
        .expect("access log line of the stream");
    assert_eq!(stream_line["key"], "all-models");
    assert_eq!(stream_line["status"], 200);
    assert_eq!(stream_line["outcome"], "complete");
    assert_eq!(stream_line["deployment"], "up/upstream-gpt-4.1");
    assert!(stream_line["bytes_out"].as_u64().unwrap() > 100);
    assert!(stream_line["upstream_first_byte_ms"].as_f64().is_some());
    assert!(stream_line["total_ms"].as_f64().unwrap() >= 1000.0);
    // The client asked for no usage; the gateway did, and accounted for the stream.
    assert_eq!(stream_line["usage"], "reported");
    assert!(stream_line["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(stream_line["completion_tokens"], 10);
    assert!(
        !access_lines
            .iter()
            .any(|l| l.contains(CLIENT_KEY) || l.contains(UPSTREAM_KEY))
    );
}

/// Starts the real binary on `yaml`; returns it and the address it listens on.
async fn spawn_binary(
    config: &TempFile,
) -> (
    KillOnDrop,
    String,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_shepherd"))
            .args(["serve", "--config"])
            .arg(&config.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .unwrap()
            .unwrap();
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if entry["message"] == "ready" {
            break entry["addr"].as_str().unwrap().to_owned();
        }
    };
    (child, addr, lines)
}

#[tokio::test]
async fn streams_past_the_grace_end_with_an_error_event_and_their_usage_is_recorded() {
    let mock = MockUpstream::start().await.unwrap();
    let yaml = config_yaml(&mock.base_url(), "")
        .replace("shutdown_grace: 10s", "shutdown_grace: 1s")
        .replace("log_level: warn", "log_level: info");
    let config = temp_file("shepherd.yaml", &yaml);
    let (mut child, addr, _lines) = spawn_binary(&config).await;
    let client = test_client();
    let mut streams = Vec::new();
    for n in 0..5 {
        let response = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .header("x-mock-chunks", "60")
            .header("x-mock-chunk-delay-ms", "100")
            .body(
                json!({"model": "gpt-4.1", "stream": true,
                       "messages": [{"role": "user", "content": format!("long story {n}")}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        let mut events = EventReader::new(response);
        events.next_data().await.unwrap();
        streams.push(events);
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for mut events in streams {
        let mut last = None;
        while let Some(data) = events.next_data().await {
            last = Some(data);
        }
        let last: serde_json::Value = serde_json::from_str(&last.unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "server_shutting_down", "{last}");
    }
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Every stream has its ledger record, with the usage it had so far.
    let database = config.path.parent().unwrap().join("shepherd.db");
    let store =
        shepherd::store::sqlite::SqliteStore::open(&shepherd::config::Database::Sqlite(database))
            .unwrap();
    let rows = shepherd::store::UsageStore::report(&store, &shepherd::store::UsageQuery::default())
        .unwrap();
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    assert_eq!(requests, 5, "{rows:?}");
    let completion: u64 = rows.iter().map(|r| r.completion_tokens).sum();
    assert!(completion > 0, "usage so far is recorded: {rows:?}");
}
