//! A Responses API request decoded into the canonical chat request: `input` (a string, or
//! message, `function_call` and `function_call_output` items with text and image parts) becomes
//! the turns, `instructions` the system text, function tools and `tool_choice` the tools,
//! `text.format` the response format. Built-in tools (web search, file search, computer use…)
//! run only on OpenAI's own servers: they are refused, naming the tool.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::translate::TranslateError;
use crate::translate::ir::{
    Message, Part, Reasoning, Request, ResponseFormat, Role, Tool, ToolCall, ToolChoice, ToolResult,
};
use crate::translate::openai::request::{media_of_url, object_schema, push_message};

#[derive(Deserialize)]
struct ResponsesRequest {
    model: String,
    input: Option<Input>,
    instructions: Option<String>,
    stream: Option<bool>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    text: Option<TextConfig>,
    reasoning: Option<ReasoningConfig>,
    user: Option<String>,
    safety_identifier: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Deserialize)]
struct TextConfig {
    format: Option<Value>,
}

#[derive(Deserialize)]
struct ReasoningConfig {
    effort: Option<String>,
}

/// Decodes a client's Responses API body.
pub fn decode(body: &[u8]) -> Result<Request, TranslateError> {
    let raw: ResponsesRequest = crate::translate::parse_body(body)?;
    let mut request = Request {
        model: raw.model,
        system: raw.instructions.filter(|text| !text.is_empty()),
        stream: raw.stream.unwrap_or(false),
        max_tokens: raw.max_output_tokens,
        temperature: raw.temperature,
        top_p: raw.top_p,
        parallel_tool_calls: raw.parallel_tool_calls,
        user: raw.safety_identifier.or(raw.user),
        reasoning: raw
            .reasoning
            .and_then(|reasoning| reasoning.effort)
            .map(|effort| match effort.as_str() {
                "none" => Reasoning::Disabled,
                _ => Reasoning::Effort(effort),
            }),
        ..Request::default()
    };
    for (n, tool) in raw.tools.unwrap_or_default().iter().enumerate() {
        request.tools.push(tool_of(tool, n)?);
    }
    request.tool_choice = raw.tool_choice.as_ref().map(tool_choice_of).transpose()?;
    request.response_format = match raw.text.and_then(|text| text.format) {
        None => None,
        Some(format) => Some(format_of(&format)?),
    };
    let mut system = request.system.take().into_iter().collect::<Vec<_>>();
    match raw.input {
        None => {}
        Some(Input::Text(text)) => {
            push_message(&mut request.messages, Role::User, vec![Part::Text(text)]);
        }
        Some(Input::Items(items)) => {
            for (n, item) in items.iter().enumerate() {
                item_into(
                    item,
                    &format!("input[{n}]"),
                    &mut request.messages,
                    &mut system,
                )?;
            }
        }
    }
    request.system = (!system.is_empty()).then(|| system.join("\n\n"));
    if request.messages.is_empty() {
        return Err(TranslateError::field(
            "input",
            "needs at least one user message or tool output",
        ));
    }
    Ok(request)
}

fn str_of<'a>(value: &'a Value, field: &str, at: &str) -> Result<&'a str, TranslateError> {
    value[field]
        .as_str()
        .ok_or_else(|| TranslateError::field(&format!("{at}.{field}"), "expected a string"))
}

/// One `input` item appended to the turns (system and developer messages to `system`).
fn item_into(
    item: &Value,
    at: &str,
    messages: &mut Vec<Message>,
    system: &mut Vec<String>,
) -> Result<(), TranslateError> {
    let kind = item["type"].as_str().unwrap_or("message");
    match kind {
        "message" => {
            let role = str_of(item, "role", at)?;
            let parts = content_parts(&item["content"], &format!("{at}.content"))?;
            match role {
                "system" | "developer" => system.push(crate::translate::ir::text_of(&parts)),
                "user" => push_message(messages, Role::User, parts),
                "assistant" => push_message(messages, Role::Assistant, parts),
                other => {
                    return Err(TranslateError::field(
                        &format!("{at}.role"),
                        format!("`{other}` is not one of user, assistant, system, developer"),
                    ));
                }
            }
        }
        "function_call" => {
            let call = ToolCall {
                id: str_of(item, "call_id", at)?.to_owned(),
                name: str_of(item, "name", at)?.to_owned(),
                arguments: item["arguments"].as_str().unwrap_or("{}").to_owned(),
            };
            push_message(messages, Role::Assistant, vec![Part::ToolCall(call)]);
        }
        "function_call_output" => {
            let call_id = str_of(item, "call_id", at)?.to_owned();
            let content = match &item["output"] {
                Value::String(text) => vec![Part::Text(text.clone())],
                output @ Value::Array(_) => content_parts(output, &format!("{at}.output"))?,
                _ => {
                    return Err(TranslateError::field(
                        &format!("{at}.output"),
                        "expected a string or a list of content parts",
                    ));
                }
            };
            let result = Part::ToolResult(ToolResult {
                call_id,
                content,
                is_error: false,
            });
            push_message(messages, Role::User, vec![result]);
        }
        // Reasoning items carry the provider's own (often encrypted) state: another upstream
        // cannot read it, and the model does not need it to go on.
        "reasoning" => {}
        "item_reference" => {
            return Err(TranslateError::field(
                at,
                "item references need stored responses; send the items themselves",
            ));
        }
        other => {
            return Err(TranslateError::field(
                &format!("{at}.type"),
                format!(
                    "`{other}` items are not supported; send messages, function_call and function_call_output items"
                ),
            ));
        }
    }
    Ok(())
}

/// Text and image parts of a message's `content` (a string, or `input_text`, `output_text`,
/// `input_image` and `refusal` parts).
fn content_parts(content: &Value, at: &str) -> Result<Vec<Part>, TranslateError> {
    let parts = match content {
        Value::String(text) => return Ok(vec![Part::Text(text.clone())]),
        Value::Array(parts) => parts,
        _ => {
            return Err(TranslateError::field(
                at,
                "expected a string or a list of content parts",
            ));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for (n, part) in parts.iter().enumerate() {
        let at = format!("{at}[{n}]");
        match part["type"].as_str().unwrap_or_default() {
            "input_text" | "output_text" | "text" => {
                out.push(Part::Text(str_of(part, "text", &at)?.to_owned()));
            }
            "refusal" => out.push(Part::Text(str_of(part, "refusal", &at)?.to_owned())),
            "input_image" => match part["image_url"].as_str() {
                Some(url) => out.push(Part::Image(media_of_url(url, &format!("{at}.image_url"))?)),
                None => {
                    return Err(TranslateError::field(
                        &at,
                        "only images given by `image_url` (an http(s) or data URL) can be sent to this model's provider",
                    ));
                }
            },
            "input_file" => match part["file_data"].as_str() {
                Some(data) => out.push(Part::Document(media_of_url(
                    data,
                    &format!("{at}.file_data"),
                )?)),
                None => {
                    return Err(TranslateError::field(
                        &at,
                        "only inline `file_data` can be sent to this model's provider",
                    ));
                }
            },
            other => {
                return Err(TranslateError::field(
                    &format!("{at}.type"),
                    format!("`{other}` content is not supported"),
                ));
            }
        }
    }
    out.retain(|part| !matches!(part, Part::Text(text) if text.is_empty()));
    Ok(out)
}

fn tool_of(tool: &Value, n: usize) -> Result<Tool, TranslateError> {
    let at = format!("tools[{n}]");
    match tool["type"].as_str().unwrap_or_default() {
        "function" => Ok(Tool {
            name: str_of(tool, "name", &at)?.to_owned(),
            description: tool["description"].as_str().map(str::to_owned),
            parameters: object_schema(tool.get("parameters").cloned()),
            strict: tool["strict"].as_bool() == Some(true),
        }),
        other => Err(TranslateError::field(
            &format!("{at}.type"),
            format!(
                "the built-in tool `{other}` runs only on OpenAI's servers; this model's provider has none: use function tools"
            ),
        )),
    }
}

fn tool_choice_of(choice: &Value) -> Result<ToolChoice, TranslateError> {
    match choice {
        Value::String(mode) => match mode.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(TranslateError::field(
                "tool_choice",
                format!("`{other}` is not one of auto, none, required"),
            )),
        },
        Value::Object(_) if choice["type"] == "function" => Ok(ToolChoice::Named(
            str_of(choice, "name", "tool_choice")?.to_owned(),
        )),
        _ => Err(TranslateError::field(
            "tool_choice",
            "expected auto, none, required or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

fn format_of(format: &Value) -> Result<ResponseFormat, TranslateError> {
    match format["type"].as_str().unwrap_or_default() {
        "text" => Ok(ResponseFormat::Text),
        "json_object" => Ok(ResponseFormat::JsonObject),
        "json_schema" => Ok(ResponseFormat::JsonSchema {
            name: format["name"].as_str().unwrap_or("response").to_owned(),
            schema: format.get("schema").cloned().unwrap_or_else(|| json!({})),
        }),
        other => Err(TranslateError::field(
            "text.format.type",
            format!("`{other}` is not one of text, json_object, json_schema"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_input_is_one_user_turn_and_instructions_the_system() {
        let body = json!({"model": "m", "input": "Hi", "instructions": "Be brief",
                          "max_output_tokens": 50, "stream": true});
        let request = decode(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.system.as_deref(), Some("Be brief"));
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.messages[0].parts, vec![Part::Text("Hi".into())]);
        assert_eq!((request.max_tokens, request.stream), (Some(50), true));
    }

    #[test]
    fn items_become_turns_with_tool_calls_results_and_images() {
        let body = json!({"model": "m", "input": [
            {"role": "developer", "content": "Use tools"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "Weather?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ], "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": true}],
           "tool_choice": {"type": "function", "name": "weather"},
           "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}}});
        let request = decode(body.to_string().as_bytes()).unwrap();
        assert_eq!(request.system.as_deref(), Some("Use tools"));
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::User, Role::Assistant, Role::User]);
        assert!(matches!(request.messages[0].parts[1], Part::Image(_)));
        assert!(
            matches!(&request.messages[1].parts[0], Part::ToolCall(call) if call.id == "call_1")
        );
        assert!(
            matches!(&request.messages[2].parts[0], Part::ToolResult(result) if result.call_id == "call_1")
        );
        assert!(request.tools[0].strict);
        assert_eq!(
            request.tool_choice,
            Some(ToolChoice::Named("weather".into()))
        );
        assert!(matches!(
            request.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
    }

    #[test]
    fn built_in_tools_and_unknown_items_are_refused_naming_the_field() {
        let body = json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]});
        let error = decode(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("tools[0].type"));
        assert!(error.message.contains("web_search"));
        let body =
            json!({"model": "m", "input": [{"type": "computer_call_output", "call_id": "c"}]});
        let error = decode(body.to_string().as_bytes()).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("input[0].type"));
        let body = json!({"model": "m"});
        assert_eq!(
            decode(body.to_string().as_bytes())
                .unwrap_err()
                .field
                .as_deref(),
            Some("input")
        );
    }
}
