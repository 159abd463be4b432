//! Protocol-neutral helpers of the conformance suite: a conversation written once and sent in
//! the client's protocol (chat completions, Anthropic messages, OpenAI Responses), answers and
//! streams of each client protocol read back into one shape
//! (with the event grammar of each protocol checked on the way), and the request the upstream
//! received read in its own protocol.

use serde_json::{Value, json};

use mock_upstream::{Behavior, Style};

use super::responses;
use crate::common::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    OpenAi,
    Anthropic,
    /// OpenAI's Responses API (`POST /v1/responses`).
    Responses,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upstream {
    OpenAi,
    Anthropic,
    Gemini,
    /// An OpenAI-compatible upstream that offers the Responses API (`responses: true`):
    /// Responses requests pass through to it.
    Responses,
}

/// The ways the mock writes its bytes: compact, and spaced like Python servers and LiteLLM
/// (spaces in JSON, `\r\n` framing, data over several lines, comments, ids).
pub const STYLES: [Style; 2] = [Style::Compact, Style::Spaced];

/// Every pair in every style.
pub const CASES: [(Style, Client, Upstream); 20] = {
    let mut cases = [(Style::Compact, Client::OpenAi, Upstream::OpenAi); 20];
    let mut n = 0;
    while n < 20 {
        let (client, upstream) = PAIRS[n % 10];
        cases[n] = (STYLES[n / 10], client, upstream);
        n += 1;
    }
    cases
};

/// A gateway in front of a mock writing in each style.
pub struct Styled {
    compact: Harness,
    spaced: Harness,
}

impl Styled {
    pub async fn start() -> Styled {
        Styled {
            compact: start_styled(Style::Compact).await,
            spaced: start_styled(Style::Spaced).await,
        }
    }

    pub fn get(&self, style: Style) -> &Harness {
        match style {
            Style::Compact => &self.compact,
            Style::Spaced => &self.spaced,
        }
    }
}

/// A gateway in front of a mock that writes in `style`.
pub async fn start_styled(style: Style) -> Harness {
    let h = start().await;
    h.mock.set_behavior(Behavior {
        style,
        ..Behavior::default()
    });
    h
}

/// Every (client protocol, upstream protocol) pair; Responses clients also against an upstream
/// that offers the Responses API (pass-through).
pub const PAIRS: [(Client, Upstream); 10] = [
    (Client::OpenAi, Upstream::OpenAi),
    (Client::OpenAi, Upstream::Anthropic),
    (Client::OpenAi, Upstream::Gemini),
    (Client::Anthropic, Upstream::OpenAi),
    (Client::Anthropic, Upstream::Anthropic),
    (Client::Anthropic, Upstream::Gemini),
    (Client::Responses, Upstream::OpenAi),
    (Client::Responses, Upstream::Anthropic),
    (Client::Responses, Upstream::Gemini),
    (Client::Responses, Upstream::Responses),
];

impl Upstream {
    /// The model alias served by this upstream in the harness config.
    pub fn model(self) -> &'static str {
        match self {
            Upstream::OpenAi => "gpt-4.1",
            Upstream::Anthropic => "claude-x",
            Upstream::Gemini => "gemini-x",
            Upstream::Responses => "gpt-resp",
        }
    }
}

/// A 1x1 transparent PNG.
pub const PNG: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

#[derive(Clone, Debug)]
pub enum Turn {
    User(&'static str),
    UserWithImage(&'static str),
    Assistant(&'static str),
    /// The assistant called `get_weather` with these arguments.
    ToolCall(&'static str, &'static str),
    /// The result of the call with this id.
    ToolResult(&'static str, &'static str),
}

/// A conversation written once, sent in either client protocol.
#[derive(Clone, Debug, Default)]
pub struct Conv {
    pub system: Option<&'static str>,
    pub turns: Vec<Turn>,
    pub tools: bool,
    pub max_tokens: Option<u64>,
    pub stop: Option<&'static str>,
    pub json_mode: bool,
    pub stream: bool,
    /// OpenAI clients: `stream_options.include_usage`.
    pub include_usage: bool,
}

impl Conv {
    pub fn user(text: &'static str) -> Conv {
        Conv {
            turns: vec![Turn::User(text)],
            ..Conv::default()
        }
    }
}

const WEATHER_SCHEMA: &str =
    r#"{"type":"object","properties":{"location":{"type":"string"}},"required":["location"]}"#;

pub fn body(client: Client, model: &str, conv: &Conv) -> Value {
    let schema: Value = serde_json::from_str(WEATHER_SCHEMA).unwrap();
    match client {
        Client::OpenAi => {
            let mut messages = Vec::new();
            if let Some(system) = conv.system {
                messages.push(json!({"role": "system", "content": system}));
            }
            for turn in &conv.turns {
                messages.push(match turn {
                    Turn::User(text) => json!({"role": "user", "content": text}),
                    Turn::UserWithImage(text) => json!({"role": "user", "content": [
                        {"type": "text", "text": text},
                        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}}]}),
                    Turn::Assistant(text) => json!({"role": "assistant", "content": text}),
                    Turn::ToolCall(id, args) => json!({"role": "assistant", "content": null, "tool_calls": [
                        {"id": id, "type": "function", "function": {"name": "get_weather", "arguments": args}}]}),
                    Turn::ToolResult(id, text) => {
                        json!({"role": "tool", "tool_call_id": id, "content": text})
                    }
                });
            }
            let mut body = json!({"model": model, "messages": messages});
            if conv.tools {
                body["tools"] = json!([{"type": "function", "function": {
                    "name": "get_weather", "description": "Weather of a city", "parameters": schema}}]);
            }
            if let Some(max) = conv.max_tokens {
                body["max_tokens"] = json!(max);
            }
            if let Some(stop) = conv.stop {
                body["stop"] = json!([stop]);
            }
            if conv.json_mode {
                body["response_format"] = json!({"type": "json_object"});
            }
            if conv.stream {
                body["stream"] = json!(true);
                if conv.include_usage {
                    body["stream_options"] = json!({"include_usage": true});
                }
            }
            body
        }
        Client::Anthropic => {
            let mut messages = Vec::new();
            for turn in &conv.turns {
                messages.push(match turn {
                    Turn::User(text) => json!({"role": "user", "content": text}),
                    Turn::UserWithImage(text) => json!({"role": "user", "content": [
                        {"type": "text", "text": text},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}),
                    Turn::Assistant(text) => json!({"role": "assistant", "content": text}),
                    Turn::ToolCall(id, args) => json!({"role": "assistant", "content": [
                        {"type": "tool_use", "id": id, "name": "get_weather",
                         "input": serde_json::from_str::<Value>(args).unwrap()}]}),
                    Turn::ToolResult(id, text) => json!({"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": id, "content": text}]}),
                });
            }
            let mut body = json!({"model": model, "messages": messages,
                                  "max_tokens": conv.max_tokens.unwrap_or(1024)});
            if let Some(system) = conv.system {
                body["system"] = json!(system);
            }
            if conv.tools {
                body["tools"] = json!([{"name": "get_weather", "description": "Weather of a city",
                                        "input_schema": schema}]);
            }
            if let Some(stop) = conv.stop {
                body["stop_sequences"] = json!([stop]);
            }
            if conv.json_mode {
                body["output_config"] =
                    json!({"format": {"type": "json_schema", "schema": schema}});
            }
            if conv.stream {
                body["stream"] = json!(true);
            }
            body
        }
        Client::Responses => responses::body(model, conv, schema),
    }
}

pub fn send(h: &Harness, client: Client, body: &Value) -> reqwest::RequestBuilder {
    match client {
        Client::OpenAi => h.chat(body.clone()).header("openai-beta", "assistants=v2"),
        Client::Anthropic => h
            .client
            .post(h.url("/v1/messages"))
            .header("x-api-key", CLIENT_KEY)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "prompt-caching-2024-07-31")
            .header("content-type", "application/json")
            .body(body.to_string()),
        Client::Responses => h.post("/v1/responses", &body.to_string()),
    }
}

/// An answer of either protocol, in one shape.
#[derive(Debug, Default)]
pub struct Answer {
    pub text: String,
    /// (id, name, arguments) of each tool call.
    pub tools: Vec<(String, String, String)>,
    /// Argument fragments received per tool call (streams).
    pub fragments: Vec<usize>,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish: String,
    /// (input tokens including cached ones, output tokens, cached tokens).
    pub usage: Option<(u64, u64, u64)>,
}

fn finish_of_stop_reason(reason: &str) -> String {
    match reason {
        "end_turn" | "stop_sequence" => "stop",
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
    .to_owned()
}

fn anthropic_usage(usage: &Value) -> Option<(u64, u64, u64)> {
    let n = |name: &str| usage[name].as_u64().unwrap_or(0);
    usage["output_tokens"].as_u64()?;
    let cached = n("cache_read_input_tokens");
    Some((
        n("input_tokens") + cached + n("cache_creation_input_tokens"),
        n("output_tokens"),
        cached,
    ))
}

fn openai_usage(usage: &Value) -> Option<(u64, u64, u64)> {
    Some((
        usage["prompt_tokens"].as_u64()?,
        usage["completion_tokens"].as_u64()?,
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    ))
}

/// Reads a whole answer of the client's protocol, checking its shape.
pub fn answer(client: Client, body: &Value) -> Answer {
    match client {
        Client::OpenAi => {
            assert_eq!(body["object"], "chat.completion", "{body}");
            assert!(
                body["id"].as_str().unwrap().starts_with("chatcmpl-"),
                "{body}"
            );
            let choice = &body["choices"][0];
            let message = &choice["message"];
            assert_eq!(message["role"], "assistant");
            let tools = message["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|call| {
                    assert_eq!(call["type"], "function");
                    (
                        call["id"].as_str().unwrap().to_owned(),
                        call["function"]["name"].as_str().unwrap().to_owned(),
                        call["function"]["arguments"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            Answer {
                text: message["content"].as_str().unwrap_or_default().to_owned(),
                tools,
                fragments: Vec::new(),
                finish: choice["finish_reason"].as_str().unwrap().to_owned(),
                usage: openai_usage(&body["usage"]),
            }
        }
        Client::Anthropic => {
            assert_eq!(body["type"], "message", "{body}");
            assert_eq!(body["role"], "assistant");
            assert!(body["id"].as_str().unwrap().starts_with("msg_"), "{body}");
            let mut answer = Answer {
                finish: finish_of_stop_reason(body["stop_reason"].as_str().unwrap()),
                usage: anthropic_usage(&body["usage"]),
                ..Answer::default()
            };
            for block in body["content"].as_array().unwrap() {
                match block["type"].as_str().unwrap() {
                    "text" => answer.text.push_str(block["text"].as_str().unwrap()),
                    "tool_use" => answer.tools.push((
                        block["id"].as_str().unwrap().to_owned(),
                        block["name"].as_str().unwrap().to_owned(),
                        block["input"].to_string(),
                    )),
                    other => panic!("unexpected block {other}: {body}"),
                }
            }
            answer
        }
        Client::Responses => responses::answer(body),
    }
}

/// A stream of the client's protocol read to its end.
#[derive(Debug, Default)]
pub struct Streamed {
    pub answer: Answer,
    /// The stream ended with its protocol's end marker (`[DONE]`, `message_stop`).
    pub complete: bool,
    /// The error event it ended with, if any.
    pub error: Option<Value>,
}

/// Reads a stream of the client's protocol, checking the event grammar of that protocol.
pub async fn stream(client: Client, response: reqwest::Response) -> Streamed {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();
    let events = sse_events(&text);
    match client {
        Client::OpenAi => openai_stream(&events),
        Client::Anthropic => anthropic_stream(&events),
        Client::Responses => responses::stream(&events),
    }
}

fn openai_stream(events: &[(Option<String>, String)]) -> Streamed {
    let mut out = Streamed::default();
    let mut id = None;
    for (n, (name, data)) in events.iter().enumerate() {
        assert!(name.is_none(), "OpenAI streams have no event names");
        assert!(!out.complete, "nothing may follow [DONE]");
        assert!(out.error.is_none(), "nothing may follow an error event");
        if data == "[DONE]" {
            out.complete = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        if chunk.get("error").is_some() {
            out.error = Some(chunk);
            continue;
        }
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        let this_id = chunk["id"].as_str().unwrap().to_owned();
        assert_eq!(
            id.get_or_insert(this_id.clone()),
            &this_id,
            "one id per stream"
        );
        if n == 0 {
            assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant", "{chunk}");
        }
        if let Some(usage) = openai_usage(&chunk["usage"]) {
            // Usage comes in its own chunk: no choice, or (as LiteLLM writes it, passed
            // through as is) choices that carry nothing.
            let empty = chunk["choices"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["delta"] == json!({}) && c["finish_reason"].is_null());
            assert!(empty, "usage comes in its own chunk: {chunk}");
            out.answer.usage = Some(usage);
        }
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str() {
            out.answer.text.push_str(text);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if let Some(call_id) = call["id"].as_str() {
                assert_eq!(index, out.answer.tools.len(), "tool indices count from 0");
                out.answer.tools.push((
                    call_id.to_owned(),
                    call["function"]["name"].as_str().unwrap().to_owned(),
                    String::new(),
                ));
                out.answer.fragments.push(0);
            }
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.answer.tools[index].2.push_str(args);
                out.answer.fragments[index] += 1;
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            assert!(out.answer.finish.is_empty(), "one finish reason");
            out.answer.finish = reason.to_owned();
        }
    }
    out
}

fn anthropic_stream(events: &[(Option<String>, String)]) -> Streamed {
    let mut out = Streamed::default();
    let mut open: Option<u64> = None;
    let mut next_index = 0;
    let mut block_kinds: Vec<String> = Vec::new();
    let mut delta_seen = false;
    for (n, (name, data)) in events.iter().enumerate() {
        let name = name.as_deref().expect("Anthropic events are named");
        let event: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["type"], name, "{event}");
        assert!(!out.complete, "nothing may follow message_stop");
        assert!(out.error.is_none(), "nothing may follow an error event");
        if n == 0 {
            assert!(
                name == "message_start" || name == "error",
                "first event: {name}"
            );
        }
        match name {
            "message_start" => {
                assert_eq!(n, 0, "message_start comes first");
                let message = &event["message"];
                assert!(message["id"].as_str().unwrap().starts_with("msg_"));
                assert_eq!(message["content"], json!([]));
                assert!(message["usage"]["input_tokens"].is_u64());
                out.answer.usage = anthropic_usage(&message["usage"]);
            }
            "content_block_start" => {
                assert!(
                    open.is_none(),
                    "a block starts only after the last one stopped"
                );
                let index = event["index"].as_u64().unwrap();
                assert_eq!(index, next_index, "block indices count from 0");
                next_index += 1;
                open = Some(index);
                let block = &event["content_block"];
                let kind = block["type"].as_str().unwrap().to_owned();
                if kind == "tool_use" {
                    assert_eq!(block["input"], json!({}));
                    out.answer.tools.push((
                        block["id"].as_str().unwrap().to_owned(),
                        block["name"].as_str().unwrap().to_owned(),
                        String::new(),
                    ));
                    out.answer.fragments.push(0);
                }
                block_kinds.push(kind);
            }
            "content_block_delta" => {
                let index = event["index"].as_u64().unwrap();
                assert_eq!(open, Some(index), "deltas go to the open block");
                let delta = &event["delta"];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => {
                        assert_eq!(block_kinds[index as usize], "text");
                        out.answer.text.push_str(delta["text"].as_str().unwrap());
                    }
                    "input_json_delta" => {
                        assert_eq!(block_kinds[index as usize], "tool_use");
                        let last = out.answer.tools.len() - 1;
                        out.answer.tools[last]
                            .2
                            .push_str(delta["partial_json"].as_str().unwrap());
                        out.answer.fragments[last] += 1;
                    }
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                assert_eq!(open.take(), Some(event["index"].as_u64().unwrap()));
            }
            "message_delta" => {
                assert!(open.is_none(), "every block stopped before message_delta");
                delta_seen = true;
                out.answer.finish =
                    finish_of_stop_reason(event["delta"]["stop_reason"].as_str().unwrap());
                let start = out.answer.usage.unwrap_or_default();
                let usage = &event["usage"];
                let cached = usage["cache_read_input_tokens"].as_u64().unwrap_or(start.2);
                let input = usage["input_tokens"].as_u64().map_or(start.0, |i| {
                    i + cached + usage["cache_creation_input_tokens"].as_u64().unwrap_or(0)
                });
                out.answer.usage = Some((input, usage["output_tokens"].as_u64().unwrap(), cached));
            }
            "message_stop" => {
                assert!(delta_seen, "message_delta comes before message_stop");
                out.complete = true;
            }
            "ping" => {}
            "error" => out.error = Some(event),
            other => panic!("unexpected event {other}"),
        }
    }
    out
}

/// The last request the upstream received: its path and JSON body.
pub fn upstream_request(h: &Harness) -> (String, Value) {
    let request = h.mock.requests().pop().expect("the upstream got a request");
    (request.path.clone(), request.json().expect("a JSON body"))
}

/// The system prompt as the upstream received it.
pub fn upstream_system(upstream: Upstream, body: &Value) -> Option<String> {
    match upstream {
        Upstream::OpenAi => body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "system")
            .map(|m| m["content"].as_str().unwrap().to_owned()),
        Upstream::Anthropic => body["system"].as_str().map(str::to_owned),
        Upstream::Gemini => body["systemInstruction"]["parts"][0]["text"]
            .as_str()
            .map(str::to_owned),
        Upstream::Responses => body["instructions"].as_str().map(str::to_owned),
    }
}

/// The conversation turns (system excluded) as the upstream received them: (role, value).
pub fn upstream_turns(upstream: Upstream, body: &Value) -> Vec<(String, Value)> {
    if upstream == Upstream::Responses {
        // Input items: messages by role, calls as the assistant's, their outputs as `tool`.
        return body["input"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| match item["type"].as_str() {
                Some("function_call") => ("assistant".to_owned(), item.clone()),
                Some("function_call_output") => ("tool".to_owned(), item.clone()),
                _ => (
                    item["role"].as_str().unwrap().to_owned(),
                    item["content"].clone(),
                ),
            })
            .collect();
    }
    let list = match upstream {
        Upstream::Gemini => &body["contents"],
        _ => &body["messages"],
    };
    list.as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] != "system")
        .map(|m| {
            let content = match upstream {
                Upstream::Gemini => m["parts"].clone(),
                _ => m["content"].clone(),
            };
            (m["role"].as_str().unwrap().to_owned(), content)
        })
        .collect()
}

/// A generation setting as the upstream received it: `max` or `stop`.
pub fn upstream_setting(upstream: Upstream, body: &Value, setting: &str) -> Value {
    match (upstream, setting) {
        (Upstream::OpenAi, "max") => body
            .get("max_completion_tokens")
            .or(body.get("max_tokens"))
            .cloned()
            .unwrap_or(Value::Null),
        (Upstream::OpenAi, "stop") => body["stop"].clone(),
        (Upstream::Anthropic, "max") => body["max_tokens"].clone(),
        (Upstream::Anthropic, "stop") => body["stop_sequences"].clone(),
        (Upstream::Gemini, "max") => body["generationConfig"]["maxOutputTokens"].clone(),
        (Upstream::Gemini, "stop") => body["generationConfig"]["stopSequences"].clone(),
        (Upstream::Responses, "max") => body["max_output_tokens"].clone(),
        _ => panic!("unknown setting {setting}"),
    }
}
