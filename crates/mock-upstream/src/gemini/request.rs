//! Parsing and validation of a Gemini `GenerateContentRequest` (camelCase or snake_case keys,
//! unknown fields rejected like the real API's proto parser), and what the mock needs from it:
//! the prompt token count, the last user text, the function to call and the generation limits.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::ApiError;
use crate::common::{TOKENS_PER_MESSAGE, count_words, push_text, wants_tool};

const REQUEST_FIELDS: &[&str] = &[
    "model",
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "tool_config",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "cachedContent",
    "cached_content",
];

const PART_FIELDS: &[&str] = &[
    "text",
    "inlineData",
    "inline_data",
    "fileData",
    "file_data",
    "functionCall",
    "function_call",
    "functionResponse",
    "function_response",
    "executableCode",
    "executable_code",
    "codeExecutionResult",
    "code_execution_result",
    "thought",
    "thoughtSignature",
    "thought_signature",
    "videoMetadata",
    "video_metadata",
    "mediaResolution",
    "media_resolution",
];

/// What the mock uses from a valid request.
pub(super) struct Request<'a> {
    pub(super) prompt_tokens: u64,
    pub(super) last_text: String,
    pub(super) function: Option<&'a str>,
    pub(super) max_output_tokens: Option<u64>,
    pub(super) candidates: usize,
}

/// `obj[camel]`, or `obj[snake]`.
fn field<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel)
        .or_else(|| obj.get(snake))
        .filter(|v| !v.is_null())
}

fn unknown(name: &str, at: &str) -> ApiError {
    ApiError::invalid(format!(
        "Invalid JSON payload received. Unknown name \"{name}\"{at}: Cannot find field."
    ))
}

pub(super) fn parse_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid(
            "Invalid JSON payload received. Expected an object.",
        )),
        Err(e) => Err(ApiError::invalid(format!(
            "Invalid JSON payload received. {e}"
        ))),
    }
}

pub(super) fn parse(req: &Map<String, Value>) -> Result<Request<'_>, ApiError> {
    if let Some(name) = req.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())) {
        return Err(unknown(name, ""));
    }
    let contents = match req.get("contents") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        _ => {
            return Err(ApiError::invalid(
                "* GenerateContentRequest.contents: contents is not specified\n",
            ));
        }
    };
    let mut prompt_tokens = 0;
    if let Some(system) = field(req, "systemInstruction", "system_instruction") {
        let text = content_text("system_instruction", system)?.1;
        prompt_tokens += count_words(&text) + TOKENS_PER_MESSAGE;
    }
    let mut last_text = String::new();
    for (i, content) in contents.iter().enumerate() {
        let (role, text) = content_text(&format!("contents[{i}]"), content)?;
        prompt_tokens += count_words(&text) + TOKENS_PER_MESSAGE;
        if role == "user" {
            last_text = text;
        }
    }
    let function = first_function(req)?;
    let (max_output_tokens, candidates) = generation_config(req)?;
    Ok(Request {
        prompt_tokens,
        function: function.filter(|_| wants_tool(&last_text)),
        last_text,
        max_output_tokens,
        candidates,
    })
}

/// The role (`user` when absent) and the text of a `Content` (text parts, and the `result` or
/// `output` string, else the JSON, of function responses).
fn content_text<'a>(at: &str, content: &'a Value) -> Result<(&'a str, String), ApiError> {
    let invalid = |what: &str| ApiError::invalid(format!("* GenerateContentRequest.{at}{what}\n"));
    let role = match content.get("role") {
        None | Some(Value::Null) => "user",
        Some(Value::String(r)) if r.is_empty() || r == "user" => "user",
        Some(Value::String(r)) if r == "model" => "model",
        Some(_) => return Err(ApiError::invalid("Please use a valid role: user, model.")),
    };
    let parts = match content.get("parts") {
        Some(Value::Array(p)) if !p.is_empty() => p,
        _ => return Err(invalid(".parts: contents.parts must not be empty.")),
    };
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let Some(part) = part.as_object() else {
            return Err(invalid(&format!(".parts[{j}]: must be an object.")));
        };
        if let Some(name) = part.keys().find(|k| !PART_FIELDS.contains(&k.as_str())) {
            return Err(unknown(name, &format!(" at '{at}.parts[{j}]'")));
        }
        let data = |camel, snake| field(part, camel, snake).and_then(Value::as_object);
        if let Some(t) = part.get("text") {
            let t = t
                .as_str()
                .ok_or_else(|| invalid(&format!(".parts[{j}].text: must be a string.")))?;
            if part.get("thought").and_then(Value::as_bool) != Some(true) {
                push_text(&mut text, t);
            }
        } else if let Some(inline) = data("inlineData", "inline_data") {
            if field(inline, "mimeType", "mime_type").is_none() || !inline.contains_key("data") {
                return Err(invalid(&format!(
                    ".parts[{j}].inline_data: mime_type and data are required."
                )));
            }
        } else if let Some(call) = data("functionCall", "function_call") {
            if !call.get("name").is_some_and(Value::is_string) {
                return Err(invalid(&format!(
                    ".parts[{j}].function_call.name: Name is empty."
                )));
            }
        } else if let Some(resp) = data("functionResponse", "function_response") {
            if !resp.get("name").is_some_and(Value::is_string) {
                return Err(invalid(&format!(
                    ".parts[{j}].function_response.name: Name is empty."
                )));
            }
            match resp.get("response") {
                Some(Value::Object(r)) => push_text(&mut text, &response_text(r)),
                _ => {
                    return Err(invalid(&format!(
                        ".parts[{j}].function_response.response: must be an object."
                    )));
                }
            }
        } else if data("fileData", "file_data").is_none()
            && data("executableCode", "executable_code").is_none()
            && data("codeExecutionResult", "code_execution_result").is_none()
        {
            return Err(invalid(&format!(
                ".parts[{j}].data: required oneof field 'data' must have one initialized field"
            )));
        }
    }
    Ok((role, text))
}

fn response_text(response: &Map<String, Value>) -> String {
    ["result", "output", "content"]
        .iter()
        .find_map(|k| response.get(*k).and_then(Value::as_str))
        .map_or_else(
            || Value::Object(response.clone()).to_string(),
            str::to_owned,
        )
}

/// The name of the first function declaration of `tools`.
fn first_function(req: &Map<String, Value>) -> Result<Option<&str>, ApiError> {
    let tools = match req.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(t)) => t,
        Some(_) => {
            return Err(ApiError::invalid(
                "* GenerateContentRequest.tools: must be a list\n",
            ));
        }
    };
    let mut first = None;
    for (i, tool) in tools.iter().enumerate() {
        let Some(tool) = tool.as_object() else {
            return Err(ApiError::invalid(format!(
                "* GenerateContentRequest.tools[{i}]: must be an object\n"
            )));
        };
        let Some(decls) = field(tool, "functionDeclarations", "function_declarations") else {
            continue;
        };
        for (j, decl) in decls.as_array().into_iter().flatten().enumerate() {
            match decl.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => {
                    first.get_or_insert(name);
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "* GenerateContentRequest.tools[{i}].function_declarations[{j}].name: \
                         Name is empty.\n"
                    )));
                }
            }
        }
    }
    Ok(first)
}

/// `maxOutputTokens` (0 or absent: no limit) and `candidateCount` (default 1).
fn generation_config(req: &Map<String, Value>) -> Result<(Option<u64>, usize), ApiError> {
    let Some(config) = field(req, "generationConfig", "generation_config") else {
        return Ok((None, 1));
    };
    let bad =
        |name: &str| ApiError::invalid(format!("Invalid value at 'generation_config.{name}'"));
    let Some(config) = config.as_object() else {
        return Err(ApiError::invalid("Invalid value at 'generation_config'"));
    };
    let max = match field(config, "maxOutputTokens", "max_output_tokens") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| bad("max_output_tokens"))?),
    };
    let candidates = match field(config, "candidateCount", "candidate_count") {
        None => 1,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=8) => n as usize,
            _ => return Err(bad("candidate_count")),
        },
    };
    for (camel, snake) in [("temperature", "temperature"), ("topP", "top_p")] {
        if field(config, camel, snake).is_some_and(|v| !v.is_number()) {
            return Err(bad(snake));
        }
    }
    if let Some(stop) = field(config, "stopSequences", "stop_sequences")
        && !stop
            .as_array()
            .is_some_and(|s| s.iter().all(Value::is_string))
    {
        return Err(bad("stop_sequences"));
    }
    Ok((max.filter(|m| *m > 0), candidates))
}
