//! The one construction of upstream HTTP clients (pooled keep-alive, TCP_NODELAY, rustls, HTTP/2
//! when the upstream offers it), and the timer that tells the access log how long a connect took.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::config::Timeouts;

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

#[derive(Clone)]
struct TimeConnects;

impl<S> tower_layer::Layer<S> for TimeConnects {
    type Service = TimedConnector<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimedConnector { inner }
    }
}

#[derive(Clone)]
struct TimedConnector<S> {
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

/// Builds the HTTP client of one upstream.
pub fn build_client(timeouts: &Timeouts) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http2_adaptive_window(true)
        .no_proxy()
        .connector_layer(TimeConnects)
        .build()
        .map_err(|error| format!("cannot build the HTTP client: {error}"))
}
