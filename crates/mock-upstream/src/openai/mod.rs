//! The OpenAI-compatible API in OpenAI's wire format (chat completions, completions, embeddings,
//! models, and the Responses API): the route dispatch and the helpers shared by
//! the handlers. Answers are deterministic: replies echo the last message, token counts are
//! whitespace-word counts, and embeddings are derived from a hash of the input.

mod chat;
mod completions;
pub(crate) mod embeddings;
mod errors;
mod models;
mod responses;

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::body::{MockBody, sse_data};
use crate::json_response;

use errors::stream_error_event;
pub(crate) use errors::{ApiError, malformed};
pub use models::MODELS;

const FINGERPRINT: &str = "fp_mock";

pub(crate) use crate::route::Ctx;

/// Answers an OpenAI route, or `None` when `path` (with any `/v1` prefix already removed) is not
/// one.
pub(crate) fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Option<Response<MockBody>> {
    let result = match (method.as_str(), path) {
        ("POST", "/chat/completions") => chat::chat(ctx, body),
        ("POST", "/completions") => completions::completions(ctx, body),
        ("POST", "/embeddings") => embeddings::embeddings(body),
        ("POST", "/responses") => responses::responses(ctx, body),
        ("GET", "/models") => Ok(models::models()),
        ("GET", p) => {
            let id = p.strip_prefix("/models/").filter(|id| !id.is_empty())?;
            Ok(json_response(StatusCode::OK, &models::model_json(id)))
        }
        _ => return None,
    };
    Some(result.unwrap_or_else(ApiError::into_response))
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        )),
        Err(e) => Err(ApiError::bad_json(&e)),
    }
}

fn required_model(req: &Map<String, Value>) -> Result<&str, ApiError> {
    match req.get("model") {
        Some(Value::String(m)) => Ok(m),
        _ => Err(ApiError::invalid(
            "you must provide a model parameter",
            Some("model"),
        )),
    }
}

fn include_usage(req: &Map<String, Value>) -> bool {
    req.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn is_stream(req: &Map<String, Value>) -> bool {
    req.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The usage object; a behaviour's `cache_read_tokens` adds that many cached prompt tokens.
/// What it reports is counted in the server's stats.
fn usage(ctx: &Ctx<'_>, prompt: u64, completion: u64) -> Value {
    let cached = ctx.behavior.cache_read_tokens;
    let prompt = prompt + cached.unwrap_or(0);
    let counters = &ctx.state.counters;
    counters.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
    counters
        .completion_tokens
        .fetch_add(completion, Ordering::Relaxed);
    counters
        .cached_tokens
        .fetch_add(cached.unwrap_or(0), Ordering::Relaxed);
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    if let (Some(cached), Value::Object(m)) = (cached, &mut usage) {
        m.insert(
            "prompt_tokens_details".to_owned(),
            json!({"cached_tokens": cached}),
        );
    }
    usage
}

/// The common fields of the chunks of one stream.
struct StreamHead<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    include_usage: bool,
}

impl StreamHead<'_> {
    fn event(&self, choices: Value) -> Bytes {
        let mut v = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        });
        if self.include_usage
            && let Value::Object(m) = &mut v
        {
            m.insert("usage".to_owned(), Value::Null);
        }
        sse_data(&v)
    }

    fn usage_event(&self, usage: Value) -> Bytes {
        sse_data(&json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": FINGERPRINT,
            "choices": [],
            "usage": usage,
        }))
    }
}
