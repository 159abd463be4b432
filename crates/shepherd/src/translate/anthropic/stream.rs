//! Anthropic streams: an Anthropic upstream's named events decoded into canonical events, and
//! canonical events encoded as Anthropic's events for a client (`message_start`, one
//! `content_block_*` run per block, `message_delta` with the stop reason and usage,
//! `message_stop`; `event: error` on failure).

use bytes::BytesMut;
use serde_json::{Value, json};

use super::response::{finish_of, stop_reason, usage_json, usage_of};
use crate::api::errors::{ApiError, ClientProtocol};
use crate::translate::errors::from_anthropic;
use crate::translate::ir::{Event, Finish, Usage, finish_with_calls};
use crate::translate::stream::{DecodeError, Decoder, Encoder, SseEvent, write_named};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpstreamBlock {
    Tool { index: usize, has_args: bool },
    Other,
}

/// Decodes an Anthropic Messages stream.
#[derive(Debug, Default)]
pub struct MessagesDecoder {
    stopped: bool,
    usage: Usage,
    /// By Anthropic block index.
    blocks: Vec<UpstreamBlock>,
    next_tool: usize,
}

impl MessagesDecoder {
    fn block(&mut self, index: usize) -> Option<&mut UpstreamBlock> {
        self.blocks.get_mut(index)
    }
}

impl Decoder for MessagesDecoder {
    fn decode(&mut self, event: SseEvent<'_>, out: &mut Vec<Event>) -> Result<(), DecodeError> {
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|error| DecodeError::Malformed(format!("an event is not JSON: {error}")))?;
        let kind = data["type"].as_str().or(event.name).unwrap_or_default();
        let index = data["index"]
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .unwrap_or(0);
        match kind {
            "message_start" => {
                let message = &data["message"];
                out.push(Event::Start {
                    id: message["id"].as_str().map(str::to_owned),
                    model: message["model"].as_str().map(str::to_owned),
                });
                if message["usage"].is_object() {
                    self.usage = usage_of(&message["usage"], self.usage);
                    out.push(Event::Usage(self.usage));
                }
            }
            "content_block_start" => {
                let block = &data["content_block"];
                if self.blocks.len() <= index {
                    self.blocks.resize(index + 1, UpstreamBlock::Other);
                }
                match block["type"].as_str().unwrap_or_default() {
                    "tool_use" => {
                        let tool = self.next_tool;
                        self.next_tool += 1;
                        self.blocks[index] = UpstreamBlock::Tool {
                            index: tool,
                            has_args: false,
                        };
                        out.push(Event::ToolStart {
                            index: tool,
                            id: block["id"].as_str().unwrap_or_default().to_owned(),
                            name: block["name"].as_str().unwrap_or_default().to_owned(),
                        });
                    }
                    "text" => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Event::Text(text.to_owned()));
                        }
                    }
                    "thinking" => {
                        if let Some(text) = block["thinking"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Event::Thinking(text.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str().unwrap_or_default() {
                    "text_delta" => {
                        let text = delta["text"].as_str().unwrap_or_default();
                        if !text.is_empty() {
                            out.push(Event::Text(text.to_owned()));
                        }
                    }
                    "thinking_delta" => {
                        let text = delta["thinking"].as_str().unwrap_or_default();
                        if !text.is_empty() {
                            out.push(Event::Thinking(text.to_owned()));
                        }
                    }
                    "input_json_delta" => {
                        let fragment = delta["partial_json"].as_str().unwrap_or_default();
                        if let Some(UpstreamBlock::Tool { index, has_args }) = self.block(index)
                            && !fragment.is_empty()
                        {
                            *has_args = true;
                            out.push(Event::ToolArgs {
                                index: *index,
                                fragment: fragment.to_owned(),
                            });
                        }
                    }
                    // signature_delta, citations_delta: nothing canonical.
                    _ => {}
                }
            }
            "content_block_stop" => {
                if let Some(UpstreamBlock::Tool {
                    index,
                    has_args: false,
                }) = self.block(index)
                {
                    let index = *index;
                    out.push(Event::ToolArgs {
                        index,
                        fragment: "{}".to_owned(),
                    });
                }
            }
            "message_delta" => {
                if data["usage"].is_object() {
                    self.usage = usage_of(&data["usage"], self.usage);
                }
                if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                    out.push(Event::Finish {
                        reason: finish_with_calls(finish_of(reason), self.next_tool > 0),
                        stop_sequence: data["delta"]["stop_sequence"].as_str().map(str::to_owned),
                    });
                }
                out.push(Event::Usage(self.usage));
            }
            "message_stop" => self.stopped = true,
            "error" => return Err(DecodeError::Upstream(from_anthropic(0, &data))),
            // ping, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.stopped
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenBlock {
    Text(usize),
    Tool { tool: usize, block: usize },
}

/// Encodes canonical events as an Anthropic Messages stream.
#[derive(Debug)]
pub struct MessagesEncoder {
    id: String,
    model: String,
    started: bool,
    open: Option<OpenBlock>,
    next_block: usize,
    /// Block index of each tool call, by canonical tool index.
    tool_blocks: Vec<usize>,
    finish: Option<(Finish, Option<String>)>,
    usage: Option<Usage>,
    chars: usize,
    /// The choice the events are for (only the first is shown).
    choice: usize,
}

impl MessagesEncoder {
    pub fn new(id: String, model: String) -> Self {
        MessagesEncoder {
            id,
            model,
            started: false,
            open: None,
            next_block: 0,
            tool_blocks: Vec::new(),
            finish: None,
            usage: None,
            chars: 0,
            choice: 0,
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        write_named(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut BytesMut) {
        let index = match self.open.take() {
            Some(OpenBlock::Text(index)) => index,
            Some(OpenBlock::Tool { block, .. }) => block,
            None => return,
        };
        write_named(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
    }

    fn open_block(&mut self, block: Value, out: &mut BytesMut) -> usize {
        self.close(out);
        let index = self.next_block;
        self.next_block += 1;
        write_named(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn delta(out: &mut BytesMut, index: usize, delta: Value) {
        write_named(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }
}

impl Encoder for MessagesEncoder {
    fn encode(&mut self, event: Event, out: &mut BytesMut) {
        self.start(out);
        if let Event::Choice(index) = event {
            self.choice = index;
            return;
        }
        // Anthropic answers have one choice: later ones (never asked for by an Anthropic
        // client) are not shown.
        if self.choice != 0 && !matches!(event, Event::Usage(_)) {
            return;
        }
        match event {
            Event::Start { .. } | Event::Choice(_) => {}
            Event::Text(text) => {
                self.chars += text.len();
                let index = match self.open {
                    Some(OpenBlock::Text(index)) => index,
                    _ => {
                        let index = self.open_block(json!({"type": "text", "text": ""}), out);
                        self.open = Some(OpenBlock::Text(index));
                        index
                    }
                };
                Self::delta(out, index, json!({"type": "text_delta", "text": text}));
            }
            // Thinking from another provider carries no Anthropic signature, so it cannot be
            // shown as a thinking block (the client would have to send it back signed).
            Event::Thinking(text) => self.chars += text.len(),
            Event::ToolStart { index, id, name } => {
                let block = self.open_block(
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                    out,
                );
                if self.tool_blocks.len() <= index {
                    self.tool_blocks.resize(index + 1, block);
                }
                self.tool_blocks[index] = block;
                self.open = Some(OpenBlock::Tool { tool: index, block });
            }
            Event::ToolArgs { index, fragment } => {
                self.chars += fragment.len();
                let block = match self.open {
                    Some(OpenBlock::Tool { tool, block }) if tool == index => block,
                    _ => match self.tool_blocks.get(index) {
                        Some(block) => *block,
                        None => return,
                    },
                };
                Self::delta(
                    out,
                    block,
                    json!({"type": "input_json_delta", "partial_json": fragment}),
                );
            }
            Event::Finish {
                reason,
                stop_sequence,
            } => {
                self.close(out);
                let reason = finish_with_calls(reason, !self.tool_blocks.is_empty());
                self.finish = Some((reason, stop_sequence));
            }
            Event::Usage(usage) => self.usage = Some(usage),
        }
    }

    fn finish(&mut self, usage: &Usage, out: &mut BytesMut) {
        self.start(out);
        self.close(out);
        let (finish, stop_sequence) = self.finish.take().unwrap_or((Finish::Stop, None));
        write_named(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(finish, stop_sequence.as_deref()),
                              "stop_sequence": stop_sequence},
                    "usage": usage_json(usage)}),
        );
        write_named(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        write_named(out, "error", &error.body(ClientProtocol::Anthropic));
    }

    fn usage(&self) -> (Option<Usage>, usize) {
        (self.usage, self.chars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut MessagesDecoder, events: &[Value]) -> Vec<Event> {
        let mut out = Vec::new();
        for event in events {
            let data = event.to_string();
            let name = event["type"].as_str();
            decoder
                .decode(SseEvent::new(name, &data), &mut out)
                .unwrap();
        }
        out
    }

    #[test]
    fn tool_use_stream_decodes_event_by_event() {
        let mut decoder = MessagesDecoder::default();
        let events = decode_all(
            &mut decoder,
            &[
                json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 10}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "ping"}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":\"Par"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "is\"}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
            ],
        );
        let start_usage = Usage {
            input: 60,
            cache_read: 10,
            output: 1,
            ..Usage::default()
        };
        assert_eq!(
            events,
            vec![
                Event::Start {
                    id: Some("msg_1".into()),
                    model: Some("claude".into())
                },
                Event::Usage(start_usage),
                Event::Text("Checking.".into()),
                Event::ToolStart {
                    index: 0,
                    id: "toolu_1".into(),
                    name: "get_weather".into()
                },
                Event::ToolArgs {
                    index: 0,
                    fragment: "{\"city\":\"Par".into()
                },
                Event::ToolArgs {
                    index: 0,
                    fragment: "is\"}".into()
                },
                Event::ToolStart {
                    index: 1,
                    id: "toolu_2".into(),
                    name: "now".into()
                },
                Event::ToolArgs {
                    index: 1,
                    fragment: "{}".into()
                },
                Event::Finish {
                    reason: Finish::ToolCalls,
                    stop_sequence: None
                },
                Event::Usage(Usage {
                    output: 42,
                    ..start_usage
                }),
            ]
        );
        assert!(!decoder.complete());
        decode_all(&mut decoder, &[json!({"type": "message_stop"})]);
        assert!(decoder.complete());
    }

    #[test]
    fn error_event_is_a_failure() {
        let mut decoder = MessagesDecoder::default();
        let data = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}).to_string();
        let result = decoder.decode(SseEvent::new(Some("error"), &data), &mut Vec::new());
        assert!(matches!(result, Err(DecodeError::Upstream(f)) if f.message == "Overloaded"));
    }

    fn parse(out: &BytesMut) -> Vec<(String, Value)> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let mut lines = e.lines();
                let name = lines
                    .next()
                    .unwrap()
                    .strip_prefix("event: ")
                    .unwrap()
                    .to_owned();
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                (name, serde_json::from_str(data).unwrap())
            })
            .collect()
    }

    #[test]
    fn encoder_opens_and_closes_blocks() {
        let mut encoder = MessagesEncoder::new("msg_x".into(), "m".into());
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
            Event::Usage(Usage {
                input: 5,
                output: 9,
                ..Usage::default()
            }),
        ] {
            encoder.encode(event, &mut out);
        }
        encoder.finish(&encoder.usage().0.unwrap(), &mut out);
        let events = parse(&out);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for (name, data) in &events {
            assert_eq!(data["type"], name.as_str());
        }
        assert_eq!(events[5].1["index"], 1);
        assert_eq!(events[5].1["content_block"]["type"], "tool_use");
        assert_eq!(
            events[6].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"a\":"})
        );
        assert_eq!(events[9].1["delta"]["stop_reason"], "tool_use");
        assert_eq!(events[9].1["usage"]["input_tokens"], 5);
        assert_eq!(events[9].1["usage"]["output_tokens"], 9);
    }
}
