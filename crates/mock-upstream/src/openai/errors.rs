//! OpenAI-shaped error answers ([`ApiError`]) and the broken answers of the `malformed`
//! behaviour.

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::State;
use crate::body::{MockBody, SSE_DONE, SsePlan, sse_data};
use crate::{json_response, sse_response};

const API_KEYS_URL: &str = "https://platform.openai.com/account/api-keys";

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

/// The in-stream error event of `stream_error_after`: `data: {"error":{…}}`.
pub(crate) fn stream_error_event() -> Bytes {
    let err = ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "The server had an error while processing your request.".to_owned(),
        kind: "server_error",
        param: None,
        code: None,
    };
    sse_data(&err.to_json())
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
