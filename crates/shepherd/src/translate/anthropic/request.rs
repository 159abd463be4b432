//! Anthropic Messages requests: a client's request decoded into the canonical form, and the
//! canonical form encoded for an Anthropic upstream (`max_tokens` filled, system on top, tool
//! results first in their turn, temperature clamped to Anthropic's range).

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value, json};

use crate::translate::ir::{
    Media, Message, Part, Reasoning, Request, ResponseFormat, Role, Tool, ToolCall, ToolChoice,
    ToolResult,
};
use crate::translate::{TranslateError, arguments_object};

#[derive(Deserialize)]
struct MessagesRequest {
    model: String,
    messages: Vec<AnthropicMessage>,
    system: Option<System>,
    max_tokens: Option<u64>,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<u64>,
    stream: Option<bool>,
    tools: Option<Vec<AnthropicTool>>,
    tool_choice: Option<AnthropicToolChoice>,
    metadata: Option<Metadata>,
    thinking: Option<Thinking>,
    output_config: Option<OutputConfig>,
}

#[derive(Deserialize)]
struct OutputConfig {
    format: Option<OutputFormat>,
    /// `low` … `max`, with adaptive thinking.
    effort: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutputFormat {
    JsonSchema { schema: Value },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<TextBlock>),
}

#[derive(Deserialize)]
struct TextBlock {
    text: String,
    cache_control: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum AnthropicRole {
    User,
    Assistant,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    role: AnthropicRole,
    content: Content,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
        cache_control: Option<IgnoredAny>,
    },
    Image {
        source: Source,
        cache_control: Option<IgnoredAny>,
    },
    Document {
        source: Source,
        cache_control: Option<IgnoredAny>,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
        cache_control: Option<IgnoredAny>,
    },
    ToolResult {
        tool_use_id: String,
        content: Option<Content>,
        is_error: Option<bool>,
        cache_control: Option<IgnoredAny>,
    },
    Thinking {
        thinking: String,
        signature: Option<String>,
    },
    RedactedThinking {
        data: String,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Source {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Deserialize)]
struct AnthropicTool {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    description: Option<String>,
    input_schema: Option<Value>,
    strict: Option<bool>,
    cache_control: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AnthropicToolChoice {
    Auto {
        disable_parallel_tool_use: Option<bool>,
    },
    Any {
        disable_parallel_tool_use: Option<bool>,
    },
    Tool {
        name: String,
        disable_parallel_tool_use: Option<bool>,
    },
    None,
}

#[derive(Deserialize)]
struct Metadata {
    user_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Thinking {
    Enabled { budget_tokens: u64 },
    Disabled,
    Adaptive,
}

/// Decodes a client's Messages body.
pub fn decode(body: &[u8]) -> Result<Request, TranslateError> {
    let request = decode_count(body)?;
    if request.max_tokens.is_none() {
        return Err(TranslateError::field(
            "max_tokens",
            "missing field `max_tokens`",
        ));
    }
    Ok(request)
}

/// Decodes the body of a `count_tokens` request (a Messages body without `max_tokens`).
pub fn decode_count(body: &[u8]) -> Result<Request, TranslateError> {
    let raw: MessagesRequest = crate::translate::parse_body(body)?;
    let (format, effort) = raw
        .output_config
        .map_or((None, None), |config| (config.format, config.effort));
    let mut request = Request {
        model: raw.model,
        max_tokens: raw.max_tokens,
        stop: raw.stop_sequences.unwrap_or_default(),
        temperature: raw.temperature,
        top_p: raw.top_p,
        top_k: raw.top_k,
        stream: raw.stream.unwrap_or(false),
        user: raw.metadata.and_then(|m| m.user_id),
        reasoning: raw.thinking.map(|thinking| match thinking {
            Thinking::Enabled { budget_tokens } => Reasoning::Budget(budget_tokens),
            Thinking::Disabled => Reasoning::Disabled,
            Thinking::Adaptive => Reasoning::Effort(effort.unwrap_or_else(|| "medium".to_owned())),
        }),
        response_format: format.map(|OutputFormat::JsonSchema { schema }| {
            ResponseFormat::JsonSchema {
                name: "response".to_owned(),
                schema,
            }
        }),
        ..Request::default()
    };
    request.system = raw.system.map(|system| match system {
        System::Text(text) => text,
        System::Blocks(blocks) => {
            request.cache_control |= blocks.iter().any(|b| b.cache_control.is_some());
            blocks
                .into_iter()
                .map(|b| b.text)
                .collect::<Vec<_>>()
                .join("\n\n")
        }
    });
    for (n, tool) in raw.tools.unwrap_or_default().into_iter().enumerate() {
        if tool.kind.as_deref().is_some_and(|kind| kind != "custom") {
            return Err(TranslateError::field(
                &format!("tools[{n}]"),
                "server tools run only on Anthropic upstreams; this model is served by another provider",
            ));
        }
        request.cache_control |= tool.cache_control.is_some();
        request.tools.push(Tool {
            name: tool.name,
            description: tool.description,
            parameters: tool
                .input_schema
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            strict: tool.strict == Some(true),
        });
    }
    if let Some(choice) = raw.tool_choice {
        let (choice, no_parallel) = match choice {
            AnthropicToolChoice::Auto {
                disable_parallel_tool_use,
            } => (ToolChoice::Auto, disable_parallel_tool_use),
            AnthropicToolChoice::Any {
                disable_parallel_tool_use,
            } => (ToolChoice::Required, disable_parallel_tool_use),
            AnthropicToolChoice::Tool {
                name,
                disable_parallel_tool_use,
            } => (ToolChoice::Named(name), disable_parallel_tool_use),
            AnthropicToolChoice::None => (ToolChoice::None, None),
        };
        request.tool_choice = Some(choice);
        if no_parallel == Some(true) {
            request.parallel_tool_calls = Some(false);
        }
    }
    for message in raw.messages {
        let role = match message.role {
            AnthropicRole::User => Role::User,
            AnthropicRole::Assistant => Role::Assistant,
        };
        let parts = content_parts(message.content, &mut request.cache_control);
        if parts.is_empty() {
            continue;
        }
        match request.messages.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => request.messages.push(Message { role, parts }),
        }
    }
    Ok(request)
}

/// The parts of a message's content; `marked` is set when a block carries `cache_control`.
fn content_parts(content: Content, marked: &mut bool) -> Vec<Part> {
    match content {
        Content::Text(text) if text.is_empty() => Vec::new(),
        Content::Text(text) => vec![Part::Text(text)],
        Content::Blocks(blocks) => blocks
            .into_iter()
            .filter_map(|block| block_part(block, marked))
            .collect(),
    }
}

fn block_part(block: Block, marked: &mut bool) -> Option<Part> {
    let mut mark = |cache_control: &Option<IgnoredAny>| *marked |= cache_control.is_some();
    Some(match block {
        Block::Text {
            text,
            cache_control,
        } => {
            mark(&cache_control);
            if text.is_empty() {
                return None;
            }
            Part::Text(text)
        }
        Block::Image {
            source,
            cache_control,
        } => {
            mark(&cache_control);
            Part::Image(media(source))
        }
        Block::Document {
            source,
            cache_control,
        } => {
            mark(&cache_control);
            Part::Document(media(source))
        }
        Block::ToolUse {
            id,
            name,
            input,
            cache_control,
        } => {
            mark(&cache_control);
            Part::ToolCall(ToolCall {
                id,
                name,
                arguments: input.to_string(),
            })
        }
        Block::ToolResult {
            tool_use_id,
            content,
            is_error,
            cache_control,
        } => {
            mark(&cache_control);
            Part::ToolResult(ToolResult {
                call_id: tool_use_id,
                content: content
                    .map(|content| content_parts(content, marked))
                    .unwrap_or_default(),
                is_error: is_error.unwrap_or(false),
            })
        }
        Block::Thinking {
            thinking,
            signature,
        } => Part::Thinking {
            text: thinking,
            signature,
        },
        Block::RedactedThinking { data } => Part::RedactedThinking(data),
    })
}

fn media(source: Source) -> Media {
    match source {
        Source::Base64 { media_type, data } => Media::Base64 { media_type, data },
        Source::Url { url } => Media::Url { url },
    }
}

/// Instruction added to the system prompt for OpenAI's `json_object` mode, which Anthropic
/// lacks (a gateway convention).
const JSON_OBJECT_INSTRUCTION: &str = "Reply with one JSON object and nothing else.";

/// Encodes a request for an Anthropic upstream; `default_max_tokens` fills the required
/// `max_tokens` when the client gave none.
pub fn encode(request: &Request, default_max_tokens: u64) -> Result<Value, TranslateError> {
    if request.candidates.is_some_and(|n| n > 1) {
        return Err(TranslateError::field(
            "n",
            "this model's provider (Anthropic) answers one choice per request",
        ));
    }
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    let budget = request.reasoning.as_ref().and_then(Reasoning::budget);
    let mut max_tokens = request.max_tokens.unwrap_or(default_max_tokens);
    if let Some(budget) = budget {
        // Anthropic wants max_tokens above the thinking budget.
        max_tokens = max_tokens.max(budget + 1024);
    }
    body.insert("max_tokens".into(), json!(max_tokens));
    let mut system = request.system.clone().unwrap_or_default();
    if request.response_format == Some(ResponseFormat::JsonObject) {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(JSON_OBJECT_INSTRUCTION);
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for (n, message) in request.messages.iter().enumerate() {
        let blocks = encode_parts(&message.parts, &format!("messages[{n}]"))?;
        if blocks.is_empty() {
            continue;
        }
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        messages.push(json!({"role": role, "content": blocks}));
    }
    body.insert("messages".into(), Value::Array(messages));
    if request.stream {
        body.insert("stream".into(), json!(true));
    }
    if !request.stop.is_empty() {
        body.insert("stop_sequences".into(), json!(request.stop));
    }
    if let Some(budget) = budget {
        body.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": budget.max(1024)}),
        );
    } else {
        // Anthropic takes temperature in 0..1 (OpenAI: 0..2), and none with thinking on.
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), json!(temperature.clamp(0.0, 1.0)));
        }
        if let Some(top_k) = request.top_k {
            body.insert("top_k".into(), json!(top_k));
        }
    }
    if let Some(top_p) = request.top_p {
        body.insert("top_p".into(), json!(top_p));
    }
    if let Some(user) = &request.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut encoded = json!({"name": tool.name, "input_schema": tool.parameters});
                if let Some(description) = &tool.description {
                    encoded["description"] = json!(description);
                }
                if tool.strict {
                    encoded["strict"] = json!(true);
                }
                encoded
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = match &request.tool_choice {
        None if request.parallel_tool_calls == Some(false) && !request.tools.is_empty() => {
            Some(json!({"type": "auto"}))
        }
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Named(name)) => Some(json!({"type": "tool", "name": name})),
    };
    if let Some(choice) = &mut choice {
        if request.parallel_tool_calls == Some(false) && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        body.insert("tool_choice".into(), choice.take());
    }
    if let Some(ResponseFormat::JsonSchema { schema, .. }) = &request.response_format {
        let mut schema = schema.clone();
        if let Value::Object(map) = &mut schema {
            map.remove("$schema");
        }
        body.insert(
            "output_config".into(),
            json!({"format": {"type": "json_schema", "schema": schema}}),
        );
    }
    Ok(Value::Object(body))
}

/// Content blocks of one message: tool results first (Anthropic wants them right after the
/// tool use), no empty text, thinking without a signature dropped (it cannot be replayed).
fn encode_parts(parts: &[Part], at: &str) -> Result<Vec<Value>, TranslateError> {
    let mut results = Vec::new();
    let mut rest = Vec::new();
    for (n, part) in parts.iter().enumerate() {
        match part {
            Part::ToolResult(result) => {
                let content: Vec<Value> = result.content.iter().filter_map(simple_block).collect();
                let mut block = json!({"type": "tool_result", "tool_use_id": result.call_id});
                if !content.is_empty() {
                    block["content"] = Value::Array(content);
                }
                if result.is_error {
                    block["is_error"] = json!(true);
                }
                results.push(block);
            }
            Part::ToolCall(call) => {
                let input = arguments_object(&call.arguments, &format!("{at}.tool_calls[{n}]"))?;
                rest.push(
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}),
                );
            }
            Part::Thinking {
                text,
                signature: Some(signature),
            } => rest.push(json!({"type": "thinking", "thinking": text, "signature": signature})),
            Part::Thinking { .. } => {}
            Part::RedactedThinking(data) => {
                rest.push(json!({"type": "redacted_thinking", "data": data}));
            }
            other => rest.extend(simple_block(other)),
        }
    }
    results.extend(rest);
    Ok(results)
}

fn simple_block(part: &Part) -> Option<Value> {
    match part {
        Part::Text(text) if text.is_empty() => None,
        Part::Text(text) => Some(json!({"type": "text", "text": text})),
        Part::Image(media) => Some(json!({"type": "image", "source": source(media)})),
        Part::Document(media) => Some(json!({"type": "document", "source": source(media)})),
        _ => None,
    }
}

fn source(media: &Media) -> Value {
    match media {
        Media::Base64 { media_type, data } => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        Media::Url { url } => json!({"type": "url", "url": url}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_request_decodes() {
        let body = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 100,
            "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Look"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"at": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat", "is_error": false}]}
            ],
            "tools": [{"name": "look", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u1"},
            "thinking": {"type": "enabled", "budget_tokens": 2048}
        });
        let request = decode(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.system.as_deref(), Some("Be brief.\n\nBe kind."));
        assert_eq!(request.max_tokens, Some(100));
        assert_eq!(request.tool_choice, Some(ToolChoice::Required));
        assert_eq!(request.parallel_tool_calls, Some(false));
        assert_eq!(request.user.as_deref(), Some("u1"));
        assert_eq!(request.reasoning, Some(Reasoning::Budget(2048)));
        let Part::ToolCall(call) = &request.messages[1].parts[1] else {
            panic!()
        };
        assert_eq!(call.arguments, r#"{"at":1}"#);
        let Part::ToolResult(result) = &request.messages[2].parts[0] else {
            panic!()
        };
        assert_eq!(result.content, vec![Part::Text("a cat".into())]);
    }

    #[test]
    fn missing_max_tokens_and_server_tools_are_refused() {
        let e = decode(br#"{"model":"m","messages":[]}"#).unwrap_err();
        assert!(e.message.contains("max_tokens"), "{e:?}");
        let body = json!({"model": "m", "max_tokens": 5, "messages": [],
                          "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
        let e = decode(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("tools[0]"));
    }

    #[test]
    fn encoding_follows_anthropic_rules() {
        let request = Request {
            model: "claude".into(),
            system: Some("S".into()),
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![Part::Text("Hi".into())],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![
                        Part::Thinking {
                            text: "unsigned".into(),
                            signature: None,
                        },
                        Part::ToolCall(ToolCall {
                            id: "c1".into(),
                            name: "f".into(),
                            arguments: "{\"a\":2}".into(),
                        }),
                    ],
                },
                Message {
                    role: Role::User,
                    parts: vec![
                        Part::Text("and then?".into()),
                        Part::ToolResult(ToolResult {
                            call_id: "c1".into(),
                            content: vec![Part::Text("ok".into())],
                            is_error: false,
                        }),
                    ],
                },
            ],
            temperature: Some(1.6),
            stop: vec!["END".into()],
            tool_choice: Some(ToolChoice::Named("f".into())),
            parallel_tool_calls: Some(false),
            response_format: Some(ResponseFormat::JsonObject),
            ..Request::default()
        };
        let body = encode(&request, 4096).unwrap();
        assert_eq!(body["max_tokens"], 4096);
        assert_eq!(body["temperature"], 1.0);
        assert_eq!(body["stop_sequences"], json!(["END"]));
        assert!(
            body["system"]
                .as_str()
                .unwrap()
                .ends_with(JSON_OBJECT_INSTRUCTION)
        );
        assert_eq!(
            body["tool_choice"],
            json!({"type": "tool", "name": "f", "disable_parallel_tool_use": true})
        );
        // Unsigned thinking is dropped; the arguments become an object.
        assert_eq!(
            body["messages"][1]["content"],
            json!([{"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 2}}])
        );
        // The tool result comes before the text of its turn.
        assert_eq!(body["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(
            body["messages"][2]["content"][1],
            json!({"type": "text", "text": "and then?"})
        );

        let mut bad = request.clone();
        bad.messages[1].parts[1] = Part::ToolCall(ToolCall {
            id: "c".into(),
            name: "f".into(),
            arguments: "{oops".into(),
        });
        assert_eq!(
            encode(&bad, 10).unwrap_err().field.as_deref(),
            Some("messages[1].tool_calls[1]")
        );
        let several = Request {
            candidates: Some(2),
            ..Request::default()
        };
        assert_eq!(
            encode(&several, 10).unwrap_err().field.as_deref(),
            Some("n")
        );
    }
}
