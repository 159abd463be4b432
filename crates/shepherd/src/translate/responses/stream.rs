//! Canonical stream events encoded as the Responses API's typed events, numbered in order
//! (`sequence_number`): `response.created` and `response.in_progress`; per output item
//! `response.output_item.added`, its deltas (`response.output_text.delta`,
//! `response.function_call_arguments.delta`, `response.reasoning_summary_text.delta`) and its
//! `.done` events; then `response.completed` (or `response.incomplete`) carrying the whole
//! response with usage, or `response.failed` when the upstream fails mid-stream.

use axum::http::StatusCode;
use bytes::BytesMut;
use serde_json::{Value, json};

use super::response::{
    Envelope, call_item, finish as finish_object, item_id, message_item, object, reasoning_item,
    text_part,
};
use crate::api::errors::ApiError;
use crate::translate::ir::{Event, Finish, Usage};
use crate::translate::stream::{Encoder, write_named};

/// An output item being written.
#[derive(Debug)]
enum Item {
    Message {
        id: String,
        text: String,
    },
    Reasoning {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
        index: usize,
    },
}

#[derive(Debug)]
pub struct ResponsesEncoder {
    envelope: Envelope,
    sequence: u64,
    started: bool,
    /// Items of the first choice, in order; the last one is open until another begins.
    items: Vec<Item>,
    /// Items already closed (their `.done` events written).
    closed: usize,
    /// The events belong to a choice after the first (Responses has one output): skipped.
    other_choice: bool,
    finish: Finish,
    usage: Option<Usage>,
    chars: usize,
}

impl ResponsesEncoder {
    pub fn new(envelope: Envelope) -> Self {
        ResponsesEncoder {
            envelope,
            sequence: 0,
            started: false,
            items: Vec::new(),
            closed: 0,
            other_choice: false,
            finish: Finish::Stop,
            usage: None,
            chars: 0,
        }
    }

    fn emit(&mut self, kind: &str, mut data: Value, out: &mut BytesMut) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        write_named(out, kind, &data);
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let response = object(&self.envelope, "in_progress", Vec::new());
        self.emit("response.created", json!({"response": response}), out);
        self.emit("response.in_progress", json!({"response": response}), out);
    }

    /// Closes the open item and opens `item` (its `output_item.added` written).
    fn open(&mut self, item: Item, out: &mut BytesMut) {
        self.close_open(out);
        let output_index = self.items.len();
        let added = match &item {
            Item::Message { id, .. } => {
                json!({"type": "message", "id": id, "status": "in_progress",
                                               "role": "assistant", "content": []})
            }
            Item::Reasoning { id, .. } => json!({"type": "reasoning", "id": id, "summary": []}),
            Item::Call {
                id, call_id, name, ..
            } => call_item(id, call_id, name, "", "in_progress"),
        };
        self.emit(
            "response.output_item.added",
            json!({"output_index": output_index, "item": added}),
            out,
        );
        match &item {
            Item::Message { id, .. } => {
                let data = json!({"item_id": id, "output_index": output_index, "content_index": 0,
                                  "part": text_part("")});
                self.emit("response.content_part.added", data, out);
            }
            Item::Reasoning { id, .. } => {
                let data = json!({"item_id": id, "output_index": output_index, "summary_index": 0,
                                  "part": {"type": "summary_text", "text": ""}});
                self.emit("response.reasoning_summary_part.added", data, out);
            }
            Item::Call { .. } => {}
        }
        self.items.push(item);
    }

    /// Writes the `.done` events of the open item, if any.
    fn close_open(&mut self, out: &mut BytesMut) {
        let output_index = self.closed;
        let Some(item) = self.items.get(output_index) else {
            return;
        };
        self.closed += 1;
        let (done, events): (Value, Vec<(&str, Value)>) = match item {
            Item::Message { id, text } => (
                message_item(id, text, "completed"),
                vec![
                    (
                        "response.output_text.done",
                        json!({"item_id": id, "output_index": output_index,
                                                         "content_index": 0, "text": text, "logprobs": []}),
                    ),
                    (
                        "response.content_part.done",
                        json!({"item_id": id, "output_index": output_index,
                                                          "content_index": 0, "part": text_part(text)}),
                    ),
                ],
            ),
            Item::Reasoning { id, text } => (
                reasoning_item(id, text),
                vec![
                    (
                        "response.reasoning_summary_text.done",
                        json!({"item_id": id, "output_index": output_index,
                                                                    "summary_index": 0, "text": text}),
                    ),
                    (
                        "response.reasoning_summary_part.done",
                        json!({"item_id": id, "output_index": output_index,
                                                                    "summary_index": 0,
                                                                    "part": {"type": "summary_text", "text": text}}),
                    ),
                ],
            ),
            Item::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => (
                call_item(id, call_id, name, arguments, "completed"),
                vec![(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": output_index, "name": name, "arguments": arguments}),
                )],
            ),
        };
        for (kind, data) in events {
            self.emit(kind, data, out);
        }
        self.emit(
            "response.output_item.done",
            json!({"output_index": output_index, "item": done}),
            out,
        );
    }

    fn output(&self) -> Vec<Value> {
        self.items
            .iter()
            .map(|item| match item {
                Item::Message { id, text } => message_item(id, text, "completed"),
                Item::Reasoning { id, text } => reasoning_item(id, text),
                Item::Call {
                    id,
                    call_id,
                    name,
                    arguments,
                    ..
                } => call_item(id, call_id, name, arguments, "completed"),
            })
            .collect()
    }

    fn text(&mut self, text: String, reasoning: bool, out: &mut BytesMut) {
        self.chars += text.len();
        let open_kind_matches = match self.items.last() {
            Some(Item::Message { .. }) => !reasoning,
            Some(Item::Reasoning { .. }) => reasoning,
            _ => false,
        } && self.closed < self.items.len();
        if !open_kind_matches {
            let item = if reasoning {
                Item::Reasoning {
                    id: item_id("rs_"),
                    text: String::new(),
                }
            } else {
                Item::Message {
                    id: item_id("msg_"),
                    text: String::new(),
                }
            };
            self.open(item, out);
        }
        let output_index = self.items.len() - 1;
        let (kind, data) = match self.items.last_mut() {
            Some(Item::Message { id, text: all }) => {
                all.push_str(&text);
                (
                    "response.output_text.delta",
                    json!({"item_id": id, "output_index": output_index, "content_index": 0, "delta": text, "logprobs": []}),
                )
            }
            Some(Item::Reasoning { id, text: all }) => {
                all.push_str(&text);
                (
                    "response.reasoning_summary_text.delta",
                    json!({"item_id": id, "output_index": output_index, "summary_index": 0, "delta": text}),
                )
            }
            _ => return,
        };
        self.emit(kind, data, out);
    }
}

impl Encoder for ResponsesEncoder {
    fn encode(&mut self, event: Event, out: &mut BytesMut) {
        if let Event::Choice(index) = event {
            self.other_choice = index > 0;
            return;
        }
        if self.other_choice {
            return;
        }
        self.start(out);
        match event {
            Event::Start { .. } | Event::Choice(_) => {}
            Event::Text(text) => self.text(text, false, out),
            Event::Thinking(text) => self.text(text, true, out),
            Event::ToolStart { index, id, name } => {
                let item = Item::Call {
                    id: item_id("fc_"),
                    call_id: id,
                    name,
                    arguments: String::new(),
                    index,
                };
                self.open(item, out);
            }
            Event::ToolArgs { index, fragment } => {
                self.chars += fragment.len();
                let found = self
                    .items
                    .iter_mut()
                    .enumerate()
                    .find_map(|(at, item)| match item {
                        Item::Call {
                            id,
                            arguments,
                            index: i,
                            ..
                        } if *i == index => Some((at, id.clone(), arguments)),
                        _ => None,
                    });
                if let Some((output_index, id, arguments)) = found {
                    arguments.push_str(&fragment);
                    let data =
                        json!({"item_id": id, "output_index": output_index, "delta": fragment});
                    self.emit("response.function_call_arguments.delta", data, out);
                }
            }
            Event::Finish { reason, .. } => self.finish = reason,
            Event::Usage(usage) => self.usage = Some(usage),
        }
    }

    fn finish(&mut self, usage: &Usage, out: &mut BytesMut) {
        self.start(out);
        while self.closed < self.items.len() {
            self.close_open(out);
        }
        let mut response = object(&self.envelope, "completed", self.output());
        finish_object(&mut response, self.finish, usage);
        self.envelope.keep(&response);
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({"response": response}), out);
    }

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        self.start(out);
        let mut response = object(&self.envelope, "failed", self.output());
        // The response's error codes are a closed list: a rate limit, or a server error.
        let code = if error.status == StatusCode::TOO_MANY_REQUESTS {
            "rate_limit_exceeded"
        } else {
            "server_error"
        };
        response["error"] = json!({"code": code, "message": error.message});
        self.emit("response.failed", json!({"response": response}), out);
    }

    fn usage(&self) -> (Option<Usage>, usize) {
        (self.usage, self.chars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::stream::events;

    fn encoder() -> ResponsesEncoder {
        ResponsesEncoder::new(Envelope {
            id: "resp_1".into(),
            model: "m".into(),
            created: 1,
            echo: Default::default(),
        })
    }

    fn parsed(out: &BytesMut) -> Vec<(String, Value)> {
        events(std::str::from_utf8(out).unwrap())
            .map(|event| {
                (
                    event.name.unwrap_or_default().to_owned(),
                    serde_json::from_str(&event.data).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn text_then_a_tool_call_are_items_with_numbered_events() {
        let mut encoder = encoder();
        let mut out = BytesMut::new();
        for event in [
            Event::Start {
                id: None,
                model: None,
            },
            Event::Text("Hel".into()),
            Event::Text("lo".into()),
            Event::ToolStart {
                index: 0,
                id: "call_1".into(),
                name: "f".into(),
            },
            Event::ToolArgs {
                index: 0,
                fragment: "{\"a\":".into(),
            },
            Event::ToolArgs {
                index: 0,
                fragment: "1}".into(),
            },
            Event::Finish {
                reason: Finish::ToolCalls,
                stop_sequence: None,
            },
        ] {
            encoder.encode(event, &mut out);
        }
        encoder.finish(
            &Usage {
                input: 3,
                output: 4,
                ..Usage::default()
            },
            &mut out,
        );
        let events = parsed(&out);
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (n, (kind, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], n as u64, "{kind}");
            assert_eq!(&data["type"], kind.as_str());
        }
        let completed = &events.last().unwrap().1["response"];
        assert_eq!(completed["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(completed["output"][1]["arguments"], "{\"a\":1}");
        assert_eq!(completed["output"][1]["call_id"], "call_1");
        assert_eq!(completed["usage"]["total_tokens"], 7);
        assert_eq!(encoder.usage().1, 12);
    }

    #[test]
    fn a_failure_mid_stream_ends_with_response_failed() {
        let mut encoder = encoder();
        let mut out = BytesMut::new();
        encoder.encode(Event::Text("partial".into()), &mut out);
        encoder.fail(&ApiError::upstream_bad_response("cut"), &mut out);
        let events = parsed(&out);
        let (kind, data) = events.last().unwrap();
        assert_eq!(kind, "response.failed");
        assert_eq!(data["response"]["status"], "failed");
        assert!(
            data["response"]["error"]["message"]
                .as_str()
                .unwrap()
                .contains("cut")
        );
    }
}
