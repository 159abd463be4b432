//! Server-sent events, the one implementation for the whole project: an upstream byte stream
//! split at event boundaries (so a client never sees half an event), whole events parsed into
//! their fields, and events written. Reading follows the HTML standard's event-stream grammar:
//! lines end in `\r\n`, `\n` or `\r`; an empty line ends an event; `data:` lines are joined with
//! `\n`; `event:` names the event; `id:`, `retry:`, unknown fields and `:` comments are ignored.

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Buffers a byte stream and releases it only in whole events (ending in an empty line), holding
/// at most `limit` bytes of an unfinished event.
#[derive(Debug)]
pub struct EventSplitter {
    pending: BytesMut,
    limit: usize,
    /// Bytes of `pending` already scanned for line ends.
    scanned: usize,
    /// The line being scanned has no character yet (an end of line now would end an event).
    line_empty: bool,
    /// The last byte scanned was a `\r`: a `\n` right after it completes the same line end.
    after_cr: bool,
}

/// An event grew past the limit without ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge(pub usize);

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an event passed {} bytes without ending", self.0)
    }
}

impl Default for EventSplitter {
    fn default() -> Self {
        EventSplitter::with_limit(usize::MAX)
    }
}

impl EventSplitter {
    /// A splitter that holds at most `limit` bytes of an unfinished event.
    pub fn with_limit(limit: usize) -> Self {
        EventSplitter {
            pending: BytesMut::new(),
            limit,
            scanned: 0,
            line_empty: true,
            after_cr: false,
        }
    }
}

impl EventSplitter {
    /// Adds a chunk; returns the complete events now available (possibly several), if any, or
    /// an error when an unfinished event grew past the limit (nothing more is held).
    pub fn push(&mut self, chunk: Bytes) -> Result<Option<Bytes>, EventTooLarge> {
        let ready = self.split(chunk);
        if self.pending.len() > self.limit {
            self.pending = BytesMut::new();
            self.scanned = 0;
            return Err(EventTooLarge(self.limit));
        }
        Ok(ready)
    }

    fn split(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.pending.is_empty() {
            let end = self.scan(&chunk, 0);
            return match end {
                Some(end) if end == chunk.len() => Some(chunk),
                Some(end) => {
                    let mut chunk = chunk;
                    let ready = chunk.split_to(end);
                    self.pending.extend_from_slice(&chunk);
                    self.scanned = self.pending.len();
                    Some(ready)
                }
                None => {
                    self.pending.extend_from_slice(&chunk);
                    self.scanned = self.pending.len();
                    None
                }
            };
        }
        self.pending.extend_from_slice(&chunk);
        let pending = std::mem::take(&mut self.pending);
        let end = self.scan(&pending, self.scanned);
        self.pending = pending;
        self.scanned = self.pending.len();
        let end = end?;
        self.scanned -= end;
        Some(self.pending.split_to(end).freeze())
    }

    /// Scans `bytes[from..]` for line ends (carrying the line state over from earlier chunks);
    /// returns the end of the last empty line found, which is where the last whole event ends.
    fn scan(&mut self, bytes: &[u8], from: usize) -> Option<usize> {
        let mut last = None;
        let mut at = from;
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &bytes[at..]) {
            let end = at + offset;
            if offset > 0 {
                self.line_empty = false;
                self.after_cr = false;
            }
            let byte = bytes[end];
            at = end + 1;
            if byte == b'\n' && self.after_cr {
                // The second half of a `\r\n` cut between two chunks.
                self.after_cr = false;
                continue;
            }
            // A `\r\n` is one line end; a `\r` at the very end may still get its `\n`.
            self.after_cr = false;
            if byte == b'\r' {
                match bytes.get(at) {
                    Some(b'\n') => at += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line_empty {
                last = Some(at);
            }
            self.line_empty = true;
        }
        if at < bytes.len() {
            self.line_empty = false;
            self.after_cr = false;
        }
        last
    }

    /// Bytes of an unfinished event still held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// At the end of the stream: what is still held, completed with the empty line that ends
    /// an event (some servers close the connection without it), when it holds an event.
    pub fn finish(&mut self) -> Option<Bytes> {
        let pending = std::mem::take(&mut self.pending);
        self.scanned = 0;
        let text = std::str::from_utf8(&pending).ok()?;
        let mut completed = String::with_capacity(text.len() + 2);
        completed.push_str(text);
        completed.push_str("\n\n");
        let has_event = events(&completed).next().is_some();
        has_event.then(|| Bytes::from(completed))
    }
}

/// One event of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` name, when the server names its events (Anthropic does).
    pub name: Option<&'a str>,
    /// The `data:` payload (several data lines joined with `\n`).
    pub data: Cow<'a, str>,
    /// Where the event lies in the text it was read from: from the end of the previous event
    /// (comments before it included) to the end of its empty line.
    pub span: Range<usize>,
}

impl<'a> SseEvent<'a> {
    /// An event read from elsewhere (its span is empty).
    pub fn new(name: Option<&'a str>, data: &'a str) -> Self {
        SseEvent {
            name,
            data: Cow::Borrowed(data),
            span: 0..0,
        }
    }
}

/// The events of a text holding whole events (as `EventSplitter` releases them). Events without
/// data are not events (the standard does not dispatch them); an unfinished last one neither.
pub fn events(text: &str) -> Events<'_> {
    Events { text, at: 0 }
}

/// Iterator over the events of a text; see [`events`].
#[derive(Debug, Clone)]
pub struct Events<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Iterator for Events<'a> {
    type Item = SseEvent<'a>;

    fn next(&mut self) -> Option<SseEvent<'a>> {
        let text = self.text;
        let bytes = text.as_bytes();
        let mut start = self.at;
        let mut name: Option<&'a str> = None;
        let mut data: Option<Cow<'a, str>> = None;
        while self.at < bytes.len() {
            let line_start = self.at;
            let (line_end, next) = match memchr::memchr2(b'\n', b'\r', &bytes[line_start..]) {
                Some(offset) => {
                    let end = line_start + offset;
                    let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
                    (end, end + if crlf { 2 } else { 1 })
                }
                // An unfinished line: not an event.
                None => return None,
            };
            self.at = next;
            let line = &text[line_start..line_end];
            if line.is_empty() {
                match data.take() {
                    Some(data) => {
                        return Some(SseEvent {
                            name,
                            data,
                            span: start..next,
                        });
                    }
                    None => {
                        // An empty event (or comments only): nothing to dispatch.
                        name = None;
                        start = next;
                        continue;
                    }
                }
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "data" => {
                    data = Some(match data.take() {
                        None => Cow::Borrowed(value),
                        Some(earlier) => {
                            let mut joined = earlier.into_owned();
                            joined.push('\n');
                            joined.push_str(value);
                            Cow::Owned(joined)
                        }
                    });
                }
                "event" => name = Some(value),
                // `id`, `retry` and unknown fields mean nothing to a proxy.
                _ => {}
            }
        }
        None
    }
}

/// Writes one event carrying `data`.
pub fn data_event(data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    write_data(&mut out, data);
    out.freeze()
}

/// Writes one unnamed `data:` event.
pub fn write_data(out: &mut BytesMut, data: &str) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Writes one named event (`event: NAME` + `data: JSON`), as Anthropic streams do.
pub fn write_named(out: &mut BytesMut, name: &str, data: &serde_json::Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut splitter = EventSplitter::default();
        let mut out = Vec::new();
        for chunk in chunks {
            if let Some(ready) = splitter.push(Bytes::copy_from_slice(chunk)).unwrap() {
                out.push(ready.to_vec());
            }
        }
        out
    }

    fn datas(text: &str) -> Vec<String> {
        events(text).map(|e| e.data.into_owned()).collect()
    }

    #[test]
    fn whole_chunks_pass_without_copy() {
        let mut splitter = EventSplitter::default();
        let chunk = Bytes::from_static(b"data: a\n\ndata: b\n\n");
        let out = splitter.push(chunk.clone()).unwrap().unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
        assert_eq!(splitter.pending_len(), 0);
    }

    #[test]
    fn partial_events_are_held_until_complete() {
        let mut splitter = EventSplitter::default();
        assert_eq!(
            splitter.push(Bytes::from_static(b"data: {\"a\":")),
            Ok(None)
        );
        assert_eq!(splitter.push(Bytes::from_static(b"1}\n")), Ok(None));
        let out = splitter
            .push(Bytes::from_static(b"\ndata: x"))
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], b"data: {\"a\":1}\n\n");
        assert_eq!(splitter.pending_len(), 7);
        let out = splitter
            .push(Bytes::from_static(b"\r\n\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(&out[..], b"data: x\r\n\r\n");
    }

    #[test]
    fn every_line_ending_ends_events() {
        for framing in [
            &b"data: a\r\n\r\ndata: b\r\n\r\n"[..],
            b"data: a\r\rdata: b\r\r",
            b"data: a\n\r\ndata: b\r\n\n",
        ] {
            let whole = split_all(&[framing]);
            assert_eq!(whole.concat(), framing);
            let text = std::str::from_utf8(framing).unwrap();
            assert_eq!(datas(text), ["a", "b"], "{framing:?}");
        }
        // A `\r\n` cut between two chunks is one line end, not two.
        let out = split_all(&[b"data: a\r", b"\ndata: b\r\n", b"\r\n"]);
        assert_eq!(out, vec![b"data: a\r\ndata: b\r\n\r\n".to_vec()]);
        // An empty line ending in `\r` at the end of a chunk ends the event at once.
        let out = split_all(&[b"data: a\r\n\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(out[0], b"data: a\r\n\r");
        assert_eq!(out.concat(), b"data: a\r\n\r\ndata: b\r\n\r\n");
    }

    #[test]
    fn fields_comments_and_multi_line_data() {
        let text = ": keep-alive\r\nid: 7\r\nevent: message_start\r\nretry: 100\r\ndata: {\"a\":\r\ndata:  1}\r\n\r\n\
                    : only a comment\n\ndata\n\nevent: ping\n\ndata:x\n\n";
        let found: Vec<_> = events(text).collect();
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!(found[0].name, Some("message_start"));
        assert_eq!(found[0].data, "{\"a\":\n 1}");
        assert!(matches!(found[0].data, Cow::Owned(_)));
        assert_eq!(
            &text[found[0].span.clone()],
            &text[..text.find("\r\n\r\n").unwrap() + 4]
        );
        // `data` alone is an event with empty data; an event without data is none.
        assert_eq!(found[1].data, "");
        assert_eq!(found[2].name, None, "a name does not outlive its event");
        assert_eq!(found[2].data, "x");
        assert!(matches!(found[2].data, Cow::Borrowed(_)));
        assert_eq!(datas("data: unfinished\n"), Vec::<String>::new());
    }

    #[test]
    fn spans_partition_the_events() {
        let text = "data: 1\n\n: c\n\ndata: 2\r\n\r\ndata: 3\n\n";
        let spans: Vec<_> = events(text).map(|e| text[e.span].to_owned()).collect();
        assert_eq!(spans, ["data: 1\n\n", "data: 2\r\n\r\n", "data: 3\n\n"]);
    }

    #[test]
    fn the_end_of_the_stream_completes_the_last_event() {
        let mut splitter = EventSplitter::default();
        assert!(
            splitter
                .push(Bytes::from_static(b"data: {}\n\ndata: last"))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            splitter.finish().unwrap(),
            Bytes::from_static(b"data: last\n\n")
        );
        assert!(splitter.finish().is_none());
        assert!(
            splitter
                .push(Bytes::from_static(b": bye"))
                .unwrap()
                .is_none()
        );
        assert!(splitter.finish().is_none(), "a comment is no event");
    }

    #[test]
    fn an_event_that_never_ends_is_refused_at_the_limit() {
        let mut splitter = EventSplitter::with_limit(1024);
        let chunk = Bytes::from(vec![b'x'; 600]);
        assert_eq!(splitter.push(Bytes::from_static(b"data: ")), Ok(None));
        assert_eq!(splitter.push(chunk.clone()), Ok(None));
        assert_eq!(splitter.push(chunk), Err(EventTooLarge(1024)));
        assert_eq!(splitter.pending_len(), 0, "nothing more is held");
        // Whole events of any size within a chunk pass.
        let mut splitter = EventSplitter::with_limit(16);
        let big = Bytes::from(format!("data: {}\n\n", "y".repeat(100)));
        assert!(splitter.push(big).unwrap().is_some());
    }

    #[test]
    fn writers() {
        assert_eq!(&data_event("[DONE]")[..], b"data: [DONE]\n\n");
        let mut out = BytesMut::new();
        write_named(&mut out, "ping", &serde_json::json!({"type": "ping"}));
        assert_eq!(&out[..], b"event: ping\ndata: {\"type\":\"ping\"}\n\n");
    }
}
