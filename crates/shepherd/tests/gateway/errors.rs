//! Every error a client can meet on the OpenAI routes: status and the exact JSON shape.

use serde_json::json;

use crate::common::*;

const CHAT: &str = "/v1/chat/completions";

async fn expect(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(response.headers().contains_key("x-request-id"));
    let body = json_of(response).await;
    assert_openai_error(&body, code);
    body
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let h = start().await;
    expect(
        h.post(CHAT, "{not json").send().await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    expect(
        h.post(CHAT, "[1,2]").send().await.unwrap(),
        400,
        "invalid_json",
    )
    .await;
    let body = expect(
        h.post(CHAT, r#"{"messages":[]}"#).send().await.unwrap(),
        400,
        "missing_required_parameter",
    )
    .await;
    assert_eq!(body["error"]["param"], "model");
    let body = expect(
        h.post(CHAT, r#"{"model":42,"messages":[]}"#)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_type",
    )
    .await;
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'model'")
    );
    let body = expect(
        h.post(CHAT, r#"{"model":"gpt-4.1","stream":"yes","messages":[]}"#)
            .send()
            .await
            .unwrap(),
        400,
        "invalid_type",
    )
    .await;
    assert_eq!(body["error"]["param"], "stream");
    assert!(
        h.mock.requests().is_empty(),
        "bad requests must not reach the upstream"
    );
}

#[tokio::test]
async fn keys_and_models() {
    let h = start().await;
    let body = json!({"model": "gpt-4.1", "messages": []}).to_string();
    let no_key = h
        .client
        .post(h.url(CHAT))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    expect(no_key, 401, "missing_api_key").await;
    let wrong_key = h
        .client
        .post(h.url(CHAT))
        .bearer_auth("sk-nope")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let error = expect(wrong_key, 401, "invalid_api_key").await;
    assert!(!error.to_string().contains("sk-nope"));
    let limited = h
        .client
        .post(h.url(CHAT))
        .bearer_auth(LIMITED_KEY)
        .body(body)
        .send()
        .await
        .unwrap();
    let error = expect(limited, 403, "model_not_allowed").await;
    assert_eq!(error["error"]["param"], "model");
    let unknown = h
        .chat(json!({"model": "gpt-9", "messages": []}))
        .send()
        .await
        .unwrap();
    expect(unknown, 404, "model_not_found").await;
    let models_without_key = h.client.get(h.url("/v1/models")).send().await.unwrap();
    expect(models_without_key, 401, "missing_api_key").await;
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn routes_methods_and_size() {
    let h = start().await;
    expect(
        h.client.get(h.url("/v1/nothing")).send().await.unwrap(),
        404,
        "unknown_url",
    )
    .await;
    expect(
        h.client.get(h.url(CHAT)).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
    let huge = json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "x".repeat(70 * 1024)}]});
    expect(
        h.chat(huge.clone()).send().await.unwrap(),
        413,
        "request_too_large",
    )
    .await;
    // Without Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(huge.to_string())];
    let chunked = h
        .client
        .post(h.url(CHAT))
        .bearer_auth(CLIENT_KEY)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    expect(chunked, 413, "request_too_large").await;
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn upstream_failures() {
    let h = start().await;
    let chat = json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]});
    let dead = h
        .chat(json!({"model": "gpt-dead", "messages": []}))
        .send()
        .await
        .unwrap();
    expect(dead, 502, "upstream_unreachable").await;
    let garbage = h
        .chat(chat.clone())
        .header("x-mock-malformed", "1")
        .send()
        .await
        .unwrap();
    expect(garbage, 502, "upstream_bad_response").await;
    let slow = h
        .chat(chat.clone())
        .header("x-mock-latency-ms", "3000")
        .send()
        .await
        .unwrap();
    expect(slow, 504, "upstream_timeout").await;
    let slow_stream = h
        .chat(json!({"model": "gpt-4.1", "stream": true, "messages": []}))
        .header("x-mock-latency-ms", "3000")
        .send()
        .await
        .unwrap();
    expect(slow_stream, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn upstream_4xx_passes_through_with_keys_redacted() {
    let h = start().await;
    let chat = json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]});
    let response = h
        .chat(chat.clone())
        .header("x-mock-status", "403")
        .header("x-mock-echo-key", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let text = response.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY), "upstream key leaked: {text}");
    assert!(text.contains("[REDACTED]"), "{text}");
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(body["error"]["message"].is_string());

    // A refused upstream key is the gateway's problem, not the client's: 502, and no key.
    let refused = h
        .chat(chat.clone())
        .header("x-mock-status", "401")
        .header("x-mock-echo-key", "1")
        .send()
        .await
        .unwrap();
    let body = expect(refused, 502, "upstream_auth_failed").await;
    assert!(!body.to_string().contains(UPSTREAM_KEY), "{body}");

    let unprocessable = h
        .chat(chat.clone())
        .header("x-mock-status", "422")
        .send()
        .await
        .unwrap();
    assert_eq!(unprocessable.status(), 422);
    assert!(json_of(unprocessable).await["error"]["message"].is_string());
    let limited = h
        .chat(chat)
        .header("x-mock-status", "429")
        .header("x-mock-retry-after", "7")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "7");
}
