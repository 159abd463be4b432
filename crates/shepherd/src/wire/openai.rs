//! OpenAI wire format, as little of it as pass-through needs: the request head (model, stream,
//! stream options) read without copying the body, and targeted rewrites of the model name and of
//! `stream_options.include_usage`. Anthropic requests share the head (`model`, `stream`).

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::errors::ApiError;

/// What routing needs from an OpenAI request body; every other field stays as raw bytes.
#[derive(Debug)]
pub struct RequestHead {
    pub model: String,
    pub stream: bool,
    /// The client asked for usage in its stream (`stream_options.include_usage`).
    pub include_usage: bool,
    /// `max_completion_tokens`, else `max_output_tokens` (Responses), else `max_tokens` (OpenAI
    /// and Anthropic), when a number.
    pub max_output: Option<u64>,
    /// Byte range of the `model` value (quotes included) inside the body.
    model_span: (usize, usize),
    /// Byte range of the `stream_options` value, when present.
    stream_options_span: Option<(usize, usize)>,
}

#[derive(Deserialize)]
struct RawHead<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    /// The Responses API's output limit.
    #[serde(borrow)]
    max_output_tokens: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// How deep a request body may nest (serde's own limit when it builds values; unknown fields
/// pass through unparsed, so the limit is checked here for every request).
const MAX_NESTING: usize = 128;

/// Whether `body` nests arrays and objects deeper than `limit` (strings skipped). Cheap for
/// ordinary bodies: it only walks the bytes when there are more brackets than `limit`.
fn nesting_exceeds(body: &[u8], limit: usize) -> bool {
    if memchr::memchr2_iter(b'[', b'{', body)
        .take(limit + 1)
        .count()
        <= limit
    {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A client's output token limit: a positive integer up to `bounds::MAX_OUTPUT_TOKENS` (the
/// admission reserves it; nothing may wrap), or absent / null.
fn output_limit(field: &str, raw: Option<&RawValue>) -> Result<Option<u64>, ApiError> {
    let Some(raw) = raw.filter(|raw| raw.get() != "null") else {
        return Ok(None);
    };
    match raw.get().parse::<u64>() {
        Ok(n) if (1..=crate::bounds::MAX_OUTPUT_TOKENS).contains(&n) => Ok(Some(n)),
        Ok(0) => Err(ApiError::invalid_field(field, "must be at least 1")),
        Ok(_) => Err(ApiError::invalid_field(
            field,
            &format!("must be at most {}", crate::bounds::MAX_OUTPUT_TOKENS),
        )),
        Err(_) if raw.get().trim_start().starts_with('-') || raw.get().parse::<f64>().is_ok() => {
            Err(ApiError::invalid_field(
                field,
                &format!(
                    "expected an integer from 1 to {}",
                    crate::bounds::MAX_OUTPUT_TOKENS
                ),
            ))
        }
        Err(_) => Err(ApiError::invalid_field(field, "expected an integer")),
    }
}

impl RequestHead {
    /// Parses the head of a request body, with errors that name the field at fault.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(ApiError::invalid_json(
                "the body must be a JSON object (Content-Type: application/json)",
            ));
        }
        if nesting_exceeds(body, MAX_NESTING) {
            return Err(ApiError::invalid_json(&format!(
                "the body is nested more than {MAX_NESTING} levels deep"
            )));
        }
        let raw: RawHead<'_> = serde_json::from_slice(body).map_err(|error| {
            let text = error.to_string();
            if let Some(field) = text
                .strip_prefix("duplicate field `")
                .and_then(|rest| rest.split('`').next())
            {
                ApiError::invalid_field(field, "the field is given more than once")
            } else {
                ApiError::invalid_json(&text)
            }
        })?;
        let model_raw = raw.model.ok_or_else(|| ApiError::missing_field("model"))?;
        let model: String = serde_json::from_str(model_raw.get())
            .map_err(|_| ApiError::invalid_field("model", "expected a string"))?;
        if model.is_empty() {
            return Err(ApiError::invalid_field("model", "must not be empty"));
        }
        let stream = match raw.stream.map(RawValue::get) {
            None | Some("null") => false,
            Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(ApiError::invalid_field("stream", "expected a boolean")),
        };
        let (include_usage, stream_options_span) = match raw.stream_options {
            None => (false, None),
            Some(raw) if raw.get() == "null" => (false, None),
            Some(raw) => {
                let options: StreamOptions = serde_json::from_str(raw.get()).map_err(|_| {
                    ApiError::invalid_field(
                        "stream_options",
                        "expected an object like {\"include_usage\": true}",
                    )
                })?;
                let start = offset_in(body, raw.get().as_bytes());
                (
                    options.include_usage == Some(true),
                    Some((start, start + raw.get().len())),
                )
            }
        };
        let max_output = match output_limit("max_completion_tokens", raw.max_completion_tokens)? {
            Some(max) => Some(max),
            None => match output_limit("max_output_tokens", raw.max_output_tokens)? {
                Some(max) => Some(max),
                None => output_limit("max_tokens", raw.max_tokens)?,
            },
        };
        let start = offset_in(body, model_raw.get().as_bytes());
        Ok(RequestHead {
            model,
            stream,
            include_usage,
            max_output,
            model_span: (start, start + model_raw.get().len()),
            stream_options_span,
        })
    }

    /// The body of a request that named no model, with `"model": <model>` added first.
    pub fn with_model(body: &Bytes, model: &str) -> Bytes {
        let open = body.iter().position(|b| *b == b'{').map_or(0, |at| at + 1);
        let rest = &body[open..];
        let empty = rest.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'}');
        let quoted = serde_json::Value::from(model).to_string();
        let mut out = BytesMut::with_capacity(body.len() + quoted.len() + 10);
        out.extend_from_slice(&body[..open]);
        out.extend_from_slice(b"\"model\":");
        out.extend_from_slice(quoted.as_bytes());
        if !empty {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(rest);
        out.freeze()
    }

    /// The body with `model` replaced by `upstream_model` and, with `ask_usage` on a stream
    /// whose client did not ask, `stream_options.include_usage` set; the same bytes when nothing
    /// changes.
    pub fn rewrite(&self, body: &Bytes, upstream_model: &str, ask_usage: bool) -> Bytes {
        let mut edits: Vec<(usize, usize, String)> = Vec::with_capacity(2);
        if upstream_model != self.model {
            let quoted = serde_json::Value::from(upstream_model).to_string();
            edits.push((self.model_span.0, self.model_span.1, quoted));
        }
        if ask_usage && self.stream && !self.include_usage {
            match self.stream_options_span {
                Some((start, end)) => {
                    let mut options: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(&body[start..end]).unwrap_or_default();
                    options.insert("include_usage".to_owned(), true.into());
                    edits.push((start, end, serde_json::Value::Object(options).to_string()));
                }
                None => {
                    let open = body.iter().position(|b| *b == b'{').map_or(0, |at| at + 1);
                    edits.push((
                        open,
                        open,
                        r#""stream_options":{"include_usage":true},"#.to_owned(),
                    ));
                }
            }
        }
        if edits.is_empty() {
            return body.clone();
        }
        edits.sort_by_key(|edit| edit.0);
        let added: usize = edits.iter().map(|(_, _, text)| text.len()).sum();
        let mut out = BytesMut::with_capacity(body.len() + added);
        let mut at = 0;
        for (start, end, text) in &edits {
            out.extend_from_slice(&body[at..*start]);
            out.extend_from_slice(text.as_bytes());
            at = *end;
        }
        out.extend_from_slice(&body[at..]);
        out.freeze()
    }

    /// The body with `model` replaced by `upstream_model`.
    pub fn rewrite_model(&self, body: &Bytes, upstream_model: &str) -> Bytes {
        self.rewrite(body, upstream_model, false)
    }
}

/// Offset of `part` inside `whole`; `part` is a sub-slice borrowed from `whole`.
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_and_strings_do_not_count() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(nesting_exceeds(deep.as_bytes(), 128));
        let quoted = format!("{{\"a\":\"{}\"}}", "[".repeat(200));
        assert!(!nesting_exceeds(quoted.as_bytes(), 128));
        let flat = format!("{{\"a\":[{}1]}}", "[1],".repeat(300));
        assert!(!nesting_exceeds(flat.as_bytes(), 128));
        assert!(RequestHead::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn head_and_rewrite_keep_other_bytes() {
        let body = Bytes::from_static(
            br#"{"messages":[{"role":"user","content":"hi"}], "model" : "alias", "x_unknown":{"a":[1,2]},"stream":true}"#,
        );
        let head = RequestHead::parse(&body).unwrap();
        assert_eq!(head.model, "alias");
        assert!(head.stream);
        let same = head.rewrite_model(&body, "alias");
        assert_eq!(same.as_ptr(), body.as_ptr());
        let out = head.rewrite_model(&body, "gpt-4.1");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"messages":[{"role":"user","content":"hi"}], "model" : "gpt-4.1", "x_unknown":{"a":[1,2]},"stream":true}"#
        );
    }

    #[test]
    fn usage_is_asked_for_in_streams() {
        let body = Bytes::from_static(br#"{"model":"a","stream":true,"messages":[]}"#);
        let head = RequestHead::parse(&body).unwrap();
        assert!(!head.include_usage);
        let out = head.rewrite(&body, "b", true);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["model"], "b");
        assert_eq!(value["stream_options"]["include_usage"], true);
        assert_eq!(value["messages"], serde_json::json!([]));

        let body = Bytes::from_static(
            br#"{"stream_options":{"include_usage":false,"x":1},"model":"a","stream":true}"#,
        );
        let head = RequestHead::parse(&body).unwrap();
        let out = head.rewrite(&body, "a", true);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream_options":{"include_usage":true,"x":1},"model":"a","stream":true}"#
        );
        // Already asked, or not a stream: untouched.
        let body = Bytes::from_static(
            br#"{"model":"a","stream":true,"stream_options":{"include_usage":true}}"#,
        );
        let head = RequestHead::parse(&body).unwrap();
        assert!(head.include_usage);
        assert_eq!(head.rewrite(&body, "a", true).as_ptr(), body.as_ptr());
        let body = Bytes::from_static(br#"{"model":"a"}"#);
        let head = RequestHead::parse(&body).unwrap();
        assert_eq!(head.rewrite(&body, "a", true).as_ptr(), body.as_ptr());
        assert!(RequestHead::parse(br#"{"model":"a","stream_options":5}"#).is_err());
    }

    #[test]
    fn escaped_model_names() {
        let body = Bytes::from_static(br#"{"model":"a\u0062c"}"#);
        let head = RequestHead::parse(&body).unwrap();
        assert_eq!(head.model, "abc");
        assert_eq!(
            &head.rewrite_model(&body, "x\"y")[..],
            br#"{"model":"x\"y"}"#
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |body: &str| RequestHead::parse(body.as_bytes()).unwrap_err();
        assert_eq!(err("{}").param.as_deref(), Some("model"));
        assert_eq!(err(r#"{"model":5}"#).param.as_deref(), Some("model"));
        assert_eq!(
            err(r#"{"model":"m","stream":"yes"}"#).param.as_deref(),
            Some("stream")
        );
        assert_eq!(
            err(r#"{"model":"m","model":"n"}"#).param.as_deref(),
            Some("model")
        );
        assert_eq!(err("[1]").code, "invalid_json");
        assert_eq!(err(r#"{"model":"m""#).code, "invalid_json");
        assert_eq!(err("").code, "invalid_json");
    }
}
