//! Anthropic answers: an Anthropic upstream's message decoded into the canonical form, and the
//! canonical form encoded as a message for a client; stop reasons and usage both ways
//! (Anthropic's `input_tokens` exclude cache reads and writes; the canonical input includes them).

use serde_json::{Map, Value, json};

use crate::translate::arguments_object;
use crate::translate::ir::{Finish, Part, Response, ToolCall, Usage, finish_with_calls};

pub fn finish_of(stop_reason: &str) -> Finish {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => Finish::Length,
        "tool_use" => Finish::ToolCalls,
        "refusal" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

/// Anthropic's `stop_reason` for a canonical finish (`stop_sequence` when one matched).
pub fn stop_reason(finish: Finish, stop_sequence: Option<&str>) -> &'static str {
    match finish {
        Finish::Stop if stop_sequence.is_some() => "stop_sequence",
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
        Finish::ContentFilter => "refusal",
    }
}

/// Anthropic usage -> canonical (input = uncached + cache reads + cache writes). Fields absent
/// from `usage` keep their value from `base` (stream usage arrives in parts).
pub fn usage_of(usage: &Value, base: Usage) -> Usage {
    let field = |name: &str| usage.get(name).and_then(Value::as_u64);
    let uncached = field("input_tokens");
    let cache_read = field("cache_read_input_tokens").unwrap_or(base.cache_read);
    let cache_write = field("cache_creation_input_tokens").unwrap_or(base.cache_write);
    let input = match uncached {
        Some(uncached) => uncached + cache_read + cache_write,
        None => base.input.max(cache_read + cache_write),
    };
    Usage {
        input,
        cache_read,
        cache_write,
        output: field("output_tokens").unwrap_or(base.output),
        reasoning: usage["output_tokens_details"]["thinking_tokens"]
            .as_u64()
            .unwrap_or(base.reasoning),
    }
}

/// Canonical usage -> Anthropic's fields.
pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input.saturating_sub(usage.cache_read + usage.cache_write),
        "output_tokens": usage.output,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
    })
}

/// Decodes an Anthropic message.
pub fn decode(body: &Value) -> Result<Response, String> {
    let content = body["content"]
        .as_array()
        .ok_or("the answer has no `content` list")?;
    let mut parts = Vec::with_capacity(content.len());
    for block in content {
        match block["type"].as_str().unwrap_or_default() {
            "text" => parts.push(Part::Text(
                block["text"].as_str().unwrap_or_default().to_owned(),
            )),
            "tool_use" => parts.push(Part::ToolCall(ToolCall {
                id: block["id"].as_str().unwrap_or_default().to_owned(),
                name: block["name"].as_str().unwrap_or_default().to_owned(),
                arguments: block["input"].to_string(),
            })),
            "thinking" => parts.push(Part::Thinking {
                text: block["thinking"].as_str().unwrap_or_default().to_owned(),
                signature: block["signature"].as_str().map(str::to_owned),
            }),
            "redacted_thinking" => parts.push(Part::RedactedThinking(
                block["data"].as_str().unwrap_or_default().to_owned(),
            )),
            // Server tool blocks and the like have no canonical form.
            _ => {}
        }
    }
    let has_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
    let finish = finish_of(body["stop_reason"].as_str().unwrap_or("end_turn"));
    Ok(Response {
        id: body["id"].as_str().map(str::to_owned),
        model: body["model"].as_str().map(str::to_owned),
        parts,
        finish: finish_with_calls(finish, has_calls),
        stop_sequence: body["stop_sequence"].as_str().map(str::to_owned),
        alternatives: Vec::new(),
        usage: body
            .get("usage")
            .filter(|u| u.is_object())
            .map(|u| usage_of(u, Usage::default())),
    })
}

/// Encodes a message for an Anthropic client.
pub fn encode(response: &Response, id: &str, model: &str, usage: &Usage) -> Value {
    let mut content = Vec::with_capacity(response.parts.len());
    for part in &response.parts {
        match part {
            Part::Text(text) if text.is_empty() => {}
            Part::Text(text) => content.push(json!({"type": "text", "text": text})),
            Part::ToolCall(call) => {
                let input =
                    arguments_object(&call.arguments, "tool_calls").unwrap_or_else(|_| json!({}));
                content.push(
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}),
                );
            }
            Part::Thinking {
                text,
                signature: Some(signature),
            } => {
                content.push(json!({"type": "thinking", "thinking": text, "signature": signature}))
            }
            Part::RedactedThinking(data) => {
                content.push(json!({"type": "redacted_thinking", "data": data}));
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("id".into(), json!(id));
    message.insert("type".into(), json!("message"));
    message.insert("role".into(), json!("assistant"));
    message.insert("model".into(), json!(model));
    message.insert("content".into(), Value::Array(content));
    message.insert(
        "stop_reason".into(),
        json!(stop_reason(
            response.finish,
            response.stop_sequence.as_deref()
        )),
    );
    message.insert("stop_sequence".into(), json!(response.stop_sequence));
    message.insert("usage".into(), usage_json(usage));
    Value::Object(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_decodes_with_cache_usage() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "Let me see", "signature": "s1"},
                {"type": "text", "text": "It is"},
                {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"x": 1}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 5}
        });
        let response = decode(&body).unwrap();
        assert_eq!(response.finish, Finish::ToolCalls);
        assert_eq!(response.text(), "It is");
        assert_eq!(
            response.tool_calls().next().unwrap().arguments,
            r#"{"x":1}"#
        );
        let usage = response.usage.unwrap();
        assert_eq!(
            (
                usage.input,
                usage.cache_read,
                usage.cache_write,
                usage.output
            ),
            (45, 30, 5, 20)
        );
        // And back: Anthropic's input_tokens exclude the cache again.
        let back = usage_json(&usage);
        assert_eq!(back["input_tokens"], 10);
        assert_eq!(back["cache_read_input_tokens"], 30);
    }

    #[test]
    fn stop_reasons_map_both_ways() {
        for (reason, finish) in [
            ("end_turn", Finish::Stop),
            ("max_tokens", Finish::Length),
            ("tool_use", Finish::ToolCalls),
            ("refusal", Finish::ContentFilter),
        ] {
            assert_eq!(finish_of(reason), finish);
            assert_eq!(stop_reason(finish, None), reason);
        }
        assert_eq!(finish_of("stop_sequence"), Finish::Stop);
        assert_eq!(stop_reason(Finish::Stop, Some("END")), "stop_sequence");
    }

    #[test]
    fn encoded_message_has_anthropic_shape() {
        let response = Response {
            id: None,
            model: None,
            parts: vec![
                Part::Thinking {
                    text: "x".into(),
                    signature: None,
                },
                Part::Text("Hi".into()),
                Part::ToolCall(ToolCall {
                    id: "c".into(),
                    name: "f".into(),
                    arguments: "{\"a\":1}".into(),
                }),
            ],
            finish: Finish::ToolCalls,
            stop_sequence: None,
            alternatives: Vec::new(),
            usage: None,
        };
        let usage = Usage {
            input: 12,
            cache_read: 2,
            output: 3,
            ..Usage::default()
        };
        let body = encode(&response, "msg_x", "m", &usage);
        assert_eq!(
            body["content"],
            json!([{"type": "text", "text": "Hi"},
            {"type": "tool_use", "id": "c", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(body["stop_reason"], "tool_use");
        assert_eq!(body["usage"]["input_tokens"], 10);
    }
}
