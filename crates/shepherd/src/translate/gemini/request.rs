//! Gemini requests: the canonical form encoded as a `GenerateContentRequest` (contents and parts,
//! `systemInstruction`, function declarations, `generationConfig`), and OpenAI embedding inputs
//! as a `batchEmbedContents` request.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::translate::ir::{
    Media, Message, Part, Reasoning, Request, ResponseFormat, Role, ToolChoice,
};
use crate::translate::{TranslateError, arguments_object};

/// Encodes a request for Gemini's `generateContent` (the model goes in the URL).
pub fn encode(request: &Request) -> Result<Value, TranslateError> {
    let mut body = Map::new();
    // Gemini needs the function's name in a function response: look it up by call id.
    let names: HashMap<&str, &str> = request
        .messages
        .iter()
        .flat_map(|m| &m.parts)
        .filter_map(|part| match part {
            Part::ToolCall(call) => Some((call.id.as_str(), call.name.as_str())),
            _ => None,
        })
        .collect();
    let mut contents = Vec::with_capacity(request.messages.len());
    for (n, message) in request.messages.iter().enumerate() {
        let parts = encode_parts(message, &names, &format!("messages[{n}]"))?;
        if parts.is_empty() {
            continue;
        }
        let role = match message.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        contents.push(json!({"role": role, "parts": parts}));
    }
    body.insert("contents".into(), Value::Array(contents));
    if let Some(system) = request.system.as_deref().filter(|s| !s.is_empty()) {
        body.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system}]}),
        );
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration =
                    json!({"name": tool.name, "parametersJsonSchema": tool.parameters});
                if let Some(description) = &tool.description {
                    declaration["description"] = json!(description);
                }
                declaration
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    if let Some(choice) = &request.tool_choice {
        let config = match choice {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Named(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        };
        body.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": config}),
        );
    }
    let config = generation_config(request);
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    Ok(Value::Object(body))
}

fn generation_config(request: &Request) -> Map<String, Value> {
    let mut config = Map::new();
    let mut put = |name: &str, value: Value| {
        if !value.is_null() {
            config.insert(name.to_owned(), value);
        }
    };
    put("maxOutputTokens", json!(request.max_tokens));
    put("temperature", json!(request.temperature));
    put("topP", json!(request.top_p));
    put("topK", json!(request.top_k));
    put("candidateCount", json!(request.candidates));
    put("seed", json!(request.seed));
    put("frequencyPenalty", json!(request.frequency_penalty));
    put("presencePenalty", json!(request.presence_penalty));
    if !request.stop.is_empty() {
        put("stopSequences", json!(request.stop));
    }
    match &request.response_format {
        Some(ResponseFormat::JsonObject) => put("responseMimeType", json!("application/json")),
        Some(ResponseFormat::JsonSchema { schema, .. }) => {
            let mut schema = schema.clone();
            if let Value::Object(map) = &mut schema {
                map.remove("$schema");
            }
            put("responseMimeType", json!("application/json"));
            put("responseJsonSchema", schema);
        }
        Some(ResponseFormat::Text) | None => {}
    }
    match &request.reasoning {
        Some(Reasoning::Disabled) => put("thinkingConfig", json!({"thinkingBudget": 0})),
        Some(reasoning) => {
            if let Some(budget) = reasoning.budget() {
                put("thinkingConfig", json!({"thinkingBudget": budget}));
            }
        }
        None => {}
    }
    config
}

fn encode_parts(
    message: &Message,
    names: &HashMap<&str, &str>,
    at: &str,
) -> Result<Vec<Value>, TranslateError> {
    let mut parts = Vec::with_capacity(message.parts.len());
    for (n, part) in message.parts.iter().enumerate() {
        match part {
            Part::Text(text) if text.is_empty() => {}
            Part::Text(text) => parts.push(json!({"text": text})),
            Part::Image(media) | Part::Document(media) => parts.push(media_part(media)),
            Part::ToolCall(call) => {
                let args = arguments_object(&call.arguments, &format!("{at}.tool_calls[{n}]"))?;
                parts.push(
                    json!({"functionCall": {"name": call.name, "args": args, "id": call.id}}),
                );
            }
            Part::ToolResult(result) => {
                let Some(name) = names.get(result.call_id.as_str()) else {
                    return Err(TranslateError::field(
                        at,
                        format!(
                            "the tool result for `{}` answers no earlier tool call",
                            result.call_id
                        ),
                    ));
                };
                let text = crate::translate::openai::encode::result_text(result);
                // A JSON answer goes as JSON, anything else as a string (Gemini wants an object).
                let value = serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text));
                let key = if result.is_error { "error" } else { "result" };
                parts.push(json!({"functionResponse": {
                    "name": name, "id": result.call_id, "response": {key: value},
                }}));
                // Images and documents the tool returned go beside its response.
                for media in &result.content {
                    if let Part::Image(media) | Part::Document(media) = media {
                        parts.push(media_part(media));
                    }
                }
            }
            // Thinking from another provider cannot be replayed to Gemini.
            Part::Thinking { .. } | Part::RedactedThinking(_) => {}
        }
    }
    Ok(parts)
}

fn media_part(media: &Media) -> Value {
    match media {
        Media::Base64 { media_type, data } => {
            json!({"inlineData": {"mimeType": media_type, "data": data}})
        }
        Media::Url { url } => {
            json!({"fileData": {"mimeType": mime_of_url(url), "fileUri": url}})
        }
    }
}

/// Gemini needs a MIME type with a file URI: guessed from the extension.
fn mime_of_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next().unwrap_or_default() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "heic" => "image/heic",
        _ => "image/jpeg",
    }
}

#[derive(Deserialize)]
struct EmbeddingRequest {
    input: EmbeddingInput,
    dimensions: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

/// An OpenAI embeddings request as Gemini's `batchEmbedContents`; returns the body and the
/// input texts (for a token estimate, Gemini reports none).
pub fn encode_embeddings(body: &[u8], model: &str) -> Result<(Value, Vec<String>), TranslateError> {
    let raw: EmbeddingRequest = crate::translate::parse_body(body).map_err(|error| {
        if error.field.as_deref() == Some("input") {
            TranslateError::field(
                "input",
                "this model's provider (Gemini) takes text inputs only",
            )
        } else {
            error
        }
    })?;
    let inputs = match raw.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    if inputs.is_empty() {
        return Err(TranslateError::field("input", "must not be empty"));
    }
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut request =
                json!({"model": format!("models/{model}"), "content": {"parts": [{"text": text}]}});
            if let Some(dimensions) = raw.dimensions {
                request["outputDimensionality"] = json!(dimensions);
            }
            request
        })
        .collect();
    Ok((json!({"requests": requests}), inputs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::{Tool, ToolCall, ToolResult};

    #[test]
    fn request_becomes_contents_and_config() {
        let request = Request {
            model: "gemini-2.5-flash".into(),
            system: Some("Be brief.".into()),
            messages: vec![
                Message {
                    role: Role::User,
                    parts: vec![
                        Part::Text("What is this?".into()),
                        Part::Image(Media::Base64 {
                            media_type: "image/png".into(),
                            data: "AAAA".into(),
                        }),
                        Part::Image(Media::Url {
                            url: "https://x.test/a.webp?x=1".into(),
                        }),
                    ],
                },
                Message {
                    role: Role::Assistant,
                    parts: vec![Part::ToolCall(ToolCall {
                        id: "call_1".into(),
                        name: "look".into(),
                        arguments: "{\"a\":1}".into(),
                    })],
                },
                Message {
                    role: Role::User,
                    parts: vec![Part::ToolResult(ToolResult {
                        call_id: "call_1".into(),
                        content: vec![Part::Text("{\"seen\":true}".into())],
                        is_error: false,
                    })],
                },
            ],
            tools: vec![Tool {
                name: "look".into(),
                description: Some("Looks".into()),
                parameters: json!({"type": "object"}),
                strict: false,
            }],
            tool_choice: Some(ToolChoice::Named("look".into())),
            max_tokens: Some(64),
            temperature: Some(0.2),
            stop: vec!["END".into()],
            response_format: Some(ResponseFormat::JsonObject),
            ..Request::default()
        };
        let body = encode(&request).unwrap();
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        assert_eq!(
            body["contents"][0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/png", "data": "AAAA"}})
        );
        assert_eq!(
            body["contents"][0]["parts"][2]["fileData"]["mimeType"],
            "image/webp"
        );
        assert_eq!(body["contents"][1]["role"], "model");
        assert_eq!(
            body["contents"][1]["parts"][0]["functionCall"],
            json!({"name": "look", "args": {"a": 1}, "id": "call_1"})
        );
        assert_eq!(
            body["contents"][2]["parts"][0]["functionResponse"],
            json!({"name": "look", "id": "call_1", "response": {"result": {"seen": true}}})
        );
        assert_eq!(
            body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"],
            json!({"type": "object"})
        );
        assert_eq!(
            body["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["look"]})
        );
        let config = &body["generationConfig"];
        assert_eq!(config["maxOutputTokens"], 64);
        assert_eq!(config["stopSequences"], json!(["END"]));
        assert_eq!(config["responseMimeType"], "application/json");
    }

    #[test]
    fn orphan_tool_results_are_refused() {
        let request = Request {
            messages: vec![Message {
                role: Role::User,
                parts: vec![Part::ToolResult(ToolResult {
                    call_id: "nowhere".into(),
                    content: vec![],
                    is_error: false,
                })],
            }],
            ..Request::default()
        };
        assert_eq!(
            encode(&request).unwrap_err().field.as_deref(),
            Some("messages[0]")
        );
    }

    #[test]
    fn embeddings_become_a_batch() {
        let (body, inputs) = encode_embeddings(
            br#"{"model":"e","input":["a","b"],"dimensions":8}"#,
            "text-embedding-004",
        )
        .unwrap();
        assert_eq!(inputs.len(), 2);
        assert_eq!(body["requests"][1]["model"], "models/text-embedding-004");
        assert_eq!(body["requests"][1]["content"]["parts"][0]["text"], "b");
        assert_eq!(body["requests"][0]["outputDimensionality"], 8);
        let e = encode_embeddings(br#"{"model":"e","input":[1,2]}"#, "m").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("input"));
    }
}
