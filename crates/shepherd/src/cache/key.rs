//! The cache key of a request: a SHA-256 of its route, its scope (shared, or the client key)
//! and its canonical body: the JSON with keys sorted and whitespace dropped, without the fields
//! that do not change the answer (`stream`, `stream_options`, `user`, `metadata`, …). Same
//! question, same key, however it was written.

use ring::digest::{Context, SHA256};
use serde_json::Value;

/// Request fields that do not change the answer.
const IGNORED: &[&str] = &[
    "stream",
    "stream_options",
    "user",
    "safety_identifier",
    "metadata",
    "store",
    "prompt_cache_key",
    "service_tier",
];

/// The key of a request body (`None`: not a JSON object, so not cacheable).
pub fn of(route: &str, scope: &str, body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let Value::Object(fields) = value else {
        return None;
    };
    let mut canonical = String::with_capacity(body.len());
    canonical.push('{');
    let mut names: Vec<&String> = fields
        .keys()
        .filter(|name| !IGNORED.contains(&name.as_str()))
        .collect();
    names.sort();
    for (n, name) in names.iter().enumerate() {
        if n > 0 {
            canonical.push(',');
        }
        write_string(name, &mut canonical);
        canonical.push(':');
        write_canonical(&fields[name.as_str()], &mut canonical);
    }
    canonical.push('}');
    let mut digest = Context::new(&SHA256);
    for part in [route, "\n", scope, "\n", &canonical] {
        digest.update(part.as_bytes());
    }
    Some(
        digest
            .finish()
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect(),
    )
}

fn write_string(text: &str, out: &mut String) {
    out.push_str(&Value::String(text.to_owned()).to_string());
}

/// JSON with object keys sorted at every depth and no whitespace.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(fields) => {
            let mut names: Vec<&String> = fields.keys().collect();
            names.sort();
            out.push('{');
            for (n, name) in names.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_canonical(&fields[name.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(body: &str) -> String {
        of("/v1/chat/completions", "shared", body.as_bytes()).unwrap()
    }

    #[test]
    fn order_and_whitespace_do_not_matter() {
        let a =
            key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#);
        let b = key(
            "{ \"temperature\": 0.2,\n \"messages\": [ {\"content\": \"hi\", \"role\": \"user\"} ],\n \"model\": \"m\" }",
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn answer_changing_fields_matter_and_others_do_not() {
        let base = key(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#);
        let streamed = key(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"user":"u1","messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(base, streamed);
        let warmer =
            key(r#"{"model":"m","temperature":1,"messages":[{"role":"user","content":"hi"}]}"#);
        assert_ne!(base, warmer);
        let with_tools = key(
            r#"{"model":"m","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_ne!(base, with_tools);
        let other_order = key(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"user","content":"again"}]}"#,
        );
        let swapped = key(
            r#"{"model":"m","messages":[{"role":"user","content":"again"},{"role":"user","content":"hi"}]}"#,
        );
        assert_ne!(other_order, swapped, "message order matters");
    }

    #[test]
    fn scope_and_route_separate_keys() {
        let body = br#"{"model":"m","messages":[]}"#;
        let shared = of("/v1/chat/completions", "shared", body).unwrap();
        assert_ne!(shared, of("/v1/chat/completions", "key:a", body).unwrap());
        assert_ne!(shared, of("/v1/messages", "shared", body).unwrap());
        assert!(of("/v1/chat/completions", "shared", b"[1]").is_none());
    }
}
