//! The two halves of a translated stream: a `Decoder` turns the upstream's SSE events into
//! canonical events, an `Encoder` writes canonical events as the client's SSE events. Both keep
//! only the little state their protocol needs (open blocks, tool indices, the last usage).

use std::borrow::Cow;

use bytes::BytesMut;

use super::errors::UpstreamFailure;
use super::ir::{Event, Usage};
use crate::api::errors::ApiError;

/// One SSE event of an upstream stream.
#[derive(Debug, Clone)]
pub struct SseEvent<'a> {
    /// The `event:` name, when the protocol names its events (Anthropic).
    pub name: Option<&'a str>,
    /// The `data:` payload (several data lines joined with `\n`).
    pub data: Cow<'a, str>,
}

/// Upstream protocol -> canonical events.
pub trait Decoder: Send {
    /// Decodes one event into `out`; an error event of the upstream's protocol is returned as
    /// the failure it reports. Events that are not JSON are an error too.
    fn decode(&mut self, event: SseEvent<'_>, out: &mut Vec<Event>) -> Result<(), DecodeError>;

    /// Whether the upstream signalled a proper end (`[DONE]`, `message_stop`, a finish reason).
    fn complete(&self) -> bool;
}

/// A stream event the decoder could not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The upstream sent its protocol's error event.
    Upstream(UpstreamFailure),
    /// The upstream sent something that is not its protocol.
    Malformed(String),
}

/// Canonical events -> client protocol.
pub trait Encoder: Send {
    fn encode(&mut self, event: Event, out: &mut BytesMut);

    /// Ends a complete stream with the final usage (reported, or estimated by the caller) and
    /// the protocol's end marker.
    fn finish(&mut self, usage: &Usage, out: &mut BytesMut);

    /// Ends the stream with the client protocol's error event.
    fn fail(&mut self, error: &ApiError, out: &mut BytesMut);

    /// The last usage seen, and how many characters of output (text, reasoning, arguments) were
    /// written, for an estimate when the upstream reported none.
    fn usage(&self) -> (Option<Usage>, usize);
}

/// Splits whole SSE events (as released by `wire::sse::EventSplitter`) into name and data.
pub fn events(bytes: &[u8]) -> impl Iterator<Item = SseEvent<'_>> {
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    text.split("\n\n")
        .flat_map(|block| block.split("\r\n\r\n"))
        .filter_map(|block| {
            let mut name = None;
            let mut data: Option<Cow<'_, str>> = None;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = Some(value.trim());
                } else if let Some(value) = line.strip_prefix("data:") {
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    data = Some(match data.take() {
                        None => Cow::Borrowed(value),
                        Some(earlier) => Cow::Owned(format!("{earlier}\n{value}")),
                    });
                }
            }
            data.map(|data| SseEvent { name, data })
        })
}

/// Writes one named event (`event: NAME` + `data: JSON`), as Anthropic streams do.
pub fn write_named(out: &mut BytesMut, name: &str, data: &serde_json::Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Writes one unnamed `data:` event.
pub fn write_data(out: &mut BytesMut, data: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_named_and_plain_events() {
        let bytes = b"event: message_start\ndata: {\"a\":1}\n\ndata: [DONE]\n\n: keep-alive\n\n";
        let found: Vec<_> = events(bytes)
            .map(|e| (e.name, e.data.to_string()))
            .collect();
        assert_eq!(
            found,
            vec![
                (Some("message_start"), "{\"a\":1}".to_owned()),
                (None, "[DONE]".to_owned())
            ]
        );
        let crlf = b"data:{\"b\":2}\r\n\r\n";
        assert_eq!(events(crlf).next().unwrap().data, "{\"b\":2}");
        let multi = b"data: {\"c\":\ndata: 3}\n\n";
        assert_eq!(events(multi).next().unwrap().data, "{\"c\":\n3}");
    }
}
