//! The canonical form encoded as a chat completions request for an OpenAI-compatible upstream
//! (always asking for usage in streams), and the text of tool results.

use serde_json::{Map, Value, json};

use crate::translate::ir::{
    Media, Message, Part, Reasoning, Request, ResponseFormat, Role, ToolChoice, ToolResult,
};

/// Encodes a request for an OpenAI-compatible upstream (always asking for usage in streams).
pub fn encode_chat(request: &Request) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(system) = &request.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for message in &request.messages {
        encode_message(message, &mut messages);
    }
    body.insert("messages".into(), Value::Array(messages));
    if request.stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    let mut put = |name: &str, value: Value| {
        if !value.is_null() {
            body.insert(name.to_owned(), value);
        }
    };
    // Reasoning models refuse `max_tokens`; plain compatible servers often read only it.
    let reasoning = request
        .reasoning
        .as_ref()
        .is_some_and(|reasoning| *reasoning != Reasoning::Disabled);
    let max_name = if reasoning {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    put(max_name, json!(request.max_tokens));
    put("temperature", json!(request.temperature));
    put("top_p", json!(request.top_p));
    if !request.stop.is_empty() {
        put("stop", json!(request.stop));
    }
    put("n", json!(request.candidates));
    put("seed", json!(request.seed));
    put("frequency_penalty", json!(request.frequency_penalty));
    put("presence_penalty", json!(request.presence_penalty));
    put("user", json!(request.user));
    put("parallel_tool_calls", json!(request.parallel_tool_calls));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut function = json!({"name": tool.name, "parameters": tool.parameters});
                if let Some(description) = &tool.description {
                    function["description"] = json!(description);
                }
                if tool.strict {
                    function["strict"] = json!(true);
                }
                json!({"type": "function", "function": function})
            })
            .collect();
        put("tools", Value::Array(tools));
    }
    if let Some(choice) = &request.tool_choice {
        put(
            "tool_choice",
            match choice {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
            },
        );
    }
    if let Some(format) = &request.response_format {
        put(
            "response_format",
            match format {
                ResponseFormat::Text => json!({"type": "text"}),
                ResponseFormat::JsonObject => json!({"type": "json_object"}),
                ResponseFormat::JsonSchema { name, schema } => {
                    json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema}})
                }
            },
        );
    }
    if let Some(reasoning) = &request.reasoning {
        put(
            "reasoning_effort",
            match reasoning {
                Reasoning::Effort(effort) => json!(effort),
                Reasoning::Disabled => Value::Null,
                Reasoning::Budget(tokens) => json!(match tokens {
                    0..=2048 => "low",
                    2049..=8192 => "medium",
                    _ => "high",
                }),
            },
        );
    }
    Value::Object(body)
}

fn encode_message(message: &Message, out: &mut Vec<Value>) {
    match message.role {
        Role::Assistant => {
            let text: String = message
                .parts
                .iter()
                .filter_map(|part| match part {
                    Part::Text(text) => Some(text.as_str()),
                    _ => None,
                })
                .collect();
            let calls: Vec<Value> = message
                .parts
                .iter()
                .filter_map(|part| match part {
                    Part::ToolCall(call) => Some(json!({"id": call.id, "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments}})),
                    _ => None,
                })
                .collect();
            let mut encoded = json!({"role": "assistant",
                "content": if text.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                encoded["tool_calls"] = Value::Array(calls);
            }
            out.push(encoded);
        }
        Role::User => {
            // Tool results become `tool` messages, before the rest of the turn. OpenAI tool
            // messages carry text only: images and documents a tool returned (Claude Code's
            // screenshots) follow in the user message, after all the tool messages.
            let mut rest = Vec::new();
            for part in &message.parts {
                match part {
                    Part::ToolResult(result) => {
                        let media: Vec<&Part> = result
                            .content
                            .iter()
                            .filter(|p| matches!(p, Part::Image(_) | Part::Document(_)))
                            .collect();
                        let mut text = result_text(result);
                        if text.is_empty() && !media.is_empty() {
                            text = format!(
                                "[the tool returned {} attachment(s), in the next message]",
                                media.len()
                            );
                        }
                        out.push(json!({
                            "role": "tool",
                            "tool_call_id": result.call_id,
                            "content": text,
                        }));
                        rest.extend(media);
                    }
                    other => rest.push(other),
                }
            }
            if rest.is_empty() {
                return;
            }
            let only_text = rest.iter().all(|part| matches!(part, Part::Text(_)));
            let content = if only_text {
                json!(
                    rest.iter()
                        .filter_map(|part| match part {
                            Part::Text(text) => Some(text.as_str()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            } else {
                Value::Array(rest.into_iter().filter_map(encode_user_part).collect())
            };
            out.push(json!({"role": "user", "content": content}));
        }
    }
}

fn encode_user_part(part: &Part) -> Option<Value> {
    match part {
        Part::Text(text) => Some(json!({"type": "text", "text": text})),
        Part::Image(media) => {
            Some(json!({"type": "image_url", "image_url": {"url": media_url(media)}}))
        }
        Part::Document(media) => {
            Some(json!({"type": "file", "file": {"file_data": media_url(media)}}))
        }
        _ => None,
    }
}

fn media_url(media: &Media) -> String {
    match media {
        Media::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        Media::Url { url } => url.clone(),
    }
}

/// The text of a tool result (OpenAI tool messages carry text only).
pub fn result_text(result: &ToolResult) -> String {
    let text: Vec<&str> = result
        .content
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect();
    text.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::openai::request::decode_chat;

    #[test]
    fn encoded_chat_round_trips() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Calling", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}],
            "tool_choice": "required", "stop": ["a", "b"], "stream": true
        });
        let request = decode_chat(body.to_string().as_bytes()).unwrap();
        let encoded = encode_chat(&request);
        assert_eq!(
            encoded["messages"][0],
            json!({"role": "system", "content": "S"})
        );
        assert_eq!(
            encoded["messages"][1],
            json!({"role": "user", "content": "Hi"})
        );
        assert_eq!(
            encoded["messages"][2]["tool_calls"][0]["function"]["name"],
            "f"
        );
        assert_eq!(
            encoded["messages"][3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "done"})
        );
        assert_eq!(encoded["tool_choice"], "required");
        assert!(encoded.get("max_completion_tokens").is_none());
        let thinking = Request {
            max_tokens: Some(500),
            reasoning: Some(Reasoning::Budget(4000)),
            ..Request::default()
        };
        let encoded_thinking = encode_chat(&thinking);
        assert_eq!(encoded_thinking["max_completion_tokens"], 500);
        assert_eq!(encoded_thinking["reasoning_effort"], "medium");
        assert!(encoded_thinking.get("max_tokens").is_none());
        assert_eq!(encoded["stream_options"]["include_usage"], true);
        assert_eq!(
            decode_chat(encoded.to_string().as_bytes()).unwrap(),
            request
        );
    }
}
