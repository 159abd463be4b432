//! Gemini streams (`streamGenerateContent?alt=sse`) decoded into canonical events: each chunk
//! holds new parts only; a function call arrives whole; the finish reason comes on the last
//! chunk and usage as running totals. The stream is complete once a finish reason came.

use serde_json::Value;

use super::response::{finish_of, synthetic_call_id, usage_of};
use crate::translate::errors::from_gemini;
use crate::translate::ir::{Event, Finish};
use crate::translate::stream::{DecodeError, Decoder, SseEvent};

#[derive(Debug, Default)]
pub struct GenerateDecoder {
    started: bool,
    finished: bool,
    calls: usize,
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
        let candidate = &chunk["candidates"][0];
        for part in candidate["content"]["parts"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(call) = part.get("functionCall") {
                let index = self.calls;
                self.calls += 1;
                out.push(Event::ToolStart {
                    index,
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
                    index,
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
        if !self.finished {
            let reason = match candidate["finishReason"].as_str() {
                Some(reason) => Some(finish_of(reason, self.calls > 0)),
                None if chunk["promptFeedback"]["blockReason"].is_string() => {
                    Some(Finish::ContentFilter)
                }
                None => None,
            };
            if let Some(reason) = reason {
                self.finished = true;
                out.push(Event::Finish {
                    reason,
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
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::Usage;
    use serde_json::json;
    use std::borrow::Cow;

    fn decode(decoder: &mut GenerateDecoder, chunk: Value) -> Result<Vec<Event>, DecodeError> {
        let data = chunk.to_string();
        let mut out = Vec::new();
        decoder.decode(
            SseEvent {
                name: None,
                data: Cow::Borrowed(&data),
            },
            &mut out,
        )?;
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
    fn errors_in_the_stream() {
        let mut decoder = GenerateDecoder::default();
        let failed = decode(
            &mut decoder,
            json!({"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}),
        );
        assert!(matches!(failed, Err(DecodeError::Upstream(f)) if f.message == "busy"));
    }
}
