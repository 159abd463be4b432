//! Request dispatch: which protocol a path belongs to, and the answer to a request once the
//! behaviour is known (injected errors and broken bodies in the protocol's own shape, or the
//! protocol's handler).

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::http::request::Parts;
use hyper::{HeaderMap, Method, Response, StatusCode};

use crate::State;
use crate::behavior::Behavior;
use crate::body::MockBody;
use crate::{anthropic, gemini, openai};

/// What a handler needs besides the request.
pub(crate) struct Ctx<'a> {
    pub(crate) state: &'a Arc<State>,
    pub(crate) behavior: &'a Behavior,
}

/// The API a route belongs to; errors are shaped after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    OpenAi,
    Anthropic,
    Gemini,
}

impl Protocol {
    /// `/v1/messages…` is Anthropic; `/v1beta/…`, `/v1alpha/…` and `/v1/models/{m}:{method}`
    /// are Gemini; everything else is OpenAI.
    pub(crate) fn of(path: &str) -> Protocol {
        let rest = strip_version(path);
        if rest == "/messages" || rest.starts_with("/messages/") {
            Protocol::Anthropic
        } else if gemini::is_gemini_path(path) {
            Protocol::Gemini
        } else {
            Protocol::OpenAi
        }
    }

    /// A 400 answer for a request the mock cannot use.
    pub(crate) fn invalid(self, message: String) -> Response<MockBody> {
        match self {
            Protocol::OpenAi => openai::ApiError::invalid(message, None).into_response(),
            Protocol::Anthropic => anthropic::ApiError::invalid(message).into_response(),
            Protocol::Gemini => gemini::ApiError::invalid(message).into_response(),
        }
    }

    fn not_found(self, method: &Method, path: &str) -> Response<MockBody> {
        match self {
            Protocol::OpenAi => openai::ApiError::not_found(method, path).into_response(),
            Protocol::Anthropic => anthropic::ApiError::not_found(method, path).into_response(),
            Protocol::Gemini => gemini::ApiError::not_found(method, path).into_response(),
        }
    }

    fn injected(self, status: u16, parts: &Parts, behavior: &Behavior) -> Response<MockBody> {
        let key = behavior.echo_key.then(|| upstream_key(self, parts));
        let echoed = key.as_deref();
        let mut resp = match self {
            Protocol::OpenAi => openai::ApiError::injected(status, echoed).into_response(),
            Protocol::Anthropic => anthropic::ApiError::injected(status, echoed).into_response(),
            Protocol::Gemini => {
                gemini::ApiError::injected(status, echoed, behavior.retry_after.as_deref())
                    .into_response()
            }
        };
        if let Some(key) = key {
            if behavior.echo_escaped
                && let MockBody::Full(Some(bytes)) = resp.body_mut()
            {
                let text = String::from_utf8_lossy(bytes).replace(&key, &json_escaped(&key));
                *bytes = Bytes::from(text);
            }
            let headers = resp.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&format!(
                "Bearer realm=\"mock\", error=\"invalid_token\", key=\"{key}\""
            )) {
                headers.insert(hyper::header::WWW_AUTHENTICATE, value);
            }
            if let Ok(value) = HeaderValue::from_str(&format!("key={key}")) {
                headers.insert("x-mock-echo", value);
            }
        }
        resp
    }
}

/// The answer to a (non-control) request under `behavior`.
pub(crate) fn respond(
    state: &Arc<State>,
    parts: &Parts,
    body: &Bytes,
    behavior: &Behavior,
) -> Response<MockBody> {
    let protocol = Protocol::of(parts.uri.path());
    if let Some(status) = behavior.error_status() {
        return match &behavior.body {
            Some(raw) => raw_response(status, raw),
            None => protocol.injected(status, parts, behavior),
        };
    }
    if let Some(raw) = &behavior.body {
        return raw_response(behavior.status.unwrap_or(200), raw);
    }
    if let Some(events) = &behavior.sse_body {
        let plan = crate::body::SsePlan {
            events: vec![Bytes::from(events.clone())],
            ..crate::body::SsePlan::default()
        };
        return crate::sse_response(StatusCode::OK, plan, state);
    }
    if behavior.malformed {
        return match protocol {
            Protocol::OpenAi => openai::malformed(state, body),
            Protocol::Anthropic => anthropic::malformed(state, body),
            Protocol::Gemini => gemini::malformed(state, parts),
        };
    }
    let ctx = Ctx { state, behavior };
    let full_path = parts.uri.path();
    let path = strip_version(full_path);
    let answer = match protocol {
        Protocol::OpenAi => openai::route(&ctx, &parts.method, path, body),
        Protocol::Anthropic => anthropic::route(&ctx, parts, path, body),
        Protocol::Gemini => gemini::route(&ctx, parts, body),
    };
    let mut resp = answer.unwrap_or_else(|| protocol.not_found(&parts.method, full_path));
    if let Some(status) = behavior.status.and_then(|s| StatusCode::from_u16(s).ok())
        && resp.status().is_success()
    {
        *resp.status_mut() = status;
    }
    resp
}

/// `/v1/chat/completions` -> `/chat/completions`; paths without `/v1` are kept.
pub(crate) fn strip_version(path: &str) -> &str {
    match path.strip_prefix("/v1") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

/// The API key the client sent, looked up where the protocol puts it first: OpenAI a bearer
/// token, Anthropic `x-api-key`, Gemini `x-goog-api-key` or the `key` query parameter; then
/// the other places.
/// The upstream key a request presents, in its protocol's place.
pub(crate) fn presented_key(parts: &Parts) -> String {
    upstream_key(Protocol::of(parts.uri.path()), parts)
}

fn upstream_key(protocol: Protocol, parts: &Parts) -> String {
    let bearer = || bearer_token(&parts.headers);
    let header = |name: &str| header_value(&parts.headers, name);
    let found = match protocol {
        Protocol::OpenAi => bearer().or_else(|| header("api-key")),
        Protocol::Anthropic => header("x-api-key").or_else(bearer),
        Protocol::Gemini => header("x-goog-api-key")
            .or_else(|| query_param(parts.uri.query(), "key"))
            .or_else(bearer),
    };
    found
        .or_else(|| {
            ["api-key", "x-api-key", "x-goog-api-key"]
                .into_iter()
                .find_map(header)
        })
        .unwrap_or_default()
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let auth = header_value(headers, "authorization")?;
    let token = match auth.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => auth.as_str(),
    };
    Some(token.to_owned())
}

/// The (not percent-decoded) value of the query parameter `name`.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A key as a JSON string may write it: every `-` as `\u002d`, every `/` as `\/`.
fn json_escaped(key: &str) -> String {
    key.replace('-', "\\u002d").replace('/', "\\/")
}

fn raw_response(status: u16, body: &str) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(body.to_owned()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn parts(uri: &str, headers: &[(&'static str, &'static str)]) -> Parts {
        let mut req = Request::post(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn version_prefix_is_optional() {
        assert_eq!(strip_version("/v1/chat/completions"), "/chat/completions");
        assert_eq!(strip_version("/chat/completions"), "/chat/completions");
        assert_eq!(strip_version("/v1beta/models"), "/v1beta/models");
    }

    #[test]
    fn protocol_comes_from_the_path() {
        assert_eq!(Protocol::of("/v1/chat/completions"), Protocol::OpenAi);
        assert_eq!(Protocol::of("/v1/models/mock-gpt"), Protocol::OpenAi);
        assert_eq!(Protocol::of("/v1/messages"), Protocol::Anthropic);
        assert_eq!(Protocol::of("/messages"), Protocol::Anthropic);
        assert_eq!(
            Protocol::of("/v1beta/models/g:generateContent"),
            Protocol::Gemini
        );
        assert_eq!(
            Protocol::of("/v1/models/g:streamGenerateContent"),
            Protocol::Gemini
        );
    }

    #[test]
    fn key_comes_from_the_protocol_place_first() {
        let p = parts(
            "/v1/chat/completions",
            &[("authorization", "Bearer sk-123")],
        );
        assert_eq!(upstream_key(Protocol::OpenAi, &p), "sk-123");
        let p = parts(
            "/v1/messages",
            &[("authorization", "Bearer b"), ("x-api-key", "ant-1")],
        );
        assert_eq!(upstream_key(Protocol::Anthropic, &p), "ant-1");
        assert_eq!(upstream_key(Protocol::OpenAi, &p), "b");
        let p = parts("/v1beta/models/g:generateContent?alt=sse&key=AIza", &[]);
        assert_eq!(upstream_key(Protocol::Gemini, &p), "AIza");
        let p = parts("/x", &[("x-goog-api-key", "g-1")]);
        assert_eq!(upstream_key(Protocol::Gemini, &p), "g-1");
        assert_eq!(upstream_key(Protocol::OpenAi, &p), "g-1");
        assert_eq!(upstream_key(Protocol::OpenAi, &parts("/x", &[])), "");
    }
}
