//! What a client cannot do to the gateway: keep idle connections open for ever, send a head or
//! a body a byte at a time, or open more connections than `server.max_connections`. Each is
//! closed or refused in time, and the gateway keeps answering.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

const LIMITS: &str = "  client_timeouts: {header: 500ms, body: 700ms, keep_alive: 1s}
  max_connections: 20";

/// Reads until the server closes the connection (or `within` passes); returns what it sent
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return (String::from_utf8_lossy(&received).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&received).into_owned(), true);
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_in_time() {
    let h = start_with(LIMITS).await;
    let addr = h.server.addr;
    // Silent from the start: closed after the head timeout.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(3)).await;
    assert!(closed, "a silent connection stays open");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );

    // A head a byte at a time (slowloris): closed once the head timeout passes.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ";
    let mut closed = false;
    for byte in head.iter().cycle().take(200) {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        closed = read_until_closed(&mut slow, Duration::from_secs(1)).await.1;
    }
    assert!(closed, "a slowloris head kept its connection");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A keep-alive connection: served, then closed after the keep-alive timeout, not the head
    // timeout.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    let n = kept.read(&mut buffer).await.unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    let served = Instant::now();
    let (_, closed) = read_until_closed(&mut kept, Duration::from_secs(3)).await;
    assert!(closed);
    let idle = served.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2000),
        "closed after {idle:?} idle"
    );

    // A body that never ends: 408 in the caller's shape after the body timeout.
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(
            format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CLIENT_KEY}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut partial, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(h.mock.requests().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_politely_and_probes_keep_answering() {
    let h = start_with(LIMITS).await;
    let addr = h.server.addr;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Over the cap: a 503 in OpenAI's shape, then closed.
    let mut over = TcpStream::connect(addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut over, Duration::from_secs(2)).await;
    assert!(closed);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    assert_openai_error(&serde_json::from_str(body).unwrap(), "too_many_connections");
    // The idle ones are closed by their head timeout, and the gateway answers again.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    let health = h.client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let answer = h
        .chat(json!({"model": "local-mock", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    drop(idle);
}

#[tokio::test]
async fn a_stream_quieter_than_the_keep_alive_is_never_cut() {
    let h = start_with(LIMITS).await;
    // Chunks 0.9 s apart for 2.7 s, longer than every client timeout (but within the upstream
    // idle timeout): a connection with a request in flight is not idle.
    let response = h
        .chat(json!({"model": "gpt-4.1", "stream": true,
                     "messages": [{"role": "user", "content": "slow"}]}))
        .header("x-mock-chunks", "3")
        .header("x-mock-chunk-delay-ms", "900")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let payloads = sse_payloads(response).await;
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{payloads:?}"
    );
}
