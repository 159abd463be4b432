//! Translation between protocols through one canonical form (`ir`): each client protocol
//! (OpenAI, Anthropic) decodes its requests into it and encodes answers out of it; each upstream
//! protocol (OpenAI-compatible, Anthropic, Gemini) does the reverse. Streams are translated event
//! by event (`Decoder` -> `ir::Event` -> `Encoder`), never buffered.
//!
//! When the client and the upstream speak the same protocol nothing here runs: bytes pass through.

pub mod anthropic;
pub mod errors;
pub mod fields;
pub mod gemini;
pub mod ir;
pub mod openai;
pub mod responses;
pub mod shapes;
pub mod stream;
pub mod tokens;

use serde::de::DeserializeOwned;

/// A client request that cannot be translated: the field at fault and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateError {
    pub field: Option<String>,
    pub message: String,
}

impl TranslateError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        TranslateError {
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    pub fn body(message: impl Into<String>) -> Self {
        TranslateError {
            field: None,
            message: message.into(),
        }
    }
}

/// Deserializes a request body; an error names the path of the field that failed.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, TranslateError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let message = error.into_inner().to_string();
            if path == "." {
                Err(TranslateError::body(message))
            } else {
                Err(TranslateError::field(&path, message))
            }
        }
    }
}

/// Parses a tool call's JSON arguments into the object Anthropic and Gemini expect.
pub fn arguments_object(arguments: &str, at: &str) -> Result<serde_json::Value, TranslateError> {
    if arguments.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_str::<serde_json::Value>(arguments) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        Ok(_) => Err(TranslateError::field(
            at,
            "tool call arguments must be a JSON object",
        )),
        Err(error) => Err(TranslateError::field(
            at,
            format!("tool call arguments are not valid JSON: {error}"),
        )),
    }
}
