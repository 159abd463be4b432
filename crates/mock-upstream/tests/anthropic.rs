//! Black-box tests of the Anthropic Messages routes.

#![cfg(test)]

mod common;

use common::{client, json_of, post, read_stream, sse_events};
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

const AUTH: [(&str, &str); 2] = [
    ("x-api-key", "sk-ant-test"),
    ("anthropic-version", "2023-06-01"),
];

fn request(content: &str, stream: bool) -> Value {
    json!({
        "model": "claude-mock",
        "max_tokens": 100,
        "system": "be brief",
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    })
}

fn weather_request(stream: bool) -> Value {
    json!({
        "model": "claude-mock",
        "max_tokens": 100,
        "tools": [
            {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}},
            {"name": "other", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "auto"},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What's the weather?"}]}],
        "stream": stream,
    })
}

async fn send(mock: &MockUpstream, body: &Value, extra: &[(&str, &str)]) -> reqwest::Response {
    let mut headers = AUTH.to_vec();
    headers.extend_from_slice(extra);
    post(
        &client(),
        format!("{}/messages", mock.base_url()),
        body,
        &headers,
    )
    .await
}

fn names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn non_stream_message_shape_and_recording() {
    let mock = MockUpstream::start().await.unwrap();
    let resp = send(&mock, &request("hello there", false), &[]).await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert!(body["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-mock");
    assert_eq!(
        body["content"],
        json!([{"type": "text", "text": "Mock reply to: hello there"}])
    );
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    // (2 + 4) system + (2 + 4) user, 5 reply words: the OpenAI counts.
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 12, "output_tokens": 5,
               "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0})
    );

    let recorded = mock.requests();
    assert_eq!(recorded[0].path, "/v1/messages");
    assert_eq!(recorded[0].header("x-api-key"), Some("sk-ant-test"));
    assert_eq!(recorded[0].header("anthropic-version"), Some("2023-06-01"));

    // Without /v1, blocks content, system blocks, a prefilled final assistant turn, cache usage.
    let req = json!({
        "model": "m",
        "max_tokens": 10,
        "system": [{"type": "text", "text": "a b"}],
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}},
                {"type": "text", "text": "describe it"},
            ]},
            {"role": "assistant", "content": ""},
        ],
    });
    let resp = post(
        &client(),
        format!("{}/messages", mock.url()),
        &req,
        &[AUTH[0], AUTH[1], ("x-mock-cache-read-tokens", "7")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(body["content"][0]["text"], "Mock reply to: describe it");
    assert_eq!(body["usage"]["cache_read_input_tokens"], 7);
    assert_eq!(body["usage"]["input_tokens"], 6 + 6 + 4);
}

#[tokio::test]
async fn requests_are_validated_like_the_real_api() {
    let mock = MockUpstream::start().await.unwrap();
    let url = format!("{}/messages", mock.base_url());
    let check = |resp: reqwest::Response, status: u16| async move {
        assert_eq!(resp.status(), status);
        let body = json_of(resp).await;
        assert_eq!(body["type"], "error");
        body["error"].clone()
    };
    let err = check(
        post(&client(), url.clone(), &request("x", false), &[AUTH[0]]).await,
        400,
    )
    .await;
    assert_eq!(err["type"], "invalid_request_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("anthropic-version")
    );

    let mut no_max = request("x", false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let err = check(send(&mock, &no_max, &[]).await, 400).await;
    assert_eq!(err["message"], "max_tokens: Field required");

    for bad in [
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": ""}]}),
        json!({"model": "m", "max_tokens": 5, "messages": []}),
        json!({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
               "tools": [{"name": "f"}]}),
        json!({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    ] {
        let err = check(send(&mock, &bad, &[]).await, 400).await;
        assert_eq!(err["type"], "invalid_request_error", "{bad}");
    }
    let mut bad_json = client().post(url).body("{not json");
    for (name, value) in AUTH {
        bad_json = bad_json.header(name, value);
    }
    let resp = bad_json.send().await.unwrap();
    check(resp, 400).await;

    // count_tokens needs no max_tokens.
    let resp = post(
        &client(),
        format!("{}/messages/count_tokens", mock.base_url()),
        &json!({"model": "m", "messages": [{"role": "user", "content": "a b c"}]}),
        &AUTH,
    )
    .await;
    assert_eq!(json_of(resp).await, json!({"input_tokens": 7}));
}

#[tokio::test]
async fn max_tokens_truncates_the_reply() {
    let mock = MockUpstream::start().await.unwrap();
    let mut req = request("one two three", false);
    req["max_tokens"] = json!(2);
    let body = json_of(send(&mock, &req, &[]).await).await;
    assert_eq!(body["content"][0]["text"], "Mock reply");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["output_tokens"], 2);

    req["stream"] = json!(true);
    let (text, failed) = read_stream(send(&mock, &req, &[]).await).await;
    assert!(!failed);
    let events = sse_events(&text);
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "Mock reply");
    let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 2);
}

#[tokio::test]
async fn stream_events_in_order() {
    let mock = MockUpstream::start().await.unwrap();
    let resp = send(
        &mock,
        &request("a b c d e f", true),
        &[("x-mock-chunk-delay-ms", "1")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let (text, failed) = read_stream(resp).await;
    assert!(!failed);
    let events = sse_events(&text);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let start = &events[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_mock_"));
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    assert_eq!(start["usage"]["input_tokens"], 16);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    let text: String = events[3..7]
        .iter()
        .map(|(_, d)| {
            assert_eq!(d["index"], 0);
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, "Mock reply to: a b c d e f");
    assert_eq!(events[7].1["index"], 0);
    assert_eq!(
        events[8].1,
        json!({"type": "message_delta",
               "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": 9}})
    );
    assert_eq!(mock.stats().streams_completed, 1);
}

#[tokio::test]
async fn tool_use_both_ways() {
    let mock = MockUpstream::start().await.unwrap();
    let body = json_of(send(&mock, &weather_request(false), &[]).await).await;
    assert_eq!(
        body["content"],
        json!([{"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather",
                "input": {"location": "Paris"}}])
    );
    assert_eq!(body["stop_reason"], "tool_use");

    let (text, failed) = read_stream(send(&mock, &weather_request(true), &[]).await).await;
    assert!(!failed);
    let events = sse_events(&text);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "tool_use", "id": "toolu_mock_1", "name": "get_weather", "input": {}})
    );
    let pieces: Vec<&str> = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap()
        })
        .collect();
    assert!(pieces.len() >= 2);
    assert_eq!(pieces.concat(), r#"{"location":"Paris"}"#);
    let last = names(&events);
    assert_eq!(
        &last[last.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert_eq!(
        events[events.len() - 2].1["delta"]["stop_reason"],
        "tool_use"
    );

    // The tool result turn gets a text reply echoing the result.
    let mut req = weather_request(false);
    req["messages"] = json!([
        {"role": "user", "content": "What's the weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_mock_1",
                                           "name": "get_weather", "input": {"location": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock_1",
                                      "content": "sunny"}]},
    ]);
    let body = json_of(send(&mock, &req, &[]).await).await;
    assert_eq!(body["content"][0]["text"], "Mock reply to: sunny");
    assert_eq!(body["stop_reason"], "end_turn");
}

#[tokio::test]
async fn injected_errors_have_anthropic_shape() {
    let mock = MockUpstream::start().await.unwrap();
    for (status, kind) in [
        ("400", "invalid_request_error"),
        ("401", "authentication_error"),
        ("403", "permission_error"),
        ("404", "not_found_error"),
        ("413", "request_too_large"),
        ("429", "rate_limit_error"),
        ("500", "api_error"),
        ("529", "overloaded_error"),
    ] {
        let resp = send(
            &mock,
            &request("x", false),
            &[("x-mock-status", status), ("x-mock-retry-after", "2")],
        )
        .await;
        assert_eq!(resp.status().as_str(), status);
        assert_eq!(resp.headers()["retry-after"], "2");
        let body = json_of(resp).await;
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], kind);
        assert!(body["error"]["message"].is_string());
    }
    let resp = send(&mock, &request("x", false), &[("x-mock-echo-key", "1")]).await;
    assert_eq!(resp.status(), 401);
    let body = json_of(resp).await;
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sk-ant-test")
    );

    let resp = post(
        &client(),
        format!("{}/messages/nope", mock.base_url()),
        &json!({}),
        &AUTH,
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(json_of(resp).await["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn stream_faults() {
    let mock = MockUpstream::start().await.unwrap();
    // An error event after two deltas, then a clean end.
    let resp = send(
        &mock,
        &request("a b c d", true),
        &[("x-mock-stream-error-after", "2")],
    )
    .await;
    let (text, failed) = read_stream(resp).await;
    assert!(!failed);
    let events = sse_events(&text);
    assert_eq!(
        names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        events[5].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );

    // Cut after two deltas: the connection fails, no message_stop.
    let resp = send(
        &mock,
        &request("a b c d", true),
        &[("x-mock-cut-after", "2")],
    )
    .await;
    let (text, failed) = read_stream(resp).await;
    assert!(failed);
    assert_eq!(text.matches("event: content_block_delta").count(), 2);
    assert!(!text.contains("message_stop"));

    // Malformed: broken JSON, or a broken event.
    let resp = send(&mock, &request("x", false), &[("x-mock-malformed", "1")]).await;
    assert_eq!(resp.status(), 200);
    assert!(serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).is_err());
    let resp = send(&mock, &request("x", true), &[("x-mock-malformed", "1")]).await;
    let (text, _) = read_stream(resp).await;
    assert!(text.starts_with("event: message_start\ndata: {not json"));
}
