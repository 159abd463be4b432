//! `POST /v1/completions`: the legacy text completions, as a complete answer or as a stream.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{
    ApiError, Ctx, FINGERPRINT, StreamHead, include_usage, is_stream, parse_object, required_model,
    stream_error_event, unix_now, usage,
};
use crate::body::{MockBody, SSE_DONE, SsePlan};
use crate::common::{DEFAULT_CHUNKS, reply_words, spread_words};
use crate::{json_response, sse_response};

/// The text to echo and the token count of a legacy `prompt`.
fn prompt_text_and_tokens(prompt: Option<&Value>) -> Result<(String, u64), ApiError> {
    let invalid = || {
        ApiError::invalid(
            "prompt must be a string, an array of strings, or an array of token arrays",
            Some("prompt"),
        )
    };
    match prompt {
        Some(Value::String(s)) => Ok((s.clone(), s.split_whitespace().count() as u64)),
        Some(Value::Array(items)) => {
            let mut text = None;
            let mut tokens = 0u64;
            if items.iter().all(Value::is_number) {
                return Ok((String::new(), items.len() as u64));
            }
            for item in items {
                match item {
                    Value::String(s) => {
                        tokens += s.split_whitespace().count() as u64;
                        text.get_or_insert_with(|| s.clone());
                    }
                    Value::Array(toks) => tokens += toks.len() as u64,
                    _ => return Err(invalid()),
                }
            }
            Ok((text.unwrap_or_default(), tokens))
        }
        _ => Err(invalid()),
    }
}

fn completion_choice(text: &str, finish_reason: Option<&str>) -> Value {
    json!([{
        "text": text,
        "index": 0,
        "logprobs": null,
        "finish_reason": finish_reason,
    }])
}

pub(super) fn completions(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let req = parse_object(body)?;
    let model = required_model(&req)?;
    let (prompt, prompt_tokens) = prompt_text_and_tokens(req.get("prompt"))?;
    let chunks = ctx.behavior.chunks.unwrap_or(DEFAULT_CHUNKS);
    let words = reply_words(&prompt, chunks);
    let completion_tokens = words.len() as u64;
    let id = format!("cmpl-mock-{}", ctx.state.next_id());
    let created = unix_now();
    let finish_reason = ctx.behavior.finish_reason.as_deref().unwrap_or("stop");

    if !is_stream(&req) {
        let resp = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": completion_choice(&words.join(" "), Some(finish_reason)),
            "usage": usage(ctx, prompt_tokens, completion_tokens),
        });
        return Ok(json_response(StatusCode::OK, &resp));
    }

    let head = StreamHead {
        id: &id,
        object: "text_completion",
        created,
        model,
        include_usage: include_usage(&req),
    };
    let mut events = Vec::with_capacity(chunks + 3);
    for piece in spread_words(&words, chunks) {
        events.push(head.event(completion_choice(&piece, None)));
    }
    events.push(head.event(completion_choice("", Some(finish_reason))));
    if head.include_usage {
        events.push(head.usage_event(usage(ctx, prompt_tokens, completion_tokens)));
    }
    events.push(Bytes::from_static(SSE_DONE));
    let plan = SsePlan {
        events,
        content_start: 0,
        content_len: chunks,
        error_event: Some(stream_error_event()),
        ..SsePlan::default()
    }
    .with_behavior(ctx.behavior);
    Ok(sse_response(StatusCode::OK, plan, ctx.state))
}
