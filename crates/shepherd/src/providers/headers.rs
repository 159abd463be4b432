//! Header hygiene between client and upstream: drop hop-by-hop and credential headers on the
//! way up, drop what is the upstream's business on the way down, redact secrets in error bodies.

use axum::http::{HeaderMap, HeaderName, header};

use crate::config::Wire;
use crate::redact::Redactor;

/// Connection-level headers (RFC 9110 §7.6.1) plus `host` and `content-length`, which the
/// client library sets for the new connection.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Credentials of the client (never forwarded) and headers the gateway decides itself.
const NOT_FORWARDED_UP: &[&str] = &[
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "accept-encoding",
    "x-forwarded-for",
    "forwarded",
    "x-real-ip",
];

/// Upstream headers that describe the upstream account or connection, not the answer.
const NOT_FORWARDED_DOWN: &[&str] = &[
    "set-cookie",
    "openai-organization",
    "openai-project",
    "server",
    "date",
    "alt-svc",
    "x-request-id",
    "strict-transport-security",
    "cf-ray",
    "cf-cache-status",
    "anthropic-organization-id",
    "x-goog-api-key",
];

fn listed_in(name: &HeaderName, list: &[&str]) -> bool {
    list.contains(&name.as_str())
}

/// Names listed in the client's `Connection` header are hop-by-hop too.
fn connection_tokens(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .collect()
}

/// Header families that belong to one protocol: forwarded only to upstreams that speak it
/// (an OpenAI upstream has no use for `anthropic-beta`, and may refuse it).
const PROTOCOL_HEADERS: &[(&str, Wire)] = &[
    ("anthropic-", Wire::Anthropic),
    ("openai-", Wire::OpenAi),
    ("x-goog-", Wire::Gemini),
];

/// The client's headers that may travel to an upstream speaking `upstream`.
pub fn forwardable_request_headers(client: &HeaderMap, upstream: Wire) -> HeaderMap {
    let dynamic = connection_tokens(client);
    let mut out = HeaderMap::with_capacity(client.len());
    for (name, value) in client {
        let other_protocol = PROTOCOL_HEADERS
            .iter()
            .any(|(prefix, wire)| *wire != upstream && name.as_str().starts_with(prefix));
        if listed_in(name, HOP_BY_HOP)
            || listed_in(name, NOT_FORWARDED_UP)
            || other_protocol
            || name.as_str().starts_with("x-shepherd-")
            || dynamic.iter().any(|token| token == name.as_str())
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The upstream's response headers that may travel to the client (secrets masked); `x-request-id`
/// is kept as `x-upstream-request-id` for support tickets with the provider.
pub fn response_headers_to_client(upstream: &HeaderMap, redactor: &Redactor) -> HeaderMap {
    let dynamic = connection_tokens(upstream);
    let mut out = HeaderMap::with_capacity(upstream.len());
    for (name, value) in upstream {
        if name.as_str() == "x-request-id" || name.as_str() == "request-id" {
            out.insert(
                HeaderName::from_static("x-upstream-request-id"),
                value.clone(),
            );
            continue;
        }
        if listed_in(name, HOP_BY_HOP)
            || listed_in(name, NOT_FORWARDED_DOWN)
            || name.as_str().starts_with("x-ratelimit-")
            || name.as_str().starts_with("anthropic-ratelimit-")
            || dynamic.iter().any(|token| token == name.as_str())
        {
            continue;
        }
        match redactor.header(value) {
            Some(masked) => out.append(name.clone(), masked),
            None => out.append(name.clone(), value.clone()),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn credentials_and_hop_by_hop_stay_behind() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer sk-client"),
            ("x-api-key", "sk-client"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("content-type", "application/json"),
            ("x-custom", "kept"),
            ("openai-beta", "assistants=v2"),
            ("x-shepherd-canary", "1"),
        ] {
            client.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let out = forwardable_request_headers(&client, Wire::OpenAi);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["content-type", "x-custom", "openai-beta"]);
    }

    #[test]
    fn protocol_headers_go_only_to_their_protocol() {
        let mut client = HeaderMap::new();
        for (name, value) in [
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
            ("openai-beta", "assistants=v2"),
            ("x-goog-user-project", "p"),
            ("user-agent", "sdk/1"),
        ] {
            client.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let names = |wire| {
            let out = forwardable_request_headers(&client, wire);
            out.keys()
                .map(|n| n.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Wire::OpenAi), ["openai-beta", "user-agent"]);
        assert_eq!(
            names(Wire::Anthropic),
            ["anthropic-version", "anthropic-beta", "user-agent"]
        );
        assert_eq!(names(Wire::Gemini), ["x-goog-user-project", "user-agent"]);
    }

    #[test]
    fn upstream_headers_filtered() {
        let mut upstream = HeaderMap::new();
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("x-request-id", "req_up"),
            ("openai-organization", "org-secret"),
            ("x-ratelimit-remaining-requests", "5"),
            ("transfer-encoding", "chunked"),
            ("openai-processing-ms", "12"),
        ] {
            upstream.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let out = response_headers_to_client(&upstream, &Redactor::default());
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            vec![
                "content-type",
                "x-upstream-request-id",
                "openai-processing-ms"
            ]
        );
    }
}
