//! Gemini streams (`streamGenerateContent?alt=sse`) decoded into canonical events: each chunk
//! holds new parts only; a function call arrives whole; the finish reason comes on the last
//! chunk and usage as running totals. The stream is complete once a finish reason came.

use serde_json::Value;

use super::response::{finish_of, synthetic_call_id, usage_of};
use crate::translate::errors::from_gemini;
use crate::translate::ir::{Event, Finish};
use crate::translate::stream::{DecodeError, Decoder, SseEvent};

/// The most candidates a stream may carry (Gemini allows up to 8).
const MAX_CANDIDATES: usize = 64;

#[derive(Debug, Default)]
pub struct GenerateDecoder {
    started: bool,
    /// The choice the last events were for.
    current: usize,
    /// Per candidate: tool calls begun so far, and whether it finished.
    candidates: Vec<(usize, bool)>,
}

impl Decoder for GenerateDecoder {
    fn decode(&mut self, event: SseEvent<'_>, out: &mut Vec<Event>) -> Result<(), DecodeError> {
        let chunk: Value = serde_json::from_str(&event.data)
            .map_err(|error| DecodeError::Malformed(format!("a chunk is not JSON: {error}")))?;
        if chunk.get("error").is_some() {
            return Err(DecodeError::Upstream(from_gemini(0, &chunk)));
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: chunk["responseId"].as_str().map(str::to_owned),
                model: chunk["modelVersion"].as_str().map(str::to_owned),
            });
        }
        let candidates = chunk["candidates"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        for (position, candidate) in candidates.iter().enumerate() {
            let index = candidate["index"]
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .unwrap_or(position);
            if index >= MAX_CANDIDATES {
                return Err(DecodeError::Malformed(format!(
                    "candidate index {index} is out of range"
                )));
            }
            if self.candidates.len() <= index {
                self.candidates.resize(index + 1, (0, false));
            }
            if index != self.current {
                self.current = index;
                out.push(Event::Choice(index));
            }
            self.candidate(index, candidate, out);
        }
        if candidates.is_empty() && chunk["promptFeedback"]["blockReason"].is_string() {
            if self.candidates.is_empty() {
                self.candidates.push((0, false));
            }
            if !self.candidates[0].1 {
                self.candidates[0].1 = true;
                out.push(Event::Finish {
                    reason: Finish::ContentFilter,
                    stop_sequence: None,
                });
            }
        }
        if let Some(usage) = usage_of(&chunk["usageMetadata"]) {
            out.push(Event::Usage(usage));
        }
        Ok(())
    }

    fn complete(&self) -> bool {
        !self.candidates.is_empty() && self.candidates.iter().all(|(_, finished)| *finished)
    }
}

impl GenerateDecoder {
    /// The events of one candidate's part of a chunk.
    fn candidate(&mut self, index: usize, candidate: &Value, out: &mut Vec<Event>) {
        let (calls, finished) = &mut self.candidates[index];
        for part in candidate["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(call) = part.get("functionCall") {
                let tool = *calls;
                *calls += 1;
                out.push(Event::ToolStart {
                    index: tool,
                    id: call["id"]
                        .as_str()
                        .filter(|id| !id.is_empty())
                        .map_or_else(synthetic_call_id, str::to_owned),
                    name: call["name"].as_str().unwrap_or_default().to_owned(),
                });
                let args = if call["args"].is_object() {
                    call["args"].to_string()
                } else {
                    "{}".to_owned()
                };
                out.push(Event::ToolArgs {
                    index: tool,
                    fragment: args,
                });
            } else if let Some(text) = part["text"].as_str().filter(|t| !t.is_empty()) {
                if part["thought"].as_bool() == Some(true) {
                    out.push(Event::Thinking(text.to_owned()));
                } else {
                    out.push(Event::Text(text.to_owned()));
                }
            }
        }
        if !*finished && let Some(reason) = candidate["finishReason"].as_str() {
            *finished = true;
            out.push(Event::Finish {
                reason: finish_of(reason, *calls > 0),
                stop_sequence: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::Usage;
    use serde_json::json;

    fn decode(decoder: &mut GenerateDecoder, chunk: Value) -> Result<Vec<Event>, DecodeError> {
        let data = chunk.to_string();
        let mut out = Vec::new();
        decoder.decode(SseEvent::new(None, &data), &mut out)?;
        Ok(out)
    }

    #[test]
    fn chunks_become_events() {
        let mut decoder = GenerateDecoder::default();
        let first = decode(
            &mut decoder,
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
                                               "responseId": "r", "modelVersion": "g"}),
        )
        .unwrap();
        assert_eq!(
            first,
            vec![
                Event::Start {
                    id: Some("r".into()),
                    model: Some("g".into())
                },
                Event::Text("Hel".into())
            ]
        );
        assert!(!decoder.complete());
        let last = decode(&mut decoder, json!({"candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "f", "args": {"x": 1}, "id": "fc1"}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2, "totalTokenCount": 6}})).unwrap();
        assert_eq!(
            last,
            vec![
                Event::ToolStart {
                    index: 0,
                    id: "fc1".into(),
                    name: "f".into()
                },
                Event::ToolArgs {
                    index: 0,
                    fragment: r#"{"x":1}"#.into()
                },
                Event::Finish {
                    reason: Finish::ToolCalls,
                    stop_sequence: None
                },
                Event::Usage(Usage {
                    input: 4,
                    output: 2,
                    ..Usage::default()
                }),
            ]
        );
        assert!(decoder.complete());
    }

    #[test]
    fn several_candidates_are_several_choices() {
        let mut decoder = GenerateDecoder::default();
        let first = decode(
            &mut decoder,
            json!({"candidates": [
                {"index": 0, "content": {"parts": [{"text": "A"}]}},
                {"index": 1, "content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]}}]}),
        )
        .unwrap();
        assert!(
            matches!(&first[..], [Event::Start { .. }, Event::Text(a), Event::Choice(1),
            Event::ToolStart { index: 0, .. }, Event::ToolArgs { index: 0, .. }] if a == "A")
        );
        let last = decode(
            &mut decoder,
            json!({"candidates": [
                {"index": 0, "content": {"parts": [{"text": "B"}]}, "finishReason": "STOP"},
                {"index": 1, "content": {"parts": []}, "finishReason": "STOP"}]}),
        )
        .unwrap();
        assert_eq!(
            last,
            vec![
                Event::Choice(0),
                Event::Text("B".into()),
                Event::Finish {
                    reason: Finish::Stop,
                    stop_sequence: None
                },
                Event::Choice(1),
                Event::Finish {
                    reason: Finish::ToolCalls,
                    stop_sequence: None
                },
            ]
        );
        assert!(decoder.complete());
        let mut hostile = GenerateDecoder::default();
        let far = decode(
            &mut hostile,
            json!({"candidates": [{"index": 1_000_000_000u64, "content": {"parts": []}}]}),
        );
        assert!(matches!(far, Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn errors_in_the_stream() {
        let mut decoder = GenerateDecoder::default();
        let failed = decode(
            &mut decoder,
            json!({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}),
        );
        assert!(matches!(failed, Err(DecodeError::Upstream(f)) if f.message == "busy"));
    }
}
