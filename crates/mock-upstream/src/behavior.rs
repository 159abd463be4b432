//! Fault injection: the [`Behavior`] applied to a request, built from the server-wide default
//! (set through [`crate::MockUpstream::set_behavior`] or `POST /_mock/behavior`) and overridden
//! field by field by `x-mock-*` request headers.

use hyper::HeaderMap;
use serde_json::{Map, Value};

use crate::style::Style;

/// How the mock answers a request. Every field left at its default means "behave normally".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Behavior {
    /// Answer with this status; a non-2xx status gets an error JSON body in the shape of the
    /// protocol of the route (OpenAI, Anthropic or Gemini), unless `body` is set. A 2xx status without `body` changes only the status of the normal answer.
    pub status: Option<u16>,
    /// Answer with exactly this body (content-type `application/json`).
    pub body: Option<String>,
    /// Wait this long before sending the response headers.
    pub latency_ms: Option<u64>,
    /// Number of content chunks in a stream (default 4).
    pub chunks: Option<usize>,
    /// Pause before each content chunk of a stream (default 0).
    pub chunk_delay_ms: Option<u64>,
    /// Stream: after N content chunks, abort the connection abruptly (no finish chunk, no `[DONE]`).
    pub cut_after: Option<usize>,
    /// Stream: after N content chunks, keep the connection open but send nothing more.
    pub stall_after: Option<usize>,
    /// Answer 200 with a body that is not JSON (streams: a `data: {not json` event).
    pub malformed: bool,
    /// Stream: after N content chunks, insert an event that is not JSON (`data: {not json`);
    /// the rest of the stream follows as usual.
    pub malformed_after: Option<usize>,
    /// Add a `Retry-After` header with this value.
    pub retry_after: Option<String>,
    /// Error bodies include the received upstream key ("Incorrect API key provided: <key>..."),
    /// and error answers carry it in `www-authenticate` and `x-mock-echo` headers. Without an
    /// explicit `status`, this implies status 401.
    pub echo_key: bool,
    /// With `echo_key`: the key in the body is JSON-escaped (`-` as `\u002d`, `/` as `\/`), as
    /// some servers write strings (header `x-mock-echo-key: escaped`).
    pub echo_escaped: bool,
    /// Answer 200 with exactly these bytes as a `text/event-stream` (server-wide only).
    pub sse_body: Option<String>,
    /// Stream: after N content chunks, send the protocol's in-stream error event (OpenAI
    /// `data: {"error":…}`, Anthropic `event: error` with `overloaded_error`, Gemini
    /// `data: {"error":…}` with `UNAVAILABLE`) and end the stream cleanly.
    pub stream_error_after: Option<usize>,
    /// Report this many cache-read prompt tokens, on top of the uncached ones: Anthropic
    /// `cache_read_input_tokens`, OpenAI `prompt_tokens_details.cached_tokens` (included in
    /// `prompt_tokens`), Gemini `cachedContentTokenCount` (included in `promptTokenCount`).
    pub cache_read_tokens: Option<u64>,
    /// Force this finish reason (OpenAI `finish_reason`, Anthropic `stop_reason`, Gemini
    /// `finishReason`, e.g. `SAFETY`), sent as is.
    pub finish_reason: Option<String>,
    /// Gemini: report this many thinking tokens (`usageMetadata.thoughtsTokenCount`, included in
    /// `totalTokenCount`).
    pub thoughts_tokens: Option<u64>,
    /// Server-wide only: `status` and `retry_after` apply to the next N requests, after which the
    /// server answers normally again (a 429 storm that ends, an outage that heals).
    pub fail_times: Option<u64>,
    /// Server-wide only: requests presenting this upstream key get 401 (a revoked key among
    /// several).
    pub refuse_key: Option<String>,
    /// How the bytes are written (compact, or spaced like Python servers and LiteLLM).
    pub style: Style,
}

/// The request headers that override [`Behavior`] fields.
pub const HEADER_STATUS: &str = "x-mock-status";
/// See [`Behavior::body`].
pub const HEADER_BODY: &str = "x-mock-body";
/// See [`Behavior::latency_ms`].
pub const HEADER_LATENCY_MS: &str = "x-mock-latency-ms";
/// See [`Behavior::chunks`].
pub const HEADER_CHUNKS: &str = "x-mock-chunks";
/// See [`Behavior::chunk_delay_ms`].
pub const HEADER_CHUNK_DELAY_MS: &str = "x-mock-chunk-delay-ms";
/// See [`Behavior::cut_after`].
pub const HEADER_CUT_AFTER: &str = "x-mock-cut-after";
/// See [`Behavior::stall_after`].
pub const HEADER_STALL_AFTER: &str = "x-mock-stall-after";
/// See [`Behavior::malformed`].
pub const HEADER_MALFORMED: &str = "x-mock-malformed";
/// See [`Behavior::malformed_after`].
pub const HEADER_MALFORMED_AFTER: &str = "x-mock-malformed-after";
/// See [`Behavior::retry_after`].
pub const HEADER_RETRY_AFTER: &str = "x-mock-retry-after";
/// See [`Behavior::echo_key`].
pub const HEADER_ECHO_KEY: &str = "x-mock-echo-key";
/// See [`Behavior::stream_error_after`].
pub const HEADER_STREAM_ERROR_AFTER: &str = "x-mock-stream-error-after";
/// See [`Behavior::cache_read_tokens`].
pub const HEADER_CACHE_READ_TOKENS: &str = "x-mock-cache-read-tokens";
/// See [`Behavior::finish_reason`].
pub const HEADER_FINISH_REASON: &str = "x-mock-finish-reason";
/// See [`Behavior::thoughts_tokens`].
pub const HEADER_THOUGHTS_TOKENS: &str = "x-mock-thoughts-tokens";
/// See [`Behavior::style`] (`compact` or `spaced`).
pub const HEADER_STYLE: &str = "x-mock-style";

impl Behavior {
    /// Returns this behaviour overridden by the `x-mock-*` headers present in `headers`.
    /// Unknown `x-mock-*` headers are ignored; invalid values are an error.
    pub fn with_headers(&self, headers: &HeaderMap) -> Result<Behavior, String> {
        let mut out = self.clone();
        for (name, value) in headers {
            let name = name.as_str();
            if !name.starts_with("x-mock-") {
                continue;
            }
            let value = value
                .to_str()
                .map_err(|_| format!("header {name} is not valid ASCII"))?
                .trim();
            let bad = || format!("invalid value for header {name}: {value:?}");
            match name {
                HEADER_STATUS => out.status = Some(parse_status(value).ok_or_else(bad)?),
                HEADER_BODY => out.body = Some(value.to_owned()),
                HEADER_LATENCY_MS => out.latency_ms = Some(value.parse().map_err(|_| bad())?),
                HEADER_CHUNKS => out.chunks = Some(value.parse().map_err(|_| bad())?),
                HEADER_CHUNK_DELAY_MS => {
                    out.chunk_delay_ms = Some(value.parse().map_err(|_| bad())?);
                }
                HEADER_CUT_AFTER => out.cut_after = Some(value.parse().map_err(|_| bad())?),
                HEADER_STALL_AFTER => out.stall_after = Some(value.parse().map_err(|_| bad())?),
                HEADER_MALFORMED => out.malformed = parse_bool(value).ok_or_else(bad)?,
                HEADER_MALFORMED_AFTER => {
                    out.malformed_after = Some(value.parse().map_err(|_| bad())?);
                }
                HEADER_RETRY_AFTER => out.retry_after = Some(value.to_owned()),
                HEADER_ECHO_KEY if value.eq_ignore_ascii_case("escaped") => {
                    out.echo_key = true;
                    out.echo_escaped = true;
                }
                HEADER_ECHO_KEY => out.echo_key = parse_bool(value).ok_or_else(bad)?,
                HEADER_STREAM_ERROR_AFTER => {
                    out.stream_error_after = Some(value.parse().map_err(|_| bad())?);
                }
                HEADER_CACHE_READ_TOKENS => {
                    out.cache_read_tokens = Some(value.parse().map_err(|_| bad())?);
                }
                HEADER_FINISH_REASON if !value.is_empty() => {
                    out.finish_reason = Some(value.to_owned());
                }
                HEADER_FINISH_REASON => return Err(bad()),
                HEADER_THOUGHTS_TOKENS => {
                    out.thoughts_tokens = Some(value.parse().map_err(|_| bad())?);
                }
                HEADER_STYLE => out.style = Style::parse(value).ok_or_else(bad)?,
                _ => {}
            }
        }
        Ok(out)
    }

    /// Parses a JSON object whose keys are the snake_case field names (as accepted by
    /// `POST /_mock/behavior`). Missing or `null` fields keep their default; unknown fields are
    /// an error.
    pub fn from_json(value: &Value) -> Result<Behavior, String> {
        let Some(obj) = value.as_object() else {
            return Err("behavior must be a JSON object".to_owned());
        };
        let mut out = Behavior::default();
        for (key, v) in obj {
            if v.is_null() {
                continue;
            }
            let bad = || format!("invalid value for {key}: {v}");
            match key.as_str() {
                "status" => {
                    let s = v.as_u64().and_then(|s| u16::try_from(s).ok());
                    out.status = Some(s.filter(|s| valid_status(*s)).ok_or_else(bad)?);
                }
                "body" => out.body = Some(json_string(v)),
                "latency_ms" => out.latency_ms = Some(v.as_u64().ok_or_else(bad)?),
                "chunks" => out.chunks = Some(json_usize(v).ok_or_else(bad)?),
                "chunk_delay_ms" => out.chunk_delay_ms = Some(v.as_u64().ok_or_else(bad)?),
                "cut_after" => out.cut_after = Some(json_usize(v).ok_or_else(bad)?),
                "stall_after" => out.stall_after = Some(json_usize(v).ok_or_else(bad)?),
                "malformed" => out.malformed = v.as_bool().ok_or_else(bad)?,
                "malformed_after" => out.malformed_after = Some(json_usize(v).ok_or_else(bad)?),
                "retry_after" => {
                    out.retry_after = Some(match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(bad()),
                    });
                }
                "echo_key" => out.echo_key = v.as_bool().ok_or_else(bad)?,
                "echo_escaped" => out.echo_escaped = v.as_bool().ok_or_else(bad)?,
                "sse_body" => out.sse_body = Some(v.as_str().ok_or_else(bad)?.to_owned()),
                "stream_error_after" => {
                    out.stream_error_after = Some(json_usize(v).ok_or_else(bad)?);
                }
                "cache_read_tokens" => out.cache_read_tokens = Some(v.as_u64().ok_or_else(bad)?),
                "finish_reason" => {
                    let reason = v.as_str().filter(|r| !r.is_empty()).ok_or_else(bad)?;
                    out.finish_reason = Some(reason.to_owned());
                }
                "thoughts_tokens" => out.thoughts_tokens = Some(v.as_u64().ok_or_else(bad)?),
                "fail_times" => out.fail_times = Some(v.as_u64().ok_or_else(bad)?),
                "refuse_key" => {
                    out.refuse_key = Some(v.as_str().ok_or_else(bad)?.to_owned());
                }
                "style" => out.style = v.as_str().and_then(Style::parse).ok_or_else(bad)?,
                _ => return Err(format!("unknown behavior field: {key}")),
            }
        }
        Ok(out)
    }

    /// The JSON form accepted by [`Behavior::from_json`].
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("status".into(), self.status.into());
        m.insert("body".into(), self.body.clone().into());
        m.insert("latency_ms".into(), self.latency_ms.into());
        m.insert("chunks".into(), self.chunks.map(|c| c as u64).into());
        m.insert("chunk_delay_ms".into(), self.chunk_delay_ms.into());
        m.insert("cut_after".into(), self.cut_after.map(|c| c as u64).into());
        m.insert(
            "stall_after".into(),
            self.stall_after.map(|c| c as u64).into(),
        );
        m.insert("malformed".into(), self.malformed.into());
        m.insert(
            "malformed_after".into(),
            self.malformed_after.map(|c| c as u64).into(),
        );
        m.insert("retry_after".into(), self.retry_after.clone().into());
        m.insert("echo_key".into(), self.echo_key.into());
        m.insert("echo_escaped".into(), self.echo_escaped.into());
        m.insert("sse_body".into(), self.sse_body.clone().into());
        m.insert(
            "stream_error_after".into(),
            self.stream_error_after.map(|c| c as u64).into(),
        );
        m.insert("cache_read_tokens".into(), self.cache_read_tokens.into());
        m.insert("finish_reason".into(), self.finish_reason.clone().into());
        m.insert("thoughts_tokens".into(), self.thoughts_tokens.into());
        m.insert("fail_times".into(), self.fail_times.into());
        m.insert("refuse_key".into(), self.refuse_key.clone().into());
        m.insert("style".into(), self.style.name().into());
        Value::Object(m)
    }

    /// The status to fail with, if this behaviour asks for an error answer.
    pub(crate) fn error_status(&self) -> Option<u16> {
        match self.status {
            Some(s) if !(200..300).contains(&s) => Some(s),
            Some(_) => None,
            None if self.echo_key => Some(401),
            None => None,
        }
    }
}

fn valid_status(s: u16) -> bool {
    (200..=599).contains(&s)
}

fn parse_status(value: &str) -> Option<u16> {
    value.parse().ok().filter(|s| valid_status(*s))
}

fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

fn json_usize(v: &Value) -> Option<usize> {
    v.as_u64().and_then(|n| usize::try_from(n).ok())
}

/// A `body` given as a JSON value other than a string is sent as its compact JSON text.
fn json_string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn headers_override_field_by_field() {
        let base = Behavior {
            chunks: Some(7),
            latency_ms: Some(5),
            ..Behavior::default()
        };
        let mut h = HeaderMap::new();
        h.insert(HEADER_CHUNKS, HeaderValue::from_static("2"));
        h.insert(HEADER_MALFORMED, HeaderValue::from_static("1"));
        h.insert("x-mock-unknown", HeaderValue::from_static("zzz"));
        h.insert(HEADER_STREAM_ERROR_AFTER, HeaderValue::from_static("1"));
        h.insert(HEADER_FINISH_REASON, HeaderValue::from_static("SAFETY"));
        let b = base.with_headers(&h).unwrap();
        assert_eq!(b.stream_error_after, Some(1));
        assert_eq!(b.finish_reason.as_deref(), Some("SAFETY"));
        assert_eq!(b.chunks, Some(2));
        assert_eq!(b.latency_ms, Some(5));
        assert!(b.malformed);

        let mut h = HeaderMap::new();
        h.insert(HEADER_STATUS, HeaderValue::from_static("abc"));
        assert!(base.with_headers(&h).is_err());
    }

    #[test]
    fn json_round_trip() {
        let b = Behavior {
            status: Some(503),
            body: Some("{}".into()),
            cut_after: Some(1),
            retry_after: Some("3".into()),
            echo_key: true,
            stream_error_after: Some(2),
            cache_read_tokens: Some(7),
            finish_reason: Some("SAFETY".into()),
            thoughts_tokens: Some(9),
            fail_times: Some(2),
            refuse_key: Some("sk-old".into()),
            style: Style::Spaced,
            ..Behavior::default()
        };
        assert_eq!(Behavior::from_json(&b.to_json()).unwrap(), b);
        assert!(Behavior::from_json(&serde_json::json!({"nope": 1})).is_err());
        assert_eq!(
            Behavior::from_json(&serde_json::json!({"retry_after": 5}))
                .unwrap()
                .retry_after
                .as_deref(),
            Some("5")
        );
    }
}
