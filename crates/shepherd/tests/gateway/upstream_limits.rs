//! A hostile upstream cannot make the gateway hold what it sends: an event that never ends and
//! a body that never ends are cut at `server.max_upstream_event` / `max_upstream_body` with a
//! clear error, and the real binary's peak memory stays flat.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::*;
use crate::shutdown::temp_file;

/// An HTTP/1.1 upstream that answers every request 200 with `content_type` and then writes
/// `piece` for ever (close-delimited), until the gateway hangs up.
async fn endless_upstream(
    content_type: &'static str,
    first: &'static [u8],
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = vec![0u8; 65536];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n"
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let _ = socket.write_all(first).await;
                let piece = vec![b'x'; 1 << 20];
                // At most 400 MB, sent as fast as the gateway reads.
                for _ in 0..400 {
                    if socket.write_all(&piece).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The peak resident memory of a process, in MB (`VmHWM`).
fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

#[tokio::test]
async fn endless_events_and_bodies_are_cut_and_memory_stays_flat() {
    let stream_upstream = endless_upstream("text/event-stream", b"data: ").await;
    let body_upstream = endless_upstream("application/json", b"{\"id\":\"").await;
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0, max_upstream_event: 1MiB, max_upstream_body: 8MiB,
          timeouts: {{first_byte: 20s, idle: 20s, total: 60s}}}}
providers:
  s: {{kind: openai, base_url: 'http://{stream_upstream}/v1'}}
  b: {{kind: openai, base_url: 'http://{body_upstream}/v1'}}
models:
  streams: {{deployments: [{{provider: s}}]}}
  bodies: {{deployments: [{{provider: b}}]}}
keys: [{{name: svc, key: {CLIENT_KEY}}}]
retry: {{attempts: 1}}
telemetry: {{access_log: off, log_level: info}}
"
    );
    let config = temp_file("shepherd.yaml", &yaml);
    let mut child = Command::new(env!("CARGO_BIN_EXE_shepherd"))
        .args(["serve", "--config"])
        .arg(&config.path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let entry: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if entry["message"] == "ready" {
                let _ = addr_tx.send(entry["addr"].as_str().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let client = test_client();
    let before = peak_rss_mb(child.id());
    for (model, stream) in [("streams", true), ("bodies", false)] {
        let response = client
            .post(format!("http://{addr}/v1/chat/completions"))
            .bearer_auth(CLIENT_KEY)
            .body(
                json!({"model": model, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{model}");
        let body = json_of(response).await;
        assert_openai_error(&body, "upstream_bad_response");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("bytes"),
            "the error says what limit was passed: {message}"
        );
    }
    let after = peak_rss_mb(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        after - before < 48.0,
        "peak memory grew from {before:.0} MB to {after:.0} MB"
    );
}
