//! How the mock writes its bytes. Real servers differ from the compact shape the protocol
//! handlers build: Python servers put spaces after `:` and `,`, some frame events with `\r\n`,
//! split one event's JSON over several `data:` lines, send comments and `id:` fields, and LiteLLM
//! sends its usage chunk with an empty choice rather than none. [`Style::Spaced`] rewrites every
//! answer (whole bodies and each stream event) in that shape, carrying the same content, so a
//! client can be tested against more than one way of writing the same thing.

use bytes::Bytes;
use serde::Serialize;
use serde_json::ser::{Formatter, PrettyFormatter, Serializer};
use serde_json::{Value, json};

/// The shape of the bytes the mock writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Style {
    /// Compact JSON, `\n` framing, one `data:` line per event (what the handlers build).
    #[default]
    Compact,
    /// Python-style JSON (`": "`, `", "`), `\r\n` framing, every other event's JSON spread
    /// over several `data:` lines, a comment and `id:` fields, LiteLLM's usage chunk.
    Spaced,
}

impl Style {
    pub fn parse(value: &str) -> Option<Style> {
        match value {
            "compact" => Some(Style::Compact),
            "spaced" => Some(Style::Spaced),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Style::Compact => "compact",
            Style::Spaced => "spaced",
        }
    }
}

/// A whole JSON body in the spaced style (other bodies unchanged).
pub fn spaced_body(body: &Bytes) -> Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => Bytes::from(one_line(&value)),
        Err(_) => body.clone(),
    }
}

/// One stream event (as the handlers frame it: `[event: NAME\n]data: …\n\n`) in the spaced
/// style; `n` counts the events of the stream.
pub fn spaced_event(event: &Bytes, n: usize) -> Bytes {
    let Ok(text) = std::str::from_utf8(event) else {
        return event.clone();
    };
    let mut name = None;
    let mut data = None;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event: ") {
            name = Some(value);
        } else if let Some(value) = line.strip_prefix("data: ") {
            data = Some(value);
        }
    }
    let Some(data) = data else {
        return event.clone();
    };
    let mut out = String::with_capacity(event.len() * 2);
    if n == 0 {
        out.push_str(": mock-upstream spaced style\r\n");
    }
    out.push_str(&format!("id: {n}\r\n"));
    if let Some(name) = name {
        out.push_str(&format!("event: {name}\r\n"));
    }
    match serde_json::from_str::<Value>(data) {
        Ok(mut value) => {
            litellm_usage_chunk(&mut value);
            let written = if n % 2 == 1 {
                pretty(&value)
            } else {
                one_line(&value)
            };
            for line in written.lines() {
                out.push_str("data: ");
                out.push_str(line);
                out.push_str("\r\n");
            }
        }
        // `[DONE]`, or a malformed event on purpose: as it is.
        Err(_) => {
            out.push_str("data: ");
            out.push_str(data);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

/// LiteLLM's proxy sends its usage chunk with `choices: [{"index": 0, "delta": {}}]`.
fn litellm_usage_chunk(value: &mut Value) {
    let is_usage_chunk = value["object"] == "chat.completion.chunk"
        && value["choices"].as_array().is_some_and(Vec::is_empty)
        && value["usage"].is_object();
    if is_usage_chunk {
        value["choices"] = json!([{"index": 0, "delta": {}}]);
    }
}

/// JSON on one line with Python's default separators.
fn one_line(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = Serializer::with_formatter(&mut out, PythonFormatter);
    // Writing a `Value` to memory cannot fail.
    let _ = value.serialize(&mut serializer);
    String::from_utf8(out).unwrap_or_default()
}

/// JSON over several lines.
fn pretty(value: &Value) -> String {
    let mut out = Vec::new();
    let mut serializer = Serializer::with_formatter(&mut out, PrettyFormatter::with_indent(b" "));
    let _ = value.serialize(&mut serializer);
    String::from_utf8(out).unwrap_or_default()
}

/// `json.dumps` without arguments: `", "` between items, `": "` after keys.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_events_are_rewritten_with_the_same_content() {
        let body = Bytes::from_static(br#"{"a":1,"b":[1,2],"c":{"d":"x: y, z"}}"#);
        let spaced = spaced_body(&body);
        assert_eq!(
            &spaced[..],
            br#"{"a": 1, "b": [1, 2], "c": {"d": "x: y, z"}}"#
        );

        let event =
            Bytes::from_static(b"event: message_delta\ndata: {\"type\":\"message_delta\"}\n\n");
        let first = String::from_utf8(spaced_event(&event, 0).to_vec()).unwrap();
        assert_eq!(
            first,
            ": mock-upstream spaced style\r\nid: 0\r\nevent: message_delta\r\ndata: {\"type\": \"message_delta\"}\r\n\r\n"
        );
        let second = String::from_utf8(spaced_event(&event, 1).to_vec()).unwrap();
        assert!(second.matches("data: ").count() >= 3, "{second}");

        let usage = Bytes::from_static(
            b"data: {\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n",
        );
        let out = String::from_utf8(spaced_event(&usage, 2).to_vec()).unwrap();
        assert!(
            out.contains(r#""choices": [{"delta": {}, "index": 0}]"#)
                || out.contains(r#""choices": [{"index": 0, "delta": {}}]"#),
            "{out}"
        );
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        assert_eq!(
            &spaced_event(&done, 3)[..],
            b"id: 3\r\ndata: [DONE]\r\n\r\n"
        );
    }
}
