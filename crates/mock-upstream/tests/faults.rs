//! Black-box tests of fault injection across protocols: error shapes per route, the OpenAI side
//! of the newer behaviours, and the control API with them.

#![cfg(test)]

mod common;

use common::{client, json_of, post, read_stream, sse_events};
use mock_upstream::{Behavior, MockUpstream};
use serde_json::{Value, json};

fn chat(stream: bool) -> Value {
    json!({"model": "mock-gpt", "messages": [{"role": "user", "content": "a b c d"}],
           "stream": stream, "stream_options": {"include_usage": true}})
}

#[tokio::test]
async fn injected_errors_take_the_shape_of_the_route() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_behavior(Behavior {
        status: Some(429),
        ..Behavior::default()
    });
    let c = client();
    let openai = json_of(
        post(
            &c,
            format!("{}/chat/completions", mock.base_url()),
            &chat(false),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(openai["error"]["code"], "rate_limit_exceeded");
    let anthropic =
        json_of(post(&c, format!("{}/messages", mock.base_url()), &json!({}), &[]).await).await;
    assert_eq!(anthropic["type"], "error");
    assert_eq!(anthropic["error"]["type"], "rate_limit_error");
    let gemini = json_of(
        post(
            &c,
            format!("{}/v1beta/models/g:generateContent", mock.url()),
            &json!({}),
            &[],
        )
        .await,
    )
    .await;
    assert_eq!(gemini["error"]["code"], 429);
    assert_eq!(gemini["error"]["status"], "RESOURCE_EXHAUSTED");

    // An invalid x-mock-* header is a 400 in the route's shape too.
    mock.reset();
    let resp = post(
        &c,
        format!("{}/messages", mock.base_url()),
        &json!({}),
        &[("x-mock-chunks", "x")],
    )
    .await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        json_of(resp).await["error"]["type"],
        "invalid_request_error"
    );
}

#[tokio::test]
async fn openai_stream_error_cache_and_finish_reason() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let url = format!("{}/chat/completions", mock.base_url());
    let (text, failed) = read_stream(
        post(
            &c,
            url.clone(),
            &chat(true),
            &[("x-mock-stream-error-after", "1")],
        )
        .await,
    )
    .await;
    assert!(!failed);
    let events = sse_events(&text);
    // role chunk, one content chunk, the error; no finish chunk and no [DONE].
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[2].1["error"]["type"], "server_error");
    assert!(!text.contains("[DONE]"));
    assert_eq!(mock.stats().streams_completed, 1);

    // A cut at the same chunk wins over the error.
    let (text, failed) = read_stream(
        post(
            &c,
            url.clone(),
            &chat(true),
            &[
                ("x-mock-stream-error-after", "1"),
                ("x-mock-cut-after", "1"),
            ],
        )
        .await,
    )
    .await;
    assert!(failed);
    assert!(!text.contains("\"error\""));

    let body = json_of(
        post(
            &c,
            url.clone(),
            &chat(false),
            &[
                ("x-mock-cache-read-tokens", "5"),
                ("x-mock-finish-reason", "length"),
            ],
        )
        .await,
    )
    .await;
    assert_eq!(body["usage"]["prompt_tokens"], 8 + 5);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    // Without them the usage is unchanged.
    let body = json_of(post(&c, url, &chat(false), &[]).await).await;
    assert!(body["usage"].get("prompt_tokens_details").is_none());
}

#[tokio::test]
async fn control_api_accepts_the_new_fields() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let fields = json!({"stream_error_after": 2, "cache_read_tokens": 3,
                        "finish_reason": "SAFETY", "thoughts_tokens": 4});
    let resp = post(&c, format!("{}/_mock/behavior", mock.url()), &fields, &[]).await;
    assert_eq!(resp.status(), 200);
    let echoed = json_of(resp).await;
    for (k, v) in fields.as_object().unwrap() {
        assert_eq!(&echoed[k], v);
    }
    assert_eq!(mock.state().behavior().stream_error_after, Some(2));
    let resp = post(
        &c,
        format!("{}/_mock/behavior", mock.url()),
        &json!({"finish_reason": 1}),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 400);
}
