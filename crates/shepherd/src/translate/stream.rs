//! The two halves of a translated stream: a `Decoder` turns the upstream's SSE events into
//! canonical events, an `Encoder` writes canonical events as the client's SSE events. Both keep
//! only the little state their protocol needs (open blocks, tool indices, the last usage).

use bytes::BytesMut;

use super::errors::UpstreamFailure;
use super::ir::{Event, Usage};
use crate::api::errors::ApiError;
pub use crate::wire::sse::{SseEvent, events, write_data, write_named};

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
