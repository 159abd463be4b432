//! `POST /v1/responses`: OpenAI's Responses API, as a `response` object or as its typed event
//! stream (`response.created` ... `response.completed`, with sequence numbers). Replies echo the
//! last input item; a request with tools whose last item mentions the weather gets a
//! `function_call`.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::{ApiError, Ctx, is_stream, parse_object, required_model, unix_now};
use crate::body::{MockBody, SsePlan, sse_named};
use crate::common::{
    DEFAULT_CHUNKS, TOKENS_PER_MESSAGE, TOOL_ARGUMENTS, TOOL_COMPLETION_TOKENS, count_words,
    reply_words, split_ascii, spread_words, truncate_words, wants_tool,
};
use crate::{json_response, sse_response};

const CALL_ID: &str = "call_mock_1";

/// The texts of one input item: a message's content (string or parts), a tool output.
fn item_text(item: &Value) -> String {
    let mut texts = Vec::new();
    match item.get("content") {
        Some(Value::String(text)) => texts.push(text.as_str()),
        Some(Value::Array(parts)) => texts.extend(
            parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str)),
        ),
        _ => {}
    }
    if let Some(output) = item.get("output").and_then(Value::as_str) {
        texts.push(output);
    }
    texts.join(" ")
}

fn input_items(req: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    match req.get("input") {
        Some(Value::String(text)) => Ok(vec![json!({"role": "user", "content": text})]),
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err(ApiError::invalid(
            "'input' is a required property",
            Some("input"),
        )),
    }
}

/// The usage object; counted in the server's stats.
fn usage(ctx: &Ctx<'_>, input: u64, output: u64) -> Value {
    let cached = ctx.behavior.cache_read_tokens.unwrap_or(0);
    let input = input + cached;
    let counters = &ctx.state.counters;
    counters.prompt_tokens.fetch_add(input, Ordering::Relaxed);
    counters
        .completion_tokens
        .fetch_add(output, Ordering::Relaxed);
    counters.cached_tokens.fetch_add(cached, Ordering::Relaxed);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// The response object around `output`, repeating the request's settings as OpenAI does.
fn object(
    req: &Map<String, Value>,
    id: &str,
    model: &str,
    status: &str,
    output: Vec<Value>,
) -> Value {
    let mut object = json!({
        "id": id,
        "object": "response",
        "created_at": unix_now(),
        "status": status,
        "error": null,
        "incomplete_details": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "store": false,
        "tool_choice": "auto",
        "tools": [],
        "x_mock_extra": {"kept": true},
    });
    for field in [
        "instructions",
        "max_output_tokens",
        "metadata",
        "previous_response_id",
        "store",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_p",
    ] {
        if let Some(value) = req.get(field) {
            object[field] = value.clone();
        }
    }
    object
}

fn message(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": []}]})
}

fn call(name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": "fc_mock_1", "call_id": CALL_ID, "name": name,
           "arguments": arguments, "status": status})
}

/// Sets the final status from a finish reason (a behaviour may force one).
fn finish(object: &mut Value, reason: &str) {
    let incomplete = match reason {
        "length" | "max_output_tokens" => Some("max_output_tokens"),
        "content_filter" => Some("content_filter"),
        _ => None,
    };
    if let Some(reason) = incomplete {
        object["status"] = json!("incomplete");
        object["incomplete_details"] = json!({"reason": reason});
    }
}

/// Numbers the events of one stream.
struct Events {
    events: Vec<Bytes>,
}

impl Events {
    fn push(&mut self, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.events.len());
        self.events.push(sse_named(kind, &data));
    }
}

pub(super) fn responses(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let req = parse_object(body)?;
    let model = required_model(&req)?;
    let items = input_items(&req)?;
    let instructions = req.get("instructions").and_then(Value::as_str);
    let input_tokens: u64 = items
        .iter()
        .map(|item| count_words(&item_text(item)) + TOKENS_PER_MESSAGE)
        .sum::<u64>()
        + instructions.map_or(0, |text| count_words(text) + TOKENS_PER_MESSAGE);
    let last_text = items.last().map(item_text).unwrap_or_default();
    let tool = req
        .get("tools")
        .and_then(Value::as_array)
        .and_then(|tools| tools.first())
        .filter(|_| wants_tool(&last_text))
        .map(|tool| tool["name"].as_str().unwrap_or("get_weather").to_owned());
    let max = req.get("max_output_tokens").and_then(Value::as_u64);
    let chunks = ctx.behavior.chunks.unwrap_or(DEFAULT_CHUNKS);
    let id = format!("resp_mock_{}", ctx.state.next_id());
    let (words, natural) = match &tool {
        Some(_) => (Vec::new(), "stop"),
        None => {
            let mut words = reply_words(&last_text, chunks);
            let cut = truncate_words(&mut words, max);
            (words, if cut { "length" } else { "stop" })
        }
    };
    let reason = ctx.behavior.finish_reason.as_deref().unwrap_or(natural);
    let output_tokens = match tool {
        Some(_) => TOOL_COMPLETION_TOKENS,
        None => words.len() as u64,
    };
    let text = words.join(" ");
    let done_item = match &tool {
        Some(name) => call(name, TOOL_ARGUMENTS, "completed"),
        None => message("msg_mock_1", &text, "completed"),
    };

    if !is_stream(&req) {
        let mut whole = object(&req, &id, model, "completed", vec![done_item]);
        finish(&mut whole, reason);
        whole["usage"] = usage(ctx, input_tokens, output_tokens);
        return Ok(json_response(StatusCode::OK, &whole));
    }

    let mut events = Events { events: Vec::new() };
    let started = object(&req, &id, model, "in_progress", Vec::new());
    events.push("response.created", json!({"response": started}));
    events.push("response.in_progress", json!({"response": started}));
    // The content chunks (what faults count) are the deltas.
    let content_start;
    let content_len;
    match &tool {
        Some(name) => {
            events.push(
                "response.output_item.added",
                json!({"output_index": 0, "item": call(name, "", "in_progress")}),
            );
            content_start = events.events.len();
            for piece in split_ascii(TOOL_ARGUMENTS, chunks.max(2)) {
                events.push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": "fc_mock_1", "output_index": 0, "delta": piece}),
                );
            }
            content_len = events.events.len() - content_start;
            events.push(
                "response.function_call_arguments.done",
                json!({"item_id": "fc_mock_1", "output_index": 0, "arguments": TOOL_ARGUMENTS}),
            );
        }
        None => {
            events.push(
                "response.output_item.added",
                json!({"output_index": 0, "item": message("msg_mock_1", "", "in_progress")}),
            );
            let part = json!({"type": "output_text", "text": "", "annotations": []});
            events.push(
                "response.content_part.added",
                json!({"item_id": "msg_mock_1", "output_index": 0, "content_index": 0, "part": part}),
            );
            content_start = events.events.len();
            for piece in spread_words(&words, chunks.min(words.len()).max(1)) {
                events.push(
                    "response.output_text.delta",
                    json!({"item_id": "msg_mock_1", "output_index": 0, "content_index": 0,
                           "delta": piece}),
                );
            }
            content_len = events.events.len() - content_start;
            events.push(
                "response.output_text.done",
                json!({"item_id": "msg_mock_1", "output_index": 0, "content_index": 0,
                       "text": text}),
            );
        }
    }
    events.push(
        "response.output_item.done",
        json!({"output_index": 0, "item": done_item.clone()}),
    );
    let mut whole = object(&req, &id, model, "completed", vec![done_item]);
    finish(&mut whole, reason);
    whole["usage"] = usage(ctx, input_tokens, output_tokens);
    let last = if whole["status"] == "incomplete" {
        "response.incomplete"
    } else {
        "response.completed"
    };
    events.push(last, json!({"response": whole}));
    // Sent in place of the events after the `stream_error_after`th delta: numbered in turn.
    let error_at = content_start
        + ctx
            .behavior
            .stream_error_after
            .unwrap_or(0)
            .min(content_len);
    let error_event = sse_named(
        "error",
        &json!({"type": "error", "code": "server_error", "param": null,
                "sequence_number": error_at,
                "message": "The server had an error while processing your request."}),
    );
    let plan = SsePlan {
        events: events.events,
        content_start,
        content_len,
        error_event: Some(error_event),
        ..SsePlan::default()
    }
    .with_behavior(ctx.behavior);
    Ok(sse_response(StatusCode::OK, plan, ctx.state))
}
