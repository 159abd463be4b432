//! OpenAI requests: a client's chat (or legacy completions) request decoded into the canonical
//! form, with errors that name the field at fault.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::translate::TranslateError;
use crate::translate::ir::{
    Media, Message, Part, Reasoning, Request, ResponseFormat, Role, Tool, ToolCall, ToolChoice,
    ToolResult,
};

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<OneOrMany>,
    n: Option<u64>,
    seed: Option<i64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    tools: Option<Vec<ChatTool>>,
    tool_choice: Option<ChatToolChoice>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<ChatResponseFormat>,
    reasoning_effort: Option<String>,
    user: Option<String>,
    safety_identifier: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum ChatMessage {
    System {
        content: Content,
    },
    Developer {
        content: Content,
    },
    User {
        content: Content,
    },
    Assistant {
        content: Option<Content>,
        tool_calls: Option<Vec<ChatToolCall>>,
        refusal: Option<String>,
    },
    Tool {
        tool_call_id: String,
        content: Content,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    File { file: FilePart },
    Refusal { refusal: String },
}

#[derive(Deserialize)]
struct ImageUrl {
    url: String,
}

#[derive(Deserialize)]
struct FilePart {
    file_data: Option<String>,
    file_id: Option<String>,
}

#[derive(Deserialize)]
struct ChatToolCall {
    id: String,
    function: ChatFunctionCall,
}

#[derive(Deserialize)]
struct ChatFunctionCall {
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChatTool {
    Function { function: ChatFunction },
}

#[derive(Deserialize)]
struct ChatFunction {
    name: String,
    description: Option<String>,
    parameters: Option<Value>,
    strict: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChatToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Deserialize)]
struct NamedToolChoice {
    function: NamedFunction,
}

#[derive(Deserialize)]
struct NamedFunction {
    name: String,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChatResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Deserialize)]
struct JsonSchemaFormat {
    name: String,
    schema: Option<Value>,
}

/// Decodes a client's chat completions body.
pub fn decode_chat(body: &[u8]) -> Result<Request, TranslateError> {
    let raw: ChatRequest = crate::translate::parse_body(body)?;
    let mut request = Request {
        model: raw.model,
        stream: raw.stream.unwrap_or(false),
        max_tokens: raw.max_completion_tokens.or(raw.max_tokens),
        temperature: raw.temperature,
        top_p: raw.top_p,
        stop: raw.stop.map(OneOrMany::into_vec).unwrap_or_default(),
        candidates: raw.n,
        seed: raw.seed,
        frequency_penalty: raw.frequency_penalty,
        presence_penalty: raw.presence_penalty,
        parallel_tool_calls: raw.parallel_tool_calls,
        user: raw.safety_identifier.or(raw.user),
        reasoning: raw.reasoning_effort.map(|effort| match effort.as_str() {
            "none" => Reasoning::Disabled,
            _ => Reasoning::Effort(effort),
        }),
        ..Request::default()
    };
    request.tools = raw
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|ChatTool::Function { function }| Tool {
            name: function.name,
            description: function.description,
            parameters: object_schema(function.parameters),
            strict: function.strict == Some(true),
        })
        .collect();
    request.tool_choice = match raw.tool_choice {
        None => None,
        Some(ChatToolChoice::Named(named)) => Some(ToolChoice::Named(named.function.name)),
        Some(ChatToolChoice::Mode(mode)) => Some(match mode.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(TranslateError::field(
                    "tool_choice",
                    format!("`{other}` is not one of auto, none, required"),
                ));
            }
        }),
    };
    request.response_format = raw.response_format.map(|format| match format {
        ChatResponseFormat::Text => ResponseFormat::Text,
        ChatResponseFormat::JsonObject => ResponseFormat::JsonObject,
        ChatResponseFormat::JsonSchema { json_schema } => ResponseFormat::JsonSchema {
            name: json_schema.name,
            schema: json_schema.schema.unwrap_or_else(|| json!({})),
        },
    });
    let mut system = Vec::new();
    for (n, message) in raw.messages.into_iter().enumerate() {
        let at = |field: &str| format!("messages[{n}].{field}");
        match message {
            ChatMessage::System { content } | ChatMessage::Developer { content } => {
                system.push(content_text(content));
            }
            ChatMessage::User { content } => {
                let parts = content_parts(content, &at("content"))?;
                push_message(&mut request.messages, Role::User, parts);
            }
            ChatMessage::Assistant {
                content,
                tool_calls,
                refusal,
            } => {
                let mut parts = match content {
                    Some(content) => content_parts(content, &at("content"))?,
                    None => Vec::new(),
                };
                if let Some(refusal) = refusal.filter(|r| !r.is_empty()) {
                    parts.push(Part::Text(refusal));
                }
                for call in tool_calls.unwrap_or_default() {
                    parts.push(Part::ToolCall(ToolCall {
                        id: call.id,
                        name: call.function.name,
                        arguments: call.function.arguments,
                    }));
                }
                push_message(&mut request.messages, Role::Assistant, parts);
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
            } => {
                let content = content_parts(content, &at("content"))?;
                let result = Part::ToolResult(ToolResult {
                    call_id: tool_call_id,
                    content,
                    is_error: false,
                });
                push_message(&mut request.messages, Role::User, vec![result]);
            }
        }
    }
    if !system.is_empty() {
        request.system = Some(system.join("\n\n"));
    }
    Ok(request)
}

#[derive(Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Option<Prompt>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<OneOrMany>,
    n: Option<u64>,
    seed: Option<i64>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// OpenAI's default `max_tokens` for legacy completions.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u64 = 16;

/// Decodes a client's legacy completions body: the prompt becomes one user message.
pub fn decode_completion(body: &[u8]) -> Result<Request, TranslateError> {
    let raw: CompletionRequest = crate::translate::parse_body(body)?;
    let prompt = match raw.prompt {
        None => String::new(),
        Some(Prompt::One(text)) => text,
        Some(Prompt::Many(texts)) if texts.len() <= 1 => texts.concat(),
        Some(Prompt::Many(_)) => {
            return Err(TranslateError::field(
                "prompt",
                "several prompts in one request are only supported by OpenAI-compatible upstreams",
            ));
        }
    };
    if prompt.is_empty() {
        return Err(TranslateError::field("prompt", "must not be empty"));
    }
    Ok(Request {
        model: raw.model,
        messages: vec![Message {
            role: Role::User,
            parts: vec![Part::Text(prompt)],
        }],
        stream: raw.stream.unwrap_or(false),
        max_tokens: Some(raw.max_tokens.unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS)),
        temperature: raw.temperature,
        top_p: raw.top_p,
        stop: raw.stop.map(OneOrMany::into_vec).unwrap_or_default(),
        candidates: raw.n,
        seed: raw.seed,
        frequency_penalty: raw.frequency_penalty,
        presence_penalty: raw.presence_penalty,
        user: raw.user,
        ..Request::default()
    })
}

/// Appends `parts` as a message, merged into the previous one when the role is the same (tool
/// results of one turn become one message).
pub(crate) fn push_message(messages: &mut Vec<Message>, role: Role, parts: Vec<Part>) {
    if parts.is_empty() {
        return;
    }
    match messages.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => messages.push(Message { role, parts }),
    }
}

/// A schema that is an object schema, as Anthropic requires (none given: no arguments).
pub(crate) fn object_schema(parameters: Option<Value>) -> Value {
    match parameters {
        Some(Value::Object(schema)) if !schema.is_empty() => Value::Object(schema),
        _ => json!({"type": "object", "properties": {}}),
    }
}

fn content_text(content: Content) -> String {
    match content {
        Content::Text(text) => text,
        Content::Parts(parts) => parts
            .into_iter()
            .filter_map(|part| match part {
                ContentPart::Text { text } => Some(text),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn content_parts(content: Content, at: &str) -> Result<Vec<Part>, TranslateError> {
    let parts = match content {
        Content::Text(text) if text.is_empty() => Vec::new(),
        Content::Text(text) => vec![Part::Text(text)],
        Content::Parts(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (n, part) in parts.into_iter().enumerate() {
                out.push(match part {
                    ContentPart::Text { text } => Part::Text(text),
                    ContentPart::Refusal { refusal } => Part::Text(refusal),
                    ContentPart::ImageUrl { image_url } => {
                        Part::Image(media_of_url(&image_url.url, &format!("{at}[{n}]"))?)
                    }
                    ContentPart::File { file } => match (file.file_data, file.file_id) {
                        (Some(data), _) => {
                            Part::Document(media_of_url(&data, &format!("{at}[{n}]"))?)
                        }
                        (None, _) => {
                            return Err(TranslateError::field(
                                &format!("{at}[{n}].file"),
                                "only inline `file_data` can be sent to this model's provider",
                            ));
                        }
                    },
                });
            }
            out.retain(|part| !matches!(part, Part::Text(text) if text.is_empty()));
            out
        }
    };
    Ok(parts)
}

/// `data:<type>;base64,<data>` or an http(s) URL.
pub(crate) fn media_of_url(url: &str, at: &str) -> Result<Media, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (head, data) = rest.split_once(',').ok_or_else(|| {
            TranslateError::field(at, "a data URL needs a `,` before its data".to_owned())
        })?;
        let media_type = head.strip_suffix(";base64").ok_or_else(|| {
            TranslateError::field(at, "only base64 data URLs are supported".to_owned())
        })?;
        return Ok(Media::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Media::Url {
            url: url.to_owned(),
        });
    }
    Err(TranslateError::field(
        at,
        "expected an http(s) URL or a base64 data URL".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::openai::encode::result_text;

    #[test]
    fn chat_request_decodes_every_part() {
        let body = json!({
            "model": "gpt-4.1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"at\":1}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "look", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "a dog"}]}
            ],
            "tools": [{"type": "function", "function": {"name": "look", "description": "Looks"}}],
            "tool_choice": {"type": "function", "function": {"name": "look"}},
            "max_completion_tokens": 50, "max_tokens": 10, "stop": "END", "temperature": 0.5,
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}},
            "reasoning_effort": "low", "stream": true, "unknown_field": 1
        });
        let request = decode_chat(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            request.system.as_deref(),
            Some("Be brief.\n\nUse metric units.")
        );
        assert_eq!(request.max_tokens, Some(50));
        assert_eq!(request.stop, vec!["END"]);
        assert!(request.stream);
        assert_eq!(request.tool_choice, Some(ToolChoice::Named("look".into())));
        assert_eq!(
            request.tools[0].parameters,
            json!({"type": "object", "properties": {}})
        );
        assert_eq!(request.reasoning, Some(Reasoning::Effort("low".into())));
        assert_eq!(request.messages.len(), 3);
        assert_eq!(
            request.messages[0].parts[1],
            Part::Image(Media::Base64 {
                media_type: "image/png".into(),
                data: "AAAA".into()
            })
        );
        assert_eq!(
            request.messages[0].parts[2],
            Part::Image(Media::Url {
                url: "https://x.test/cat.jpg".into()
            })
        );
        assert_eq!(request.messages[1].role, Role::Assistant);
        assert_eq!(request.messages[1].parts.len(), 2);
        // Both tool results land in one user turn.
        assert_eq!(request.messages[2].role, Role::User);
        assert_eq!(request.messages[2].parts.len(), 2);
        let Part::ToolResult(second) = &request.messages[2].parts[1] else {
            panic!()
        };
        assert_eq!(second.call_id, "call_2");
        assert_eq!(result_text(second), "a dog");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let err = |body: Value| decode_chat(body.to_string().as_bytes()).unwrap_err();
        let e = err(json!({"model": "m", "messages": [{"role": "robot", "content": "x"}]}));
        assert_eq!(e.field.as_deref(), Some("messages[0].role"));
        let e = err(
            json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "ftp://x"}}]}]}),
        );
        assert_eq!(e.field.as_deref(), Some("messages[0].content[0]"));
        let e = err(json!({"model": "m", "messages": [], "tool_choice": "sometimes"}));
        assert_eq!(e.field.as_deref(), Some("tool_choice"));
        let e = err(json!({"model": "m"}));
        assert!(e.message.contains("messages"), "{}", e.message);
    }

    #[test]
    fn completions_prompt_becomes_a_user_message() {
        let request = decode_completion(br#"{"model":"m","prompt":"Once upon"}"#).unwrap();
        assert_eq!(
            request.messages[0].parts,
            vec![Part::Text("Once upon".into())]
        );
        assert_eq!(request.max_tokens, Some(16));
        let e = decode_completion(br#"{"model":"m","prompt":["a","b"]}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("prompt"));
    }
}
