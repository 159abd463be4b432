//! The Responses API client of the conformance suite: a conversation as a `POST /v1/responses`
//! body, and response objects and typed event streams read back into the suite's one shape,
//! with the grammar of the events checked on the way.

use serde_json::{Value, json};

use super::neutral::{Answer, Conv, PNG, Streamed, Turn};

/// The conversation as a Responses API request (it has no stop sequences: `conv.stop` is not
/// sent; usage always comes with `response.completed`).
pub fn body(model: &str, conv: &Conv, schema: Value) -> Value {
    let input: Vec<Value> = conv
        .turns
        .iter()
        .map(|turn| match turn {
            Turn::User(text) => json!({"role": "user", "content": text}),
            Turn::UserWithImage(text) => json!({"role": "user", "content": [
                {"type": "input_text", "text": text},
                {"type": "input_image", "image_url": format!("data:image/png;base64,{PNG}")}]}),
            Turn::Assistant(text) => json!({"role": "assistant", "content": text}),
            Turn::ToolCall(id, args) => json!({"type": "function_call", "call_id": id,
                                               "name": "get_weather", "arguments": args}),
            Turn::ToolResult(id, text) => {
                json!({"type": "function_call_output", "call_id": id, "output": text})
            }
        })
        .collect();
    let mut body = json!({"model": model, "input": input});
    if let Some(system) = conv.system {
        body["instructions"] = json!(system);
    }
    if conv.tools {
        body["tools"] = json!([{"type": "function", "name": "get_weather",
                                "description": "Weather of a city", "parameters": schema}]);
    }
    if let Some(max) = conv.max_tokens {
        body["max_output_tokens"] = json!(max);
    }
    if conv.json_mode {
        body["text"] =
            json!({"format": {"type": "json_schema", "name": "weather", "schema": schema}});
    }
    if conv.stream {
        body["stream"] = json!(true);
    }
    body
}

fn usage(usage: &Value) -> Option<(u64, u64, u64)> {
    let input = usage["input_tokens"].as_u64()?;
    let output = usage["output_tokens"].as_u64()?;
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(input + output),
        "{usage}"
    );
    Some((
        input,
        output,
        usage["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
    ))
}

/// A Responses API `response` object read back, checking its shape.
pub fn answer(body: &Value) -> Answer {
    assert_eq!(body["object"], "response", "{body}");
    assert!(body["id"].as_str().unwrap().starts_with("resp_"), "{body}");
    let mut answer = Answer {
        usage: usage(&body["usage"]),
        ..Answer::default()
    };
    for item in body["output"].as_array().unwrap() {
        assert_eq!(item["status"], "completed", "{item}");
        match item["type"].as_str().unwrap() {
            "message" => {
                assert_eq!(item["role"], "assistant");
                for part in item["content"].as_array().unwrap() {
                    assert_eq!(part["type"], "output_text", "{part}");
                    answer.text.push_str(part["text"].as_str().unwrap());
                }
            }
            "function_call" => answer.tools.push((
                item["call_id"].as_str().unwrap().to_owned(),
                item["name"].as_str().unwrap().to_owned(),
                item["arguments"].as_str().unwrap().to_owned(),
            )),
            "reasoning" => {}
            other => panic!("unexpected output item {other}: {body}"),
        }
    }
    answer.finish = match (
        body["status"].as_str().unwrap(),
        &body["incomplete_details"],
    ) {
        ("completed", _) if !answer.tools.is_empty() => "tool_calls",
        ("completed", _) => "stop",
        ("incomplete", details) => match details["reason"].as_str().unwrap() {
            "max_output_tokens" => "length",
            other => other,
        },
        (other, _) => panic!("unexpected status {other}: {body}"),
    }
    .to_owned();
    answer
}

/// A Responses API stream: named events whose name is their `type`, numbered from 0, opening
/// with `response.created` and `response.in_progress`, every item added before its deltas and
/// done after them, ending with `response.completed`/`incomplete` (or `response.failed`).
pub fn stream(events: &[(Option<String>, String)]) -> Streamed {
    let mut out = Streamed::default();
    let mut open_items: Vec<u64> = Vec::new();
    let mut item_kinds: Vec<String> = Vec::new();
    let mut text_done = String::new();
    for (n, (name, data)) in events.iter().enumerate() {
        let name = name.as_deref().expect("Responses events are named");
        let event: Value = serde_json::from_str(data).unwrap();
        assert_eq!(event["type"], name, "{event}");
        assert_eq!(event["sequence_number"], n as u64, "{event}");
        assert!(!out.complete, "nothing may follow the end: {event}");
        assert!(out.error.is_none(), "nothing may follow a failure: {event}");
        match (n, name) {
            (0, first) => assert_eq!(first, "response.created"),
            (1, second) => assert_eq!(second, "response.in_progress"),
            _ => {}
        }
        match name {
            "response.created" | "response.in_progress" => {
                assert_eq!(event["response"]["status"], "in_progress", "{event}")
            }
            "response.output_item.added" => {
                let index = event["output_index"].as_u64().unwrap();
                assert_eq!(index, item_kinds.len() as u64, "items count from 0");
                let item = &event["item"];
                let kind = item["type"].as_str().unwrap().to_owned();
                if kind == "function_call" {
                    out.answer.tools.push((
                        item["call_id"].as_str().unwrap().to_owned(),
                        item["name"].as_str().unwrap().to_owned(),
                        String::new(),
                    ));
                    out.answer.fragments.push(0);
                }
                item_kinds.push(kind);
                open_items.push(index);
            }
            "response.output_text.delta" => {
                let index = event["output_index"].as_u64().unwrap();
                assert!(open_items.contains(&index), "a delta goes to an open item");
                assert_eq!(item_kinds[index as usize], "message");
                out.answer.text.push_str(event["delta"].as_str().unwrap());
            }
            "response.output_text.done" => text_done.push_str(event["text"].as_str().unwrap()),
            "response.function_call_arguments.delta" => {
                let index = event["output_index"].as_u64().unwrap();
                assert!(open_items.contains(&index), "a delta goes to an open item");
                let last = out.answer.tools.len() - 1;
                out.answer.tools[last]
                    .2
                    .push_str(event["delta"].as_str().unwrap());
                out.answer.fragments[last] += 1;
            }
            "response.function_call_arguments.done" => {
                let last = out.answer.tools.len() - 1;
                assert_eq!(event["arguments"], out.answer.tools[last].2.as_str());
            }
            "response.output_item.done" => {
                let index = event["output_index"].as_u64().unwrap();
                assert_eq!(open_items.pop(), Some(index), "items close in order");
                assert_eq!(event["item"]["status"], "completed", "{event}");
            }
            "response.content_part.added"
            | "response.content_part.done"
            | "response.reasoning_summary_part.added"
            | "response.reasoning_summary_part.done"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_summary_text.done" => {}
            "response.completed" | "response.incomplete" => {
                assert!(open_items.is_empty(), "every item closed before the end");
                assert_eq!(text_done, out.answer.text, "done texts repeat the deltas");
                let whole = answer(&event["response"]);
                assert_eq!(
                    whole.text, out.answer.text,
                    "the final object repeats the stream"
                );
                out.answer.finish = whole.finish;
                out.answer.usage = whole.usage;
                out.complete = true;
            }
            "response.failed" => {
                assert_eq!(event["response"]["status"], "failed", "{event}");
                out.error = Some(event);
            }
            "error" => out.error = Some(event),
            other => panic!("unexpected event {other}"),
        }
    }
    out
}
