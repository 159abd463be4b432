//! Watching a passed-through stream, by its shape's event grammar (OpenAI chunks, Anthropic
//! events, Responses API events). Every event is checked to be its protocol's JSON (anything
//! else is an upstream failure) and read for what the gateway needs: the end marker, the
//! upstream's own error event, usage, and the characters of generated text (for an estimate when
//! the upstream reports no usage). OpenAI's usage-only chunk is hidden from clients that did not
//! ask for it. Each event is parsed once into a small borrowed probe: valid JSON in any
//! formatting is read correctly, and nothing is built for fields the gateway does not need.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::api::errors::{ApiError, ClientProtocol};
use crate::redact::Redactor;
use crate::translate::errors::{UpstreamFailure, from_anthropic, from_openai};
use crate::translate::ir::Usage;
use crate::translate::responses::response::Keeper;
use crate::translate::shapes::Grammar;
use crate::translate::{anthropic, openai, responses};
use crate::wire::sse::{self, SseEvent};

use super::watch_probes::{AnthropicProbe, ChunkProbe, ResponsesProbe};

/// What a passed-through stream is watched for.
#[derive(Debug)]
pub struct Watch {
    grammar: Grammar,
    hide_usage_chunk: bool,
    /// `[DONE]` or `message_stop` seen.
    pub done: bool,
    /// The upstream's own error event (forwarded as is), and whether it came before any other
    /// event (then the client can still get it as a plain error with its status).
    pub failure: Option<(UpstreamFailure, bool)>,
    /// Events seen so far.
    events: usize,
    pub usage: Option<Usage>,
    /// Bytes of generated text (content, refusals, reasoning, tool arguments) seen so far.
    pub output_chars: usize,
    /// Masks secrets an upstream's error event quotes.
    redactor: Arc<Redactor>,
    /// Keeps the finished response (Responses API with `store`).
    keeper: Option<Arc<dyn Keeper>>,
    /// The sequence number an event added after the upstream's would take (Responses API).
    next_sequence: u64,
}

/// What one block of whole events comes to.
#[derive(Debug, Default)]
pub struct Watched {
    /// The bytes to forward: the block as it came, or without a hidden usage chunk, or up to a
    /// malformed event.
    pub forward: Option<Bytes>,
    /// A malformed event (what was wrong with it); nothing after it is forwarded.
    pub malformed: Option<String>,
}

impl Watch {
    pub fn new(grammar: Grammar, hide_usage_chunk: bool, redactor: Arc<Redactor>) -> Self {
        Watch {
            grammar,
            hide_usage_chunk,
            done: false,
            failure: None,
            events: 0,
            usage: None,
            output_chars: 0,
            redactor,
            keeper: None,
            next_sequence: 0,
        }
    }

    /// Hands the finished response object to `keeper` (Responses API streams).
    pub fn keeping(mut self, keeper: Option<Arc<dyn Keeper>>) -> Self {
        self.keeper = keeper;
        self
    }

    /// The error event that ends a stream of this grammar early.
    pub fn write_error(&self, error: &ApiError, out: &mut BytesMut) {
        match self.grammar {
            Grammar::OpenAiChunks => {
                sse::write_data(out, &error.body(ClientProtocol::OpenAi).to_string());
            }
            Grammar::Anthropic => {
                sse::write_named(out, "error", &error.body(ClientProtocol::Anthropic));
            }
            Grammar::Responses => {
                let event = serde_json::json!({
                    "type": "error",
                    "code": error.code,
                    "message": error.message,
                    "param": null,
                    "sequence_number": self.next_sequence,
                });
                sse::write_named(out, "error", &event);
            }
        }
    }

    /// Reads a block of whole events; returns what to forward.
    pub fn watch(&mut self, block: Bytes) -> Watched {
        let Ok(text) = std::str::from_utf8(&block) else {
            return Watched {
                forward: None,
                malformed: Some("the stream is not UTF-8".to_owned()),
            };
        };
        // Events left out (`None`) or rewritten.
        let mut edits: Vec<(std::ops::Range<usize>, Option<Bytes>)> = Vec::new();
        let mut malformed = None;
        let mut end = block.len();
        for event in sse::events(text) {
            let verdict = match self.grammar {
                Grammar::Anthropic => self.anthropic_event(&event),
                Grammar::OpenAiChunks => self.openai_event(&event),
                Grammar::Responses => self.responses_event(&event),
            };
            self.events += 1;
            match verdict {
                Ok(Verdict::Forward) => {}
                Ok(Verdict::Hide) => edits.push((event.span, None)),
                Ok(Verdict::Replace(bytes)) => edits.push((event.span, Some(bytes))),
                Err(detail) => {
                    end = event.span.start;
                    malformed = Some(detail);
                    break;
                }
            }
        }
        let forward = if edits.is_empty() {
            (end > 0).then(|| block.slice(..end))
        } else {
            // Rare (once per stream): the events without the hidden ones, rewritten ones
            // replaced.
            let mut out = BytesMut::with_capacity(end);
            let mut at = 0;
            for (span, replacement) in edits {
                out.extend_from_slice(&block[at..span.start]);
                if let Some(replacement) = replacement {
                    out.extend_from_slice(&replacement);
                }
                at = span.end;
            }
            out.extend_from_slice(&block[at..end]);
            (!out.is_empty()).then(|| out.freeze())
        };
        Watched { forward, malformed }
    }

    fn fail(&mut self, failure: UpstreamFailure) {
        if self.failure.is_none() {
            self.failure = Some((failure, self.events == 0));
        }
    }

    fn openai_event(&mut self, event: &SseEvent<'_>) -> Result<Verdict, String> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Verdict::Forward);
        }
        if data.is_empty() {
            // An empty event: a keep-alive of some servers.
            return Ok(Verdict::Forward);
        }
        let chunk: ChunkProbe<'_> = serde_json::from_str(data)
            .map_err(|error| format!("an event is not a JSON object: {error}"))?;
        if chunk.error.is_some_and(|e| e.get() != "null") || event.name == Some("error") {
            let mut value: Value = serde_json::from_str(data).unwrap_or_default();
            let masked = self.redactor.value(&mut value);
            self.fail(from_openai(0, &value));
            if masked {
                let mut event_bytes = BytesMut::new();
                if let Some(name) = event.name {
                    event_bytes.extend_from_slice(format!("event: {name}\n").as_bytes());
                }
                sse::write_data(&mut event_bytes, &value.to_string());
                return Ok(Verdict::Replace(event_bytes.freeze()));
            }
            return Ok(Verdict::Forward);
        }
        let choices = chunk.choices.unwrap_or_default();
        self.output_chars += choices.chars;
        let carries_content = choices.carries_content;
        let Some(usage) = chunk.usage.filter(|usage| usage.get() != "null") else {
            return Ok(Verdict::Forward);
        };
        if let Some(usage) = openai::usage::usage_of_json(usage.get()) {
            self.usage = Some(usage);
        }
        if self.hide_usage_chunk && !carries_content {
            return Ok(Verdict::Hide);
        }
        Ok(Verdict::Forward)
    }

    fn anthropic_event(&mut self, event: &SseEvent<'_>) -> Result<Verdict, String> {
        let probe: AnthropicProbe<'_> = serde_json::from_str(&event.data)
            .map_err(|error| format!("an event is not a JSON object: {error}"))?;
        let kind = probe.kind.as_deref().or(event.name).unwrap_or_default();
        let usage = match kind {
            "message_start" => probe.message.and_then(|message| message.usage),
            "message_delta" => probe.usage,
            "content_block_start" => {
                if let Some(block) = &probe.content_block {
                    self.output_chars += block.text.0 + block.thinking.0;
                }
                None
            }
            "content_block_delta" => {
                if let Some(delta) = &probe.delta {
                    self.output_chars += delta.text.0 + delta.partial_json.0 + delta.thinking.0;
                }
                None
            }
            "message_stop" => {
                self.done = true;
                None
            }
            "error" => {
                let mut value: Value = serde_json::from_str(&event.data).unwrap_or_default();
                let masked = self.redactor.value(&mut value);
                self.fail(from_anthropic(0, &value));
                if masked {
                    let mut event_bytes = BytesMut::new();
                    sse::write_named(&mut event_bytes, "error", &value);
                    return Ok(Verdict::Replace(event_bytes.freeze()));
                }
                None
            }
            _ => None,
        };
        if let Some(usage) = usage {
            let usage: Value = serde_json::from_str(usage.get()).unwrap_or_default();
            if usage.is_object() {
                let base = self.usage.unwrap_or_default();
                self.usage = Some(anthropic::response::usage_of(&usage, base));
            }
        }
        Ok(Verdict::Forward)
    }
}

impl Watch {
    fn responses_event(&mut self, event: &SseEvent<'_>) -> Result<Verdict, String> {
        let probe: ResponsesProbe<'_> = serde_json::from_str(&event.data)
            .map_err(|error| format!("an event is not a JSON object: {error}"))?;
        if let Some(number) = probe.sequence_number {
            self.next_sequence = number.saturating_add(1);
        }
        let kind = probe.kind.as_deref().or(event.name).unwrap_or_default();
        match kind {
            "response.completed" | "response.incomplete" => {
                // Once per stream: the whole final object is read.
                let value: Value = serde_json::from_str(&event.data).unwrap_or_default();
                let response = &value["response"];
                if let Some(usage) = responses::response::usage_of(&response["usage"]) {
                    self.usage = Some(usage);
                }
                if let Some(keeper) = &self.keeper {
                    keeper.keep(response);
                }
                self.done = true;
            }
            "response.failed" | "error" => {
                let mut value: Value = serde_json::from_str(&event.data).unwrap_or_default();
                let masked = self.redactor.value(&mut value);
                if let Some(usage) = responses::response::usage_of(&value["response"]["usage"]) {
                    self.usage = Some(usage);
                }
                let error = if kind == "error" {
                    &value
                } else {
                    &value["response"]["error"]
                };
                let as_openai = serde_json::json!({"error": {
                    "message": error["message"],
                    "type": error["code"],
                    "code": error["code"],
                }});
                self.fail(from_openai(0, &as_openai));
                if masked {
                    let mut event_bytes = BytesMut::new();
                    sse::write_named(&mut event_bytes, event.name.unwrap_or(kind), &value);
                    return Ok(Verdict::Replace(event_bytes.freeze()));
                }
            }
            _ => self.output_chars += probe.delta.0,
        }
        Ok(Verdict::Forward)
    }
}

/// What becomes of one upstream event.
enum Verdict {
    Forward,
    /// A usage-only chunk the client did not ask for.
    Hide,
    /// The event, rewritten (an error event whose secrets were masked).
    Replace(Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::watch_probes::{ChunkProbe, DeltaProbe};

    fn watch_all(watch: &mut Watch, text: &str) -> (String, Option<String>) {
        let watched = watch.watch(Bytes::copy_from_slice(text.as_bytes()));
        let forward = watched
            .forward
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .unwrap_or_default();
        (forward, watched.malformed)
    }

    #[test]
    fn usage_chunk_hidden_when_only_the_gateway_asked() {
        let mut watch = Watch::new(Grammar::OpenAiChunks, true, Arc::default());
        let (out, malformed) = watch_all(
            &mut watch,
            "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n",
        );
        assert!(malformed.is_none());
        assert!(!out.contains("prompt_tokens"), "{out}");
        assert!(out.contains("\"content\":\"hi\"") && out.ends_with("data: [DONE]\n\n"));
        assert!(watch.done);
        assert_eq!(watch.usage.unwrap().input, 3);
        assert_eq!(watch.output_chars, 2);

        let mut keep = Watch::new(Grammar::OpenAiChunks, false, Arc::default());
        let events = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n";
        assert_eq!(watch_all(&mut keep, events).0, events);
    }

    #[test]
    fn any_json_formatting_and_framing_is_read() {
        // Spaces after colons (Python servers), `\r\n` framing, data over several lines,
        // comments and ids, and LiteLLM's usage chunk (an empty choice rather than none).
        let stream = ": ping\r\nid: 1\r\ndata: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"a\\\"b\"}}]}\r\n\r\n\
data: {\"choices\": [{\"index\": 0, \"delta\": {},\r\ndata:  \"finish_reason\": \"stop\"}]}\r\n\r\n\
data: {\"choices\": [{\"index\": 0, \"delta\": {}}],\r\ndata: \"usage\": {\"prompt_tokens\": 11, \"completion_tokens\": 7, \"total_tokens\": 18}}\r\n\r\n\
data: [DONE]\r\n\r\n";
        let mut watch = Watch::new(Grammar::OpenAiChunks, true, Arc::default());
        let (out, malformed) = watch_all(&mut watch, stream);
        assert!(malformed.is_none());
        let usage = watch.usage.expect("usage read");
        assert_eq!((usage.input, usage.output), (11, 7));
        assert_eq!(watch.output_chars, 3, "the text, unescaped");
        assert!(!out.contains("prompt_tokens"), "hidden: {out}");
        assert!(out.contains("finish_reason") && out.ends_with("data: [DONE]\r\n\r\n"));
        assert!(watch.done);
        // A usage chunk that also finishes a choice is not usage-only: it stays.
        let mut watch = Watch::new(Grammar::OpenAiChunks, true, Arc::default());
        let finishing = "data: {\"choices\": [{\"delta\": {}, \"finish_reason\": \"stop\"}], \"usage\": {\"prompt_tokens\": 1}}\n\n";
        assert_eq!(watch_all(&mut watch, finishing).0, finishing);
    }

    #[test]
    fn malformed_events_stop_the_forwarding() {
        let mut watch = Watch::new(Grammar::OpenAiChunks, false, Arc::default());
        let (out, malformed) = watch_all(
            &mut watch,
            "data: {\"choices\":[]}\n\ndata: {not json\n\ndata: {\"choices\":[]}\n\n",
        );
        assert_eq!(out, "data: {\"choices\":[]}\n\n");
        assert!(malformed.unwrap().contains("not a JSON object"));
        let mut watch = Watch::new(Grammar::OpenAiChunks, false, Arc::default());
        assert!(watch_all(&mut watch, "data: [1, 2]\n\n").1.is_some());
        let mut watch = Watch::new(Grammar::Anthropic, false, Arc::default());
        assert!(
            watch_all(&mut watch, "event: ping\ndata: {\"type\": \n\n")
                .1
                .is_some()
        );
        let watched = Watch::new(Grammar::OpenAiChunks, false, Arc::default())
            .watch(Bytes::from_static(b"data: \xff\n\n"));
        assert!(watched.malformed.is_some());
    }

    #[test]
    fn error_events_are_failures() {
        let mut watch = Watch::new(Grammar::OpenAiChunks, false, Arc::default());
        let (out, _) = watch_all(
            &mut watch,
            "data: {\"error\": {\"message\": \"boom\", \"type\": \"server_error\"}}\n\n",
        );
        assert!(out.contains("boom"), "forwarded as is");
        let (failure, first) = watch.failure.unwrap();
        assert_eq!(failure.message, "boom");
        assert!(first);
        let mut watch = Watch::new(Grammar::OpenAiChunks, false, Arc::default());
        watch_all(
            &mut watch,
            "data: {\"choices\":[]}\n\nevent: error\ndata: {\"message\":\"x\"}\n\n",
        );
        assert!(matches!(watch.failure, Some((_, false))));
    }

    #[test]
    fn secrets_quoted_in_an_error_event_are_masked() {
        let redactor = Arc::new(Redactor::new(["upstream-secret-0123"]));
        let mut watch = Watch::new(Grammar::OpenAiChunks, false, redactor.clone());
        let (out, _) = watch_all(
            &mut watch,
            "data: {\"choices\":[]}\n\ndata: {\"error\": {\"message\": \"bad key upstream\\u002dsecret-0123\"}}\n\n",
        );
        assert!(out.starts_with("data: {\"choices\":[]}\n\n"), "{out}");
        assert!(out.contains("bad key [REDACTED]"), "{out}");
        assert!(!out.contains("0123"), "{out}");
        let mut watch = Watch::new(Grammar::Anthropic, false, redactor);
        let (out, _) = watch_all(
            &mut watch,
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"x\",\"message\":\"upstream-secret-0123\"}}\n\n",
        );
        assert!(
            out.starts_with("event: error\ndata: ") && !out.contains("0123"),
            "{out}"
        );
    }

    #[test]
    fn anthropic_usage_and_text_are_read_on_the_side() {
        let mut watch = Watch::new(Grammar::Anthropic, false, Arc::default());
        let events = "event: message_start\r\ndata: {\"type\": \"message_start\", \"message\": {\"usage\": {\"input_tokens\": 10, \"output_tokens\": 1}}}\r\n\r\n\
event: content_block_delta\r\ndata: {\"type\": \"content_block_delta\", \"index\": 0,\r\ndata: \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}}\r\n\r\n\
event: message_delta\r\ndata: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\"}, \"usage\": {\"output_tokens\": 7}}\r\n\r\n\
event: message_stop\r\ndata: {\"type\": \"message_stop\"}\r\n\r\n";
        let (out, malformed) = watch_all(&mut watch, events);
        assert!(malformed.is_none());
        assert_eq!(out, events);
        let usage = watch.usage.unwrap();
        assert_eq!((usage.input, usage.output), (10, 7));
        assert_eq!(watch.output_chars, 5);
        assert!(watch.done);
    }

    #[test]
    fn text_lengths_of_any_value() {
        let probe: DeltaProbe = serde_json::from_str(
            r#"{"content": [{"type": "text", "text": "x"}], "refusal": null, "reasoning": "thought", "tool_calls": [{"function": {"arguments": "{\"a\": 1}"}}, {"index": 1}]}"#,
        )
        .unwrap();
        assert_eq!(probe.content.0, 0);
        assert_eq!(probe.reasoning.0, 7);
        let calls = probe.tool_calls.unwrap();
        assert_eq!((calls.count, calls.arguments), (2, 8));
    }

    #[test]
    fn choices_are_summed_while_read() {
        let chunk: ChunkProbe<'_> = serde_json::from_str(
            r#"{"choices": [{"delta": {"content": "abc"}}, {"index": 1, "delta": {"tool_calls": [{"function": {"arguments": "{}"}}]}}, {"text": "de", "finish_reason": null}]}"#,
        )
        .unwrap();
        let choices = chunk.choices.unwrap();
        assert_eq!(choices.chars, 3 + 2 + 2);
        assert!(choices.carries_content);
        let empty: ChunkProbe<'_> =
            serde_json::from_str(r#"{"choices": [{"delta": {"role": "assistant"}}]}"#).unwrap();
        assert!(
            !empty.choices.unwrap().carries_content,
            "a role alone carries nothing"
        );
        let calls_without_text: ChunkProbe<'_> =
            serde_json::from_str(r#"{"choices": [{"delta": {"tool_calls": [{"index": 0}]}}]}"#)
                .unwrap();
        assert!(calls_without_text.choices.unwrap().carries_content);
        assert!(serde_json::from_str::<ChunkProbe<'_>>(r#"{"choices": {"a": 1}}"#).is_err());
    }
}
