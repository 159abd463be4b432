//! Server-sent events, the one implementation for the whole project: splitting an upstream byte
//! stream at event boundaries (so a client never sees half an event) and reading `data:` payloads.

use bytes::{Bytes, BytesMut};

/// Buffers a byte stream and releases it only in whole events (ending in a blank line).
#[derive(Debug, Default)]
pub struct EventSplitter {
    pending: BytesMut,
}

impl EventSplitter {
    /// Adds a chunk; returns the complete events now available (possibly several), if any.
    pub fn push(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.pending.is_empty() {
            match last_boundary(&chunk) {
                Some(end) if end == chunk.len() => return Some(chunk),
                Some(end) => {
                    let mut chunk = chunk;
                    let ready = chunk.split_to(end);
                    self.pending.extend_from_slice(&chunk);
                    return Some(ready);
                }
                None => {
                    self.pending.extend_from_slice(&chunk);
                    return None;
                }
            }
        }
        let searched_from = self.pending.len().saturating_sub(3);
        self.pending.extend_from_slice(&chunk);
        let end = last_boundary(&self.pending[searched_from..])? + searched_from;
        Some(self.pending.split_to(end).freeze())
    }

    /// Bytes of an unfinished event still held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// End offset (exclusive) of the last event boundary (`\n\n` or `\r\n\r\n`) in `bytes`.
fn last_boundary(bytes: &[u8]) -> Option<usize> {
    let mut i = bytes.len();
    while i >= 2 {
        if bytes[i - 1] == b'\n' {
            if bytes[i - 2] == b'\n' {
                return Some(i);
            }
            if i >= 4 && bytes[i - 2] == b'\r' && bytes[i - 3] == b'\n' && bytes[i - 4] == b'\r' {
                return Some(i);
            }
        }
        i -= 1;
    }
    None
}

/// The `data:` payloads of complete events, in order (multi-line data joined with `\n`).
pub fn data_payloads(events: &[u8]) -> impl Iterator<Item = &[u8]> {
    events
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter_map(|line| line.strip_prefix(b"data:"))
        .map(|data| data.strip_prefix(b" ").unwrap_or(data))
}

/// Writes one event carrying `data`.
pub fn data_event(data: &str) -> Bytes {
    let mut out = String::with_capacity(data.len() + 8);
    out.push_str("data: ");
    out.push_str(data);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_chunks_pass_without_copy() {
        let mut splitter = EventSplitter::default();
        let chunk = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let out = splitter.push(chunk.clone()).unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(splitter.pending_len(), 0);
    }

    #[test]
    fn partial_events_are_held_until_complete() {
        let mut splitter = EventSplitter::default();
        assert_eq!(splitter.push(Bytes::from_static(b"data: {\"a\":")), None);
        assert_eq!(splitter.push(Bytes::from_static(b"1}\n")), None);
        let out = splitter.push(Bytes::from_static(b"\ndata: x")).unwrap();
        assert_eq!(&out[..], b"data: {\"a\":1}\n\n");
        assert_eq!(splitter.pending_len(), 7);
        let out = splitter.push(Bytes::from_static(b"\r\n\r\n")).unwrap();
        assert_eq!(&out[..], b"data: x\r\n\r\n");
    }

    #[test]
    fn payloads() {
        let events = b"event: x\ndata: one\n\ndata:two\r\n\r\n: comment\n\n";
        let found: Vec<&[u8]> = data_payloads(events).collect();
        assert_eq!(found, vec![&b"one"[..], &b"two"[..]]);
        assert_eq!(&data_event("[DONE]")[..], b"data: [DONE]\n\n");
    }
}
