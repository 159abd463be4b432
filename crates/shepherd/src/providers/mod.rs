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

use crate::config::{HealthCheckConfig, ProviderConfig, ProviderKind, Wire};
use crate::routing::circuit::Admission;
use crate::routing::health::{Health, Registry};

pub use headers::{forwardable_request_headers, response_headers_to_client};
pub use http::{ConnectTimer, SharedClient, UpstreamClient, build_client, install_crypto_provider};

/// Which client route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's `/v1/messages`.
    Messages,
    /// OpenAI's Responses API, `/v1/responses`.
    Responses,
}

impl Endpoint {
    /// Every client route; each is served at its `route()`.
    pub const ALL: [Endpoint; 5] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Messages,
        Endpoint::Responses,
    ];

    /// The upstream protocol that takes the route's bodies unchanged (pass-through), if any:
    /// same shape, not same vendor (a Responses request is never passed to a chat upstream).
    pub fn passthrough(self) -> Option<Wire> {
        match self.shape() {
            Some(shape) => shape.passthrough(),
            // Embeddings: OpenAI's own shape.
            None => Some(Wire::OpenAi),
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
    /// OpenAI `/responses` (upstreams with `responses: true`).
    Responses,
    /// Gemini `:generateContent` (`:streamGenerateContent?alt=sse` for streams).
    GenerateContent,
    /// Gemini `:batchEmbedContents`.
    BatchEmbed,
    /// Anthropic `/v1/messages/count_tokens`.
    CountTokens,
    /// Gemini `:countTokens`.
    GeminiCountTokens,
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
    /// Which of the provider's keys to use (`None`: the provider has none).
    pub key: Option<usize>,
    /// Gateways this request passed, this one included (sent as `x-shepherd-hops`).
    pub hops: u32,
    /// The attempt's W3C trace context, when traces are on (replaces the client's).
    pub traceparent: Option<axum::http::HeaderValue>,
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
    /// The state of each upstream key (its breaker takes a refused key out of rotation).
    keys: Vec<Arc<Health>>,
    /// The registry names of the keys.
    key_labels: Vec<String>,
    /// Per key: when it was last refused (401/403/quota) or probed after a refusal; `None`
    /// for keys not out for a refusal (a 429's Retry-After is waited out, never probed).
    refused_at: std::sync::Mutex<Vec<Option<tokio::time::Instant>>>,
    /// Some key was refused since the last request served (spares the lock per request).
    any_refused: std::sync::atomic::AtomicBool,
    /// Per key: `IN_ROTATION`, or held out while a reload's check runs (`CHECKING`), or for
    /// good after the provider refused it (`REFUSED_BY_CHECK`).
    vetting: Vec<std::sync::atomic::AtomicU8>,
    pub health_check: Option<HealthCheckConfig>,
}

const IN_ROTATION: u8 = 0;
const CHECKING: u8 = 1;
const REFUSED_BY_CHECK: u8 = 2;

fn key_labels_len_atomics(count: usize) -> Vec<std::sync::atomic::AtomicU8> {
    (0..count)
        .map(|_| std::sync::atomic::AtomicU8::new(IN_ROTATION))
        .collect()
}

/// What a provider said of a key new in a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// Its model list answered: the key serves.
    Ok,
    /// 401 or 403: the key stays out of rotation.
    Refused(u16),
    /// No clear answer (a relay without a model list, a timeout): the key serves, with a
    /// warning.
    Unverified(String),
}

impl KeyCheck {
    /// As `upstream_key_checks_total{result}` says it.
    pub fn result(&self) -> &'static str {
        match self {
            KeyCheck::Ok => "ok",
            KeyCheck::Refused(_) => "refused",
            KeyCheck::Unverified(_) => "unverified",
        }
    }
}

/// The key chosen for an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    /// The provider has no keys (a local server).
    None,
    Key(usize),
    /// Every key is out of rotation; the first may come back at this time.
    Exhausted(tokio::time::Instant),
}

#[derive(Debug)]
enum Adapter {
    Remote(Box<remote::Remote>),
    Mock,
}

impl Provider {
    pub fn new(
        config: &ProviderConfig,
        client: &SharedClient,
        registry: &Registry,
    ) -> Result<Self, String> {
        let (adapter, key_labels) = match &config.kind {
            ProviderKind::Remote(remote) => {
                let labels: Vec<String> = remote
                    .api_keys
                    .iter()
                    .enumerate()
                    .map(|(n, key)| key_label(&config.name, n, key.expose()))
                    .collect();
                (
                    Adapter::Remote(Box::new(remote::Remote::new(remote, client.get()?)?)),
                    labels,
                )
            }
            ProviderKind::Mock => (Adapter::Mock, Vec::new()),
        };
        Ok(Provider {
            name: config.name.clone(),
            adapter,
            sent: AtomicU64::new(0),
            keys: key_labels.iter().map(|label| registry.get(label)).collect(),
            refused_at: std::sync::Mutex::new(Vec::new()),
            any_refused: std::sync::atomic::AtomicBool::new(false),
            vetting: key_labels_len_atomics(key_labels.len()),
            key_labels,
            health_check: config.health_check,
        })
    }

    /// Holds key `index` out of rotation until its check says (a key new in a reload).
    pub fn hold_for_check(&self, index: usize) {
        if let Some(state) = self.vetting.get(index) {
            state.store(CHECKING, Ordering::Release);
        }
    }

    /// Puts key `index` back in rotation without a check.
    pub fn release_unchecked(&self, index: usize) {
        if let Some(state) = self.vetting.get(index) {
            state.store(IN_ROTATION, Ordering::Release);
        }
    }

    /// Asks the provider's model list with key `index`: does the provider take the key?
    pub async fn check_key(&self, index: usize, timeout: std::time::Duration) -> KeyCheck {
        let Adapter::Remote(remote) = &self.adapter else {
            return KeyCheck::Ok;
        };
        let check = match remote.models_status(index, timeout).await {
            Ok(status) if (200..300).contains(&status) => KeyCheck::Ok,
            Ok(status @ (401 | 403)) => KeyCheck::Refused(status),
            Ok(status) => KeyCheck::Unverified(format!("the model list answered {status}")),
            Err(error) => KeyCheck::Unverified(error),
        };
        if let Some(state) = self.vetting.get(index) {
            let next = match check {
                KeyCheck::Refused(_) => REFUSED_BY_CHECK,
                _ => IN_ROTATION,
            };
            state.store(next, Ordering::Release);
        }
        check
    }

    /// Picks an upstream key round-robin, skipping keys whose breaker is open. When every key
    /// is out (one refused 401 benches a provider's only key for `key_cooldown`), one request
    /// per `probe_every` is let through with the key that comes back first, so a key that works
    /// again is found without waiting out the whole cool-down.
    pub fn pick_key(
        &self,
        cooldown: std::time::Duration,
        probe_every: std::time::Duration,
    ) -> KeyChoice {
        if self.keys.is_empty() {
            return KeyChoice::None;
        }
        match self.pick_open_key(cooldown) {
            KeyChoice::Exhausted(until) => self
                .probe_key(probe_every)
                .unwrap_or(KeyChoice::Exhausted(until)),
            choice => choice,
        }
    }

    fn refused_at(&self) -> std::sync::MutexGuard<'_, Vec<Option<tokio::time::Instant>>> {
        let mut refused = match self.refused_at.lock() {
            Ok(refused) => refused,
            Err(poisoned) => poisoned.into_inner(),
        };
        refused.resize(self.keys.len(), None);
        refused
    }

    /// Key `index` was refused: it is out for `key_cooldown`, probed at most once a period.
    pub fn key_refused(&self, index: usize) {
        if let Some(at) = self.refused_at().get_mut(index) {
            *at = Some(tokio::time::Instant::now());
            self.any_refused.store(true, Ordering::Relaxed);
        }
    }

    /// Key `index` served a request.
    pub fn key_served(&self, index: usize) {
        if !self.any_refused.load(Ordering::Relaxed) {
            return;
        }
        let mut refused = self.refused_at();
        if let Some(at) = refused.get_mut(index) {
            *at = None;
        }
        if refused.iter().all(Option::is_none) {
            self.any_refused.store(false, Ordering::Relaxed);
        }
    }

    /// One probe through a provider whose keys are all out of rotation: a key out for a
    /// refusal, refused (or probed) at least `every` ago.
    fn probe_key(&self, every: std::time::Duration) -> Option<KeyChoice> {
        let now = tokio::time::Instant::now();
        let mut refused = self.refused_at();
        let index = refused
            .iter()
            .position(|at| at.is_some_and(|at| now.saturating_duration_since(at) >= every))?;
        refused[index] = Some(now);
        tracing::info!(provider = %self.name, key = %self.key_labels[index],
                       "every upstream key is out of rotation; probing a refused one");
        Some(KeyChoice::Key(index))
    }

    fn pick_open_key(&self, cooldown: std::time::Duration) -> KeyChoice {
        let start = self.sent.fetch_add(1, Ordering::Relaxed);
        let count = self.keys.len() as u64;
        let mut earliest: Option<tokio::time::Instant> = None;
        for step in 0..count {
            let index = usize::try_from((start + step) % count).unwrap_or(0);
            if self
                .vetting
                .get(index)
                .is_some_and(|state| state.load(Ordering::Acquire) != IN_ROTATION)
            {
                continue;
            }
            match self.keys[index].breaker.admit(cooldown) {
                Admission::Allowed | Admission::Probe => return KeyChoice::Key(index),
                Admission::Rejected { until } => {
                    earliest = Some(earliest.map_or(until, |e| e.min(until)));
                }
            }
        }
        KeyChoice::Exhausted(earliest.unwrap_or_else(tokio::time::Instant::now))
    }

    /// When one of the keys lets requests through again, if none does now (`None`: one does,
    /// or the provider has no keys).
    pub fn key_reopens_at(&self, cooldown: std::time::Duration) -> Option<tokio::time::Instant> {
        let mut earliest: Option<tokio::time::Instant> = None;
        for key in &self.keys {
            let until = key.breaker.reopens_at(cooldown)?;
            earliest = Some(earliest.map_or(until, |e| e.min(until)));
        }
        earliest
    }

    /// The registry names of the keys (never the keys).
    pub fn key_labels(&self) -> impl Iterator<Item = String> + '_ {
        self.key_labels.iter().cloned()
    }

    /// The state of key `index`.
    pub fn key_health(&self, index: usize) -> Option<&Arc<Health>> {
        self.keys.get(index)
    }

    /// The protocol this upstream speaks.
    pub fn wire(&self) -> Wire {
        match &self.adapter {
            Adapter::Remote(remote) => remote.wire(),
            Adapter::Mock => Wire::OpenAi,
        }
    }

    /// The provider as OpenTelemetry's GenAI conventions name it (`gen_ai.provider.name`).
    pub fn system_name(&self) -> &'static str {
        match &self.adapter {
            Adapter::Remote(remote) => match remote.wire() {
                Wire::OpenAi => "openai",
                Wire::Anthropic => "anthropic",
                Wire::Gemini => "gcp.gemini",
            },
            Adapter::Mock => "shepherd.mock",
        }
    }

    /// The upstream's base URL (`None` for the built-in mock).
    pub fn base_url(&self) -> Option<&str> {
        match &self.adapter {
            Adapter::Remote(remote) => Some(remote.base_url()),
            Adapter::Mock => None,
        }
    }

    /// Whether the upstream serves `endpoint`'s shape itself (then same-wire requests pass
    /// through): every shape of its protocol, except the Responses API, which only upstreams
    /// configured with `responses: true` offer.
    pub fn offers(&self, endpoint: Endpoint) -> bool {
        match (&self.adapter, endpoint) {
            (Adapter::Remote(remote), Endpoint::Responses) => remote.offers_responses(),
            (Adapter::Mock, Endpoint::Responses) => false,
            _ => true,
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
        match &self.adapter {
            Adapter::Remote(adapter) => adapter.send(request).await,
            Adapter::Mock => mock::answer(&request),
        }
    }

    /// Checks the provider is up (its model list answers), within `timeout`.
    pub async fn check(&self, timeout: std::time::Duration) -> Result<(), String> {
        match &self.adapter {
            Adapter::Remote(adapter) => adapter.check(timeout).await,
            Adapter::Mock => Ok(()),
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

/// The registry name of an upstream key: provider, position and a fingerprint of the key (so a
/// reload that changes the key list does not hand one key's state to another). Never the key.
fn key_label(provider: &str, index: usize, key: &str) -> String {
    let fingerprint = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{provider}#key{index}-{:04x}", fingerprint & 0xffff)
}
