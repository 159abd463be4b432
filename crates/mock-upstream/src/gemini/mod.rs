//! The Gemini API (v1beta, also v1 and v1alpha) in Google's wire format:
//! `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (`?alt=sse`: SSE;
//! without it one JSON array streamed element by element), `:countTokens` and
//! `:batchEmbedContents`; Google-shaped
//! errors (`{"error":{"code","message","status"}}`) and the broken answers of the `malformed`
//! behaviour. Replies follow the same deterministic rules as the OpenAI side.

mod embed;
mod generate;
mod request;

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::State;
use crate::body::{MockBody, SsePlan, sse_data};
use crate::route::{Ctx, query_param, strip_version};
use crate::{json_response, sse_response};

/// How a `generateContent` answer is delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `:generateContent`: one JSON object.
    Whole,
    /// `:streamGenerateContent?alt=sse`: `data: {chunk}` events.
    Sse,
    /// `:streamGenerateContent`: a JSON array of chunks, streamed element by element.
    Array,
}

/// `/v1beta/…`, `/v1alpha/…` and `/v1/models/{model}:{method}`.
pub(crate) fn is_gemini_path(path: &str) -> bool {
    ["/v1beta", "/v1alpha"]
        .iter()
        .any(|v| path == *v || path.strip_prefix(v).is_some_and(|r| r.starts_with('/')))
        || strip_version(path)
            .strip_prefix("/models/")
            .is_some_and(|rest| rest.contains(':'))
}

/// `{model}` and `{method}` of `/{version}/models/{model}:{method}`.
fn model_and_method(path: &str) -> Option<(&str, &str)> {
    let rest = ["/v1beta", "/v1alpha", "/v1"]
        .iter()
        .find_map(|v| path.strip_prefix(v))?;
    let (model, method) = rest.strip_prefix("/models/")?.rsplit_once(':')?;
    Some((model, method)).filter(|(m, _)| !m.is_empty() && !m.contains('/'))
}

/// Answers a Gemini route, or `None` when the path is not one.
pub(crate) fn route(ctx: &Ctx<'_>, parts: &Parts, body: &Bytes) -> Option<Response<MockBody>> {
    let (model, method) = model_and_method(parts.uri.path())?;
    if parts.method != Method::POST {
        return None;
    }
    let result = match method {
        "generateContent" => generate::generate(ctx, model, body, Mode::Whole),
        "streamGenerateContent" => generate::generate(ctx, model, body, stream_mode(parts)),
        "countTokens" => generate::count_tokens(body),
        "batchEmbedContents" => embed::batch(model, body),
        _ => return None,
    };
    Some(result.unwrap_or_else(ApiError::into_response))
}

fn stream_mode(parts: &Parts) -> Mode {
    match query_param(parts.uri.query(), "alt").as_deref() {
        Some("sse") => Mode::Sse,
        _ => Mode::Array,
    }
}

/// A Google error answer: `{"error":{"code","message","status","details"?}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    details: Vec<Value>,
}

impl ApiError {
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub(crate) fn not_found(method: &Method, path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("Not found ({method} {path}): unknown route of the mock upstream"),
            details: Vec::new(),
        }
    }

    /// The error injected by `status` (and `echo_key`, `retry_after`) in a behaviour.
    pub(crate) fn injected(
        status: u16,
        echoed_key: Option<&str>,
        retry_after: Option<&str>,
    ) -> ApiError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut details = Vec::new();
        let message = match echoed_key {
            Some(key) => {
                details.push(json!({
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }));
                format!("API key not valid. Please pass a valid API key. (key: {key})")
            }
            None => format!("mock error {}", status.as_u16()),
        };
        if let Some(secs) = retry_after.and_then(|r| r.trim().parse::<u64>().ok())
            && status == StatusCode::TOO_MANY_REQUESTS
        {
            details.push(json!({
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{secs}s"),
            }));
        }
        ApiError {
            status,
            message,
            details,
        }
    }

    fn to_json(&self) -> Value {
        let mut error = json!({
            "code": self.status.as_u16(),
            "message": self.message,
            "status": status_name(self.status.as_u16()),
        });
        if let (Value::Object(m), false) = (&mut error, self.details.is_empty()) {
            m.insert("details".to_owned(), Value::Array(self.details.clone()));
        }
        json!({"error": error})
    }

    pub(crate) fn into_response(self) -> Response<MockBody> {
        json_response(self.status, &self.to_json())
    }
}

/// The google.rpc status name of an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500..=599 => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

/// The in-stream error event of `stream_error_after` (for the array form: the last element, and
/// the first one when `first`).
fn stream_error_event(mode: Mode, first: bool) -> Bytes {
    let err = ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "The model is overloaded. Please try again later.".to_owned(),
        details: Vec::new(),
    };
    match mode {
        Mode::Array => {
            let sep = if first { "" } else { ",\r\n" };
            Bytes::from(format!("{sep}{}\r\n]", err.to_json()))
        }
        Mode::Sse | Mode::Whole => sse_data(&err.to_json()),
    }
}

/// The answer of a `malformed` behaviour: truncated JSON, or for an SSE stream a broken event.
pub(crate) fn malformed(state: &Arc<State>, parts: &Parts) -> Response<MockBody> {
    let mode = match model_and_method(parts.uri.path()) {
        Some((_, "streamGenerateContent")) => stream_mode(parts),
        _ => Mode::Whole,
    };
    if mode == Mode::Sse {
        let plan = SsePlan {
            events: vec![Bytes::from_static(b"data: {not json\n\n")],
            ..SsePlan::default()
        };
        return sse_response(StatusCode::OK, plan, state);
    }
    let mut resp = Response::new(MockBody::full(Bytes::from_static(
        br#"{"candidates": [{"content": {"role": "model", "parts": ["#,
    )));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_statuses() {
        assert!(is_gemini_path("/v1beta/models"));
        assert!(is_gemini_path("/v1/models/g:generateContent"));
        assert!(!is_gemini_path("/v1/models/mock-gpt"));
        assert_eq!(
            model_and_method("/v1beta/models/gemini-2.5-flash:streamGenerateContent"),
            Some(("gemini-2.5-flash", "streamGenerateContent"))
        );
        assert_eq!(model_and_method("/v1beta/models/:generateContent"), None);
        assert_eq!(status_name(429), "RESOURCE_EXHAUSTED");
        let v = ApiError::injected(429, Some("k"), Some("7")).to_json();
        assert_eq!(v["error"]["details"][0]["reason"], "API_KEY_INVALID");
        assert_eq!(v["error"]["details"][1]["retryDelay"], "7s");
    }
}
