//! Black-box tests of the mock over real HTTP (HTTP/1.1 and h2c).

#![cfg(test)]

use std::time::Duration;

use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client builds")
}

async fn post(
    client: &reqwest::Client,
    url: String,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("request sent")
}

async fn json_of(resp: reqwest::Response) -> Value {
    let bytes = resp.bytes().await.expect("body read");
    serde_json::from_slice(&bytes).expect("body is JSON")
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<&str> {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect()
}

/// Reads a streaming body until it ends or fails; returns the text and whether it failed.
async fn read_stream(mut resp: reqwest::Response) -> (String, bool) {
    let mut text = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => text.extend_from_slice(&chunk),
            Ok(None) => return (String::from_utf8(text).expect("utf-8"), false),
            Err(_) => return (String::from_utf8(text).expect("utf-8"), true),
        }
    }
}

fn chat_request(content: &str, stream: bool) -> Value {
    json!({
        "model": "mock-gpt",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content},
        ],
        "stream": stream,
    })
}

#[tokio::test]
async fn non_stream_chat_has_openai_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let resp = post(
        &client(),
        format!("{}/chat/completions", mock.base_url()),
        &chat_request("hello there", false),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let body = json_of(resp).await;
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "mock-gpt");
    assert_eq!(body["system_fingerprint"], "fp_mock");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert_eq!(choice["message"]["content"], "Mock reply to: hello there");
    // (2 + 4) + (2 + 4) prompt tokens, 5 reply words.
    assert_eq!(body["usage"]["prompt_tokens"], 12);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 17);
    assert_eq!(body["x_mock_extra"]["kept"], true);

    // Without the /v1 prefix too.
    let resp = post(
        &client(),
        format!("{}/chat/completions", mock.url()),
        &chat_request("hi", false),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn stream_ends_with_done_and_usage_when_asked() {
    let mock = MockUpstream::start().await.unwrap();
    let mut req = chat_request("one two three four five six seven eight", true);
    req["stream_options"] = json!({"include_usage": true});
    let resp = post(
        &client(),
        format!("{}/chat/completions", mock.base_url()),
        &req,
        &[("x-mock-chunks", "3")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let (body, failed) = read_stream(resp).await;
    assert!(!failed);
    let events = sse_data(&body);
    // role chunk + 3 content chunks + finish chunk + usage chunk + [DONE]
    assert_eq!(events.len(), 7, "{body}");
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..6]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks[1..4]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        content,
        "Mock reply to: one two three four five six seven eight"
    );
    assert_eq!(chunks[4]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    for chunk in &chunks[..5] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["usage"], Value::Null);
        assert!(chunk.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 11);

    let stats = mock.stats();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_completed, 1);
    assert_eq!(stats.streams_aborted, 0);
}

#[tokio::test]
async fn stream_over_h2c_without_usage() {
    let mock = MockUpstream::start().await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = post(
        &client,
        format!("{}/chat/completions", mock.base_url()),
        &chat_request("hi", true),
        &[("x-mock-chunks", "6"), ("x-mock-chunk-delay-ms", "5")],
    )
    .await;
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let (body, failed) = read_stream(resp).await;
    assert!(!failed);
    let events = sse_data(&body);
    assert_eq!(events.len(), 1 + 6 + 1 + 1, "{body}");
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert!(!first.as_object().unwrap().contains_key("usage"));
    for event in &events[1..7] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(
            !chunk["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn cut_after_aborts_without_done() {
    let mock = MockUpstream::start().await.unwrap();
    let resp = post(
        &client(),
        format!("{}/chat/completions", mock.base_url()),
        &chat_request("hello", true),
        &[("x-mock-cut-after", "2")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (body, failed) = read_stream(resp).await;
    assert!(failed, "the body should end with an error: {body}");
    assert!(!body.contains("[DONE]"));
    assert!(!body.contains("finish_reason\":\"stop"));
    // role chunk + 2 content chunks
    assert_eq!(sse_data(&body).len(), 3, "{body}");
    let stats = mock.stats();
    assert_eq!(stats.streams_completed, 0);
    assert_eq!(stats.streams_aborted, 0);
}

#[tokio::test]
async fn requests_are_recorded_with_headers() {
    let mock = MockUpstream::start().await.unwrap();
    let req = chat_request("record me", false);
    let resp = post(
        &client(),
        format!("{}/chat/completions?x=1", mock.base_url()),
        &req,
        &[("authorization", "Bearer sk-test"), ("X-Custom", "yes")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    let r = &recorded[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/chat/completions?x=1");
    assert_eq!(r.header("x-custom"), Some("yes"));
    assert_eq!(r.header("Authorization"), Some("Bearer sk-test"));
    assert!(r.headers.iter().any(|(name, _)| name == "x-custom"));
    assert_eq!(r.json(), Some(req));

    // The control API sees the same thing and is not recorded itself.
    let list = json_of(
        client()
            .get(format!("{}/_mock/requests", mock.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list[0]["headers"]["x-custom"], "yes");
    assert_eq!(list[0]["method"], "POST");
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(mock.stats().requests, 1);

    mock.reset();
    assert!(mock.requests().is_empty());
    assert_eq!(mock.stats(), mock_upstream::Stats::default());
}

#[tokio::test]
async fn status_429_with_retry_after() {
    let mock = MockUpstream::start().await.unwrap();
    let resp = post(
        &client(),
        format!("{}/chat/completions", mock.base_url()),
        &chat_request("hi", false),
        &[("x-mock-status", "429"), ("x-mock-retry-after", "7")],
    )
    .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"].to_str().unwrap(), "7");
    let body = json_of(resp).await;
    assert_eq!(body["error"]["message"], "mock error 429");
    assert_eq!(body["error"]["type"], "requests");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["param"], Value::Null);

    // The same through the default behaviour, with the key echoed.
    mock.set_behavior(Behavior {
        status: Some(401),
        echo_key: true,
        ..Behavior::default()
    });
    let resp = post(
        &client(),
        format!("{}/chat/completions", mock.base_url()),
        &chat_request("hi", false),
        &[("authorization", "Bearer sk-secret-123")],
    )
    .await;
    assert_eq!(resp.status(), 401);
    let body = json_of(resp).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Incorrect API key provided: sk-secret-123.")
    );
    assert_eq!(body["error"]["code"], "invalid_api_key");
}

#[tokio::test]
async fn stats_count_a_stream_the_client_left() {
    let mock = MockUpstream::start().await.unwrap();
    let mut resp = post(
        &client(),
        format!("{}/chat/completions", mock.base_url()),
        &chat_request("hello", true),
        &[("x-mock-stall-after", "1")],
    )
    .await;
    let mut body = Vec::new();
    while sse_data(std::str::from_utf8(&body).unwrap()).len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("chunks arrive before the stall")
            .unwrap()
            .unwrap();
        body.extend_from_slice(&chunk);
    }
    // Nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), resp.chunk())
            .await
            .is_err()
    );
    assert_eq!(mock.stats().streams_aborted, 0);
    drop(resp);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mock.stats().streams_aborted == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", mock.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = mock.stats();
    assert_eq!(stats.streams_started, 1);
    assert_eq!(stats.streams_aborted, 1);
    assert_eq!(stats.streams_completed, 0);
}

#[tokio::test]
async fn tool_call_when_asked_about_weather() {
    let mock = MockUpstream::start().await.unwrap();
    let mut req = chat_request("What is the weather in Paris?", false);
    req["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]);
    let url = format!("{}/chat/completions", mock.base_url());
    let body = json_of(post(&client(), url.clone(), &req, &[]).await).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "call_mock_1");
    assert_eq!(call["function"]["name"], "lookup");
    assert_eq!(call["function"]["arguments"], r#"{"location":"Paris"}"#);

    req["stream"] = json!(true);
    let (body, _) = read_stream(post(&client(), url, &req, &[]).await).await;
    let chunks: Vec<Value> = sse_data(&body)
        .into_iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let first = &chunks[0]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(first["id"], "call_mock_1");
    assert_eq!(first["function"]["name"], "lookup");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"location":"Paris"}"#);
    assert!(chunks.len() >= 4);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
}

#[tokio::test]
async fn other_routes_and_faults() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();

    // Models.
    let models = json_of(
        c.get(format!("{}/models", mock.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "mock-gpt");

    // Embeddings, float and base64.
    let url = format!("{}/embeddings", mock.base_url());
    let req = json!({"model": "mock-embedding", "input": ["a b", "c"], "dimensions": 4});
    let body = json_of(post(&c, url.clone(), &req, &[]).await).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    let req = json!({"model": "m", "input": "a", "encoding_format": "base64"});
    let body = json_of(post(&c, url, &req, &[]).await).await;
    assert_eq!(body["data"][0]["embedding"].as_str().unwrap().len(), 44); // 32 bytes

    // Legacy completions.
    let url = format!("{}/completions", mock.base_url());
    let body = json_of(
        post(
            &c,
            url.clone(),
            &json!({"model": "m", "prompt": "say hi"}),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], "Mock reply to: say hi");
    let (text, _) = read_stream(
        post(
            &c,
            url,
            &json!({"model": "m", "prompt": "x", "stream": true}),
            &[],
        )
        .await,
    )
    .await;
    assert!(text.ends_with("data: [DONE]\n\n"));

    // Unknown route, bad JSON, malformed, raw body.
    let resp = post(&c, format!("{}/nope", mock.base_url()), &json!({}), &[]).await;
    assert_eq!(resp.status(), 404);
    assert!(json_of(resp).await["error"]["message"].is_string());
    let resp = c
        .post(format!("{}/chat/completions", mock.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        json_of(resp).await["error"]["type"],
        "invalid_request_error"
    );
    let url = format!("{}/chat/completions", mock.base_url());
    let resp = post(
        &c,
        url.clone(),
        &chat_request("x", false),
        &[("x-mock-malformed", "1")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).is_err());
    let (text, _) = read_stream(
        post(
            &c,
            url.clone(),
            &chat_request("x", true),
            &[("x-mock-malformed", "1")],
        )
        .await,
    )
    .await;
    assert!(text.starts_with("data: {not json"));
    let resp = post(
        &c,
        url.clone(),
        &chat_request("x", false),
        &[("x-mock-status", "503"), ("x-mock-body", r#"{"custom":1}"#)],
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert_eq!(json_of(resp).await, json!({"custom": 1}));

    // Control API: behaviour over HTTP, then reset.
    let resp = post(
        &c,
        format!("{}/_mock/behavior", mock.url()),
        &json!({"status": 500}),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let resp = post(&c, url.clone(), &chat_request("x", false), &[]).await;
    assert_eq!(resp.status(), 500);
    assert_eq!(json_of(resp).await["error"]["type"], "server_error");
    let resp = post(&c, format!("{}/_mock/reset", mock.url()), &json!({}), &[]).await;
    assert_eq!(resp.status(), 200);
    let resp = post(&c, url, &chat_request("x", false), &[]).await;
    assert_eq!(resp.status(), 200);
    let stats = json_of(
        c.get(format!("{}/_mock/stats", mock.url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(stats["requests"], 1);
}

#[tokio::test]
async fn latency_delays_the_headers() {
    let mock = MockUpstream::start().await.unwrap();
    let start = std::time::Instant::now();
    let resp = post(
        &client(),
        format!("{}/chat/completions", mock.base_url()),
        &chat_request("x", false),
        &[("x-mock-latency-ms", "150")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn cut_over_h2c_delivers_the_chunks_before_the_cut() {
    let mock = MockUpstream::start().await.unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for _ in 0..20 {
        let resp = post(
            &client,
            format!("{}/chat/completions", mock.base_url()),
            &chat_request("hello", true),
            &[("x-mock-cut-after", "1")],
        )
        .await;
        let (body, failed) = read_stream(resp).await;
        assert!(failed);
        assert_eq!(sse_data(&body).len(), 2, "{body}");
    }
}

#[tokio::test]
async fn counts_the_peak_of_requests_in_flight() {
    let mock = MockUpstream::start().await.expect("mock starts");
    let client = client();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    let url = format!("{}/chat/completions", mock.base_url());
    let slow = [("x-mock-latency-ms", "300")];
    let answers =
        futures_util::future::join_all((0..4).map(|_| post(&client, url.clone(), &body, &slow)))
            .await;
    assert!(answers.iter().all(|a| a.status() == 200));
    let stats = mock.stats();
    assert_eq!(stats.peak_in_flight, 4);
    assert_eq!(stats.in_flight, 0);
    post(&client, url, &body, &[]).await;
    assert_eq!(mock.stats().peak_in_flight, 4, "a peak, not the latest");
    mock.reset();
    assert_eq!(mock.stats().peak_in_flight, 0);
}
