//! The control API under `/_mock`: `POST /_mock/behavior`, `GET /_mock/behavior`,
//! `POST /_mock/reset`, `GET /_mock/requests` and `GET /_mock/stats` (never recorded).

use bytes::Bytes;
use hyper::{Method, Response, StatusCode};
use serde_json::Value;

use crate::body::MockBody;
use crate::openai::ApiError;
use crate::{Behavior, RecordedRequest, State, json_response, lock};

/// The control API under `/_mock`.
pub(crate) fn control(
    state: &State,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Response<MockBody> {
    match (method.as_str(), path) {
        ("POST", "/_mock/behavior") => {
            let value = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Object(serde_json::Map::new())
            } else {
                match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => return ApiError::bad_json(&e).into_response(),
                }
            };
            match Behavior::from_json(&value) {
                Ok(behavior) => {
                    let json = behavior.to_json();
                    state.set_behavior(behavior);
                    json_response(StatusCode::OK, &json)
                }
                Err(message) => ApiError::invalid(message, None).into_response(),
            }
        }
        ("GET", "/_mock/behavior") => json_response(StatusCode::OK, &state.behavior().to_json()),
        ("POST", "/_mock/reset") => {
            state.reset();
            json_response(StatusCode::OK, &serde_json::json!({"ok": true}))
        }
        ("GET", "/_mock/requests") => {
            let list: Vec<Value> = lock(&state.requests)
                .iter()
                .map(RecordedRequest::to_json)
                .collect();
            json_response(StatusCode::OK, &Value::Array(list))
        }
        ("GET", "/_mock/stats") => json_response(StatusCode::OK, &state.stats().to_json()),
        _ => ApiError::not_found(method, path).into_response(),
    }
}
