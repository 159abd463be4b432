//! `:batchEmbedContents`: one deterministic vector per request (the same vectors as the OpenAI
//! route for the same text), `outputDimensionality` honoured (default 8).

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::ApiError;
use super::request::parse_object;
use crate::body::MockBody;
use crate::json_response;
use crate::openai::embeddings::text_vector;

const DEFAULT_DIMENSIONS: u64 = 8;

pub(super) fn batch(model: &str, body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let req = parse_object(body)?;
    let Some(requests) = req.get("requests").and_then(Value::as_array) else {
        return Err(ApiError::invalid(
            "* BatchEmbedContentsRequest.requests: requests is not specified\n",
        ));
    };
    let mut embeddings = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let expected = format!("models/{model}");
        if request.get("model").and_then(Value::as_str) != Some(expected.as_str()) {
            return Err(ApiError::invalid(format!(
                "* BatchEmbedContentsRequest.requests[{i}].model: must be `{expected}`, the model of the URL\n"
            )));
        }
        let text: Vec<&str> = request["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|part| part["text"].as_str())
            .collect();
        if text.is_empty() {
            return Err(ApiError::invalid(format!(
                "* BatchEmbedContentsRequest.requests[{i}].content.parts: must hold text\n"
            )));
        }
        let dimensions = request["outputDimensionality"]
            .as_u64()
            .unwrap_or(DEFAULT_DIMENSIONS)
            .clamp(1, 3072);
        let values = text_vector(&text.join(" "), dimensions as usize);
        embeddings.push(json!({"values": values}));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"embeddings": embeddings}),
    ))
}
