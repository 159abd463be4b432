//! `GET /v1/models` and `GET /v1/models/{id}`: the fixed list of mock models.

use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::json_response;

/// The models listed by `GET /v1/models`.
pub const MODELS: &[&str] = &["mock-gpt", "mock-gpt-mini", "mock-embedding"];
const MODELS_CREATED: u64 = 1_700_000_000;

pub(super) fn model_json(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": MODELS_CREATED, "owned_by": "mock"})
}

pub(super) fn models() -> Response<MockBody> {
    let data: Vec<Value> = MODELS.iter().map(|id| model_json(id)).collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}
