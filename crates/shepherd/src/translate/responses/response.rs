//! The Responses API `response` object: a canonical answer encoded as output items (reasoning,
//! message with `output_text`, `function_call`), its status (`completed`, or `incomplete` with a
//! reason) and usage; and the reverse, for answers the gateway reads back (the cache).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::translate::ir::{Finish, Part, Response, Usage};

/// What the response object repeats of the request (instructions, tools, settings; empty when
/// unknown), and who keeps the finished response for `previous_response_id`, if anyone.
#[derive(Clone, Default)]
pub struct Echo {
    pub fields: Map<String, Value>,
    pub keeper: Option<Arc<dyn Keeper>>,
}

impl Echo {
    pub fn new() -> Echo {
        Echo::default()
    }
}

impl std::fmt::Debug for Echo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Echo")
            .field("fields", &self.fields.len())
            .field("kept", &self.keeper.is_some())
            .finish()
    }
}

/// Keeps a finished (`completed` or `incomplete`) response object.
pub trait Keeper: Send + Sync + std::fmt::Debug {
    fn keep(&self, response: &Value);
}

/// The request fields a response object repeats, taken from the client's body.
pub fn echo_of(body: &Value) -> Echo {
    const ECHOED: &[&str] = &[
        "instructions",
        "max_output_tokens",
        "metadata",
        "parallel_tool_calls",
        "previous_response_id",
        "reasoning",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_p",
        "truncation",
        "user",
    ];
    let mut fields: Map<String, Value> = ECHOED
        .iter()
        .filter_map(|field| {
            body.get(*field)
                .filter(|value| !value.is_null())
                .map(|value| ((*field).to_owned(), value.clone()))
        })
        .collect();
    if let Some(Value::Array(tools)) = fields.get_mut("tools") {
        tools.iter_mut().for_each(complete_function_tool);
    }
    Echo {
        fields,
        keeper: None,
    }
}

/// A function tool as the response repeats it: `strict` as applied (off unless asked for) and
/// `description` null when absent.
fn complete_function_tool(tool: &mut Value) {
    let Value::Object(fields) = tool else { return };
    if fields.get("type").and_then(Value::as_str) != Some("function") {
        return;
    }
    let strict = fields.get("strict").and_then(Value::as_bool) == Some(true);
    fields.insert("strict".to_owned(), Value::Bool(strict));
    fields.entry("description").or_insert(Value::Null);
    fields.entry("parameters").or_insert(Value::Null);
}

/// The identity of one response: its id, model and creation time.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub echo: Echo,
}

impl Envelope {
    /// Hands a finished response to its keeper, if it has one.
    pub fn keep(&self, response: &Value) {
        if let Some(keeper) = &self.echo.keeper {
            keeper.keep(response);
        }
    }
}

/// The response object with `status` and `output` (usage and details added by the caller).
pub fn object(envelope: &Envelope, status: &str, output: Vec<Value>) -> Value {
    let mut object = json!({
        "id": envelope.id,
        "object": "response",
        "created_at": envelope.created,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "metadata": {},
        "model": envelope.model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
    });
    if let Value::Object(fields) = &mut object {
        for (name, value) in &envelope.echo.fields {
            fields.insert(name.clone(), value.clone());
        }
    }
    object
}

/// Sets the status of a finished response from why the model stopped, and its usage.
pub fn finish(object: &mut Value, finish: Finish, usage: &Usage) {
    let incomplete = match finish {
        Finish::Length => Some("max_output_tokens"),
        Finish::ContentFilter => Some("content_filter"),
        Finish::Stop | Finish::ToolCalls => None,
    };
    object["status"] = json!(if incomplete.is_some() {
        "incomplete"
    } else {
        "completed"
    });
    if let Some(reason) = incomplete {
        object["incomplete_details"] = json!({"reason": reason});
    }
    object["usage"] = usage_json(usage);
}

pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.input,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
        },
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": usage.total(),
    })
}

pub fn usage_of(usage: &Value) -> Option<Usage> {
    Some(Usage {
        input: usage.get("input_tokens")?.as_u64()?,
        cache_read: usage["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        cache_write: usage["input_tokens_details"]["cache_write_tokens"]
            .as_u64()
            .unwrap_or(0),
        output: usage.get("output_tokens")?.as_u64()?,
        reasoning: usage["output_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap_or(0),
    })
}

/// An id for an output item (`msg_…`, `fc_…`, `rs_…`).
pub fn item_id(prefix: &str) -> String {
    crate::api::new_id(prefix)
}

pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [text_part(text)]})
}

pub fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

pub fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

pub fn reasoning_item(id: &str, text: &str) -> Value {
    let summary = if text.is_empty() {
        json!([])
    } else {
        json!([{"type": "summary_text", "text": text}])
    };
    json!({"type": "reasoning", "id": id, "summary": summary})
}

/// A whole answer as a response object.
pub fn encode(answer: &Response, envelope: &Envelope, usage: &Usage) -> Value {
    let mut output = Vec::new();
    let mut text = String::new();
    let flush = |text: &mut String, output: &mut Vec<Value>| {
        if !text.is_empty() {
            output.push(message_item(&item_id("msg_"), text, "completed"));
            text.clear();
        }
    };
    for part in &answer.parts {
        match part {
            Part::Text(piece) => text.push_str(piece),
            Part::Thinking { text: thought, .. } => {
                flush(&mut text, &mut output);
                output.push(reasoning_item(&item_id("rs_"), thought));
            }
            Part::ToolCall(call) => {
                flush(&mut text, &mut output);
                output.push(call_item(
                    &item_id("fc_"),
                    &call.id,
                    &call.name,
                    &call.arguments,
                    "completed",
                ));
            }
            _ => {}
        }
    }
    flush(&mut text, &mut output);
    let mut object = object(envelope, "completed", output);
    finish(&mut object, answer.finish, usage);
    envelope.keep(&object);
    object
}

/// A response object read back into the canonical answer.
pub fn decode(body: &Value) -> Result<Response, String> {
    let output = body["output"]
        .as_array()
        .ok_or("the response has no `output`")?;
    let mut parts = Vec::new();
    for item in output {
        match item["type"].as_str().unwrap_or_default() {
            "message" => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if let Some(text) = part["text"].as_str().or(part["refusal"].as_str()) {
                        parts.push(Part::Text(text.to_owned()));
                    }
                }
            }
            "function_call" => parts.push(Part::ToolCall(crate::translate::ir::ToolCall {
                id: item["call_id"].as_str().unwrap_or_default().to_owned(),
                name: item["name"].as_str().unwrap_or_default().to_owned(),
                arguments: item["arguments"].as_str().unwrap_or_default().to_owned(),
            })),
            "reasoning" => {
                let text: String = item["summary"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|part| part["text"].as_str())
                    .collect();
                parts.push(Part::Thinking {
                    text,
                    signature: None,
                });
            }
            _ => {}
        }
    }
    let has_calls = parts.iter().any(|part| matches!(part, Part::ToolCall(_)));
    let finish = match body["incomplete_details"]["reason"].as_str() {
        Some("max_output_tokens") => Finish::Length,
        Some("content_filter") => Finish::ContentFilter,
        _ if has_calls => Finish::ToolCalls,
        _ => Finish::Stop,
    };
    Ok(Response {
        id: body["id"].as_str().map(str::to_owned),
        model: body["model"].as_str().map(str::to_owned),
        parts,
        finish,
        stop_sequence: None,
        alternatives: Vec::new(),
        usage: body.get("usage").and_then(usage_of),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::ToolCall;

    fn envelope() -> Envelope {
        Envelope {
            id: "resp_1".into(),
            model: "m".into(),
            created: 1,
            echo: echo_of(&json!({"instructions": "Be brief", "tools": [], "store": true})),
        }
    }

    #[test]
    fn an_answer_becomes_output_items_and_reads_back_the_same() {
        let answer = Response {
            id: None,
            model: None,
            parts: vec![
                Part::Thinking {
                    text: "hmm".into(),
                    signature: None,
                },
                Part::Text("Hello ".into()),
                Part::Text("there".into()),
                Part::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "f".into(),
                    arguments: "{}".into(),
                }),
            ],
            finish: Finish::ToolCalls,
            stop_sequence: None,
            alternatives: Vec::new(),
            usage: None,
        };
        let usage = Usage {
            input: 5,
            output: 7,
            reasoning: 2,
            cache_read: 1,
            cache_write: 0,
        };
        let object = encode(&answer, &envelope(), &usage);
        assert_eq!(object["status"], "completed");
        assert_eq!(object["instructions"], "Be brief");
        assert_eq!(
            object["store"], false,
            "nothing is stored: the echo does not claim it"
        );
        let kinds: Vec<&str> = object["output"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(object["output"][1]["content"][0]["text"], "Hello there");
        assert_eq!(object["usage"]["total_tokens"], 12);
        assert_eq!(
            object["usage"]["output_tokens_details"]["reasoning_tokens"],
            2
        );
        let back = decode(&object).unwrap();
        assert_eq!(back.text(), "Hello there");
        assert_eq!(back.finish, Finish::ToolCalls);
        assert_eq!(back.usage, Some(usage));
    }

    #[test]
    fn a_cut_answer_is_incomplete_with_its_reason() {
        let answer = Response {
            id: None,
            model: None,
            parts: vec![Part::Text("partial".into())],
            finish: Finish::Length,
            stop_sequence: None,
            alternatives: Vec::new(),
            usage: None,
        };
        let object = encode(&answer, &envelope(), &Usage::default());
        assert_eq!(object["status"], "incomplete");
        assert_eq!(object["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(decode(&object).unwrap().finish, Finish::Length);
    }
}
