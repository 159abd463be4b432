//! Client keys as presented (`Authorization: Bearer` or `x-api-key`) and the static keys of the
//! config; `governance::Governance::authenticate` checks virtual keys first. A key itself is
//! never logged or forwarded, only its name.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, header};

use crate::config::KeyConfig;
use crate::governance::keys::ClientKey;

/// The static client keys of the config, by their secret value.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_secret: HashMap<String, Arc<ClientKey>>,
}

impl KeyTable {
    pub fn new(keys: &[KeyConfig]) -> Self {
        let by_secret = keys
            .iter()
            .map(|key| {
                (
                    key.key.expose().to_owned(),
                    Arc::new(ClientKey::of_config(key)),
                )
            })
            .collect();
        KeyTable { by_secret }
    }

    /// The static key with this secret.
    pub fn lookup(&self, presented: &str) -> Option<Arc<ClientKey>> {
        self.by_secret.get(presented).cloned()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<ClientKey>> {
        self.by_secret.values()
    }
}

/// `Authorization: Bearer KEY` (scheme case-insensitive), else `x-api-key: KEY`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        if value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer ") {
            let key = value[7..].trim();
            if !key.is_empty() {
                return Some(key);
            }
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn bearer_or_x_api_key() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert("x-api-key", HeaderValue::from_static("k2"));
        assert_eq!(presented_key(&headers), Some("k2"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  k1 "),
        );
        assert_eq!(presented_key(&headers), Some("k1"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(presented_key(&headers), Some("k2"));
    }
}
