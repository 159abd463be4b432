//! The OpenAI-compatible API: chat completions, legacy completions, embeddings and models, in
//! OpenAI's wire format, plus OpenAI-shaped error bodies.
//!
//! Answers are deterministic: the reply text is `"Mock reply to: <last message>"`, token counts
//! are whitespace-word counts, and embeddings are derived from a hash of the input.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};

use crate::State;
use crate::behavior::Behavior;
use crate::body::{MockBody, SSE_DONE, SsePlan, sse_data};
use crate::{json_response, sse_response};

const FINGERPRINT: &str = "fp_mock";
const DEFAULT_CHUNKS: usize = 4;
const MAX_ECHO_CHARS: usize = 200;
const REPLY_PREFIX: &str = "Mock reply to: ";
const PAD_WORD: &str = "lorem";
const TOOL_CALL_ID: &str = "call_mock_1";
const TOOL_ARGUMENTS: &str = r#"{"location":"Paris"}"#;
const TOOL_COMPLETION_TOKENS: u64 = 12;
const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;
const MAX_EMBEDDING_DIMENSIONS: usize = 16_384;
const API_KEYS_URL: &str = "https://platform.openai.com/account/api-keys";

/// The models listed by `GET /v1/models`.
pub const MODELS: &[&str] = &["mock-gpt", "mock-gpt-mini", "mock-embedding"];
const MODELS_CREATED: u64 = 1_700_000_000;

/// What a handler needs besides the request body.
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a Arc<State>,
    pub(crate) behavior: &'a Behavior,
}

/// Answers an OpenAI route, or `None` when `path` (with any `/v1` prefix already removed) is not
/// one.
pub(crate) fn route(
    ctx: &Ctx<'_>,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Option<Response<MockBody>> {
    let result = match (method.as_str(), path) {
        ("POST", "/chat/completions") => chat(ctx, body),
        ("POST", "/completions") => completions(ctx, body),
        ("POST", "/embeddings") => embeddings(body),
        ("GET", "/models") => Ok(models()),
        ("GET", p) => {
            let id = p.strip_prefix("/models/").filter(|id| !id.is_empty())?;
            Ok(json_response(StatusCode::OK, &model_json(id)))
        }
        _ => return None,
    };
    Some(result.unwrap_or_else(ApiError::into_response))
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An OpenAI error answer: `{"error":{"message","type","param","code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn invalid(message: impl Into<String>, param: Option<&'static str>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    pub(crate) fn bad_json(err: &serde_json::Error) -> ApiError {
        ApiError::invalid(
            format!(
                "We could not parse the JSON body of your request. (HINT: This likely means you \
                 aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, \
                 but what was sent was not valid JSON.) Detail: {err}"
            ),
            None,
        )
    }

    pub(crate) fn not_found(method: &Method, path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("Invalid URL ({method} {path}): unknown route of the mock upstream"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// The error injected by `status` (and `echo_key`) in a behaviour.
    pub(crate) fn injected(status: u16, echoed_key: Option<&str>) -> ApiError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, code) = match status.as_u16() {
            401 => ("invalid_request_error", Some("invalid_api_key")),
            429 => ("requests", Some("rate_limit_exceeded")),
            500..=599 => ("server_error", None),
            _ => ("invalid_request_error", None),
        };
        let message = match echoed_key {
            Some(key) => format!(
                "Incorrect API key provided: {key}. You can find your API key at {API_KEYS_URL}."
            ),
            None => format!("mock error {}", status.as_u16()),
        };
        ApiError {
            status,
            message,
            kind,
            param: None,
            code,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }

    pub(crate) fn into_response(self) -> Response<MockBody> {
        json_response(self.status, &self.to_json())
    }
}

/// The answer of a `malformed` behaviour: truncated JSON, or for a stream a broken event.
pub(crate) fn malformed(state: &Arc<State>, body: &Bytes) -> Response<MockBody> {
    let stream = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false);
    if stream {
        let plan = SsePlan {
            events: vec![
                Bytes::from_static(b"data: {not json\n\n"),
                Bytes::from_static(SSE_DONE),
            ],
            ..SsePlan::default()
        };
        sse_response(StatusCode::OK, plan, state)
    } else {
        let mut resp = json_response(StatusCode::OK, &Value::Null);
        *resp.body_mut() = MockBody::full(Bytes::from_static(
            br#"{"id": "chatcmpl-broken", "choices": ["#,
        ));
        resp
    }
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

fn usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

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

/// The words of the reply to `input`, padded with filler words up to `min_words`.
fn reply_words(input: &str, min_words: usize) -> Vec<String> {
    let truncated: String = input.chars().take(MAX_ECHO_CHARS).collect();
    let mut words: Vec<String> = REPLY_PREFIX
        .split_whitespace()
        .chain(truncated.split_whitespace())
        .map(str::to_owned)
        .collect();
    while words.len() < min_words {
        words.push(PAD_WORD.to_owned());
    }
    words
}

/// Spreads `words` over exactly `pieces` stream chunks (words keep their separating spaces, so
/// the concatenation of the pieces is `words.join(" ")`).
fn spread_words(words: &[String], pieces: usize) -> Vec<String> {
    let n = words.len();
    (0..pieces)
        .map(|i| {
            let (start, end) = (i * n / pieces, (i + 1) * n / pieces);
            let mut piece = String::new();
            for (j, word) in words[start..end].iter().enumerate() {
                if start + j > 0 {
                    piece.push(' ');
                }
                piece.push_str(word);
            }
            piece
        })
        .collect()
}

/// Splits `s` (ASCII) into `pieces` non-empty parts (fewer if `s` is shorter).
fn split_ascii(s: &str, pieces: usize) -> Vec<&str> {
    let pieces = pieces.clamp(1, s.len().max(1));
    let n = s.len();
    (0..pieces)
        .filter_map(|i| s.get(i * n / pieces..(i + 1) * n / pieces))
        .collect()
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
        if self.include_usage {
            if let Value::Object(m) = &mut v {
                m.insert("usage".to_owned(), Value::Null);
            }
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

// ---------------------------------------------------------------------------------------------
// Chat completions

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
    if !last_text.to_ascii_lowercase().contains("weather") {
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

fn chat(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response<MockBody>, ApiError> {
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
                let words = reply_words(&last_text, chunks);
                (
                    json!({"role": "assistant", "content": words.join(" "), "refusal": null}),
                    "stop",
                    words.len() as u64,
                )
            }
        };
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
            "usage": usage(prompt_tokens, completion_tokens),
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
            let words = reply_words(&last_text, chunks);
            for piece in spread_words(&words, chunks) {
                events.push(head.event(chat_delta(json!({"content": piece}), None)));
            }
            ("stop", words.len() as u64)
        }
    };
    let content_len = events.len() - 1;
    events.push(head.event(chat_delta(json!({}), Some(finish_reason))));
    if head.include_usage {
        events.push(head.usage_event(usage(prompt_tokens, completion_tokens)));
    }
    events.push(Bytes::from_static(SSE_DONE));
    let plan = SsePlan {
        events,
        content_start: 1,
        content_len,
        ..SsePlan::default()
    }
    .with_behavior(ctx.behavior);
    Ok(sse_response(StatusCode::OK, plan, ctx.state))
}

// ---------------------------------------------------------------------------------------------
// Legacy completions

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

fn completions(ctx: &Ctx<'_>, body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let req = parse_object(body)?;
    let model = required_model(&req)?;
    let (prompt, prompt_tokens) = prompt_text_and_tokens(req.get("prompt"))?;
    let chunks = ctx.behavior.chunks.unwrap_or(DEFAULT_CHUNKS);
    let words = reply_words(&prompt, chunks);
    let completion_tokens = words.len() as u64;
    let id = format!("cmpl-mock-{}", ctx.state.next_id());
    let created = unix_now();

    if !is_stream(&req) {
        let resp = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": completion_choice(&words.join(" "), Some("stop")),
            "usage": usage(prompt_tokens, completion_tokens),
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
    events.push(head.event(completion_choice("", Some("stop"))));
    if head.include_usage {
        events.push(head.usage_event(usage(prompt_tokens, completion_tokens)));
    }
    events.push(Bytes::from_static(SSE_DONE));
    let plan = SsePlan {
        events,
        content_start: 0,
        content_len: chunks,
        ..SsePlan::default()
    }
    .with_behavior(ctx.behavior);
    Ok(sse_response(StatusCode::OK, plan, ctx.state))
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// One input to embed.
enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

impl EmbeddingInput<'_> {
    fn tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(t) => t.split_whitespace().count() as u64,
            EmbeddingInput::Tokens(t) => t.len() as u64,
        }
    }

    fn hash(&self) -> u64 {
        let mut h = Fnv::default();
        match self {
            EmbeddingInput::Text(t) => h.write(t.as_bytes()),
            EmbeddingInput::Tokens(toks) => {
                h.write(b"\0tokens");
                for t in *toks {
                    h.write(&t.as_i64().unwrap_or(-1).to_le_bytes());
                }
            }
        }
        h.0
    }
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A deterministic unit-length vector derived from `seed`.
fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            let bits = (splitmix64(&mut state) >> 40) as u32; // 24 random bits
            (bits as f32 / (1u32 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput<'_>>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "'input' must be a non-empty string, array of strings, array of tokens, or array of \
             token arrays",
            Some("input"),
        )
    };
    match input {
        Some(Value::String(s)) => Ok(vec![EmbeddingInput::Text(s)]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_number) {
                return Ok(vec![EmbeddingInput::Tokens(items)]);
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(EmbeddingInput::Text(s)),
                    Value::Array(toks) if toks.iter().all(Value::is_number) => {
                        Ok(EmbeddingInput::Tokens(toks))
                    }
                    _ => Err(invalid()),
                })
                .collect()
        }
        _ => Err(invalid()),
    }
}

fn embeddings(body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let req = parse_object(body)?;
    let model = required_model(&req)?;
    let inputs = embedding_inputs(req.get("input"))?;
    let dimensions = match req.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIMENSIONS,
        Some(d) => d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=MAX_EMBEDDING_DIMENSIONS).contains(d))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "dimensions must be an integer between 1 and {MAX_EMBEDDING_DIMENSIONS}"
                    ),
                    Some("dimensions"),
                )
            })?,
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format must be 'float' or 'base64'",
                Some("encoding_format"),
            ));
        }
    };
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            tokens += input.tokens();
            let v = embedding_vector(input.hash(), dimensions);
            let embedding = if base64 {
                let mut bytes = Vec::with_capacity(v.len() * 4);
                for x in &v {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                Value::String(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let resp = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(json_response(StatusCode::OK, &resp))
}

/// Standard base64 (with padding).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Models

fn model_json(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"})
}

fn models() -> Response<MockBody> {
    let data: Vec<Value> = MODELS.iter().map(|id| model_json(id)).collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn words_are_spread_and_padded() {
        let words = reply_words("hi", 6);
        assert_eq!(words.len(), 6);
        let pieces = spread_words(&words, 6);
        assert_eq!(pieces.concat(), words.join(" "));
        assert!(pieces.iter().all(|p| !p.is_empty()));

        let words = reply_words("a b c d e f g h", 3);
        let pieces = spread_words(&words, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), "Mock reply to: a b c d e f g h");
    }

    #[test]
    fn arguments_split_in_pieces() {
        let parts = split_ascii(TOOL_ARGUMENTS, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.concat(), TOOL_ARGUMENTS);
        assert_eq!(split_ascii(TOOL_ARGUMENTS, 1000).concat(), TOOL_ARGUMENTS);
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_vector(EmbeddingInput::Text("x").hash(), 16);
        let b = embedding_vector(EmbeddingInput::Text("x").hash(), 16);
        assert_eq!(a, b);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
