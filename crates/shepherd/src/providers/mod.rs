//! Upstream providers: one adapter per kind behind the `Provider` enum, and the shared plumbing
//! (the one HTTP client construction, header hygiene, the upstream body stream type).

mod headers;
mod http;
pub mod mock;
pub mod openai_compat;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::Stream;

use crate::config::{ProviderConfig, ProviderKind, Timeouts};

pub use headers::{forwardable_request_headers, redact_secrets, response_headers_to_client};
pub use http::{ConnectTimer, install_crypto_provider};

/// Which client route a request came in on (and so which upstream endpoint it goes to).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}

/// A request ready for an upstream: body already rewritten for it.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    pub endpoint: Endpoint,
    pub body: Bytes,
    pub stream: bool,
    /// The client's headers; the provider forwards only the end-to-end, non-credential ones.
    pub client_headers: &'a HeaderMap,
    pub request_id: &'a str,
}

/// An upstream's byte stream (the whole body for non-streaming answers, chunk by chunk).
pub type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Transport(String),
}

/// One configured upstream.
#[derive(Debug)]
pub struct Provider {
    pub name: Arc<str>,
    adapter: Adapter,
    /// Requests sent, for the round-robin over upstream keys.
    sent: AtomicU64,
}

#[derive(Debug)]
enum Adapter {
    OpenAi(Box<openai_compat::OpenAiCompat>),
    Mock,
}

impl Provider {
    pub fn new(config: &ProviderConfig, timeouts: &Timeouts) -> Result<Self, String> {
        let adapter = match &config.kind {
            ProviderKind::OpenAi {
                base_url,
                api_keys,
                headers,
            } => Adapter::OpenAi(Box::new(openai_compat::OpenAiCompat::new(
                base_url, api_keys, headers, timeouts,
            )?)),
            ProviderKind::Mock => Adapter::Mock,
        };
        Ok(Provider {
            name: config.name.clone(),
            adapter,
            sent: AtomicU64::new(0),
        })
    }

    /// Sends a request and returns once the response head has arrived.
    pub async fn send(
        &self,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        match &self.adapter {
            Adapter::OpenAi(adapter) => adapter.send(request, n).await,
            Adapter::Mock => mock::answer(&request),
        }
    }

    /// Every upstream secret of this provider, for redaction of what comes back.
    pub fn secrets(&self) -> &[crate::config::Secret] {
        match &self.adapter {
            Adapter::OpenAi(adapter) => adapter.secrets(),
            Adapter::Mock => &[],
        }
    }
}
