//! Client authentication: the key from `Authorization: Bearer` or `x-api-key`, looked up among
//! the configured client keys. The key itself is never logged or forwarded, only its name.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, header};

use super::errors::ApiError;
use crate::config::{KeyConfig, ModelPattern};

/// A client key that authenticated.
#[derive(Debug)]
pub struct ClientKey {
    pub name: Arc<str>,
    models: Vec<ModelPattern>,
}

impl ClientKey {
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|pattern| pattern.matches(model))
    }
}

/// Every client key, by its secret value.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_secret: HashMap<String, Arc<ClientKey>>,
}

impl KeyTable {
    pub fn new(keys: &[KeyConfig]) -> Self {
        let by_secret = keys
            .iter()
            .map(|key| {
                let client = ClientKey {
                    name: key.name.clone(),
                    models: key.models.clone(),
                };
                (key.key.expose().to_owned(), Arc::new(client))
            })
            .collect();
        KeyTable { by_secret }
    }

    /// The key a request presents, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<ClientKey>, ApiError> {
        let presented = presented_key(headers).ok_or_else(ApiError::missing_key)?;
        self.by_secret
            .get(presented)
            .cloned()
            .ok_or_else(ApiError::invalid_key)
    }
}

/// `Authorization: Bearer KEY` (scheme case-insensitive), else `x-api-key: KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
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
