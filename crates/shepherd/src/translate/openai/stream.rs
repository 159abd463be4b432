//! OpenAI streams: chat chunks of an OpenAI-compatible upstream decoded into canonical events,
//! and canonical events encoded as chat chunks (or legacy completion chunks) for a client.

use bytes::BytesMut;
use serde_json::{Value, json};

use super::response::{Envelope, finish_name, finish_of, usage_json, usage_of};
use crate::api::errors::{ApiError, ClientProtocol};
use crate::translate::errors::from_openai;
use crate::translate::ir::{Event, Usage, finish_with_calls};
use crate::translate::stream::{DecodeError, Decoder, Encoder, SseEvent, write_data};

/// The most choices a stream may carry (OpenAI allows `n` up to 128).
const MAX_CHOICES: usize = 128;

/// Decodes `chat.completion.chunk` events (every choice) ending in `[DONE]`.
#[derive(Debug, Default)]
pub struct ChatDecoder {
    started: bool,
    done: bool,
    /// The choice the last events were for.
    current: usize,
    /// Per choice: tool calls begun so far.
    calls: Vec<usize>,
    /// Per (choice, upstream tool index): the id of the call it holds and its canonical index.
    tools: Vec<(usize, u64, String, usize)>,
}

impl ChatDecoder {
    fn tool_index(&mut self, choice: usize, call: &Value, out: &mut Vec<Event>) -> usize {
        let upstream_index = call["index"].as_u64().unwrap_or(0);
        let id = call["id"].as_str().filter(|id| !id.is_empty());
        let known = self
            .tools
            .iter()
            .rposition(|(c, index, _, _)| *c == choice && *index == upstream_index);
        // A fragment with a new id starts a new call, even at a reused index (some compatible
        // servers number every call 0).
        let is_new = match (known, id) {
            (None, _) => true,
            (Some(at), Some(id)) => self.tools[at].2 != id,
            (Some(_), None) => false,
        };
        if !is_new && let Some(at) = known {
            return self.tools[at].3;
        }
        let ordinal = self.calls[choice];
        self.calls[choice] += 1;
        let id = id.map_or_else(|| format!("call_{ordinal}"), str::to_owned);
        self.tools
            .push((choice, upstream_index, id.clone(), ordinal));
        out.push(Event::ToolStart {
            index: ordinal,
            id,
            name: call["function"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        });
        ordinal
    }

    fn choice(&mut self, index: usize, choice: &Value, out: &mut Vec<Event>) {
        let delta = &choice["delta"];
        if let Some(text) = delta["reasoning_content"]
            .as_str()
            .filter(|t| !t.is_empty())
        {
            out.push(Event::Thinking(text.to_owned()));
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            out.push(Event::Text(text.to_owned()));
        }
        // A legacy completion chunk.
        if let Some(text) = choice["text"].as_str().filter(|t| !t.is_empty()) {
            out.push(Event::Text(text.to_owned()));
        }
        if let Some(text) = delta["refusal"].as_str().filter(|t| !t.is_empty()) {
            out.push(Event::Text(text.to_owned()));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let tool = self.tool_index(index, call, out);
            if let Some(fragment) = call["function"]["arguments"]
                .as_str()
                .filter(|f| !f.is_empty())
            {
                out.push(Event::ToolArgs {
                    index: tool,
                    fragment: fragment.to_owned(),
                });
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            out.push(Event::Finish {
                reason: finish_with_calls(finish_of(reason), self.calls[index] > 0),
                stop_sequence: None,
            });
        }
    }
}

impl Decoder for ChatDecoder {
    fn decode(&mut self, event: SseEvent<'_>, out: &mut Vec<Event>) -> Result<(), DecodeError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|error| DecodeError::Malformed(format!("a chunk is not JSON: {error}")))?;
        if chunk.get("error").is_some_and(|e| !e.is_null()) || event.name == Some("error") {
            return Err(DecodeError::Upstream(from_openai(0, &chunk)));
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: chunk["id"].as_str().map(str::to_owned),
                model: chunk["model"].as_str().map(str::to_owned),
            });
        }
        let choices = chunk["choices"].as_array().map_or(&[][..], Vec::as_slice);
        for (position, choice) in choices.iter().enumerate() {
            let index = choice["index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(position);
            if index >= MAX_CHOICES {
                return Err(DecodeError::Malformed(format!(
                    "choice index {index} is out of range"
                )));
            }
            if self.calls.len() <= index {
                self.calls.resize(index + 1, 0);
            }
            if index != self.current {
                self.current = index;
                out.push(Event::Choice(index));
            }
            self.choice(index, choice, out);
        }
        if let Some(usage) = usage_of(&chunk["usage"]) {
            out.push(Event::Usage(usage));
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        self.done
    }
}

/// Which OpenAI route the client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    Chat,
    Completion,
}

/// Encodes canonical events as OpenAI chunks, then the usage chunk (when the client asked for
/// it) and `[DONE]`.
#[derive(Debug)]
pub struct ChatEncoder {
    envelope: Envelope,
    kind: ChunkKind,
    include_usage: bool,
    usage: Option<Usage>,
    chars: usize,
    /// The choice the events are for.
    choice: usize,
    /// The choices whose role chunk went out (choice 0's goes at the start).
    announced: Vec<bool>,
    /// Per choice: tool calls written.
    calls: Vec<usize>,
}

impl ChatEncoder {
    pub fn new(envelope: Envelope, kind: ChunkKind, include_usage: bool) -> Self {
        ChatEncoder {
            envelope,
            kind,
            include_usage,
            usage: None,
            chars: 0,
            choice: 0,
            announced: Vec::new(),
            calls: Vec::new(),
        }
    }

    /// The role chunk that opens a choice in a chat stream, once per choice.
    fn announce(&mut self, out: &mut BytesMut) {
        if self.kind != ChunkKind::Chat || self.announced.get(self.choice) == Some(&true) {
            return;
        }
        if self.announced.len() <= self.choice {
            self.announced.resize(self.choice + 1, false);
        }
        self.announced[self.choice] = true;
        self.delta(json!({"role": "assistant", "content": ""}), out);
    }

    fn chunk(&self, choices: Value, out: &mut BytesMut) {
        let mut chunk = match self.kind {
            ChunkKind::Chat => json!({
                "id": self.envelope.id, "object": "chat.completion.chunk",
                "created": self.envelope.created, "model": self.envelope.model, "choices": choices,
            }),
            ChunkKind::Completion => json!({
                "id": self.envelope.id, "object": "text_completion",
                "created": self.envelope.created, "model": self.envelope.model, "choices": choices,
            }),
        };
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        write_data(out, &chunk.to_string());
    }

    fn delta(&self, delta: Value, out: &mut BytesMut) {
        let index = self.choice;
        let choice = match self.kind {
            ChunkKind::Chat => {
                json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}])
            }
            ChunkKind::Completion => {
                let text = delta["content"].as_str().unwrap_or_default();
                json!([{"index": index, "text": text, "logprobs": null, "finish_reason": null}])
            }
        };
        self.chunk(choice, out);
    }
}

impl Encoder for ChatEncoder {
    fn encode(&mut self, event: Event, out: &mut BytesMut) {
        match event {
            Event::Start { .. } => self.announce(out),
            Event::Choice(index) => {
                self.choice = index;
                self.announce(out);
            }
            Event::Text(text) => {
                self.chars += text.len();
                self.delta(json!({"content": text}), out);
            }
            // OpenAI has no field for reasoning text: it counts, but is not shown.
            Event::Thinking(text) => self.chars += text.len(),
            Event::ToolStart { index, id, name } => {
                if self.calls.len() <= self.choice {
                    self.calls.resize(self.choice + 1, 0);
                }
                self.calls[self.choice] += 1;
                if self.kind == ChunkKind::Chat {
                    self.delta(
                        json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                               "function": {"name": name, "arguments": ""}}]}),
                        out,
                    );
                }
            }
            Event::ToolArgs { index, fragment } => {
                self.chars += fragment.len();
                if self.kind == ChunkKind::Chat {
                    self.delta(
                        json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}),
                        out,
                    );
                }
            }
            Event::Finish { reason, .. } => {
                let reason = finish_with_calls(reason, self.calls.get(self.choice) > Some(&0));
                let index = self.choice;
                let choice = match self.kind {
                    ChunkKind::Chat => json!([{"index": index, "delta": {}, "logprobs": null,
                                               "finish_reason": finish_name(reason)}]),
                    ChunkKind::Completion => json!([{"index": index, "text": "", "logprobs": null,
                                                     "finish_reason": finish_name(reason)}]),
                };
                self.chunk(choice, out);
            }
            Event::Usage(usage) => self.usage = Some(usage),
        }
    }

    fn finish(&mut self, usage: &Usage, out: &mut BytesMut) {
        if self.include_usage {
            let mut chunk = json!({
                "id": self.envelope.id,
                "object": if self.kind == ChunkKind::Chat { "chat.completion.chunk" } else { "text_completion" },
                "created": self.envelope.created, "model": self.envelope.model, "choices": [],
            });
            chunk["usage"] = usage_json(usage);
            write_data(out, &chunk.to_string());
        }
        write_data(out, "[DONE]");
    }

    fn fail(&mut self, error: &ApiError, out: &mut BytesMut) {
        write_data(out, &error.body(ClientProtocol::OpenAi).to_string());
    }

    fn usage(&self) -> (Option<Usage>, usize) {
        (self.usage, self.chars)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::Finish;

    fn decode_all(decoder: &mut ChatDecoder, chunks: &[Value]) -> Vec<Event> {
        let mut out = Vec::new();
        for chunk in chunks {
            let data = chunk.to_string();
            decoder
                .decode(SseEvent::new(None, &data), &mut out)
                .unwrap();
        }
        out
    }

    #[test]
    fn tool_call_fragments_become_canonical_events() {
        let mut decoder = ChatDecoder::default();
        let events = decode_all(
            &mut decoder,
            &[
                json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": null}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":"}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}),
                // A compatible server that numbers every call 0: a new id is a new call.
                json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}]}}]}),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
                json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}),
            ],
        );
        assert_eq!(
            events,
            vec![
                Event::Start {
                    id: Some("c1".into()),
                    model: Some("m".into())
                },
                Event::ToolStart {
                    index: 0,
                    id: "call_a".into(),
                    name: "f".into()
                },
                Event::ToolArgs {
                    index: 0,
                    fragment: "{\"x\":".into()
                },
                Event::ToolArgs {
                    index: 0,
                    fragment: "1}".into()
                },
                Event::ToolStart {
                    index: 1,
                    id: "call_b".into(),
                    name: "g".into()
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
                    input: 9,
                    output: 3,
                    ..Usage::default()
                }),
            ]
        );
        assert!(!decoder.complete());
        decode_all(&mut decoder, &[]);
        let mut out = Vec::new();
        decoder
            .decode(SseEvent::new(None, "[DONE]"), &mut out)
            .unwrap();
        assert!(decoder.complete());
    }

    #[test]
    fn choices_and_tool_calls_finished_with_stop() {
        let mut decoder = ChatDecoder::default();
        let events = decode_all(
            &mut decoder,
            &[
                json!({"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]}),
                json!({"choices": [{"index": 1, "delta": {"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "stop"}]}),
                json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            ],
        );
        let finishes: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::Finish { .. } | Event::Choice(_)))
            .collect();
        assert_eq!(
            finishes,
            [
                &Event::Choice(1),
                &Event::Finish {
                    reason: Finish::ToolCalls,
                    stop_sequence: None
                },
                &Event::Choice(0),
                &Event::Finish {
                    reason: Finish::Stop,
                    stop_sequence: None
                },
            ],
            "{events:?}"
        );
        // Encoded back for a client: each choice keeps its index and its own role chunk.
        let envelope = Envelope {
            id: "x".into(),
            model: "m".into(),
            created: 1,
        };
        let mut encoder = ChatEncoder::new(envelope, ChunkKind::Chat, false);
        let mut out = BytesMut::new();
        for event in events {
            encoder.encode(event, &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let chunks: Vec<Value> = crate::wire::sse::events(&text)
            .map(|e| serde_json::from_str(&e.data).unwrap())
            .collect();
        let roles: Vec<u64> = chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["role"] == "assistant")
            .map(|c| c["choices"][0]["index"].as_u64().unwrap())
            .collect();
        assert_eq!(roles, [0, 1]);
        let finish_of_1 = chunks
            .iter()
            .find(|c| c["choices"][0]["index"] == 1 && c["choices"][0]["finish_reason"].is_string())
            .unwrap();
        assert_eq!(finish_of_1["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn error_chunks_and_garbage_fail() {
        let mut decoder = ChatDecoder::default();
        let mut out = Vec::new();
        let error =
            json!({"error": {"message": "boom", "type": "server_error", "code": null}}).to_string();
        let failed = decoder.decode(SseEvent::new(None, &error), &mut out);
        assert!(matches!(failed, Err(DecodeError::Upstream(f)) if f.message == "boom"));
        let garbage = decoder.decode(SseEvent::new(None, "{nope"), &mut out);
        assert!(matches!(garbage, Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn encoder_writes_openai_chunks() {
        let envelope = Envelope {
            id: "chatcmpl-1".into(),
            model: "m".into(),
            created: 7,
        };
        let mut encoder = ChatEncoder::new(envelope, ChunkKind::Chat, true);
        let mut out = BytesMut::new();
        encoder.encode(
            Event::Start {
                id: None,
                model: None,
            },
            &mut out,
        );
        encoder.encode(Event::Text("Hi".into()), &mut out);
        encoder.encode(
            Event::ToolStart {
                index: 0,
                id: "t1".into(),
                name: "f".into(),
            },
            &mut out,
        );
        encoder.encode(
            Event::ToolArgs {
                index: 0,
                fragment: "{}".into(),
            },
            &mut out,
        );
        encoder.encode(
            Event::Finish {
                reason: Finish::ToolCalls,
                stop_sequence: None,
            },
            &mut out,
        );
        encoder.encode(
            Event::Usage(Usage {
                input: 3,
                output: 4,
                ..Usage::default()
            }),
            &mut out,
        );
        let (usage, chars) = encoder.usage();
        encoder.finish(&usage.unwrap(), &mut out);
        assert_eq!(chars, 4);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks.len(), 6);
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "Hi");
        assert_eq!(
            chunks[2]["choices"][0]["delta"]["tool_calls"][0]["id"],
            "t1"
        );
        assert_eq!(chunks[4]["choices"][0]["finish_reason"], "tool_calls");
        assert!(chunks[4]["usage"].is_null());
        assert_eq!(chunks[5]["choices"], json!([]));
        assert_eq!(chunks[5]["usage"]["total_tokens"], 7);
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}
