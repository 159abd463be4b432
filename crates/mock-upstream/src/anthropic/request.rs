//! Parsing and validation of an Anthropic Messages request, with errors worded like the real
//! API's, and what the mock needs from it: the prompt token count, the last user text and the
//! tool to call.

use bytes::Bytes;
use hyper::HeaderMap;
use serde_json::{Map, Value};

use super::ApiError;
use crate::common::{TOKENS_PER_MESSAGE, count_words, push_text, wants_tool};

/// Content block types the mock accepts in messages.
const BLOCK_TYPES: &[&str] = &[
    "text",
    "image",
    "document",
    "search_result",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "server_tool_use",
    "web_search_tool_result",
    "container_upload",
];

/// What the mock uses from a valid request.
pub(super) struct Request<'a> {
    pub(super) model: &'a str,
    pub(super) max_tokens: Option<u64>,
    pub(super) stream: bool,
    pub(super) prompt_tokens: u64,
    pub(super) last_text: String,
    pub(super) tool: Option<&'a str>,
}

/// Checks the `anthropic-version` header, required like on the real API.
pub(super) fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("anthropic-version") {
        Some(v) if !v.is_empty() => Ok(()),
        _ => Err(ApiError::invalid("anthropic-version: header is required")),
    }
}

pub(super) fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid("Input should be a valid dictionary")),
        Err(e) => Err(ApiError::invalid(format!(
            "There was an error parsing the body of your request: {e}"
        ))),
    }
}

/// Validates `req`; `max_tokens` is required unless `count_tokens` is set.
pub(super) fn parse(req: &Map<String, Value>, count_tokens: bool) -> Result<Request<'_>, ApiError> {
    let model = match req.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.as_str(),
        Some(_) => return Err(ApiError::invalid("model: Input should be a valid string")),
        None => return Err(ApiError::invalid("model: Field required")),
    };
    let max_tokens = match req.get("max_tokens") {
        None if count_tokens => None,
        None => return Err(ApiError::invalid("max_tokens: Field required")),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Some(n),
            Some(_) => {
                return Err(ApiError::invalid(
                    "max_tokens: Input should be greater than or equal to 1",
                ));
            }
            None => {
                return Err(ApiError::invalid(
                    "max_tokens: Input should be a valid integer",
                ));
            }
        },
    };
    let stream = match req.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("stream: Input should be a valid boolean")),
    };
    let messages = match req.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "messages: at least one message is required",
            ));
        }
        Some(_) => return Err(ApiError::invalid("messages: Input should be a valid list")),
        None => return Err(ApiError::invalid("messages: Field required")),
    };
    let mut prompt_tokens = 0;
    if let Some(system) = req.get("system") {
        prompt_tokens += count_words(&system_text(system)?) + TOKENS_PER_MESSAGE;
    }
    let mut last_text = String::new();
    for (i, message) in messages.iter().enumerate() {
        let last = i + 1 == messages.len();
        let (role, text) = message_text(i, message, last)?;
        prompt_tokens += count_words(&text) + TOKENS_PER_MESSAGE;
        if role == "user" {
            last_text = text;
        }
    }
    let first_tool = tools(req)?;
    check_tool_choice(req.get("tool_choice"))?;
    check_stop_sequences(req.get("stop_sequences"))?;
    Ok(Request {
        model,
        max_tokens,
        stream,
        prompt_tokens,
        tool: first_tool.filter(|_| wants_tool(&last_text)),
        last_text,
    })
}

fn system_text(system: &Value) -> Result<String, ApiError> {
    let bad = || ApiError::invalid("system: Input should be a valid string or list of text blocks");
    match system {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for block in blocks {
                match (block.get("type"), block.get("text")) {
                    (Some(t), Some(Value::String(text))) if t == "text" => {
                        push_text(&mut out, text)
                    }
                    _ => return Err(bad()),
                }
            }
            Ok(out)
        }
        _ => Err(bad()),
    }
}

/// The role of message `i` and its text (text blocks and tool results).
fn message_text(i: usize, message: &Value, last: bool) -> Result<(&str, String), ApiError> {
    let role = match message.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(ApiError::invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
    };
    let empty = || {
        ApiError::invalid(format!(
            "messages.{i}: all messages must have non-empty content except for the optional \
             final assistant message"
        ))
    };
    let may_be_empty = last && role == "assistant";
    let mut text = String::new();
    match message.get("content") {
        Some(Value::String(s)) if s.is_empty() && !may_be_empty => return Err(empty()),
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(blocks)) if blocks.is_empty() && !may_be_empty => return Err(empty()),
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                block_text(&format!("messages.{i}.content.{j}"), block, &mut text)?;
            }
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "messages.{i}.content: Input should be a valid string or list"
            )));
        }
    }
    Ok((role, text))
}

/// Checks one content block and appends its text to `out`.
fn block_text(at: &str, block: &Value, out: &mut String) -> Result<(), ApiError> {
    let missing = |field: &str| ApiError::invalid(format!("{at}.{field}: Field required"));
    let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
    if !BLOCK_TYPES.contains(&kind) {
        return Err(ApiError::invalid(format!(
            "{at}.type: Input tag '{kind}' found using 'type' does not match any of the \
             expected tags: {}",
            BLOCK_TYPES.join(", ")
        )));
    }
    match kind {
        "text" => match block.get("text").and_then(Value::as_str) {
            Some("") => {
                return Err(ApiError::invalid(format!(
                    "{at}: text content blocks must be non-empty"
                )));
            }
            Some(t) => push_text(out, t),
            None => return Err(missing("text")),
        },
        "image" | "document" if !block.get("source").is_some_and(Value::is_object) => {
            return Err(missing("source"));
        }
        "tool_use" => {
            for field in ["id", "name"] {
                if !block.get(field).is_some_and(Value::is_string) {
                    return Err(missing(field));
                }
            }
            if !block.get("input").is_some_and(Value::is_object) {
                return Err(missing("input"));
            }
        }
        "tool_result" => {
            if !block.get("tool_use_id").is_some_and(Value::is_string) {
                return Err(missing("tool_use_id"));
            }
            match block.get("content") {
                Some(Value::String(s)) => push_text(out, s),
                Some(Value::Array(inner)) => {
                    for (k, b) in inner.iter().enumerate() {
                        block_text(&format!("{at}.content.{k}"), b, out)?;
                    }
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(())
}

/// Validates `tools`; returns the name of the first one.
fn tools(req: &Map<String, Value>) -> Result<Option<&str>, ApiError> {
    let tools = match req.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(_) => return Err(ApiError::invalid("tools: Input should be a valid list")),
    };
    for (i, tool) in tools.iter().enumerate() {
        if !tool.get("name").is_some_and(Value::is_string) {
            return Err(ApiError::invalid(format!("tools.{i}.name: Field required")));
        }
        let custom = matches!(
            tool.get("type").and_then(Value::as_str),
            None | Some("custom")
        );
        if custom && !tool.get("input_schema").is_some_and(Value::is_object) {
            return Err(ApiError::invalid(format!(
                "tools.{i}.custom.input_schema: Field required"
            )));
        }
    }
    Ok(tools
        .first()
        .and_then(|t| t.get("name"))
        .and_then(Value::as_str))
}

fn check_tool_choice(choice: Option<&Value>) -> Result<(), ApiError> {
    let Some(choice) = choice.filter(|c| !c.is_null()) else {
        return Ok(());
    };
    match choice.get("type").and_then(Value::as_str) {
        Some("auto" | "any" | "none") => Ok(()),
        Some("tool") if choice.get("name").is_some_and(Value::is_string) => Ok(()),
        Some("tool") => Err(ApiError::invalid("tool_choice.tool.name: Field required")),
        _ => Err(ApiError::invalid(
            "tool_choice: Input tag found using 'type' does not match any of the expected tags: \
             'auto', 'any', 'tool', 'none'",
        )),
    }
}

fn check_stop_sequences(stop: Option<&Value>) -> Result<(), ApiError> {
    match stop {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(s)) if s.iter().all(Value::is_string) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "stop_sequences: Input should be a valid list of strings",
        )),
    }
}
