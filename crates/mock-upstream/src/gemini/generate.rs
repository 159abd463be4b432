//! `:generateContent`, `:streamGenerateContent` and `:countTokens`: plain replies (truncated to
//! `maxOutputTokens` words) and function calls, as one response or as a stream of chunks (SSE
//! or a JSON array); the last chunk carries `finishReason` and `usageMetadata`.

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::request;
use super::{ApiError, Mode, stream_error_event};
use crate::behavior::Behavior;
use crate::body::{MockBody, SsePlan, sse_data};
use crate::common::{
    DEFAULT_CHUNKS, TOOL_COMPLETION_TOKENS, reply_words, spread_words, truncate_words,
};
use crate::route::Ctx;
use crate::{json_response, sse_response};

/// What the model answers.
enum Reply<'a> {
    Text { words: Vec<String>, truncated: bool },
    Function(&'a str),
}

/// The fields shared by every chunk of one answer.
struct Head<'a> {
    model: &'a str,
    id: &'a str,
    candidates: usize,
}

impl Head<'_> {
    /// A response whose candidates all hold `parts`, with the finish reason and usage if given.
    fn response(&self, parts: &Value, finish: Option<(&str, Value)>) -> Value {
        let candidates: Vec<Value> = (0..self.candidates)
            .map(|index| {
                let mut c = json!({"content": {"role": "model", "parts": parts}});
                if let (Value::Object(m), Some((reason, _))) = (&mut c, &finish) {
                    m.insert("finishReason".to_owned(), json!(reason));
                }
                if let Value::Object(m) = &mut c {
                    m.insert("index".to_owned(), json!(index));
                }
                c
            })
            .collect();
        let mut out = Map::new();
        out.insert("candidates".to_owned(), Value::Array(candidates));
        if let Some((_, usage)) = finish {
            out.insert("usageMetadata".to_owned(), usage);
        }
        out.insert("modelVersion".to_owned(), json!(self.model));
        out.insert("responseId".to_owned(), json!(self.id));
        Value::Object(out)
    }
}

fn usage_metadata(prompt: u64, candidates: u64, behavior: &Behavior) -> Value {
    let cached = behavior.cache_read_tokens;
    let thoughts = behavior.thoughts_tokens;
    let prompt = prompt + cached.unwrap_or(0);
    let mut m = Map::new();
    m.insert("promptTokenCount".to_owned(), json!(prompt));
    m.insert("candidatesTokenCount".to_owned(), json!(candidates));
    let total = prompt + candidates + thoughts.unwrap_or(0);
    m.insert("totalTokenCount".to_owned(), json!(total));
    if let Some(cached) = cached {
        m.insert("cachedContentTokenCount".to_owned(), json!(cached));
    }
    if let Some(thoughts) = thoughts {
        m.insert("thoughtsTokenCount".to_owned(), json!(thoughts));
    }
    Value::Object(m)
}

pub(super) fn count_tokens(body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let obj = request::parse_object(body)?;
    let inner = obj
        .get("generateContentRequest")
        .and_then(Value::as_object)
        .unwrap_or(&obj);
    let req = request::parse(inner)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"totalTokens": req.prompt_tokens}),
    ))
}

pub(super) fn generate(
    ctx: &Ctx<'_>,
    model: &str,
    body: &Bytes,
    mode: Mode,
) -> Result<Response<MockBody>, ApiError> {
    let obj = request::parse_object(body)?;
    let req = request::parse(&obj)?;
    let chunks = ctx.behavior.chunks.unwrap_or(DEFAULT_CHUNKS);
    let reply = match req.function {
        Some(name) => Reply::Function(name),
        None => {
            let mut words = reply_words(&req.last_text, chunks);
            let truncated = truncate_words(&mut words, req.max_output_tokens);
            Reply::Text { words, truncated }
        }
    };
    let (reason, tokens) = match &reply {
        Reply::Function(_) => ("STOP", TOOL_COMPLETION_TOKENS),
        Reply::Text { words, truncated } => {
            let reason = if *truncated { "MAX_TOKENS" } else { "STOP" };
            (reason, words.len() as u64)
        }
    };
    let reason = ctx.behavior.finish_reason.as_deref().unwrap_or(reason);
    let id = format!("mock-{}", ctx.state.next_id());
    let head = Head {
        model,
        id: &id,
        candidates: req.candidates,
    };
    let usage = usage_metadata(
        req.prompt_tokens,
        tokens * req.candidates as u64,
        ctx.behavior,
    );
    let finish = Some((reason, usage));
    let function_part =
        |name: &str| json!([{"functionCall": {"name": name, "args": {"location": "Paris"}}}]);
    if mode == Mode::Whole {
        let parts = match &reply {
            Reply::Function(name) => function_part(name),
            Reply::Text { words, .. } => json!([{"text": words.join(" ")}]),
        };
        return Ok(json_response(
            StatusCode::OK,
            &head.response(&parts, finish),
        ));
    }

    let mut chunks: Vec<Value> = match &reply {
        Reply::Function(name) => vec![function_part(name)],
        Reply::Text { words, .. } => spread_words(words, chunks.min(words.len()).max(1))
            .into_iter()
            .map(|piece| json!([{"text": piece}]))
            .collect(),
    };
    let last = chunks.pop().unwrap_or_else(|| json!([{"text": ""}]));
    let mut bodies: Vec<Value> = chunks.iter().map(|p| head.response(p, None)).collect();
    bodies.push(head.response(&last, finish));
    Ok(stream_response(ctx, bodies, mode))
}

/// Streams `bodies` as SSE events, or as the elements of one JSON array.
fn stream_response(ctx: &Ctx<'_>, bodies: Vec<Value>, mode: Mode) -> Response<MockBody> {
    let content_len = bodies.len();
    let (events, content_start) = if mode == Mode::Sse {
        (bodies.iter().map(sse_data).collect(), 0)
    } else {
        let mut events = vec![Bytes::from_static(b"[")];
        for (i, body) in bodies.iter().enumerate() {
            let sep = if i == 0 { "" } else { ",\r\n" };
            events.push(Bytes::from(format!("{sep}{body}")));
        }
        events.push(Bytes::from_static(b"\r\n]"));
        (events, 1)
    };
    // The array form needs a separator before the error element unless it comes first.
    let error_first = ctx.behavior.stream_error_after == Some(0);
    let plan = SsePlan {
        events,
        content_start,
        content_len,
        error_event: Some(stream_error_event(mode, error_first)),
        ..SsePlan::default()
    }
    .with_behavior(ctx.behavior);
    let mut resp = sse_response(StatusCode::OK, plan, ctx.state);
    if mode == Mode::Array {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_cache_and_thoughts() {
        let b = Behavior {
            cache_read_tokens: Some(3),
            thoughts_tokens: Some(5),
            ..Behavior::default()
        };
        let u = usage_metadata(10, 4, &b);
        assert_eq!(u["promptTokenCount"], 13);
        assert_eq!(u["cachedContentTokenCount"], 3);
        assert_eq!(u["thoughtsTokenCount"], 5);
        assert_eq!(u["totalTokenCount"], 22);
        let u = usage_metadata(10, 4, &Behavior::default());
        assert_eq!(u["totalTokenCount"], 14);
        assert!(u.get("thoughtsTokenCount").is_none());
    }
}
