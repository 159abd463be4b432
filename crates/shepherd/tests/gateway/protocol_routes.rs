//! The routes and behaviours each client protocol expects beyond completions: the model list
//! and one model in the caller's shape, `count_tokens` for every kind of upstream, default models
//! per key and per route, several choices from Gemini, the fields translation could not carry
//! named in `x-shepherd-dropped`, and tool calls that an upstream finished with `stop`.

use serde_json::{Value, json};

use crate::common::*;

/// The path and JSON body of the last request the mock received.
fn upstream_request(h: &Harness) -> (String, Value) {
    let last = h.mock.requests().pop().expect("the upstream got a request");
    (last.path.clone(), last.json().unwrap_or(Value::Null))
}

fn anthropic_get(h: &Harness, path: &str) -> reqwest::RequestBuilder {
    h.client
        .get(h.url(path))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
}

#[tokio::test]
async fn the_model_list_comes_in_the_callers_shape() {
    let h = start().await;
    let openai = json_of(
        h.client
            .get(h.url("/v1/models"))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(openai["object"], "list");
    let ids: Vec<&str> = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-4.1") && ids.contains(&"claude-x"),
        "{openai}"
    );
    assert_eq!(openai["data"][0]["object"], "model");

    let anthropic = json_of(anthropic_get(&h, "/v1/models").send().await.unwrap()).await;
    let data = anthropic["data"].as_array().unwrap();
    assert_eq!(data.len(), ids.len(), "{anthropic}");
    assert_eq!(data[0]["type"], "model");
    assert_eq!(data[0]["id"], ids[0]);
    assert!(data[0]["display_name"].is_string());
    assert!(data[0]["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(anthropic["has_more"], false);
    assert_eq!(anthropic["first_id"], ids[0]);
    assert_eq!(anthropic["last_id"], *ids.last().unwrap());

    // Anthropic's paging.
    let page = json_of(
        anthropic_get(&h, "/v1/models?limit=2")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["has_more"], true);
    let next = json_of(
        anthropic_get(
            &h,
            &format!(
                "/v1/models?limit=2&after_id={}",
                page["last_id"].as_str().unwrap()
            ),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(next["first_id"], ids[2], "{next}");
    let bad = anthropic_get(&h, "/v1/models?limit=0")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(json_of(bad).await["type"], "error");

    // One model, in both shapes; unknown or not allowed is 404 in the caller's shape.
    let one = json_of(
        h.client
            .get(h.url("/v1/models/gpt-4.1"))
            .bearer_auth(CLIENT_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(one["id"], "gpt-4.1");
    assert_eq!(one["object"], "model");
    let one = json_of(
        anthropic_get(&h, "/v1/models/claude-x")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(one["type"], "model");
    assert_eq!(one["id"], "claude-x");
    let missing = anthropic_get(&h, "/v1/models/nope").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let missing = json_of(missing).await;
    assert_eq!(missing["error"]["type"], "not_found_error", "{missing}");
    let hidden = h
        .client
        .get(h.url("/v1/models/gpt-4.1"))
        .bearer_auth(LIMITED_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
    assert_openai_error(&json_of(hidden).await, "model_not_found");
    let no_key = h
        .client
        .get(h.url("/v1/models"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(
        json_of(no_key).await["error"]["type"],
        "authentication_error"
    );
}

#[tokio::test]
async fn count_tokens_is_answered_for_every_kind_of_upstream() {
    let h = start().await;
    let body = |model: &str| {
        json!({"model": model, "system": "Be brief.",
               "messages": [{"role": "user", "content": "How many tokens is this?"}]})
    };
    let count = |model: &'static str| {
        let request = h
            .client
            .post(h.url("/v1/messages/count_tokens"))
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .body(body(model).to_string());
        async move { request.send().await.unwrap() }
    };
    // Anthropic: the upstream counts (the mock counts words + 4 per message and system).
    let response = count("claude-x").await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(response.headers()["x-shepherd-token-count"], "upstream");
    let (path, sent) = upstream_request(&h);
    assert_eq!(path, "/v1/messages/count_tokens");
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(json_of(response).await["input_tokens"], 2 + 4 + 5 + 4);
    // Gemini: `:countTokens` with the request translated.
    let response = count("gemini-x").await;
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(response.headers()["x-shepherd-token-count"], "upstream");
    let (path, sent) = upstream_request(&h);
    assert!(
        path.ends_with("/models/gemini-2.5-flash:countTokens"),
        "{path}"
    );
    assert_eq!(
        sent["generateContentRequest"]["contents"][0]["parts"][0]["text"],
        "How many tokens is this?"
    );
    assert!(json_of(response).await["input_tokens"].as_u64().unwrap() > 0);
    // OpenAI-compatible and the built-in mock: counted here with OpenAI's tokenizer.
    let before = h.mock.requests().len();
    for model in ["gpt-4.1", "local-mock"] {
        let response = count(model).await;
        assert_eq!(response.status(), 200, "{model}");
        assert_eq!(
            response.headers()["x-shepherd-token-count"],
            "tiktoken/o200k_base"
        );
        // "Be brief." 3 tokens, the question 6; 3 per message + 1 for the role; 3 to prime.
        assert_eq!(json_of(response).await["input_tokens"], 3 + 4 + 3 + 4 + 6);
    }
    assert_eq!(h.mock.requests().len(), before, "no upstream was asked");
    // Errors in Anthropic's shape.
    let unknown = count("nope").await;
    assert_eq!(unknown.status(), 404);
    assert_eq!(json_of(unknown).await["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn a_request_without_a_model_gets_the_keys_or_the_routes_default() {
    let mock = mock_upstream::MockUpstream::start().await.unwrap();
    let yaml = format!(
        "server: {{listen: 127.0.0.1:0}}
providers: {{up: {{kind: openai, base_url: '{}', api_keys: ['{UPSTREAM_KEY}']}}}}
models:
  chat-a: {{deployments: [{{provider: up, model: up-chat-a}}]}}
  chat-b: {{deployments: [{{provider: up, model: up-chat-b}}]}}
  embed: {{deployments: [{{provider: up, model: text-embedding-3-small}}]}}
keys:
  - {{name: with-default, key: sk-default-key-1, default_model: chat-b}}
  - {{name: plain, key: sk-plain-key-1}}
routes:
  /v1/chat/completions: {{default_model: chat-a}}
  /v1/embeddings: {{default_model: embed, models: [embed]}}
telemetry: {{access_log: off}}
",
        mock.base_url()
    );
    let config = shepherd::config::load_str(&yaml, "d.yaml", &|_| None).unwrap();
    let server = shepherd::server::start(config).await.unwrap();
    let client = test_client();
    let post = |key: &str, path: &str, body: Value| {
        client
            .post(format!("http://{}{path}", server.addr))
            .bearer_auth(key)
            .body(body.to_string())
            .send()
    };
    let hello = json!({"messages": [{"role": "user", "content": "hi"}]});
    // The key's default wins over the route's.
    let response = post("sk-default-key-1", "/v1/chat/completions", hello.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.requests().pop().unwrap().json().unwrap()["model"],
        "up-chat-b"
    );
    // Without one on the key, the route's.
    let response = post("sk-plain-key-1", "/v1/chat/completions", hello.clone())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.requests().pop().unwrap().json().unwrap()["model"],
        "up-chat-a"
    );
    // On embeddings the key's default is not served: the route's is used.
    let response = post(
        "sk-default-key-1",
        "/v1/embeddings",
        json!({"input": "some text"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        mock.requests().pop().unwrap().json().unwrap()["model"],
        "text-embedding-3-small"
    );
    // A model the route does not serve is refused.
    let refused = post(
        "sk-plain-key-1",
        "/v1/embeddings",
        json!({"model": "chat-a", "input": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(refused.status(), 403);
    assert_openai_error(&json_of(refused).await, "model_not_allowed");
    // A route with no default keeps the 400 that names the field.
    let missing = post("sk-plain-key-1", "/v1/completions", json!({"prompt": "x"}))
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    let missing = json_of(missing).await;
    assert_eq!(missing["error"]["param"], "model");
    assert_openai_error(&missing, "missing_required_parameter");
    // The ledger records the model that served.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    server.state.governance.writer.flush();
    let rows = server
        .state
        .governance
        .report(&shepherd::store::UsageQuery {
            group_by: vec![shepherd::store::GroupBy::Model],
            ..Default::default()
        })
        .unwrap();
    let models: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.groups.iter().map(|(_, value)| value.as_str()))
        .collect();
    assert!(
        models.contains(&"chat-a") && models.contains(&"chat-b"),
        "{models:?}"
    );
}

#[tokio::test]
async fn every_candidate_of_gemini_comes_back_as_a_choice() {
    let h = start().await;
    let body = json!({"model": "gemini-x", "n": 2,
                      "messages": [{"role": "user", "content": "Two answers please"}]});
    let whole = json_of(h.chat(body.clone()).send().await.unwrap()).await;
    let choices = whole["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{whole}");
    assert_eq!(choices[1]["index"], 1);
    let text = choices[0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Two answers please"), "{whole}");
    assert_eq!(choices[1]["message"]["content"], text);
    let (_, sent) = upstream_request(&h);
    assert_eq!(sent["generationConfig"]["candidateCount"], 2);

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let payloads = sse_payloads(h.chat(streamed).send().await.unwrap()).await;
    let mut texts = [String::new(), String::new()];
    let mut finishes = 0;
    for payload in payloads.iter().filter(|p| *p != "[DONE]") {
        let chunk: Value = serde_json::from_str(payload).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            texts[index].push_str(choice["delta"]["content"].as_str().unwrap_or_default());
            finishes += usize::from(choice["finish_reason"].is_string());
        }
    }
    assert_eq!(texts[0], text, "{payloads:?}");
    assert_eq!(texts[1], text, "{payloads:?}");
    assert_eq!(finishes, 2, "one finish per choice");
}

#[tokio::test]
async fn fields_the_upstream_cannot_take_are_named_or_refused() {
    let h = start().await;
    let response = h
        .chat(
            json!({"model": "claude-x", "seed": 7, "logprobs": true, "frequency_penalty": 0.5,
                     "x_vendor_option": {"a": 1}, "n": 1,
                     "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-shepherd-dropped"],
        "frequency_penalty,logprobs,seed,x_vendor_option"
    );
    // Gemini takes seeds and penalties.
    let response = h
        .chat(
            json!({"model": "gemini-x", "seed": 7, "frequency_penalty": 0.5,
                     "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-shepherd-dropped").is_none());
    // Passed through: nothing is dropped, nothing is said.
    let response = h
        .chat(json!({"model": "gpt-4.1", "seed": 7, "logprobs": true,
                     "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("x-shepherd-dropped").is_none());
    // What cannot be left out is refused, naming the field.
    let refused = h
        .chat(
            json!({"model": "gemini-x", "functions": [{"name": "f", "parameters": {}}],
                     "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let refused = json_of(refused).await;
    assert_eq!(refused["error"]["param"], "functions", "{refused}");
    // Anthropic clients: `top_k` and `cache_control` have no OpenAI equivalent.
    let response = h
        .client
        .post(h.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .body(
            json!({"model": "gpt-4.1", "max_tokens": 20, "top_k": 5,
                   "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
                   "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-shepherd-dropped"],
        "top_k,cache_control"
    );
}

#[tokio::test]
async fn tool_calls_finished_with_stop_still_read_as_tool_calls() {
    let h = start().await;
    let body = json!({"model": "gpt-4.1", "max_tokens": 50,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}]});
    let send = |body: Value| {
        h.client
            .post(h.url("/v1/messages"))
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-finish-reason", "stop")
            .body(body.to_string())
            .send()
    };
    let whole = json_of(send(body.clone()).await.unwrap()).await;
    assert_eq!(whole["content"][0]["type"], "tool_use", "{whole}");
    assert_eq!(whole["stop_reason"], "tool_use", "{whole}");
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let text = send(streamed).await.unwrap().text().await.unwrap();
    let stop = sse_events(&text)
        .into_iter()
        .filter_map(|(_, data)| serde_json::from_str::<Value>(&data).ok())
        .find(|event| event["type"] == "message_delta")
        .unwrap();
    assert_eq!(stop["delta"]["stop_reason"], "tool_use", "{text}");
}

#[tokio::test]
async fn reasoning_goes_to_openai_upstreams_with_max_completion_tokens() {
    let h = start().await;
    let response = h
        .client
        .post(h.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .body(
            json!({"model": "gpt-4.1", "max_tokens": 3000,
                   "thinking": {"type": "enabled", "budget_tokens": 2048},
                   "messages": [{"role": "user", "content": "Think"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, sent) = upstream_request(&h);
    assert_eq!(sent["max_completion_tokens"], 3000, "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    assert_eq!(sent["reasoning_effort"], "low");
}
