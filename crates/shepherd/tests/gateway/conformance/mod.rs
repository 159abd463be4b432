//! The conformance suite: the same cases run for every (client protocol, upstream protocol)
//! pair, OpenAI and Anthropic clients against OpenAI-compatible, Anthropic and Gemini upstreams
//! (all served by mock-upstream). Each case checks what the client got, in its own protocol, and
//! what the upstream received, in its own.

mod neutral;
mod responses;

use mock_upstream::Style;
use serde_json::{Value, json};

use crate::common::*;
use neutral::*;

async fn whole(h: &Harness, client: Client, conv: &Conv, model: &str) -> Answer {
    let response = send(h, client, &body(client, model, conv))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{client:?} {model}");
    answer(client, &json_of(response).await)
}

async fn streamed(h: &Harness, client: Client, conv: &Conv, model: &str) -> Streamed {
    let mut conv = conv.clone();
    conv.stream = true;
    conv.include_usage = true;
    let response = send(h, client, &body(client, model, &conv))
        .send()
        .await
        .unwrap();
    stream(client, response).await
}

#[tokio::test]
async fn plain_answer_and_stream_agree() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let conv = Conv::user("Hello there, gateway");
        let answer = whole(h, client, &conv, upstream.model()).await;
        assert!(
            answer.text.contains("Hello there, gateway"),
            "{case}: {answer:?}"
        );
        assert_eq!(answer.finish, "stop", "{case}");
        let (input, output, _) = answer.usage.expect("usage");
        assert!(input > 0 && output > 0, "{case}: {answer:?}");
        let received = h.mock.requests().pop().unwrap();
        let credential = match upstream {
            Upstream::OpenAi | Upstream::Responses => {
                received.header("authorization").map(str::to_owned)
            }
            Upstream::Anthropic => {
                assert_eq!(
                    received.header("anthropic-version"),
                    Some("2023-06-01"),
                    "{case}"
                );
                received.header("x-api-key").map(str::to_owned)
            }
            Upstream::Gemini => received.header("x-goog-api-key").map(str::to_owned),
        };
        assert!(
            credential.unwrap().ends_with(UPSTREAM_KEY),
            "{case}: the provider's key"
        );
        // Each protocol's own headers reach only upstreams of that protocol.
        if upstream != Upstream::Anthropic {
            assert_eq!(received.header("anthropic-version"), None, "{case}");
            assert_eq!(received.header("anthropic-beta"), None, "{case}");
        }
        if !matches!(upstream, Upstream::OpenAi | Upstream::Responses) {
            assert_eq!(received.header("openai-beta"), None, "{case}");
        }
        assert!(
            received
                .headers
                .iter()
                .all(|(_, value)| !value.contains(CLIENT_KEY)),
            "{case}: the client's key never goes upstream"
        );
        let (path, sent) = upstream_request(h);
        match upstream {
            Upstream::OpenAi => assert_eq!(sent["model"], "upstream-gpt-4.1", "{case}"),
            Upstream::Anthropic => assert_eq!(sent["model"], "claude-sonnet-4-5", "{case}"),
            Upstream::Gemini => {
                assert!(
                    path.ends_with("/models/gemini-2.5-flash:generateContent"),
                    "{case}: {path}"
                )
            }
            Upstream::Responses => {
                assert!(path.ends_with("/v1/responses"), "{case}: {path}");
                assert_eq!(sent["model"], "upstream-gpt-resp", "{case}");
            }
        }

        let streamed = streamed(h, client, &conv, upstream.model()).await;
        assert!(streamed.complete, "{case}: {streamed:?}");
        assert!(streamed.error.is_none(), "{case}");
        assert_eq!(
            streamed.answer.text, answer.text,
            "{case}: same words streamed"
        );
        assert_eq!(streamed.answer.finish, "stop", "{case}");
        assert_eq!(
            streamed.answer.usage, answer.usage,
            "{case}: same usage streamed"
        );
        let (path, _) = upstream_request(h);
        if upstream == Upstream::Gemini {
            assert!(
                path.ends_with(":streamGenerateContent?alt=sse"),
                "{case}: {path}"
            );
        }
    }
}

#[tokio::test]
async fn system_prompt_and_turns_reach_the_upstream_in_its_form() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let conv = Conv {
            system: Some("You are terse."),
            turns: vec![
                Turn::User("My name is Ada."),
                Turn::Assistant("Hello Ada."),
                Turn::User("What is my name?"),
            ],
            ..Conv::default()
        };
        let answer = whole(h, client, &conv, upstream.model()).await;
        assert!(
            answer.text.contains("What is my name?"),
            "{case}: {answer:?}"
        );
        let (_, sent) = upstream_request(h);
        assert_eq!(
            upstream_system(upstream, &sent).as_deref(),
            Some("You are terse."),
            "{case}: {sent}"
        );
        let turns = upstream_turns(upstream, &sent);
        let roles: Vec<&str> = turns.iter().map(|(role, _)| role.as_str()).collect();
        let assistant = if upstream == Upstream::Gemini {
            "model"
        } else {
            "assistant"
        };
        assert_eq!(roles, ["user", assistant, "user"], "{case}: {sent}");
    }
}

#[tokio::test]
async fn tool_calls_whole_and_with_streamed_arguments() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let conv = Conv {
            tools: true,
            ..Conv::user("What is the weather in Paris?")
        };
        let answer = whole(h, client, &conv, upstream.model()).await;
        assert_eq!(answer.finish, "tool_calls", "{case}: {answer:?}");
        assert_eq!(answer.tools.len(), 1, "{case}");
        let (id, name, args) = &answer.tools[0];
        assert!(!id.is_empty(), "{case}");
        assert_eq!(name, "get_weather", "{case}");
        assert_eq!(
            serde_json::from_str::<Value>(args).unwrap(),
            json!({"location": "Paris"}),
            "{case}"
        );
        let (_, sent) = upstream_request(h);
        let declared = match upstream {
            Upstream::OpenAi => sent["tools"][0]["function"]["parameters"].clone(),
            Upstream::Anthropic => sent["tools"][0]["input_schema"].clone(),
            Upstream::Gemini => {
                sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"].clone()
            }
            Upstream::Responses => sent["tools"][0]["parameters"].clone(),
        };
        assert_eq!(declared["required"], json!(["location"]), "{case}: {sent}");

        let streamed = streamed(h, client, &conv, upstream.model()).await;
        assert!(streamed.complete, "{case}: {streamed:?}");
        let answer = &streamed.answer;
        assert_eq!(answer.finish, "tool_calls", "{case}");
        assert_eq!(answer.tools.len(), 1, "{case}: {answer:?}");
        assert_eq!(answer.tools[0].1, "get_weather", "{case}");
        assert_eq!(
            serde_json::from_str::<Value>(&answer.tools[0].2).unwrap(),
            json!({"location": "Paris"}),
            "{case}"
        );
        // Arguments stay streamed: the mock splits them for OpenAI and Anthropic upstreams
        // (Gemini sends a call whole).
        let expected_fragments = if upstream == Upstream::Gemini { 1 } else { 2 };
        assert!(
            answer.fragments[0] >= expected_fragments,
            "{case}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn tool_results_round_trip() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let conv = Conv {
            tools: true,
            turns: vec![
                Turn::User("What is the weather in Paris?"),
                Turn::ToolCall("call_1", r#"{"location":"Paris"}"#),
                Turn::ToolResult("call_1", "Sunny, 21C"),
            ],
            ..Conv::default()
        };
        let answer = whole(h, client, &conv, upstream.model()).await;
        assert!(answer.text.contains("Sunny, 21C"), "{case}: {answer:?}");
        let (_, sent) = upstream_request(h);
        let turns = upstream_turns(upstream, &sent);
        let found = match upstream {
            Upstream::OpenAi => sent["messages"].as_array().unwrap().iter().any(|m| {
                m["role"] == "tool" && m["tool_call_id"] == "call_1" && m["content"] == "Sunny, 21C"
            }),
            Upstream::Anthropic => turns.iter().any(|(role, content)| {
                role == "user"
                    && content[0]["type"] == "tool_result"
                    && content[0]["tool_use_id"] == "call_1"
            }),
            Upstream::Gemini => turns.iter().any(|(role, parts)| {
                role == "user"
                    && parts[0]["functionResponse"]["name"] == "get_weather"
                    && parts[0]["functionResponse"]["response"]["result"] == "Sunny, 21C"
            }),
            Upstream::Responses => turns.iter().any(|(role, item)| {
                role == "tool" && item["call_id"] == "call_1" && item["output"] == "Sunny, 21C"
            }),
        };
        assert!(found, "{case}: {sent}");
        // The call itself went back as the upstream's kind of call.
        let call = &turns[1].1;
        match upstream {
            Upstream::OpenAi => assert_eq!(
                sent["messages"][1]["tool_calls"][0]["id"], "call_1",
                "{case}"
            ),
            Upstream::Anthropic => {
                assert_eq!(call[0]["input"], json!({"location": "Paris"}), "{case}")
            }
            Upstream::Gemini => assert_eq!(
                call[0]["functionCall"]["args"],
                json!({"location": "Paris"}),
                "{case}"
            ),
            Upstream::Responses => {
                assert_eq!(call["call_id"], "call_1", "{case}");
                assert_eq!(call["arguments"], r#"{"location":"Paris"}"#, "{case}");
            }
        }
    }
}

#[tokio::test]
async fn an_image_a_tool_returned_reaches_every_upstream() {
    // Claude Code returns screenshots as images inside `tool_result`.
    let h = start().await;
    for upstream in [Upstream::OpenAi, Upstream::Anthropic, Upstream::Gemini] {
        let body = json!({"model": upstream.model(), "max_tokens": 50, "messages": [
            {"role": "user", "content": "Take a screenshot"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "Here it is"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]},
                {"type": "text", "text": "What do you see?"}]}
        ]});
        let response = send(&h, Client::Anthropic, &body).send().await.unwrap();
        assert_eq!(response.status(), 200, "{upstream:?}");
        let (_, sent) = upstream_request(&h);
        let sent_text = sent.to_string();
        assert!(
            sent_text.contains(PNG),
            "{upstream:?}: the image was dropped: {sent}"
        );
        match upstream {
            Upstream::OpenAi => {
                let messages = sent["messages"].as_array().unwrap();
                let tool = messages.iter().position(|m| m["role"] == "tool").unwrap();
                assert_eq!(messages[tool]["content"], "Here it is");
                let next = &messages[tool + 1];
                assert_eq!(next["role"], "user", "{sent}");
                assert_eq!(
                    next["content"][0]["image_url"]["url"],
                    format!("data:image/png;base64,{PNG}")
                );
                assert_eq!(next["content"][1]["text"], "What do you see?");
            }
            Upstream::Anthropic => {
                let result = &sent["messages"][2]["content"][0];
                assert_eq!(result["content"][1]["type"], "image", "{sent}");
            }
            Upstream::Gemini => {
                let parts = &sent["contents"][2]["parts"];
                assert!(parts[0]["functionResponse"].is_object(), "{sent}");
                assert_eq!(parts[1]["inlineData"]["data"], PNG, "{sent}");
            }
            Upstream::Responses => unreachable!("Anthropic clients only"),
        }
    }
}

#[tokio::test]
async fn images_json_mode_and_stop_sequences() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let conv = Conv {
            turns: vec![Turn::UserWithImage("What is in this picture?")],
            json_mode: true,
            stop: Some("END"),
            ..Conv::default()
        };
        whole(h, client, &conv, upstream.model()).await;
        let (_, sent) = upstream_request(h);
        let content = &upstream_turns(upstream, &sent)[0].1;
        match upstream {
            Upstream::OpenAi => assert_eq!(
                content[1]["image_url"]["url"],
                format!("data:image/png;base64,{PNG}"),
                "{case}: {sent}"
            ),
            Upstream::Anthropic => assert_eq!(
                content[1]["source"],
                json!({"type": "base64", "media_type": "image/png", "data": PNG}),
                "{case}: {sent}"
            ),
            Upstream::Gemini => assert_eq!(
                content[1]["inlineData"],
                json!({"mimeType": "image/png", "data": PNG}),
                "{case}: {sent}"
            ),
            Upstream::Responses => assert_eq!(
                content[1]["image_url"],
                format!("data:image/png;base64,{PNG}"),
                "{case}: {sent}"
            ),
        }
        if client != Client::Responses {
            // The Responses API has no stop sequences.
            assert_eq!(
                upstream_setting(upstream, &sent, "stop"),
                json!(["END"]),
                "{case}"
            );
        }
        // JSON mode: OpenAI clients ask `json_object`, Anthropic and Responses clients a JSON
        // schema.
        match (client, upstream) {
            (Client::OpenAi, Upstream::OpenAi) => {
                assert_eq!(sent["response_format"]["type"], "json_object", "{case}")
            }
            (Client::OpenAi, Upstream::Anthropic) => assert!(
                sent["system"].as_str().unwrap().contains("JSON object"),
                "{case}: {sent}"
            ),
            (Client::Anthropic | Client::Responses, Upstream::OpenAi) => {
                assert_eq!(sent["response_format"]["type"], "json_schema", "{case}");
                assert_eq!(
                    sent["response_format"]["json_schema"]["schema"]["required"],
                    json!(["location"])
                );
            }
            (Client::Responses, Upstream::Responses) => {
                assert_eq!(sent["text"]["format"]["type"], "json_schema", "{case}")
            }
            (_, Upstream::Responses) => unreachable!("Responses clients only"),
            (Client::Anthropic | Client::Responses, Upstream::Anthropic) => {
                assert_eq!(
                    sent["output_config"]["format"]["type"], "json_schema",
                    "{case}"
                )
            }
            (_, Upstream::Gemini) => {
                assert_eq!(
                    sent["generationConfig"]["responseMimeType"], "application/json",
                    "{case}"
                );
                if client != Client::OpenAi {
                    assert_eq!(
                        sent["generationConfig"]["responseJsonSchema"]["required"],
                        json!(["location"])
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn max_tokens_reached() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let conv = Conv {
            max_tokens: Some(3),
            ..Conv::user("Tell me a long story about the sea")
        };
        let answer = whole(h, client, &conv, upstream.model()).await;
        assert_eq!(answer.finish, "length", "{case}: {answer:?}");
        assert_eq!(
            answer.text.split_whitespace().count(),
            3,
            "{case}: {answer:?}"
        );
        let (_, sent) = upstream_request(h);
        assert_eq!(
            upstream_setting(upstream, &sent, "max"),
            json!(3),
            "{case}: {sent}"
        );
        let streamed = streamed(h, client, &conv, upstream.model()).await;
        assert_eq!(streamed.answer.finish, "length", "{case}: {streamed:?}");
        assert_eq!(streamed.answer.text, answer.text, "{case}");
    }
}

#[tokio::test]
async fn cached_prompt_tokens_are_counted_once() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let body = body(
            client,
            upstream.model(),
            &Conv::user("Count my tokens please"),
        );
        let plain = answer(
            client,
            &json_of(send(h, client, &body).send().await.unwrap()).await,
        );
        let cached = send(h, client, &body)
            .header("x-mock-cache-read-tokens", "5")
            .send()
            .await
            .unwrap();
        let raw = json_of(cached).await;
        let cached = answer(client, &raw);
        let (input, output, read) = cached.usage.unwrap();
        let (plain_input, plain_output, _) = plain.usage.unwrap();
        assert_eq!(read, 5, "{case}: {raw}");
        assert_eq!(
            input,
            plain_input + 5,
            "{case}: cached tokens are part of the input once"
        );
        assert_eq!(output, plain_output, "{case}");
        match client {
            // OpenAI's prompt tokens include cached ones; Anthropic's input tokens exclude them.
            Client::OpenAi => assert_eq!(raw["usage"]["prompt_tokens"], plain_input + 5, "{case}"),
            Client::Anthropic => assert_eq!(raw["usage"]["input_tokens"], plain_input, "{case}"),
            Client::Responses => {
                assert_eq!(raw["usage"]["input_tokens"], plain_input + 5, "{case}");
                assert_eq!(
                    raw["usage"]["input_tokens_details"]["cached_tokens"], 5,
                    "{case}"
                );
            }
        }
    }
}

#[tokio::test]
async fn filtered_answers_and_reasoning_tokens() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        let case = format!("{style:?}: {client:?} -> {upstream:?}");
        let reason = match upstream {
            Upstream::OpenAi | Upstream::Responses => "content_filter",
            Upstream::Anthropic => "refusal",
            Upstream::Gemini => "SAFETY",
        };
        let request = body(client, upstream.model(), &Conv::user("Something unsafe"));
        let response = send(h, client, &request)
            .header("x-mock-finish-reason", reason)
            .send()
            .await
            .unwrap();
        let answer = answer(client, &json_of(response).await);
        assert_eq!(answer.finish, "content_filter", "{case}: {answer:?}");
    }
    // Gemini's thinking tokens are output tokens, reported as reasoning to OpenAI clients.
    let h = hs.get(Style::Spaced);
    let request = body(Client::OpenAi, "gemini-x", &Conv::user("Think hard"));
    let plain = json_of(send(h, Client::OpenAi, &request).send().await.unwrap()).await;
    let thinking = send(h, Client::OpenAi, &request)
        .header("x-mock-thoughts-tokens", "40")
        .send()
        .await
        .unwrap();
    let thinking = json_of(thinking).await;
    let completion = |body: &Value| body["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(completion(&thinking), completion(&plain) + 40, "{thinking}");
    assert_eq!(
        thinking["usage"]["completion_tokens_details"]["reasoning_tokens"],
        40
    );
}

#[tokio::test]
async fn openai_clients_see_the_usage_chunk_only_when_asked() {
    let hs = Styled::start().await;
    for (style, upstream) in STYLES.into_iter().flat_map(|style| {
        [Upstream::OpenAi, Upstream::Anthropic, Upstream::Gemini].map(|upstream| (style, upstream))
    }) {
        let h = hs.get(style);
        let conv = Conv {
            stream: true,
            include_usage: false,
            ..Conv::user("No usage for me")
        };
        let response = send(
            h,
            Client::OpenAi,
            &body(Client::OpenAi, upstream.model(), &conv),
        )
        .send()
        .await
        .unwrap();
        let streamed = stream(Client::OpenAi, response).await;
        assert!(streamed.complete, "{upstream:?}");
        assert_eq!(streamed.answer.usage, None, "{upstream:?}: {streamed:?}");
        if upstream == Upstream::OpenAi {
            // The gateway asked for usage anyway, to account for it.
            let (_, sent) = upstream_request(h);
            assert_eq!(sent["stream_options"]["include_usage"], true);
        }
    }
}

/// (upstream status, OpenAI client status, Anthropic client status, Anthropic error type).
const ERROR_ROWS: [(u16, u16, u16, &str); 5] = [
    (400, 400, 400, "invalid_request_error"),
    (401, 502, 502, "api_error"),
    (429, 429, 429, "rate_limit_error"),
    (500, 500, 500, "api_error"),
    (529, 503, 529, "overloaded_error"),
];

#[tokio::test]
async fn upstream_errors_in_the_callers_protocol() {
    for (style, client, upstream) in CASES {
        for (injected, openai_status, anthropic_status, anthropic_type) in ERROR_ROWS {
            // A fresh gateway per case: a refused key or a Retry-After takes the upstream out
            // of rotation for a while, which is not what this test is about.
            let h = start_styled(style).await;
            let case = format!("{style:?}: {client:?} -> {upstream:?}, upstream {injected}");
            let mut request = send(
                &h,
                client,
                &body(client, upstream.model(), &Conv::user("hi")),
            )
            .header("x-mock-status", injected.to_string())
            .header("x-mock-retry-after", "7");
            if injected == 401 {
                // The mock echoes the key it got in its error message, as providers do.
                request = request.header("x-mock-echo-key", "1");
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").cloned();
            let text = response.text().await.unwrap();
            assert!(!text.contains(UPSTREAM_KEY), "{case}: key leaked: {text}");
            let body: Value = serde_json::from_str(&text).unwrap();
            match client {
                Client::OpenAi | Client::Responses => {
                    assert_eq!(status, openai_status, "{case}: {body}");
                    assert!(body["error"]["message"].is_string(), "{case}: {body}");
                    assert!(body["error"]["type"].is_string(), "{case}: {body}");
                }
                Client::Anthropic => {
                    assert_eq!(status, anthropic_status, "{case}: {body}");
                    assert_eq!(body["type"], "error", "{case}: {body}");
                    assert_eq!(body["error"]["type"], anthropic_type, "{case}: {body}");
                    assert!(body["error"]["message"].is_string(), "{case}: {body}");
                }
            }
            if injected == 429 && upstream != Upstream::Gemini {
                assert_eq!(
                    retry_after.as_ref().map(|v| v.to_str().unwrap()),
                    Some("7"),
                    "{case}"
                );
            }
        }
    }
}

#[tokio::test]
async fn broken_streams_end_with_the_callers_error_event() {
    let hs = Styled::start().await;
    for (style, client, upstream) in CASES {
        let h = hs.get(style);
        for fault in ["x-mock-cut-after", "x-mock-stream-error-after"] {
            let case = format!("{style:?}: {client:?} -> {upstream:?}, {fault}");
            let conv = Conv {
                stream: true,
                include_usage: true,
                ..Conv::user("Stream then break")
            };
            let response = send(h, client, &body(client, upstream.model(), &conv))
                .header(fault, "2")
                .header("x-mock-chunks", "6")
                .send()
                .await
                .unwrap();
            let streamed = stream(client, response).await;
            assert!(!streamed.complete, "{case}: no fake end: {streamed:?}");
            let error = streamed
                .error
                .unwrap_or_else(|| panic!("{case}: no error event"));
            match client {
                Client::OpenAi => assert!(error["error"]["message"].is_string(), "{case}: {error}"),
                // `response.failed` when translated; the upstream's or the gateway's `error`
                // event when passed through.
                Client::Responses => assert!(
                    error["response"]["error"]["message"].is_string()
                        || (error["type"] == "error" && error["message"].is_string()),
                    "{case}: {error}"
                ),
                Client::Anthropic => {
                    assert_eq!(error["type"], "error", "{case}");
                    assert!(error["error"]["type"].is_string(), "{case}: {error}");
                }
            }
            assert!(
                !streamed.answer.text.is_empty(),
                "{case}: content before the break arrived"
            );
        }
    }
}

#[tokio::test]
async fn completions_and_embeddings_through_other_providers() {
    let h = start().await;
    for model in ["claude-x", "gemini-x"] {
        let response = h
            .post(
                "/v1/completions",
                &json!({"model": model, "prompt": "Once upon a time", "max_tokens": 50})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{model}");
        let body = json_of(response).await;
        assert_eq!(body["object"], "text_completion", "{body}");
        assert!(
            body["choices"][0]["text"]
                .as_str()
                .unwrap()
                .contains("Once upon a time"),
            "{body}"
        );
        assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
    }
    let response = h
        .post(
            "/v1/embeddings",
            &json!({"model": "gemini-embed", "input": ["one", "two"], "dimensions": 4}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 4);
    let (path, sent) = upstream_request(&h);
    assert!(
        path.ends_with("/models/text-embedding-004:batchEmbedContents"),
        "{path}"
    );
    assert_eq!(sent["requests"][1]["content"]["parts"][0]["text"], "two");
    let refused = h
        .post(
            "/v1/embeddings",
            &json!({"model": "claude-x", "input": "x"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_openai_error(&json_of(refused).await, "unsupported_for_provider");
}

#[tokio::test]
async fn anthropic_clients_get_anthropic_errors_from_the_gateway_too() {
    let h = start().await;
    let no_key = h
        .client
        .post(h.url("/v1/messages"))
        .header("content-type", "application/json")
        .body(body(Client::Anthropic, "claude-x", &Conv::user("hi")).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let error = json_of(no_key).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "authentication_error");
    let missing_max = send(
        &h,
        Client::Anthropic,
        &json!({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(missing_max.status(), 400);
    let error = json_of(missing_max).await;
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens"),
        "{error}"
    );
    let unknown = send(
        &h,
        Client::Anthropic,
        &json!({"model": "nope", "max_tokens": 5, "messages": []}),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(json_of(unknown).await["error"]["type"], "not_found_error");
    let wrong_method = h.client.get(h.url("/v1/messages")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(json_of(wrong_method).await["type"], "error");
}
