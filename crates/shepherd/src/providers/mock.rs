//! The built-in `mock` provider: answers inside the process with deterministic OpenAI-shaped
//! completions, streams and embeddings, so the quickstart works with no network and no key.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use bytes::Bytes;
use serde_json::{Value, json};

use super::{Operation, UpstreamError, UpstreamRequest, UpstreamResponse};
use crate::wire::sse;

/// Answers a request as an OpenAI-compatible upstream would.
pub fn answer(request: &UpstreamRequest<'_>) -> Result<UpstreamResponse, UpstreamError> {
    let body: Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(error) => {
            return Ok(json_response(
                StatusCode::BAD_REQUEST,
                &error_body(&error.to_string()),
            ));
        }
    };
    let model = body["model"].as_str().unwrap_or("mock").to_owned();
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("mock-{}", request.request_id);
    let reply = match request.operation {
        Operation::Embeddings => {
            return Ok(json_response(StatusCode::OK, &embeddings(&body, &model)));
        }
        Operation::ChatCompletions => format!(
            "Hello from Shepherd's mock provider! You said: {}",
            last_user_text(&body)
        ),
        Operation::Completions => format!(" and so the mock continues: {}", prompt_text(&body)),
        other => {
            return Ok(json_response(
                StatusCode::NOT_FOUND,
                &error_body(&format!(
                    "the mock provider speaks OpenAI only, not {other:?}"
                )),
            ));
        }
    };
    let words: Vec<String> = split_words(&reply);
    let prompt_tokens = prompt_tokens(&body);
    let completion_tokens = words.len() as u64;
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                       "total_tokens": prompt_tokens + completion_tokens});
    let chat = request.operation == Operation::ChatCompletions;
    if !request.stream {
        let answer = if chat {
            json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion", "created": created,
                   "model": model, "system_fingerprint": "fp_shepherd_mock",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": reply, "refusal": null},
                                "logprobs": null, "finish_reason": "stop"}],
                   "usage": usage})
        } else {
            json!({"id": format!("cmpl-{id}"), "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": reply, "logprobs": null, "finish_reason": "stop"}],
                   "usage": usage})
        };
        return Ok(json_response(StatusCode::OK, &answer));
    }
    let include_usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |choices: Value, usage: Option<&Value>| {
        let mut event = if chat {
            json!({"id": format!("chatcmpl-{id}"), "object": "chat.completion.chunk", "created": created,
                   "model": model, "system_fingerprint": "fp_shepherd_mock", "choices": choices})
        } else {
            json!({"id": format!("cmpl-{id}"), "object": "text_completion", "created": created,
                   "model": model, "choices": choices})
        };
        if include_usage {
            event["usage"] = usage.cloned().unwrap_or(Value::Null);
        }
        sse::data_event(&event.to_string())
    };
    let piece = |text: &str, finish: Value| {
        if chat {
            json!([{"index": 0, "delta": if finish.is_null() { json!({"content": text}) } else { json!({}) },
                    "logprobs": null, "finish_reason": finish}])
        } else {
            json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}])
        }
    };
    let mut events = Vec::with_capacity(words.len() + 4);
    if chat {
        events.push(chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": null, "finish_reason": null}]),
            None,
        ));
    }
    for word in &words {
        events.push(chunk(piece(word, Value::Null), None));
    }
    events.push(chunk(piece("", json!("stop")), None));
    if include_usage {
        events.push(chunk(json!([]), Some(&usage)));
    }
    events.push(sse::data_event("[DONE]"));
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    Ok(UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body: Box::pin(futures_util::stream::iter(events.into_iter().map(Ok))),
    })
}

fn json_response(status: StatusCode, body: &Value) -> UpstreamResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let bytes = Bytes::from(body.to_string());
    UpstreamResponse {
        status,
        headers,
        body: Box::pin(futures_util::stream::once(async move {
            Ok::<_, UpstreamError>(bytes)
        })),
    }
}

fn error_body(message: &str) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
}

/// Text of the last user message (string content or text parts).
fn last_user_text(body: &Value) -> String {
    let Some(messages) = body["messages"].as_array() else {
        return String::new();
    };
    let Some(last) = messages.iter().rev().find(|m| m["role"] == "user") else {
        return String::new();
    };
    match &last["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn prompt_text(body: &Value) -> String {
    match &body["prompt"] {
        Value::String(text) => text.clone(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Words with their leading space, so that concatenating them gives back the text.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c == ' ' && !current.trim().is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Words of every message (or of the prompt), plus 4 per message for the chat framing.
fn prompt_tokens(body: &Value) -> u64 {
    let words = |content: &Value| match content {
        Value::String(text) => text.split_whitespace().count(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part["text"].as_str())
            .map(|text| text.split_whitespace().count())
            .sum(),
        _ => 0,
    };
    let count = match body["messages"].as_array() {
        Some(messages) => messages.iter().map(|m| words(&m["content"]) + 4).sum(),
        None => prompt_text(body).split_whitespace().count(),
    };
    count.max(1) as u64
}

fn count_words(text: &str) -> usize {
    text.split_whitespace().count().max(1)
}

/// Deterministic unit-length vectors derived from each input's bytes.
fn embeddings(body: &Value, model: &str) -> Value {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(text) => vec![text.clone()],
        Value::Array(items) => items.iter().map(|item| item.to_string()).collect(),
        other => vec![other.to_string()],
    };
    let dims = body["dimensions"].as_u64().unwrap_or(8).clamp(1, 4096) as usize;
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            tokens += count_words(input);
            let mut state = input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            let mut vector: Vec<f64> = (0..dims)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 2000) as f64 / 1000.0 - 1.0
                })
                .collect();
            let norm = vector
                .iter()
                .map(|x| x * x)
                .sum::<f64>()
                .sqrt()
                .max(f64::EPSILON);
            vector.iter_mut().for_each(|x| *x /= norm);
            let embedding = if body["encoding_format"] == "base64" {
                let bytes: Vec<u8> = vector
                    .iter()
                    .flat_map(|x| (*x as f32).to_le_bytes())
                    .collect();
                Value::String(crate::wire::base64::encode(&bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model,
           "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_rejoin() {
        let text = "Hello from  the mock";
        assert_eq!(split_words(text).concat(), text);
    }
}
