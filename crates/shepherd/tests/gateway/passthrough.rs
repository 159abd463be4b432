//! Same protocol in and out: bodies pass through with only the model rewritten, unknown fields
//! survive both ways, credentials are swapped, ids and deployment are reported.

use serde_json::{Value, json};

use crate::common::*;

#[tokio::test]
async fn chat_passes_through_with_model_rewritten_and_unknown_fields_kept() {
    let h = start().await;
    let request = json!({
        "model": "gpt-4.1",
        "messages": [{"role": "user", "content": "Tell me about sheep"}],
        "temperature": 0.3,
        "x_future_field": {"nested": [1, 2, {"deep": true}]},
        "seed": 7
    });
    let response = h
        .chat(request.clone())
        .header("x-request-id", "client-chosen-id-1")
        .header("x-custom-header", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "client-chosen-id-1");
    assert_eq!(
        response.headers()["x-shepherd-deployment"],
        "up/upstream-gpt-4.1"
    );
    let body = json_of(response).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "upstream-gpt-4.1");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock reply to: Tell me about sheep"
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        body["usage"]["total_tokens"].as_u64().unwrap(),
        body["usage"]["prompt_tokens"].as_u64().unwrap()
            + body["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        body["x_mock_extra"],
        json!({"kept": true}),
        "unknown response field lost"
    );

    let received = h.mock.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(upstream.path, "/v1/chat/completions");
    let mut expected = request;
    expected["model"] = json!("upstream-gpt-4.1");
    assert_eq!(
        upstream.json().unwrap(),
        expected,
        "fields changed on the way up"
    );
    assert_eq!(
        upstream.header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert_eq!(upstream.header("x-custom-header"), Some("kept"));
    assert_eq!(upstream.header("x-request-id"), Some("client-chosen-id-1"));
    for (name, value) in &upstream.headers {
        assert!(
            !value.contains(CLIENT_KEY),
            "client key forwarded in {name}"
        );
    }
}

#[tokio::test]
async fn request_bytes_are_forwarded_verbatim_apart_from_the_model() {
    let h = start().await;
    let raw = r#"{ "messages" : [ {"role":"user","content":"spacing \u00e9 kept"} ],"model":"gpt-4.1",  "n":1 }"#;
    let response = h.post("/v1/chat/completions", raw).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let received = &h.mock.requests()[0];
    assert_eq!(
        std::str::from_utf8(&received.body).unwrap(),
        raw.replace(r#""model":"gpt-4.1""#, r#""model":"upstream-gpt-4.1""#)
    );
}

#[tokio::test]
async fn x_api_key_authenticates_and_ids_are_generated() {
    let h = start().await;
    let response = h
        .client
        .post(h.url("/v1/chat/completions"))
        .header("x-api-key", CLIENT_KEY)
        .body(
            json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(
        h.mock.requests()[0].header("x-request-id"),
        Some(id.as_str())
    );
    assert_eq!(h.mock.requests()[0].header("x-api-key"), None);
}

#[tokio::test]
async fn completions_and_embeddings() {
    let h = start().await;
    let response = h
        .post(
            "/v1/completions",
            &json!({"model": "gpt-4.1", "prompt": "Once upon"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(body["object"], "text_completion");
    assert!(body["choices"][0]["text"].as_str().unwrap().len() > 3);
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    assert_eq!(h.mock.requests()[0].path, "/v1/completions");

    let response = h
        .post(
            "/v1/embeddings",
            &json!({"model": "gpt-embed", "input": ["a", "b"], "dimensions": 4}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(
        h.mock.requests()[1].json().unwrap()["model"],
        "text-embedding-3-small"
    );
}

#[tokio::test]
async fn model_list_shows_only_the_keys_models() {
    let h = start().await;
    let ids = |body: Value| -> Vec<String> {
        assert_eq!(body["object"], "list");
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                assert_eq!(m["object"], "model");
                assert!(m["created"].is_u64());
                m["id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let all = h
        .client
        .get(h.url("/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ids(json_of(all).await),
        [
            "gpt-4.1",
            "gpt-embed",
            "gpt-dead",
            "local-mock",
            "claude-x",
            "gemini-x",
            "gpt-resp",
            "gemini-embed",
            "cached-gpt"
        ]
    );
    let limited = h
        .client
        .get(h.url("/v1/models"))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(ids(json_of(limited).await), ["local-mock"]);
}

#[tokio::test]
async fn builtin_mock_provider_answers_without_network() {
    let h = start().await;
    let response = h
        .client
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(LIMITED_KEY)
        .body(
            json!({"model": "local-mock", "messages": [{"role": "user", "content": "ping"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-shepherd-deployment"],
        "builtin/mock-1"
    );
    let body = json_of(response).await;
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .ends_with("ping")
    );
    assert!(h.mock.requests().is_empty());
}

#[tokio::test]
async fn cors_preflight_is_answered_without_a_key() {
    let h = start().await;
    let response = h
        .client
        .request(reqwest::Method::OPTIONS, h.url("/v1/chat/completions"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = h
        .client
        .request(reqwest::Method::OPTIONS, h.url("/v1/chat/completions"))
        .header("origin", "https://evil.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
