//! The one construction of upstream HTTP clients (pooled keep-alive, TCP_NODELAY, rustls, HTTP/2
//! when the upstream offers it), and the timer that tells the access log how long a connect took.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::{Timeouts, UpstreamPool};

tokio::task_local! {
    static CONNECT_TIMER: ConnectTimer;
}

/// Microseconds spent opening a new upstream connection for one request (0: a pooled one).
#[derive(Debug, Clone, Default)]
pub struct ConnectTimer(Arc<AtomicU64>);

impl ConnectTimer {
    /// Runs `future` so that connects it triggers are timed into this timer.
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        CONNECT_TIMER.scope(self.clone(), future).await
    }

    pub fn micros(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connector that records how long each new connection took into the request's timer.
#[derive(Clone, Debug)]
pub struct TimedConnector<S> {
    inner: S,
}

impl<S, R> tower_service::Service<R> for TimedConnector<S>
where
    S: tower_service::Service<R>,
    S::Future: Send + 'static,
    S::Response: 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let timer = CONNECT_TIMER.try_with(ConnectTimer::clone).ok();
        let connect = self.inner.call(request);
        Box::pin(async move {
            let started = Instant::now();
            let result = connect.await;
            if let Some(timer) = timer {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                timer.0.store(micros, Ordering::Relaxed);
            }
            result
        })
    }
}

/// Installs rustls' crypto provider once per process (ring).
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

/// hyper's pooled client over plain TCP or rustls (a handle: clones share the pool).
pub type UpstreamClient = Client<HttpsConnector<TimedConnector<HttpConnector>>, Full<Bytes>>;

/// The one HTTP client every remote provider of a model table shares, built on first use (a
/// table of mock providers loads no TLS roots). hyper pools connections per scheme and host, so
/// providers that reach the same host (several keys or regions of one vendor, one base URL with
/// several paths) reuse each other's idle connections instead of each keeping its own.
pub struct SharedClient {
    timeouts: Timeouts,
    pool: UpstreamPool,
    client: std::cell::OnceCell<UpstreamClient>,
}

impl SharedClient {
    pub fn new(timeouts: &Timeouts, pool: &UpstreamPool) -> Self {
        SharedClient {
            timeouts: *timeouts,
            pool: *pool,
            client: std::cell::OnceCell::new(),
        }
    }

    /// The client (a handle on the shared pool).
    pub fn get(&self) -> Result<UpstreamClient, String> {
        if let Some(client) = self.client.get() {
            return Ok(client.clone());
        }
        let client = build_client(&self.timeouts, &self.pool)?;
        Ok(self.client.get_or_init(|| client).clone())
    }
}

/// Builds an HTTP client (its own connection pool).
pub fn build_client(timeouts: &Timeouts, pool: &UpstreamPool) -> Result<UpstreamClient, String> {
    install_crypto_provider();
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(timeouts.connect));
    tcp.set_keepalive(Some(Duration::from_secs(60)));
    tcp.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .map_err(|error| format!("cannot load the system's TLS roots: {error}"))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(TimedConnector { inner: tcp });
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .build(connector))
}
