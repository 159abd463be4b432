//! Black-box tests of the Gemini generateContent routes.

#![cfg(test)]

mod common;

use common::{client, json_of, post, read_stream, sse_events};
use mock_upstream::MockUpstream;
use serde_json::{Value, json};

const KEY: (&str, &str) = ("x-goog-api-key", "AIza-test");

fn request(text: &str) -> Value {
    json!({
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": {"temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]},
    })
}

fn weather_request() -> Value {
    json!({
        "contents": [{"role": "user", "parts": [{"text": "weather in Paris?"}]}],
        "tools": [{"functionDeclarations": [
            {"name": "get_weather", "parametersJsonSchema": {"type": "object"}},
            {"name": "other"},
        ]}],
        "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    })
}

fn url(mock: &MockUpstream, method: &str) -> String {
    format!("{}/v1beta/models/gemini-mock:{method}", mock.url())
}

async fn generate(
    mock: &MockUpstream,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    post(&client(), url(mock, "generateContent"), body, headers).await
}

async fn stream(mock: &MockUpstream, body: &Value, headers: &[(&str, &str)]) -> (String, bool) {
    let resp = post(
        &client(),
        url(mock, "streamGenerateContent?alt=sse"),
        body,
        headers,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    read_stream(resp).await
}

fn chunk_text(chunk: &Value) -> &str {
    chunk["candidates"][0]["content"]["parts"][0]["text"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn non_stream_shape_and_auth_recording() {
    let mock = MockUpstream::start().await.unwrap();
    let resp = generate(&mock, &request("hello there"), &[KEY]).await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(
        body["candidates"],
        json!([{"content": {"role": "model", "parts": [{"text": "Mock reply to: hello there"}]},
                "finishReason": "STOP", "index": 0}])
    );
    assert_eq!(
        body["usageMetadata"],
        json!({"promptTokenCount": 12, "candidatesTokenCount": 5, "totalTokenCount": 17})
    );
    assert_eq!(body["modelVersion"], "gemini-mock");
    assert!(body["responseId"].as_str().unwrap().starts_with("mock-"));
    assert_eq!(
        mock.requests()[0].header("x-goog-api-key"),
        Some("AIza-test")
    );

    // Key in the query, /v1 path, snake_case keys, no role, cache and thoughts usage.
    let req = json!({"contents": [{"parts": [{"text": "hi"}]}],
                     "generation_config": {"max_output_tokens": 50}});
    let resp = post(
        &client(),
        format!("{}/v1/models/g:generateContent?key=AIza-q", mock.url()),
        &req,
        &[
            ("x-mock-cache-read-tokens", "3"),
            ("x-mock-thoughts-tokens", "8"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = json_of(resp).await;
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0]["text"],
        "Mock reply to: hi"
    );
    assert_eq!(
        body["usageMetadata"],
        json!({"promptTokenCount": 8, "candidatesTokenCount": 4, "totalTokenCount": 20,
               "cachedContentTokenCount": 3, "thoughtsTokenCount": 8})
    );
    assert_eq!(
        mock.requests()[1].path,
        "/v1/models/g:generateContent?key=AIza-q"
    );

    let resp = post(&client(), url(&mock, "countTokens"), &request("a b"), &[]).await;
    assert_eq!(json_of(resp).await, json!({"totalTokens": 12}));
}

#[tokio::test]
async fn function_calls_both_ways() {
    let mock = MockUpstream::start().await.unwrap();
    let body = json_of(generate(&mock, &weather_request(), &[]).await).await;
    let candidate = &body["candidates"][0];
    assert_eq!(
        candidate["content"]["parts"],
        json!([{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}])
    );
    assert_eq!(candidate["finishReason"], "STOP");

    let (text, failed) = stream(&mock, &weather_request(), &[]).await;
    assert!(!failed);
    let events = sse_events(&text);
    assert_eq!(events.len(), 1, "{text}");
    let chunk = &events[0].1;
    assert_eq!(
        chunk["candidates"][0]["content"]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );
    assert_eq!(chunk["candidates"][0]["finishReason"], "STOP");
    assert!(chunk["usageMetadata"]["totalTokenCount"].is_u64());

    // The function response turn gets a text reply echoing the result.
    let mut req = weather_request();
    req["contents"] = json!([
        {"role": "user", "parts": [{"text": "weather in Paris?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                          "response": {"result": "sunny"}}}]},
    ]);
    let body = json_of(generate(&mock, &req, &[]).await).await;
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0]["text"],
        "Mock reply to: sunny"
    );
}

#[tokio::test]
async fn truncation_finish_reasons_and_candidates() {
    let mock = MockUpstream::start().await.unwrap();
    let mut req = request("one two three");
    req["generationConfig"]["maxOutputTokens"] = json!(2);
    let body = json_of(generate(&mock, &req, &[]).await).await;
    assert_eq!(
        body["candidates"][0]["content"]["parts"][0]["text"],
        "Mock reply"
    );
    assert_eq!(body["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 2);

    let body =
        json_of(generate(&mock, &request("x"), &[("x-mock-finish-reason", "SAFETY")]).await).await;
    assert_eq!(body["candidates"][0]["finishReason"], "SAFETY");

    let mut req = request("x");
    req["generationConfig"]["candidateCount"] = json!(2);
    let body = json_of(generate(&mock, &req, &[]).await).await;
    assert_eq!(body["candidates"][1]["index"], 1);
    assert_eq!(body["usageMetadata"]["candidatesTokenCount"], 8);
}

#[tokio::test]
async fn sse_and_array_streams() {
    let mock = MockUpstream::start().await.unwrap();
    let (text, failed) = stream(&mock, &request("a b c d e f"), &[]).await;
    assert!(!failed);
    assert!(!text.contains("[DONE]"));
    let events = sse_events(&text);
    assert_eq!(events.len(), 4);
    let joined: String = events.iter().map(|(_, c)| chunk_text(c)).collect();
    assert_eq!(joined, "Mock reply to: a b c d e f");
    for (i, (name, chunk)) in events.iter().enumerate() {
        assert_eq!(name, "");
        assert_eq!(chunk["candidates"][0]["content"]["role"], "model");
        assert_eq!(chunk["modelVersion"], "gemini-mock");
        let last = i == 3;
        assert_eq!(chunk["candidates"][0].get("finishReason").is_some(), last);
        assert_eq!(chunk.get("usageMetadata").is_some(), last);
    }
    assert_eq!(events[3].1["candidates"][0]["finishReason"], "STOP");
    assert_eq!(events[3].1["usageMetadata"]["candidatesTokenCount"], 9);

    // Without alt=sse: one JSON array, also when an error element ends it.
    for (headers, len) in [
        (vec![("x-mock-chunks", "3")], 3),
        (vec![("x-mock-stream-error-after", "0")], 1),
        (vec![("x-mock-stream-error-after", "2")], 3),
    ] {
        let resp = post(
            &client(),
            url(&mock, "streamGenerateContent"),
            &request("x y z"),
            &headers,
        )
        .await;
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = json_of(resp).await;
        let items = body.as_array().unwrap();
        assert_eq!(items.len(), len, "{body}");
        assert_eq!(
            items.last().unwrap().get("error").is_some(),
            headers[0].0 != "x-mock-chunks"
        );
    }
}

#[tokio::test]
async fn errors_have_google_shape() {
    let mock = MockUpstream::start().await.unwrap();
    for (status, name) in [
        ("400", "INVALID_ARGUMENT"),
        ("401", "UNAUTHENTICATED"),
        ("403", "PERMISSION_DENIED"),
        ("404", "NOT_FOUND"),
        ("429", "RESOURCE_EXHAUSTED"),
        ("500", "INTERNAL"),
        ("503", "UNAVAILABLE"),
        ("504", "DEADLINE_EXCEEDED"),
    ] {
        let resp = generate(
            &mock,
            &request("x"),
            &[("x-mock-status", status), ("x-mock-retry-after", "7")],
        )
        .await;
        assert_eq!(resp.status().as_str(), status);
        let body = json_of(resp).await;
        assert_eq!(body["error"]["code"].to_string(), status);
        assert_eq!(body["error"]["status"], name);
        assert!(body["error"]["message"].is_string());
        if status == "429" {
            assert_eq!(body["error"]["details"][0]["retryDelay"], "7s");
        }
    }
    // echo_key echoes the query key.
    let resp = post(
        &client(),
        format!("{}?key=AIza-bad", url(&mock, "generateContent")),
        &request("x"),
        &[("x-mock-echo-key", "true")],
    )
    .await;
    assert_eq!(resp.status(), 401);
    let body = json_of(resp).await;
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("AIza-bad")
    );

    for bad in [
        json!({}),
        json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}),
        json!({"contents": [{"role": "user", "parts": []}]}),
        json!({"contents": [{"parts": [{"text": "x"}]}], "max_tokens": 5}),
        json!({"contents": [{"parts": [{"inlineData": {"data": "AA=="}}]}]}),
    ] {
        let resp = generate(&mock, &bad, &[]).await;
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(json_of(resp).await["error"]["status"], "INVALID_ARGUMENT");
    }
    let resp = post(&client(), url(&mock, "embedSomething"), &request("x"), &[]).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(json_of(resp).await["error"]["status"], "NOT_FOUND");
}

#[tokio::test]
async fn stream_faults() {
    let mock = MockUpstream::start().await.unwrap();
    let (text, failed) = stream(
        &mock,
        &request("a b c d"),
        &[("x-mock-stream-error-after", "1")],
    )
    .await;
    assert!(!failed);
    let events = sse_events(&text);
    assert_eq!(events.len(), 2);
    assert_eq!(chunk_text(&events[0].1), "Mock");
    assert_eq!(events[1].1["error"]["status"], "UNAVAILABLE");
    assert_eq!(events[1].1["error"]["code"], 503);

    let (text, failed) = stream(&mock, &request("a b c d"), &[("x-mock-cut-after", "2")]).await;
    assert!(failed);
    let events = sse_events(&text);
    assert_eq!(events.len(), 2);
    assert!(!text.contains("finishReason"));

    let (text, _) = stream(&mock, &request("x"), &[("x-mock-malformed", "1")]).await;
    assert!(text.starts_with("data: {not json"));
    let resp = generate(&mock, &request("x"), &[("x-mock-malformed", "1")]).await;
    assert!(serde_json::from_slice::<Value>(&resp.bytes().await.unwrap()).is_err());
}
