//! The Anthropic Messages API in Anthropic's wire format: `POST /v1/messages` (also without
//! `/v1`) and `POST /v1/messages/count_tokens`, Anthropic-shaped errors
//! (`{"type":"error","error":{"type","message"}}`) and the broken answers of the `malformed`
//! behaviour. Replies follow the same deterministic rules as the OpenAI side.

mod messages;
mod request;

use std::sync::Arc;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::State;
use crate::body::{MockBody, SsePlan, sse_named};
use crate::route::Ctx;
use crate::{json_response, sse_response};

/// Answers an Anthropic route, or `None` when `path` (with any `/v1` prefix already removed) is
/// not one.
pub(crate) fn route(
    ctx: &Ctx<'_>,
    parts: &Parts,
    path: &str,
    body: &Bytes,
) -> Option<Response<MockBody>> {
    let result = match (parts.method.as_str(), path) {
        ("POST", "/messages") => messages::messages(ctx, &parts.headers, body),
        ("POST", "/messages/count_tokens") => messages::count_tokens(&parts.headers, body),
        _ => return None,
    };
    Some(result.unwrap_or_else(ApiError::into_response))
}

/// An Anthropic error answer: `{"type":"error","error":{"type","message"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    pub(crate) fn not_found(method: &Method, path: &str) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: format!("Not Found ({method} {path}): unknown route of the mock upstream"),
        }
    }

    /// The error injected by `status` (and `echo_key`) in a behaviour.
    pub(crate) fn injected(status: u16, echoed_key: Option<&str>) -> ApiError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match status.as_u16() {
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            504 => "timeout_error",
            529 => "overloaded_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        };
        let message = match (echoed_key, status.as_u16()) {
            (Some(key), _) => format!("invalid x-api-key: {key}"),
            (None, 529) => "Overloaded".to_owned(),
            (None, s) => format!("mock error {s}"),
        };
        ApiError {
            status,
            kind,
            message,
        }
    }

    fn to_json(&self) -> Value {
        json!({"type": "error", "error": {"type": self.kind, "message": self.message}})
    }

    pub(crate) fn into_response(self) -> Response<MockBody> {
        json_response(self.status, &self.to_json())
    }
}

/// The in-stream error event of `stream_error_after`.
fn stream_error_event() -> Bytes {
    let err = ApiError {
        status: StatusCode::OK,
        kind: "overloaded_error",
        message: "Overloaded".to_owned(),
    };
    sse_named("error", &err.to_json())
}

/// The answer of a `malformed` behaviour: truncated JSON, or for a stream a broken
/// `message_start` event.
pub(crate) fn malformed(state: &Arc<State>, body: &Bytes) -> Response<MockBody> {
    let stream = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(Value::as_bool))
        .unwrap_or(false);
    if stream {
        let plan = SsePlan {
            events: vec![
                Bytes::from_static(b"event: message_start\ndata: {not json\n\n"),
                sse_named("message_stop", &json!({"type": "message_stop"})),
            ],
            ..SsePlan::default()
        };
        sse_response(StatusCode::OK, plan, state)
    } else {
        let mut resp = json_response(StatusCode::OK, &Value::Null);
        *resp.body_mut() = MockBody::full(Bytes::from_static(
            br#"{"id": "msg_broken", "type": "message", "content": ["#,
        ));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_errors_use_anthropic_types() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "api_error"),
            (529, "overloaded_error"),
        ] {
            let v = ApiError::injected(status, None).to_json();
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], kind, "{status}");
        }
        let v = ApiError::injected(401, Some("sk-ant-1")).to_json();
        assert!(v["error"]["message"].as_str().unwrap().contains("sk-ant-1"));
    }
}
