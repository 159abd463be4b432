//! `POST /v1/chat/completions`: plain replies and tool calls, as a complete answer or as a
//! stream of chunks.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::{
    ApiError, Ctx, FINGERPRINT, StreamHead, include_usage, is_stream, parse_object, required_model,
    stream_error_event, unix_now, usage,
};
use crate::body::{MockBody, SSE_DONE, SsePlan};
use crate::common::{
    DEFAULT_CHUNKS, TOOL_ARGUMENTS, TOOL_COMPLETION_TOKENS, reply_words, split_ascii, spread_words,
    truncate_words, wants_tool,
};
use crate::{json_response, sse_response};

const TOOL_CALL_ID: &str = "call_mock_1";

/// Calls `f` on every text of a message content: the string itself, or the `text` of each part
/// of an array content.
fn for_each_text<'a>(content: Option<&'a Value>, mut f: impl FnMut(&'a str)) {
    match content {
        Some(Value::String(s)) => f(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    f(text);
                }
            }
        }
        _ => {}
    }
}

fn count_words(content: Option<&Value>) -> u64 {
    let mut n = 0;
    for_each_text(content, |t| n += t.split_whitespace().count() as u64);
    n
}

fn content_text(content: Option<&Value>) -> String {
    let mut out = String::new();
    for_each_text(content, |t| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(t);
    });
    out
}

fn chat_delta(delta: Value, finish_reason: Option<&str>) -> Value {
    json!([{
        "index": 0,
        "delta": delta,
        "logprobs": null,
        "finish_reason": finish_reason,
    }])
}

/// The tool to call: the first tool's name, when the request has tools and the last message
/// mentions the weather.
fn tool_to_call<'a>(req: &'a Map<String, Value>, last_text: &str) -> Option<&'a str> {
    let tools = req.get("tools")?.as_array()?;
    let first = tools.first()?;
    if !wants_tool(last_text) {
        return None;
    }
    Some(
        first
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("get_weather"),
    )
}

/// `max_completion_tokens`, else the deprecated `max_tokens`.
fn max_tokens(req: &Map<String, Value>) -> Result<Option<u64>, ApiError> {
    for name in ["max_completion_tokens", "max_tokens"] {
        match req.get(name) {
            None | Some(Value::Null) => {}
            Some(value) => match value.as_u64() {
                Some(n) if n >= 1 => return Ok(Some(n)),
                _ => {
                    return Err(ApiError::invalid(
                        format!("Invalid '{name}': expected an integer of at least 1."),
                        Some(name),
                    ));
                }
            },
        }
    }
    Ok(None)
}

/// The words of a plain reply, truncated to `max_tokens`; the finish reason that goes with it.
fn text_reply(last_text: &str, chunks: usize, max: Option<u64>) -> (Vec<String>, &'static str) {
    let mut words = reply_words(last_text, chunks);
    let reason = if truncate_words(&mut words, max) {
        "length"
    } else {
        "stop"
    };
    (words, reason)
}

pub(super) fn chat(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let req = parse_object(body)?;
    let model = required_model(&req)?;
    let Some(messages) = req.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::invalid(
            "'messages' is a required property",
            Some("messages"),
        ));
    };
    let stream = is_stream(&req);
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| count_words(m.get("content")) + 4)
        .sum();
    let last_text = messages
        .last()
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    let chunks = ctx.behavior.chunks.unwrap_or(DEFAULT_CHUNKS);
    let max = max_tokens(&req)?;
    let id = format!("chatcmpl-mock-{}", ctx.state.next_id());
    let created = unix_now();
    let tool = tool_to_call(&req, &last_text);

    if !stream {
        let (message, finish_reason, completion_tokens) = match tool {
            Some(name) => (
                json!({
                    "role": "assistant",
                    "content": null,
                    "refusal": null,
                    "tool_calls": [{
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": name, "arguments": TOOL_ARGUMENTS},
                    }],
                }),
                "tool_calls",
                TOOL_COMPLETION_TOKENS,
            ),
            None => {
                let (words, reason) = text_reply(&last_text, chunks, max);
                (
                    json!({"role": "assistant", "content": words.join(" "), "refusal": null}),
                    reason,
                    words.len() as u64,
                )
            }
        };
        let finish_reason = ctx
            .behavior
            .finish_reason
            .as_deref()
            .unwrap_or(finish_reason);
        let resp = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage(ctx, prompt_tokens, completion_tokens),
            "x_mock_extra": {"kept": true},
        });
        return Ok(json_response(StatusCode::OK, &resp));
    }

    let head = StreamHead {
        id: &id,
        object: "chat.completion.chunk",
        created,
        model,
        include_usage: include_usage(&req),
    };
    let mut events = Vec::with_capacity(chunks + 4);
    let (finish_reason, completion_tokens) = match tool {
        Some(name) => {
            events.push(head.event(chat_delta(
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": [{
                        "index": 0,
                        "id": TOOL_CALL_ID,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }],
                }),
                None,
            )));
            for piece in split_ascii(TOOL_ARGUMENTS, chunks.max(2)) {
                events.push(head.event(chat_delta(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    None,
                )));
            }
            ("tool_calls", TOOL_COMPLETION_TOKENS)
        }
        None => {
            events.push(head.event(chat_delta(
                json!({"role": "assistant", "content": ""}),
                None,
            )));
            let (words, reason) = text_reply(&last_text, chunks, max);
            for piece in spread_words(&words, chunks.min(words.len()).max(1)) {
                events.push(head.event(chat_delta(json!({"content": piece}), None)));
            }
            (reason, words.len() as u64)
        }
    };
    let content_len = events.len() - 1;
    let finish_reason = ctx
        .behavior
        .finish_reason
        .as_deref()
        .unwrap_or(finish_reason);
    events.push(head.event(chat_delta(json!({}), Some(finish_reason))));
    if head.include_usage {
        events.push(head.usage_event(usage(ctx, prompt_tokens, completion_tokens)));
    }
    events.push(Bytes::from_static(SSE_DONE));
    let plan = SsePlan {
        events,
        content_start: 1,
        content_len,
        error_event: Some(stream_error_event()),
        ..SsePlan::default()
    }
    .with_behavior(ctx.behavior);
    Ok(sse_response(StatusCode::OK, plan, ctx.state))
}
