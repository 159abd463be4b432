//! Stored Responses API answers: `previous_response_id` continues a conversation on any
//! upstream with the whole conversation sent, `GET`/`DELETE /v1/responses/{id}`, one key's
//! responses invisible to another, `store: false`, retention (expiry and `0s`), streams and
//! cached answers kept like any other.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::*;

/// `POST /v1/responses` with `body` as written.
async fn post(h: &Harness, key: &str, body: String) -> reqwest::Response {
    h.client
        .post(h.url("/v1/responses"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn respond(h: &Harness, key: &str, body: Value) -> (u16, Value) {
    let response = post(h, key, body.to_string()).await;
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

/// A streamed response read to its end: the `response.completed` event.
async fn streamed(h: &Harness, body: Value) -> Value {
    let events = sse_payloads(post(h, CLIENT_KEY, body.to_string()).await).await;
    let completed: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(completed["type"], "response.completed", "{events:?}");
    completed
}

async fn get(h: &Harness, key: &str, id: &str) -> (u16, Value) {
    let response = h
        .client
        .get(h.url(&format!("/v1/responses/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, json_of(response).await)
}

/// The user and assistant texts the upstream received, in order (OpenAI-compatible upstream).
fn sent_texts(h: &Harness) -> Vec<String> {
    let sent = h.mock.requests().pop().unwrap().json().unwrap();
    sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn a_conversation_continues_across_upstreams_with_its_whole_history() {
    let h = start().await;
    let (status, first) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "claude-x", "input": "My name is Ada", "instructions": "Be brief"}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["store"], true);
    let first_id = first["id"].as_str().unwrap().to_owned();
    let (_, second) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "gemini-x", "input": [{"role": "user", "content": "And my job?"}],
               "previous_response_id": first_id}),
    )
    .await;
    assert_eq!(second["previous_response_id"], first_id.as_str());
    assert_eq!(
        second["instructions"],
        Value::Null,
        "instructions are not carried over"
    );
    let second_id = second["id"].as_str().unwrap().to_owned();
    let (status, third) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "gpt-4.1", "input": "Summarize", "previous_response_id": second_id}),
    )
    .await;
    assert_eq!(status, 200, "{third}");
    assert_eq!(
        sent_texts(&h),
        [
            "My name is Ada",
            "Mock reply to: My name is Ada",
            "And my job?",
            "Mock reply to: And my job?",
            "Summarize"
        ],
        "three upstream kinds, one conversation"
    );
    let (status, stored) = get(&h, CLIENT_KEY, &first_id).await;
    assert_eq!(status, 200);
    assert_eq!(stored, first, "GET returns the response as it was answered");
}

#[tokio::test]
async fn one_keys_responses_are_invisible_to_another_and_delete_removes_them() {
    let h = start().await;
    let (_, first) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "local-mock", "input": "hi"}),
    )
    .await;
    let id = first["id"].as_str().unwrap();
    let (status, error) = respond(
        &h,
        LIMITED_KEY,
        json!({"model": "local-mock", "input": "more", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 400);
    assert_openai_error(&error, "previous_response_not_found");
    assert_eq!(error["error"]["param"], "previous_response_id");
    assert_eq!(get(&h, LIMITED_KEY, id).await.0, 404);
    let deleted = |key: &'static str| {
        h.client
            .delete(h.url(&format!("/v1/responses/{id}")))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(deleted(LIMITED_KEY).await.unwrap().status(), 404);
    let gone = deleted(CLIENT_KEY).await.unwrap();
    assert_eq!(gone.status(), 200);
    assert_eq!(
        json_of(gone).await,
        json!({"id": id, "object": "response", "deleted": true})
    );
    let (status, error) = get(&h, CLIENT_KEY, id).await;
    assert_eq!(status, 404);
    assert_openai_error(&error, "not_found");
    let (status, _) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "local-mock", "input": "more", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 400, "a deleted response cannot be continued");
    let unauthenticated = h
        .client
        .get(h.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn store_false_keeps_nothing_and_bad_values_are_refused() {
    let h = start().await;
    let (_, answer) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "local-mock", "input": "hi", "store": false}),
    )
    .await;
    assert_eq!(answer["store"], false);
    let id = answer["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&h, CLIENT_KEY, id).await.0, 404);
    for (field, value) in [("store", json!("yes")), ("previous_response_id", json!(7))] {
        let mut body = json!({"model": "local-mock", "input": "hi"});
        body[field] = value;
        let (status, error) = respond(&h, CLIENT_KEY, body).await;
        assert_eq!(status, 400, "{field}");
        assert_eq!(error["error"]["param"], field);
    }
}

#[tokio::test]
async fn a_streamed_response_is_continued_at_once() {
    let h = start().await;
    let completed = streamed(
        &h,
        json!({"model": "gpt-4.1", "input": "Stream me", "stream": true}),
    )
    .await;
    let id = completed["response"]["id"].as_str().unwrap();
    // No pause: the continuation waits for the write if it is not done yet.
    let (status, next) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "gpt-4.1", "input": "Again", "previous_response_id": id}),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(
        sent_texts(&h),
        ["Stream me", "Mock reply to: Stream me", "Again"]
    );
}

#[tokio::test]
async fn a_cached_answer_is_a_response_of_its_own_and_is_kept() {
    let h = start().await;
    let body = json!({"model": "cached-gpt", "input": "Cache me"});
    let (_, first) = respond(&h, CLIENT_KEY, body.clone()).await;
    let again = post(&h, CLIENT_KEY, body.to_string()).await;
    assert_eq!(again.headers()["x-cache"], "HIT");
    let again = json_of(again).await;
    assert_ne!(again["id"], first["id"], "each answer has its own id");
    assert_eq!(again["output"][0]["content"], first["output"][0]["content"]);
    let id = again["id"].as_str().unwrap();
    let (status, stored) = get(&h, CLIENT_KEY, id).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(h.mock.stats().requests, 1, "one upstream call for both");
}

#[tokio::test]
async fn responses_expire_after_the_retention_and_0s_keeps_none() {
    let h = start_with("state: {response_retention: 1s}").await;
    let (_, first) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "local-mock", "input": "hi"}),
    )
    .await;
    let id = first["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&h, CLIENT_KEY, id).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&h, CLIENT_KEY, id).await.0, 404, "expired");

    let h = start_with("state: {response_retention: 0s}").await;
    let (_, answer) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "local-mock", "input": "hi"}),
    )
    .await;
    assert_eq!(
        answer["store"], false,
        "nothing kept, and the answer says so"
    );
    let (status, error) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "local-mock", "input": "hi", "previous_response_id": answer["id"]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_openai_error(&error, "stored_responses_disabled");
}

#[tokio::test]
async fn responses_passed_through_are_kept_and_continue_anywhere() {
    let h = start().await;
    // Passed through to an upstream that offers the Responses API, streamed.
    let completed = streamed(
        &h,
        json!({"model": "gpt-resp", "input": "My name is Ada", "stream": true}),
    )
    .await;
    let first_id = completed["response"]["id"].as_str().unwrap().to_owned();
    let path = h.mock.requests().pop().unwrap().path.clone();
    assert_eq!(path, "/v1/responses", "passed through");
    // Continued on a translated upstream...
    let (status, second) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "claude-x", "input": "And my job?", "previous_response_id": first_id}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    // ...and back on the pass-through one, whole: it gets the whole conversation as input.
    let (status, third) = respond(
        &h,
        CLIENT_KEY,
        json!({"model": "gpt-resp", "input": "Thanks", "store": false,
               "previous_response_id": second["id"]}),
    )
    .await;
    assert_eq!(status, 200, "{third}");
    let sent = h.mock.requests().pop().unwrap().json().unwrap();
    let texts: Vec<String> = sent["input"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| match &item["content"] {
            Value::String(text) => text.clone(),
            parts => parts[0]["text"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    assert_eq!(
        texts,
        [
            "My name is Ada",
            "Mock reply to: My name is Ada",
            "And my job?",
            "Mock reply to: And my job?",
            "Thanks"
        ],
        "{sent}"
    );
    assert_eq!(
        sent["store"], false,
        "the client's store goes upstream as it was"
    );
    assert_eq!(sent.get("previous_response_id"), None);
    let whole_id = third["id"].as_str().unwrap();
    assert_eq!(
        get(&h, CLIENT_KEY, whole_id).await.0,
        404,
        "store: false keeps nothing"
    );
    let (status, kept) = get(&h, CLIENT_KEY, &first_id).await;
    assert_eq!(status, 200);
    assert_eq!(kept["usage"], completed["response"]["usage"]);
}

#[tokio::test]
async fn a_continued_body_written_with_spaces_reaches_a_pass_through_upstream_whole() {
    // The body is rewritten (the conversation put in `input`); the model is then rewritten in
    // the new bytes, not at the places it had in the client's.
    let h = start().await;
    let (_, first) = respond(&h, CLIENT_KEY, json!({"model": "gpt-resp", "input": "Hi"})).await;
    for model in ["gpt-resp", "gpt-4.1"] {
        let spaced = format!(
            "{{\n  \"input\" : \"Again\",\n  \"model\" : \"{model}\",\n  \"previous_response_id\" : \"{}\"\n}}",
            first["id"].as_str().unwrap()
        );
        let response = post(&h, CLIENT_KEY, spaced).await;
        let status = response.status();
        let body = json_of(response).await;
        assert_eq!(status, 200, "{model}: {body}");
        let sent = h.mock.requests().pop().unwrap().json().unwrap();
        assert!(
            sent["model"].as_str().unwrap().starts_with("upstream-"),
            "{sent}"
        );
    }
}
