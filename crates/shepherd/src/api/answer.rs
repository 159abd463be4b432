//! A whole (non-streamed) upstream answer turned into the client's: passed through when the
//! protocols match (usage read on the side), translated when they differ; upstream errors in the
//! client's error shape with upstream secrets redacted.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::errors::{ApiError, ClientProtocol};
use super::exchange::{Conversion, Exchange, Translation};
use crate::context::RequestContext;
use crate::providers::Endpoint;
use crate::redact::Redactor;
use crate::translate::errors::ErrorKind;
use crate::translate::ir::{self, Response as Answer, Usage, UsageSource};
use crate::translate::{gemini, openai, shapes};

/// A successful answer, in the client's protocol; also its body (for the cache).
pub fn success(
    ctx: &RequestContext,
    exchange: &Exchange,
    status: StatusCode,
    headers: HeaderMap,
    bytes: Bytes,
) -> Result<(Response, Bytes), ApiError> {
    match &exchange.conversion {
        Conversion::Passthrough {
            endpoint, keeper, ..
        } => {
            let (usage, source) = passthrough_usage(*endpoint, &bytes, exchange.prompt_estimate)?;
            ctx.set_usage(usage, source);
            if let Some(keeper) = keeper
                && let Ok(body) = serde_json::from_slice::<Value>(&bytes)
            {
                keeper.keep(&body);
            }
            Ok((whole_response(status, headers, bytes.clone()), bytes))
        }
        Conversion::Translate(translation) => {
            let body: Value = serde_json::from_slice(&bytes)
                .map_err(|_| ApiError::upstream_bad_response("the body is not valid JSON"))?;
            let encoded = Bytes::from(translate(ctx, exchange, translation, &body)?.to_string());
            let mut headers = headers;
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Ok((
                whole_response(StatusCode::OK, headers, encoded.clone()),
                encoded,
            ))
        }
    }
}

/// The canonical form of an answer body in the client's protocol (`None` for embeddings, which
/// have none, or a body that is not an answer).
pub fn canonical(endpoint: Endpoint, body: &[u8]) -> Option<Answer> {
    let shape = endpoint.shape()?;
    let value: Value = serde_json::from_slice(body).ok()?;
    shape.decode_answer(&value).ok()
}

#[derive(Deserialize)]
struct UsageField<'a> {
    #[serde(borrow)]
    usage: Option<&'a RawValue>,
}

/// Usage of a passed-through body, read by its shape's codec (embeddings: OpenAI's), or
/// estimated from its text when it reports none; checks that the body is JSON at all.
fn passthrough_usage(
    endpoint: Endpoint,
    bytes: &[u8],
    prompt_estimate: u64,
) -> Result<(Usage, UsageSource), ApiError> {
    let parsed: UsageField = serde_json::from_slice(bytes)
        .map_err(|_| ApiError::upstream_bad_response("the body is not valid JSON"))?;
    let shape = endpoint.shape();
    let reported = parsed.usage.and_then(|usage| match shape {
        Some(shape) => shape.usage_of_json(usage.get()),
        None => openai::usage::usage_of_json(usage.get()),
    });
    if let Some(usage) = reported {
        return Ok((usage, UsageSource::Reported));
    }
    let text_chars = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|body| shape?.decode_answer(&body).ok())
        .map_or(0, |answer| output_chars(&answer));
    Ok((
        estimate(prompt_estimate, text_chars),
        UsageSource::Estimated,
    ))
}

/// Characters of model output (text, reasoning, tool arguments) in an answer.
fn output_chars(answer: &Answer) -> usize {
    answer
        .parts
        .iter()
        .map(|part| match part {
            ir::Part::Text(text) => text.len(),
            ir::Part::Thinking { text, .. } => text.len(),
            ir::Part::ToolCall(call) => call.arguments.len() + call.name.len(),
            _ => 0,
        })
        .sum()
}

pub fn estimate(prompt: u64, output_chars: usize) -> Usage {
    Usage {
        input: prompt,
        output: ir::estimate_tokens(output_chars),
        ..Usage::default()
    }
}

fn translate(
    ctx: &RequestContext,
    exchange: &Exchange,
    translation: &Translation,
    body: &Value,
) -> Result<Value, ApiError> {
    if translation.endpoint == Endpoint::Embeddings {
        ctx.set_usage(
            estimate(exchange.prompt_estimate, 0),
            UsageSource::Estimated,
        );
        return gemini::response::decode_embeddings(
            body,
            &translation.model,
            translation.embeddings_base64,
            exchange.prompt_estimate,
        )
        .map_err(|detail| ApiError::upstream_bad_response(&detail));
    }
    let Some(shape) = translation.endpoint.shape() else {
        return Err(ApiError::upstream_bad_response("no shape for the route"));
    };
    let answer = shapes::upstream_answer(translation.upstream, body)
        .map_err(|detail| ApiError::upstream_bad_response(&detail))?;
    let (usage, source) = match answer.usage {
        Some(usage) => (usage, UsageSource::Reported),
        None => (
            estimate(exchange.prompt_estimate, output_chars(&answer)),
            UsageSource::Estimated,
        ),
    };
    ctx.set_usage(usage, source);
    let model = answer.model.as_deref().unwrap_or(&translation.model);
    Ok(shape.encode_answer(&answer, model, &usage, &translation.echo))
}

/// A fresh answer id in the client protocol's style (`chatcmpl-…`, `msg_…`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{:024x}", fastrand::u128(..) >> 32)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn whole_response(status: StatusCode, headers: HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// An upstream error, classified, and what the client gets if it is the last word.
#[derive(Debug)]
pub struct UpstreamErrorAnswer {
    /// A passed-through error body, or an error in the client's shape.
    pub answer: Result<Response, ApiError>,
    pub kind: ErrorKind,
    /// The upstream's own error code, when it says one (OpenAI `code`).
    pub code: Option<String>,
}

/// An upstream error answer in the client's protocol. Same protocol: passed through with its
/// status when it is a JSON error body (secrets redacted), except that a refused upstream key
/// (401) is the gateway's problem, not the client's: 502. Different protocols: classified and
/// rendered in the client's shape, `retry-after` kept. Anything else becomes a 502.
pub fn upstream_error(
    exchange: &Exchange,
    protocol: ClientProtocol,
    status: StatusCode,
    headers: HeaderMap,
    body: &Bytes,
    redactor: &Redactor,
) -> UpstreamErrorAnswer {
    let redacted = redactor.body(body).unwrap_or_else(|| body.clone());
    let parsed: Option<Value> = serde_json::from_slice(&redacted).ok();
    let Some(parsed) = parsed.filter(|value| error_object(value).is_some()) else {
        return UpstreamErrorAnswer {
            answer: Err(ApiError::upstream_bad_response(&format!(
                "status {} with a body that is not an error object",
                status.as_u16()
            ))),
            kind: ErrorKind::of_status(status.as_u16()),
            code: None,
        };
    };
    let upstream_wire = match &exchange.conversion {
        Conversion::Passthrough { wire, .. } => *wire,
        Conversion::Translate(translation) => translation.upstream,
    };
    let failure = shapes::upstream_failure(upstream_wire, status.as_u16(), &parsed);
    let (kind, code) = (failure.kind, failure.code.clone());
    let passthrough = matches!(exchange.conversion, Conversion::Passthrough { .. });
    if passthrough && status != StatusCode::UNAUTHORIZED {
        // Anthropic's 529 means "overloaded"; OpenAI clients know 503 for it.
        let status = match (protocol, status.as_u16()) {
            (ClientProtocol::OpenAi, 529) => StatusCode::SERVICE_UNAVAILABLE,
            _ => status,
        };
        let mut response = whole_response(status, headers, redacted);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return UpstreamErrorAnswer {
            answer: Ok(response),
            kind,
            code,
        };
    }
    let mut error = ApiError::from_upstream(&failure, protocol);
    for name in ["retry-after", "retry-after-ms"] {
        if let Some(value) = headers.get(name) {
            error = error.with_header(HeaderName::from_static(name), value.clone());
        }
    }
    UpstreamErrorAnswer {
        answer: Err(error),
        kind,
        code,
    }
}

/// The error object of an OpenAI, Anthropic or Gemini error body.
fn error_object(value: &Value) -> Option<&Value> {
    match value {
        Value::Array(items) => items.first().and_then(|item| item.get("error")),
        other => other.get("error"),
    }
    .filter(|error| !error.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn passthrough_usage_reported_or_estimated() {
        let body = json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        let (usage, source) =
            passthrough_usage(Endpoint::ChatCompletions, body.to_string().as_bytes(), 99).unwrap();
        assert_eq!(
            (usage.input, usage.output, source),
            (3, 4, UsageSource::Reported)
        );
        let body = json!({"choices": [{"message": {"role": "assistant", "content": "twelve chars"}, "finish_reason": "stop"}]});
        let (usage, source) =
            passthrough_usage(Endpoint::ChatCompletions, body.to_string().as_bytes(), 10).unwrap();
        assert_eq!(
            (usage.input, usage.output, source),
            (10, 3, UsageSource::Estimated)
        );
        let anthropic = json!({"content": [], "usage": {"input_tokens": 5, "output_tokens": 6, "cache_read_input_tokens": 2}});
        let (usage, _) =
            passthrough_usage(Endpoint::Messages, anthropic.to_string().as_bytes(), 0).unwrap();
        assert_eq!((usage.input, usage.cache_read), (7, 2));
        let responses = json!({"output": [], "usage": {"input_tokens": 8, "output_tokens": 2,
                               "input_tokens_details": {"cached_tokens": 3}}});
        let (usage, source) =
            passthrough_usage(Endpoint::Responses, responses.to_string().as_bytes(), 0).unwrap();
        assert_eq!(
            (usage.input, usage.output, usage.cache_read, source),
            (8, 2, 3, UsageSource::Reported)
        );
        assert!(passthrough_usage(Endpoint::ChatCompletions, b"not json", 0).is_err());
    }

    #[test]
    fn error_objects_of_each_protocol() {
        assert!(error_object(&json!({"error": {"message": "x"}})).is_some());
        assert!(error_object(&json!({"type": "error", "error": {"type": "x"}})).is_some());
        assert!(error_object(&json!([{"error": {"code": 400}}])).is_some());
        assert!(error_object(&json!({"error": null})).is_none());
        assert!(error_object(&json!({"message": "x"})).is_none());
    }
}
