//! OpenAI answers: an OpenAI-compatible upstream's chat response decoded into the canonical form,
//! and the canonical form encoded as a chat completion (or legacy text completion) for a client.

use serde_json::{Value, json};

use crate::translate::ir::{Choice, Finish, Part, Response, ToolCall, Usage, finish_with_calls};

/// What every encoded answer shares: its id, the model shown and the creation time.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub model: String,
    pub created: u64,
}

pub fn finish_of(reason: &str) -> Finish {
    match reason {
        "length" => Finish::Length,
        "tool_calls" | "function_call" => Finish::ToolCalls,
        "content_filter" => Finish::ContentFilter,
        _ => Finish::Stop,
    }
}

pub fn finish_name(finish: Finish) -> &'static str {
    match finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
        Finish::ContentFilter => "content_filter",
    }
}

/// OpenAI usage (prompt tokens include cached ones; completion tokens include reasoning).
pub fn usage_of(usage: &Value) -> Option<Usage> {
    let prompt = usage.get("prompt_tokens")?.as_u64()?;
    let count = |section: &str, field: &str| usage[section][field].as_u64().unwrap_or(0);
    Some(Usage {
        input: prompt,
        cache_read: count("prompt_tokens_details", "cached_tokens"),
        cache_write: count("prompt_tokens_details", "cache_write_tokens"),
        output: usage["completion_tokens"].as_u64().unwrap_or(0),
        reasoning: count("completion_tokens_details", "reasoning_tokens"),
    })
}

pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.total(),
        "prompt_tokens_details": {"cached_tokens": usage.cache_read},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    })
}

/// Decodes an OpenAI-compatible chat completion, or a legacy text completion (every choice).
pub fn decode_chat(body: &Value) -> Result<Response, String> {
    let choices = body["choices"].as_array().filter(|c| !c.is_empty());
    let choices = choices.ok_or("the answer has no `choices[0]`")?;
    let mut decoded = choices.iter().map(decode_choice);
    let first = decoded.next().ok_or("the answer has no `choices[0]`")?;
    Ok(Response {
        id: body["id"].as_str().map(str::to_owned),
        model: body["model"].as_str().map(str::to_owned),
        parts: first.parts,
        finish: first.finish,
        stop_sequence: None,
        alternatives: decoded.collect(),
        usage: usage_of(&body["usage"]),
    })
}

fn decode_choice(choice: &Value) -> Choice {
    let message = &choice["message"];
    let mut parts = Vec::new();
    if let Some(reasoning) = message["reasoning_content"]
        .as_str()
        .filter(|r| !r.is_empty())
    {
        parts.push(Part::Thinking {
            text: reasoning.to_owned(),
            signature: None,
        });
    }
    match &message["content"] {
        Value::String(text) if !text.is_empty() => parts.push(Part::Text(text.clone())),
        Value::Array(items) => {
            for item in items {
                if let Some(text) = item["text"].as_str() {
                    parts.push(Part::Text(text.to_owned()));
                }
            }
        }
        _ => {}
    }
    if let Some(refusal) = message["refusal"].as_str().filter(|r| !r.is_empty()) {
        parts.push(Part::Text(refusal.to_owned()));
    }
    // A legacy text completion.
    if let Some(text) = choice["text"].as_str().filter(|t| !t.is_empty()) {
        parts.push(Part::Text(text.to_owned()));
    }
    if let Some(calls) = message["tool_calls"].as_array() {
        for call in calls {
            parts.push(Part::ToolCall(ToolCall {
                id: call["id"].as_str().unwrap_or_default().to_owned(),
                name: call["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                arguments: call["function"]["arguments"]
                    .as_str()
                    .unwrap_or("{}")
                    .to_owned(),
            }));
        }
    }
    let has_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
    let finish = finish_of(choice["finish_reason"].as_str().unwrap_or("stop"));
    Choice {
        parts,
        finish: finish_with_calls(finish, has_calls),
        stop_sequence: None,
    }
}

/// Encodes a chat completion for an OpenAI client (every choice).
pub fn encode_chat(response: &Response, envelope: &Envelope, usage: &Usage) -> Value {
    let choices: Vec<Value> = response
        .choices()
        .enumerate()
        .map(|(index, choice)| {
            let text = choice.text();
            let calls: Vec<Value> = choice
                .parts
                .iter()
                .filter_map(|part| match part {
                    Part::ToolCall(call) => Some(json!({"id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments}})),
                    _ => None,
                })
                .collect();
            let mut message = json!({
                "role": "assistant",
                "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) },
                "refusal": null,
            });
            if !calls.is_empty() {
                message["tool_calls"] = Value::Array(calls);
            }
            json!({
                "index": index,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_name(choice.finish),
            })
        })
        .collect();
    json!({
        "id": envelope.id,
        "object": "chat.completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": choices,
        "usage": usage_json(usage),
    })
}

/// Encodes a legacy text completion for an OpenAI client (every choice).
pub fn encode_completion(response: &Response, envelope: &Envelope, usage: &Usage) -> Value {
    let choices: Vec<Value> = response
        .choices()
        .enumerate()
        .map(|(index, choice)| {
            json!({
                "index": index,
                "text": choice.text(),
                "logprobs": null,
                "finish_reason": finish_name(choice.finish),
            })
        })
        .collect();
    json!({
        "id": envelope.id,
        "object": "text_completion",
        "created": envelope.created,
        "model": envelope.model,
        "choices": choices,
        "usage": usage_json(usage),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_answer_decodes_text_calls_and_usage() {
        let body = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4.1",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me look.",
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "look", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
                      "prompt_tokens_details": {"cached_tokens": 10},
                      "completion_tokens_details": {"reasoning_tokens": 4}}
        });
        let response = decode_chat(&body).unwrap();
        assert_eq!(response.finish, Finish::ToolCalls);
        assert_eq!(response.text(), "Let me look.");
        assert_eq!(response.tool_calls().next().unwrap().arguments, "{\"a\":1}");
        let usage = response.usage.unwrap();
        assert_eq!(
            (usage.input, usage.cache_read, usage.output, usage.reasoning),
            (30, 10, 12, 4)
        );
        assert!(decode_chat(&json!({"choices": []})).is_err());
    }

    #[test]
    fn encoded_chat_has_openai_shape() {
        let response = Response {
            id: None,
            model: None,
            parts: vec![Part::ToolCall(ToolCall {
                id: "c".into(),
                name: "f".into(),
                arguments: "{}".into(),
            })],
            finish: Finish::ToolCalls,
            stop_sequence: None,
            alternatives: Vec::new(),
            usage: None,
        };
        let envelope = Envelope {
            id: "chatcmpl-x".into(),
            model: "m".into(),
            created: 1,
        };
        let usage = Usage {
            input: 5,
            output: 7,
            ..Usage::default()
        };
        let body = encode_chat(&response, &envelope, &usage);
        assert_eq!(body["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(body["usage"]["total_tokens"], 12);
        let text = encode_completion(&response, &envelope, &usage);
        assert_eq!(text["object"], "text_completion");
        assert_eq!(text["choices"][0]["text"], "");
    }
}
