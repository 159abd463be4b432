//! `POST /v1/messages`: plain replies (truncated to `max_tokens` words) and tool calls, as a
//! complete message or as Anthropic's stream of named events; `POST /v1/messages/count_tokens`.

use bytes::Bytes;
use hyper::{HeaderMap, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::request::{self, Request};
use super::{ApiError, stream_error_event};
use crate::behavior::Behavior;
use crate::body::{MockBody, SsePlan, sse_named};
use crate::common::{
    DEFAULT_CHUNKS, TOOL_ARGUMENTS, TOOL_COMPLETION_TOKENS, reply_words, split_ascii, spread_words,
    truncate_words,
};
use crate::route::Ctx;
use crate::{json_response, sse_response};

const TOOL_USE_ID: &str = "toolu_mock_1";
/// The output tokens reported in `message_start`, as the real API does.
const START_OUTPUT_TOKENS: u64 = 1;

/// What the model answers.
enum Reply<'a> {
    Text { words: Vec<String>, truncated: bool },
    Tool(&'a str),
}

impl Reply<'_> {
    fn output_tokens(&self) -> u64 {
        match self {
            Reply::Text { words, .. } => words.len() as u64,
            Reply::Tool(_) => TOOL_COMPLETION_TOKENS,
        }
    }

    fn stop_reason<'b>(&self, behavior: &'b Behavior) -> &'b str {
        match (&behavior.finish_reason, self) {
            (Some(forced), _) => forced,
            (None, Reply::Tool(_)) => "tool_use",
            (
                None,
                Reply::Text {
                    truncated: true, ..
                },
            ) => "max_tokens",
            (None, Reply::Text { .. }) => "end_turn",
        }
    }
}

fn usage(input: u64, output: u64, behavior: &Behavior) -> Value {
    json!({
        "input_tokens": input,
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": behavior.cache_read_tokens.unwrap_or(0),
    })
}

pub(super) fn count_tokens(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<MockBody>, ApiError> {
    request::check_version(headers)?;
    let req = request::parse_object(body)?;
    let req = request::parse(&req, true)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"input_tokens": req.prompt_tokens}),
    ))
}

pub(super) fn messages(
    ctx: &Ctx<'_>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response<MockBody>, ApiError> {
    request::check_version(headers)?;
    let req = request::parse_object(body)?;
    let req = request::parse(&req, false)?;
    let chunks = ctx.behavior.chunks.unwrap_or(DEFAULT_CHUNKS);
    let reply = match req.tool {
        Some(name) => Reply::Tool(name),
        None => {
            let mut words = reply_words(&req.last_text, chunks);
            let truncated = truncate_words(&mut words, req.max_tokens);
            Reply::Text { words, truncated }
        }
    };
    let id = format!("msg_mock_{}", ctx.state.next_id());
    if req.stream {
        let plan = stream_plan(&req, &reply, &id, chunks, ctx.behavior);
        return Ok(sse_response(StatusCode::OK, plan, ctx.state));
    }
    let content = match &reply {
        Reply::Tool(name) => json!([{
            "type": "tool_use",
            "id": TOOL_USE_ID,
            "name": name,
            "input": {"location": "Paris"},
        }]),
        Reply::Text { words, .. } => json!([{"type": "text", "text": words.join(" ")}]),
    };
    let resp = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": reply.stop_reason(ctx.behavior),
        "stop_sequence": null,
        "usage": usage(req.prompt_tokens, reply.output_tokens(), ctx.behavior),
    });
    Ok(json_response(StatusCode::OK, &resp))
}

/// `message_start`, `content_block_start`, `ping`, the content deltas, `content_block_stop`,
/// `message_delta`, `message_stop`.
fn stream_plan(
    req: &Request<'_>,
    reply: &Reply<'_>,
    id: &str,
    chunks: usize,
    behavior: &Behavior,
) -> SsePlan {
    let event = |name: &str, value: Value| {
        let mut m = Map::new();
        m.insert("type".to_owned(), Value::String(name.to_owned()));
        if let Value::Object(rest) = value {
            m.extend(rest);
        }
        sse_named(name, &Value::Object(m))
    };
    let mut events = Vec::with_capacity(chunks + 6);
    events.push(event(
        "message_start",
        json!({"message": {
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": req.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": usage(req.prompt_tokens, START_OUTPUT_TOKENS, behavior),
        }}),
    ));
    let (block, deltas) = match reply {
        Reply::Tool(name) => (
            json!({"type": "tool_use", "id": TOOL_USE_ID, "name": name, "input": {}}),
            split_ascii(TOOL_ARGUMENTS, chunks.max(2))
                .into_iter()
                .map(|piece| json!({"type": "input_json_delta", "partial_json": piece}))
                .collect::<Vec<_>>(),
        ),
        Reply::Text { words, .. } => (
            json!({"type": "text", "text": ""}),
            spread_words(words, chunks.min(words.len()))
                .into_iter()
                .map(|piece| json!({"type": "text_delta", "text": piece}))
                .collect(),
        ),
    };
    events.push(event(
        "content_block_start",
        json!({"index": 0, "content_block": block}),
    ));
    events.push(event("ping", json!({})));
    let content_start = events.len();
    let content_len = deltas.len();
    for delta in deltas {
        events.push(event(
            "content_block_delta",
            json!({"index": 0, "delta": delta}),
        ));
    }
    events.push(event("content_block_stop", json!({"index": 0})));
    events.push(event(
        "message_delta",
        json!({
            "delta": {"stop_reason": reply.stop_reason(behavior), "stop_sequence": null},
            "usage": {"output_tokens": reply.output_tokens()},
        }),
    ));
    events.push(event("message_stop", json!({})));
    SsePlan {
        events,
        content_start,
        content_len,
        error_event: Some(stream_error_event()),
        ..SsePlan::default()
    }
    .with_behavior(behavior)
}
