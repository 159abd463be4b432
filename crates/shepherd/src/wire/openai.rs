//! OpenAI wire format, as little of it as pass-through needs: the request head (model, stream)
//! read without copying the body, and a targeted rewrite of the model name.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::errors::ApiError;

/// What routing needs from an OpenAI request body; every other field stays as raw bytes.
#[derive(Debug)]
pub struct RequestHead {
    pub model: String,
    pub stream: bool,
    /// Byte range of the `model` value (quotes included) inside the body.
    model_span: (usize, usize),
}

#[derive(Deserialize)]
struct RawHead<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
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
        let start = offset_in(body, model_raw.get().as_bytes());
        Ok(RequestHead {
            model,
            stream,
            model_span: (start, start + model_raw.get().len()),
        })
    }

    /// The body with `model` replaced by `upstream_model`; the same bytes when it is unchanged.
    pub fn rewrite_model(&self, body: &Bytes, upstream_model: &str) -> Bytes {
        if upstream_model == self.model {
            return body.clone();
        }
        let quoted = serde_json::Value::from(upstream_model).to_string();
        let (start, end) = self.model_span;
        let mut out = BytesMut::with_capacity(body.len() - (end - start) + quoted.len());
        out.extend_from_slice(&body[..start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&body[end..]);
        out.freeze()
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
