//! Streams: forwarded chunk by chunk as they arrive, usage included, cancelled with the client,
//! and ended by an error event (never a fake `[DONE]`) when the upstream breaks or stalls.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

fn stream_request(include_usage: bool) -> Value {
    json!({
        "model": "gpt-4.1",
        "stream": true,
        "stream_options": {"include_usage": include_usage},
        "messages": [{"role": "user", "content": "stream me a story"}]
    })
}

#[tokio::test]
async fn stream_content_and_usage() {
    let h = start().await;
    let response = h
        .chat(stream_request(true))
        .header("x-mock-chunks", "6")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        response.headers()["x-shepherd-deployment"],
        "up/upstream-gpt-4.1"
    );
    let payloads = sse_payloads(response).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(
        text.starts_with("Mock reply to: stream me a story"),
        "{text}"
    );
    assert_eq!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty()))
            .count(),
        6
    );
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(chunks.iter().all(|c| c["model"] == "upstream-gpt-4.1"));
    assert_eq!(
        h.mock.requests()[0].json().unwrap()["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn completions_stream() {
    let h = start().await;
    let body = json!({"model": "gpt-4.1", "prompt": "Once", "stream": true}).to_string();
    let response = h.post("/v1/completions", &body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let payloads = sse_payloads(response).await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&payloads[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
}

#[tokio::test]
async fn chunks_reach_the_client_while_the_upstream_is_still_pacing() {
    let h = start().await;
    let response = h
        .chat(stream_request(false))
        .header("x-mock-chunks", "5")
        .header("x-mock-chunk-delay-ms", "300")
        .send()
        .await
        .unwrap();
    let mut events = EventReader::new(response);
    let mut content_seen = 0;
    while content_seen < 2 {
        let data = events.next_data().await.unwrap();
        let chunk: Value = serde_json::from_str(&data).unwrap();
        if chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            content_seen += 1;
        }
    }
    let stats = h.mock.stats();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(
        stats.streams_completed, 0,
        "the client got content only after the upstream finished: buffered"
    );
    while let Some(data) = events.next_data().await {
        if data == "[DONE]" {
            break;
        }
    }
    assert!(eventually(|| h.mock.stats().streams_completed == 1).await);
}

#[tokio::test]
async fn client_disconnect_cancels_the_upstream() {
    let h = start().await;
    let response = h
        .chat(stream_request(false))
        .header("x-mock-chunks", "50")
        .header("x-mock-chunk-delay-ms", "100")
        .send()
        .await
        .unwrap();
    let mut events = EventReader::new(response);
    events.next_data().await.unwrap();
    drop(events);
    assert!(
        eventually(|| h.mock.stats().streams_aborted == 1).await,
        "upstream still streaming after the client left: {:?}",
        h.mock.stats()
    );
    assert_eq!(h.mock.stats().streams_completed, 0);
}

async fn last_payloads(h: &Harness, header: (&str, &str)) -> Vec<String> {
    let response = h
        .chat(stream_request(true))
        .header("x-mock-chunks", "6")
        .header(header.0, header.1)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    sse_payloads(response).await
}

#[tokio::test]
async fn upstream_cut_mid_stream_ends_with_an_error_event() {
    let h = start().await;
    let payloads = last_payloads(&h, ("x-mock-cut-after", "2")).await;
    assert!(
        !payloads.iter().any(|p| p == "[DONE]"),
        "fake [DONE] after a cut: {payloads:?}"
    );
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_openai_error(&last, "upstream_stream_error");
    for payload in &payloads[..payloads.len() - 1] {
        let chunk: Value = serde_json::from_str(payload).expect("a half event reached the client");
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }
}

#[tokio::test]
async fn stalled_stream_ends_at_the_idle_timeout() {
    let h = start().await;
    let started = std::time::Instant::now();
    let payloads = last_payloads(&h, ("x-mock-stall-after", "2")).await;
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_openai_error(&last, "upstream_timeout");
    assert!(!payloads.iter().any(|p| p == "[DONE]"));
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(eventually(|| h.mock.stats().streams_aborted == 1).await);
}

/// An HTTP/1.1 upstream that answers one chunked event stream of `events` content chunks, each
/// its own HTTP chunk, all in one write (a burst, as a fast model's events arrive).
async fn bursting_upstream(events: usize) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 65536];
        let _ = socket.read(&mut request).await;
        let mut out = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let mut chunk = |payload: String| {
            out.extend_from_slice(format!("{:x}\r\n{payload}\r\n", payload.len()).as_bytes());
        };
        for n in 0..events {
            let event = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": {"content": format!("w{n} ")}, "finish_reason": null}]});
            chunk(format!("data: {event}\n\n"));
        }
        let usage = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": events, "total_tokens": 3 + events}});
        chunk(format!("data: {usage}\n\n"));
        chunk("data: [DONE]\n\n".to_owned());
        out.extend_from_slice(b"0\r\n\r\n");
        socket.write_all(&out).await.unwrap();
        let _ = socket.read(&mut request).await;
    });
    addr
}

#[tokio::test]
async fn a_burst_of_upstream_events_goes_to_the_client_in_few_writes() {
    let upstream = bursting_upstream(60).await;
    let yaml = config_yaml(&format!("http://{upstream}/v1"), "");
    let config = shepherd::config::load_str(&yaml, "test.yaml", &|_| None).unwrap();
    let server = shepherd::server::start(config).await.unwrap();
    let mut response = test_client()
        .post(format!("http://{}/v1/chat/completions", server.addr))
        .bearer_auth(CLIENT_KEY)
        .header("content-type", "application/json")
        .body(stream_request(false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Each HTTP chunk the client reads is one write of the gateway's.
    let (mut writes, mut body) = (0, Vec::<u8>::new());
    while let Some(piece) = response.chunk().await.unwrap() {
        writes += 1;
        body.extend_from_slice(&piece);
    }
    let text = String::from_utf8(body).unwrap();
    assert_eq!(text.matches("\"content\":\"w").count(), 60, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "the usage chunk is still hidden"
    );
    assert!(
        writes <= 6,
        "62 events read at once went out in {writes} writes (one each before)"
    );
}
