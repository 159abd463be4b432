//! Upstream providers: one adapter per kind behind the `Provider` enum, and the shared plumbing
//! (the one HTTP client construction, header hygiene, the upstream body stream type).

mod headers;
mod http;
pub mod mock;
pub mod remote;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::Stream;

use crate::config::{ProviderConfig, ProviderKind, Timeouts, Wire};

pub use headers::{forwardable_request_headers, redact_secrets, response_headers_to_client};
pub use http::{ConnectTimer, install_crypto_provider};

/// Which client route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's `/v1/messages`.
    Messages,
}

impl Endpoint {
    /// The client protocol of the route.
    pub fn wire(self) -> Wire {
        match self {
            Endpoint::Messages => Wire::Anthropic,
            _ => Wire::OpenAi,
        }
    }
}

/// What an upstream is asked to do, in its own protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// OpenAI `/chat/completions`.
    ChatCompletions,
    /// OpenAI `/completions`.
    Completions,
    /// OpenAI `/embeddings`.
    Embeddings,
    /// Anthropic `/v1/messages`.
    Messages,
    /// Gemini `:generateContent` (`:streamGenerateContent?alt=sse` for streams).
    GenerateContent,
    /// Gemini `:batchEmbedContents`.
    BatchEmbed,
}

/// A request ready for an upstream: body already in its protocol.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    pub operation: Operation,
    /// The model as the upstream knows it (Gemini puts it in the URL).
    pub model: &'a str,
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
    Remote(Box<remote::Remote>),
    Mock,
}

impl Provider {
    pub fn new(config: &ProviderConfig, timeouts: &Timeouts) -> Result<Self, String> {
        let adapter = match &config.kind {
            ProviderKind::Remote(remote) => {
                Adapter::Remote(Box::new(remote::Remote::new(remote, timeouts)?))
            }
            ProviderKind::Mock => Adapter::Mock,
        };
        Ok(Provider {
            name: config.name.clone(),
            adapter,
            sent: AtomicU64::new(0),
        })
    }

    /// The protocol this upstream speaks.
    pub fn wire(&self) -> Wire {
        match &self.adapter {
            Adapter::Remote(remote) => remote.wire(),
            Adapter::Mock => Wire::OpenAi,
        }
    }

    /// Anthropic's `max_tokens` when the client gave none.
    pub fn default_max_tokens(&self) -> u64 {
        match &self.adapter {
            Adapter::Remote(remote) => remote.default_max_tokens(),
            Adapter::Mock => 4096,
        }
    }

    /// Sends a request and returns once the response head has arrived.
    pub async fn send(
        &self,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        match &self.adapter {
            Adapter::Remote(adapter) => adapter.send(request, n).await,
            Adapter::Mock => mock::answer(&request),
        }
    }

    /// Every upstream secret of this provider, for redaction of what comes back.
    pub fn secrets(&self) -> &[crate::config::Secret] {
        match &self.adapter {
            Adapter::Remote(adapter) => adapter.secrets(),
            Adapter::Mock => &[],
        }
    }
}
