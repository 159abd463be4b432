//! Every configured secret kept out of what leaves the gateway: upstream error bodies (passed
//! through or translated), upstream error events in streams, upstream response headers, and so
//! the messages that logs, traces and clients see. A secret is found in every form it can take:
//! as written, inside any JSON string however it is escaped (`\/`, `\u002d`...), and in text
//! that is JSON-escaped without being JSON; anything shaped like an OpenAI-style key (`sk-…`)
//! is masked too, since providers echo masked keys.

use std::borrow::Cow;

use axum::http::HeaderValue;
use bytes::Bytes;
use serde_json::Value;

use crate::config::Config;

/// What a secret becomes.
const MASK: &str = "[REDACTED]";

/// Shorter values are not treated as secrets (they would mask ordinary words).
const MIN_SECRET: usize = 8;

/// What replaces a non-JSON body that quotes a secret in a form that cannot be masked in place.
const WITHHELD: &str = "[an upstream body that quoted a secret was withheld]";

/// The secrets of one config.
#[derive(Debug, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|secret| secret.len() >= MIN_SECRET)
            .map(str::to_owned)
            .collect();
        // Longest first, so a secret inside another is masked with it.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// Every secret of `config`: upstream keys, the admin master key and key secret, and the
    /// static client keys.
    pub fn of_config(config: &Config) -> Self {
        let mut secrets: Vec<&str> = Vec::new();
        for provider in &config.providers {
            if let crate::config::ProviderKind::Remote(remote) = &provider.kind {
                secrets.extend(remote.api_keys.iter().map(|key| key.expose()));
            }
        }
        if let Some(admin) = &config.admin {
            secrets.push(admin.master_key.expose());
            secrets.push(admin.key_secret.expose());
        }
        secrets.extend(config.keys.iter().map(|key| key.key.expose()));
        if let crate::config::Database::Postgres(url) = &config.state.database {
            secrets.extend(url_password(url.expose()));
        }
        if let Some(redis) = &config.state.redis {
            secrets.extend(url_password(redis.url.expose()));
            secrets.extend(redis.password.as_ref().map(|password| password.expose()));
        }
        Redactor::new(secrets)
    }

    /// `text` with every secret, and anything shaped like a key, masked.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        match mask_key_shapes(&out) {
            Some(masked) => Cow::Owned(masked),
            None => out,
        }
    }

    /// A body as it may leave: a JSON body with every string (and key) masked as read, so any
    /// escaping is seen through; any other text masked as written, or withheld whole when only
    /// a JSON-unescaped reading shows a secret. `None`: nothing to mask.
    pub fn body(&self, body: &[u8]) -> Option<Bytes> {
        if let Ok(mut value) = serde_json::from_slice::<Value>(body) {
            return self
                .value(&mut value)
                .then(|| Bytes::from(value.to_string()));
        }
        let text = String::from_utf8_lossy(body);
        let masked = self.text(&text);
        let unescaped = unescape(&masked);
        if self
            .secrets
            .iter()
            .any(|secret| unescaped.contains(secret.as_str()))
        {
            return Some(Bytes::from_static(WITHHELD.as_bytes()));
        }
        match masked {
            Cow::Owned(masked) => Some(Bytes::from(masked)),
            Cow::Borrowed(_) => {
                matches!(text, Cow::Owned(_)).then(|| Bytes::from(text.into_owned()))
            }
        }
    }

    /// Masks the strings of a JSON value in place; whether anything changed.
    pub fn value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(text) => match self.text(text) {
                Cow::Owned(masked) => {
                    *text = masked;
                    true
                }
                Cow::Borrowed(_) => false,
            },
            Value::Array(items) => items
                .iter_mut()
                .fold(false, |changed, item| self.value(item) | changed),
            Value::Object(map) => {
                let mut changed = false;
                let renamed: Vec<String> = map
                    .keys()
                    .filter(|key| matches!(self.text(key), Cow::Owned(_)))
                    .cloned()
                    .collect();
                for key in renamed {
                    if let Some(inner) = map.remove(&key) {
                        map.insert(self.text(&key).into_owned(), inner);
                        changed = true;
                    }
                }
                for inner in map.values_mut() {
                    changed |= self.value(inner);
                }
                changed
            }
            _ => false,
        }
    }

    /// A header value with every secret masked (`None`: unchanged); a value that quotes a
    /// secret only URL-encoded is masked whole.
    pub fn header(&self, value: &HeaderValue) -> Option<HeaderValue> {
        let text = String::from_utf8_lossy(value.as_bytes());
        let masked = self.text(&text);
        let decoded = percent_decoded(&masked);
        if self
            .secrets
            .iter()
            .any(|secret| decoded.contains(secret.as_str()))
        {
            return Some(HeaderValue::from_static(MASK));
        }
        match masked {
            Cow::Owned(masked) => {
                Some(HeaderValue::from_str(&masked).unwrap_or(HeaderValue::from_static(MASK)))
            }
            Cow::Borrowed(_) => None,
        }
    }
}

/// `sk-` followed by 8+ key characters (letters, digits, `-`, `_`, `*`, `.`), masked.
fn mask_key_shapes(text: &str) -> Option<String> {
    if !text.contains("sk-") {
        return None;
    }
    let is_key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(start) = rest.find("sk-") {
        let boundary_ok = rest[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_key_char(c));
        let tail = &rest[start + 3..];
        let len = tail.find(|c: char| !is_key_char(c)).unwrap_or(tail.len());
        out.push_str(&rest[..start]);
        if boundary_ok && len >= 8 {
            out.push_str(MASK);
            changed = true;
        } else {
            out.push_str(&rest[start..start + 3 + len]);
        }
        rest = &tail[len..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Text with JSON string escapes read (`\/`, `\uXXXX`, `\n`...); anything else kept.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(decoded) => out.push(decoded),
                    None => {
                        out.push_str("\\u");
                        out.push_str(&hex);
                    }
                }
            }
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Text with `%XX` escapes read (URL-encoded secrets in headers).
fn percent_decoded(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The password of a `scheme://user:password@host/...` URL, if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then_some(password)
}

/// `url` with its password (if any) masked, for messages.
pub fn url_without_password(url: &str) -> Cow<'_, str> {
    match url_password(url) {
        Some(password) => Cow::Owned(url.replacen(&format!(":{password}@"), ":****@", 1)),
        None => Cow::Borrowed(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "upstream-secret/value-0123";

    fn redactor() -> Redactor {
        Redactor::new(["short", SECRET])
    }

    #[test]
    fn url_passwords() {
        assert_eq!(
            url_password("postgres://app:s3cr:et@db:5432/x"),
            Some("s3cr:et")
        );
        assert_eq!(url_password("redis://:pw@r:6379/0"), Some("pw"));
        assert_eq!(url_password("redis://r:6379"), None);
        assert_eq!(url_password("postgres://app@db/x"), None);
        assert_eq!(
            url_without_password("postgres://app:pw@db/x"),
            "postgres://app:****@db/x"
        );
    }

    #[test]
    fn secrets_are_masked_in_every_json_escaping() {
        let r = redactor();
        for body in [
            format!(r#"{{"error":{{"message":"bad key {SECRET}"}}}}"#),
            r#"{"error":{"message":"bad key upstream\u002dsecret\/value\u002d0123"}}"#.to_owned(),
            r#"{"error":{"message":"bad key \u0075pstream-secret\/value-0123"}}"#.to_owned(),
        ] {
            let out = r.body(body.as_bytes()).expect("masked");
            let text = String::from_utf8(out.to_vec()).unwrap();
            assert!(
                !text.contains("secret/value") && !text.contains("secret\\/value"),
                "{text}"
            );
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(value["error"]["message"], "bad key [REDACTED]");
        }
        assert!(r.body(br#"{"fine":true}"#).is_none());
        // Keys of objects too, and OpenAI-style key shapes.
        let out = r
            .body(format!(r#"{{"{SECRET}":1,"m":"sk-proj-abc***wxyz"}}"#).as_bytes())
            .unwrap();
        let value: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"[REDACTED]": 1, "m": "[REDACTED]"})
        );
    }

    #[test]
    fn text_that_is_not_json_is_masked_or_withheld() {
        let r = redactor();
        let raw = format!("<html>key {SECRET} refused</html>");
        assert_eq!(
            &r.body(raw.as_bytes()).unwrap()[..],
            b"<html>key [REDACTED] refused</html>"
        );
        // Escaped but not valid JSON (a cut body): withheld whole.
        let escaped = r#"{"error": "key upstream\u002dsecret\/value\u002d0123 and then"#;
        assert_eq!(
            &r.body(escaped.as_bytes()).unwrap()[..],
            WITHHELD.as_bytes()
        );
        assert_eq!(r.text("the word short stays"), "the word short stays");
    }

    #[test]
    fn headers_are_masked() {
        let r = redactor();
        let value =
            HeaderValue::from_str(&format!("Bearer error=\"invalid\", key=\"{SECRET}\"")).unwrap();
        assert_eq!(
            r.header(&value).unwrap(),
            "Bearer error=\"invalid\", key=\"[REDACTED]\""
        );
        let encoded = HeaderValue::from_static("key=upstream-secret%2Fvalue-0123");
        assert_eq!(r.header(&encoded).unwrap(), MASK);
        assert!(
            r.header(&HeaderValue::from_static("text/event-stream"))
                .is_none()
        );
    }
}
