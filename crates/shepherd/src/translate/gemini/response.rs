//! Gemini answers decoded into the canonical form: candidate parts, finish reasons (Gemini has no
//! tool-call reason: `STOP` with function calls means tool calls), `usageMetadata`, a blocked
//! prompt, and `batchEmbedContents` answers as OpenAI embeddings.

use serde_json::{Value, json};

use crate::translate::ir::{Choice, Finish, Part, Response, ToolCall, Usage};

pub fn finish_of(reason: &str, has_calls: bool) -> Finish {
    match reason {
        "MAX_TOKENS" => Finish::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => Finish::ContentFilter,
        _ if has_calls => Finish::ToolCalls,
        _ => Finish::Stop,
    }
}

/// `usageMetadata` -> canonical usage (prompt includes cached content; output = candidates +
/// thoughts).
pub fn usage_of(metadata: &Value) -> Option<Usage> {
    if !metadata.is_object() {
        return None;
    }
    let count = |name: &str| metadata[name].as_u64().unwrap_or(0);
    let thoughts = count("thoughtsTokenCount");
    Some(Usage {
        input: count("promptTokenCount") + count("toolUsePromptTokenCount"),
        cache_read: count("cachedContentTokenCount"),
        cache_write: 0,
        output: count("candidatesTokenCount") + thoughts,
        reasoning: thoughts,
    })
}

/// A call id for a function call that came without one.
pub fn synthetic_call_id() -> String {
    format!("call_{:016x}", fastrand::u64(..))
}

/// The canonical parts of one candidate's content.
pub fn parts_of(content: &Value) -> Vec<Part> {
    let mut parts = Vec::new();
    for part in content["parts"].as_array().into_iter().flatten() {
        if let Some(call) = part.get("functionCall") {
            parts.push(Part::ToolCall(ToolCall {
                id: call["id"]
                    .as_str()
                    .filter(|id| !id.is_empty())
                    .map_or_else(synthetic_call_id, str::to_owned),
                name: call["name"].as_str().unwrap_or_default().to_owned(),
                arguments: if call["args"].is_object() {
                    call["args"].to_string()
                } else {
                    "{}".to_owned()
                },
            }));
        } else if let Some(text) = part["text"].as_str() {
            if part["thought"].as_bool() == Some(true) {
                parts.push(Part::Thinking {
                    text: text.to_owned(),
                    signature: part["thoughtSignature"].as_str().map(str::to_owned),
                });
            } else if !text.is_empty() {
                parts.push(Part::Text(text.to_owned()));
            }
        }
    }
    parts
}

/// Decodes a `GenerateContentResponse`: every candidate, in the order of its `index`.
pub fn decode(body: &Value) -> Result<Response, String> {
    let usage = usage_of(&body["usageMetadata"]);
    let id = body["responseId"].as_str().map(str::to_owned);
    let model = body["modelVersion"].as_str().map(str::to_owned);
    let mut candidates: Vec<&Value> = body["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    if candidates.is_empty() {
        if body["promptFeedback"]["blockReason"].is_string() {
            return Ok(Response {
                id,
                model,
                parts: Vec::new(),
                finish: Finish::ContentFilter,
                stop_sequence: None,
                alternatives: Vec::new(),
                usage,
            });
        }
        return Err("the answer has no candidates".to_owned());
    }
    candidates.sort_by_key(|candidate| candidate["index"].as_u64().unwrap_or(0));
    let mut choices = candidates.into_iter().map(|candidate| {
        let parts = parts_of(&candidate["content"]);
        let has_calls = parts.iter().any(|p| matches!(p, Part::ToolCall(_)));
        Choice {
            finish: finish_of(
                candidate["finishReason"].as_str().unwrap_or("STOP"),
                has_calls,
            ),
            parts,
            stop_sequence: None,
        }
    });
    let first = choices.next().ok_or("the answer has no candidates")?;
    Ok(Response {
        id,
        model,
        parts: first.parts,
        finish: first.finish,
        stop_sequence: None,
        alternatives: choices.collect(),
        usage,
    })
}

/// A `batchEmbedContents` answer as an OpenAI embeddings list.
pub fn decode_embeddings(
    body: &Value,
    model: &str,
    base64: bool,
    tokens: u64,
) -> Result<Value, String> {
    let embeddings = body["embeddings"]
        .as_array()
        .ok_or("the answer has no `embeddings` list")?;
    let mut data = Vec::with_capacity(embeddings.len());
    for (index, embedding) in embeddings.iter().enumerate() {
        let values = embedding["values"]
            .as_array()
            .ok_or("an embedding has no `values`")?;
        let embedding = if base64 {
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|v| (v.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                .collect();
            json!(crate::wire::base64::encode(&bytes))
        } else {
            Value::Array(values.clone())
        };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    Ok(json!({"object": "list", "data": data, "model": model,
              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidate_with_call_means_tool_calls() {
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "thinking...", "thought": true, "thoughtSignature": "sig"},
                {"text": "Checking"},
                {"functionCall": {"name": "look", "args": {"a": 1}}}
            ]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 5, "thoughtsTokenCount": 7,
                              "cachedContentTokenCount": 8, "totalTokenCount": 32},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"
        });
        let response = decode(&body).unwrap();
        assert_eq!(response.finish, Finish::ToolCalls);
        assert_eq!(response.text(), "Checking");
        let call = response.tool_calls().next().unwrap();
        assert!(call.id.starts_with("call_"));
        assert_eq!(call.arguments, r#"{"a":1}"#);
        assert!(
            matches!(&response.parts[0], Part::Thinking { signature: Some(s), .. } if s == "sig")
        );
        let usage = response.usage.unwrap();
        assert_eq!(
            (usage.input, usage.cache_read, usage.output, usage.reasoning),
            (20, 8, 12, 7)
        );
    }

    #[test]
    fn finish_reasons_and_blocked_prompts() {
        assert_eq!(finish_of("MAX_TOKENS", false), Finish::Length);
        assert_eq!(finish_of("SAFETY", true), Finish::ContentFilter);
        assert_eq!(finish_of("STOP", false), Finish::Stop);
        assert_eq!(finish_of("MALFORMED_FUNCTION_CALL", false), Finish::Stop);
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}});
        assert_eq!(decode(&blocked).unwrap().finish, Finish::ContentFilter);
        assert!(decode(&json!({})).is_err());
    }

    #[test]
    fn embeddings_in_openai_shape() {
        let body = json!({"embeddings": [{"values": [0.5, -0.25]}, {"values": [1.0, 0.0]}]});
        let out = decode_embeddings(&body, "e", false, 3).unwrap();
        assert_eq!(out["data"][1]["index"], 1);
        assert_eq!(out["data"][0]["embedding"], json!([0.5, -0.25]));
        let out = decode_embeddings(&body, "e", true, 3).unwrap();
        assert_eq!(out["data"][0]["embedding"], "AAAAPwAAgL4=");
    }
}
