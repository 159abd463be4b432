//! The HTTP server: the router (`app`), the layer order, and the lifecycle (bind, serve, drain on
//! shutdown within the grace period).
//!
//! Layer order, outermost first: CORS (preflight answered before anything else, headers added
//! to every answer) -> edge (request id, context, access log; errors re-rendered in the route's
//! protocol when raised outside a handler) -> panic guard (a panic becomes a 500) -> routes.

mod edge;
pub mod listener;
mod reload;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::api::errors::ApiError;
use crate::api::{count_tokens, health, models, routes, stored};
use crate::config::{Config, CorsConfig};
use crate::providers::Endpoint;
use crate::state::AppState;

pub use edge::REQUEST_ID;

/// The router with every route and layer.
pub fn app(state: Arc<AppState>) -> Router {
    let runtime = state.runtime();
    let cors = runtime.config.server.cors.as_ref().map(cors_layer);
    // The admin API is here unless it has a listener of its own.
    let admin = match runtime.config.server.admin_listen {
        None => crate::api::admin::router(state.clone()),
        Some(_) => Router::new(),
    };
    // `/metrics` too, unless it is off or on its own address.
    let telemetry = &runtime.config.telemetry;
    let metrics = if telemetry.metrics && telemetry.metrics_listen.is_none() {
        Router::new().route("/metrics", get(health::metrics))
    } else {
        Router::new()
    };
    let mut router = Router::new();
    for endpoint in Endpoint::ALL {
        router = router.route(endpoint.route(), routes::client_route(endpoint));
    }
    let router = router
        .route(
            "/v1/responses/{id}",
            get(stored::retrieve).delete(stored::delete),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/models/{*id}", get(models::retrieve))
        .route(
            "/v1/messages/count_tokens",
            post(count_tokens::count_tokens),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .merge(admin)
        .merge(metrics)
        .fallback(health::unknown_route)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::edge,
        ))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

fn panic_response(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a handler panicked");
    ApiError::internal("unexpected internal error").into_response()
}

fn cors_layer(config: &CorsConfig) -> CorsLayer {
    let origins = if config.allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allow_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    let layer = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .expose_headers([
            REQUEST_ID,
            crate::api::DEPLOYMENT_HEADER,
            crate::api::ATTEMPTS_HEADER,
            crate::api::FALLBACK_HEADER,
            crate::api::CANARY_HEADER,
            crate::api::DROPPED_HEADER,
            HeaderName::from_static("x-upstream-request-id"),
        ])
        .max_age(config.max_age);
    if config.allow_headers.is_empty() {
        layer.allow_headers(Any)
    } else {
        layer.allow_headers(
            config
                .allow_headers
                .iter()
                .filter_map(|name| HeaderName::try_from(name.as_str()).ok())
                .collect::<Vec<_>>(),
        )
    }
}

/// A running server: its address and the means to stop it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    /// The TLS side, when `server.tls` is set (how many certificates were loaded).
    pub tls: Option<tls::Tls>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Begins a graceful shutdown: readiness turns 503 (probes keep being answered), answers
    /// say `connection: close`, and in-flight requests and streams get `shutdown_grace` to
    /// finish; streams still running then end with an error event, their usage recorded.
    pub fn shutdown(&self) {
        self.state.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(std::io::Error::other(error)),
        }
    }
}

/// Binds `config.server.listen` and serves in a background task.
pub async fn start(config: Config) -> std::io::Result<Running> {
    start_from(config, None).await
}

/// Like `start`, for a config read from `path`: SIGHUP or a change of the file reloads it.
pub async fn start_watching(config: Config, path: PathBuf) -> std::io::Result<Running> {
    start_from(config, Some(path)).await
}

/// After the grace period, how long streams get to send their error event and end.
const FINAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

async fn start_from(config: Config, path: Option<PathBuf>) -> std::io::Result<Running> {
    let listen = config.server.listen;
    let grace = config.server.shutdown_grace;
    let limits = listener::Limits {
        timeouts: config.server.client_timeouts,
        max_connections: config.server.max_connections,
    };
    let tls = match &config.server.tls {
        Some(tls) => Some(tls::Tls::start(tls).map_err(std::io::Error::other)?),
        None => None,
    };
    let state = Arc::new(AppState::new(config, path.clone()).map_err(std::io::Error::other)?);
    let (stop, stopped) = watch::channel(false);
    let lifecycle = listener::Lifecycle {
        draining: state.draining.clone(),
        active: state.active_requests.clone(),
        stop: stopped,
    };
    let watcher = path.map(|path| reload::watch(state.clone(), path));
    let refresher = refresh_keys(state.clone());
    let pruner = prune_ledger(state.clone());
    let ledger = state.governance.writer.counts.clone();
    let active = state.active_requests.clone();
    let trimmer = tokio::spawn(async move {
        if let Some(trim) = crate::memory::registered_trim() {
            let work = move || ledger.written.load(Ordering::Relaxed);
            crate::memory::trim_when_quiet(active, work, trim).await;
        }
    });
    let mut listeners = Vec::new();
    if let Some(admin_addr) = state.runtime().config.server.admin_listen {
        let listener = TcpListener::bind(admin_addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "admin API listening");
        let router = admin_app(state.clone());
        listeners.push(tokio::spawn(listener::serve(
            listener,
            router,
            limits,
            lifecycle.clone(),
            tls.as_ref().map(tls::Tls::admin),
        )));
    }
    let telemetry = state.runtime().config.telemetry.clone();
    if let (true, Some(metrics_addr)) = (telemetry.metrics, telemetry.metrics_listen) {
        let listener = TcpListener::bind(metrics_addr).await?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        let router = Router::new()
            .route("/metrics", get(health::metrics))
            .fallback(health::unknown_route)
            .with_state(state.clone());
        listeners.push(tokio::spawn(listener::serve(
            listener,
            router,
            limits,
            lifecycle.clone(),
            tls.as_ref().map(tls::Tls::main),
        )));
    }
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    listeners.push(tokio::spawn(listener::serve(
        listener,
        app(state.clone()),
        limits,
        lifecycle,
        tls.as_ref().map(tls::Tls::main),
    )));
    let (shutdown, mut shutdown_requested) = watch::channel(false);
    let closing = state.clone();
    let task = tokio::spawn(async move {
        let _stop_watching = watcher.map(AbortOnDrop);
        let _stop_refreshing = AbortOnDrop(refresher);
        let _stop_pruning = AbortOnDrop(pruner);
        let _stop_trimming = AbortOnDrop(trimmer);
        let _close_ledger = CloseLedger(closing.clone());
        let _ = shutdown_requested.wait_for(|requested| *requested).await;
        let active = closing.active_requests.clone();
        if tokio::time::timeout(grace, idle(&active)).await.is_err() {
            let running = active.load(Ordering::Relaxed);
            tracing::warn!(grace = ?grace, running,
                           "shutdown grace period over; ending the remaining streams with an error event");
            let _ = closing.end_streams.send(true);
            let _ = tokio::time::timeout(FINAL_WINDOW, idle(&active)).await;
        }
        let _ = stop.send(true);
        for listener in listeners {
            let _ = listener.await;
        }
        // What requests settled at the end goes to Redis before the process leaves.
        closing
            .governance
            .limits
            .flush(std::time::Duration::from_secs(2))
            .await;
        if let Some(traces) = closing.traces.clone() {
            // Sends the last spans; blocking, so off the runtime's workers.
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
        Ok(())
    });
    tracing::info!(%addr, "shepherd listening");
    Ok(Running {
        addr,
        state,
        tls,
        shutdown,
        task,
    })
}

/// Waits until no request is in flight.
async fn idle(active: &std::sync::atomic::AtomicUsize) {
    while active.load(Ordering::Acquire) > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Reads virtual keys from the store again when it says they changed (PostgreSQL notifies
/// every replica at once), and every few seconds in any case (SQLite cannot tell: keys
/// changed by `shepherd keys` or another process on the same file are seen within 5 s).
fn refresh_keys(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    let changed = Arc::new(tokio::sync::Notify::new());
    let signal = changed.clone();
    let notified = state
        .governance
        .store
        .watch_keys(Arc::new(move || signal.notify_one()));
    let every = if notified {
        std::time::Duration::from_secs(30)
    } else {
        std::time::Duration::from_secs(5)
    };
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = changed.notified() => {}
            }
            let governance = state.governance.clone();
            let refreshed = tokio::task::spawn_blocking(move || governance.refresh()).await;
            if let Ok(Err(error)) = refreshed {
                tracing::warn!(%error, "cannot refresh virtual keys; keeping the ones in memory");
            }
        }
    })
}

/// How often ledger rows past `state.usage_retention` are rolled up, and how long after start.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
const PRUNE_FIRST: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the stored responses past their retention (they are already unreadable).
async fn prune_responses(state: &AppState) {
    let store = state.governance.store.clone();
    let now = crate::governance::admission::now_ms();
    match tokio::task::spawn_blocking(move || store.prune_responses(now)).await {
        Ok(Ok(0)) | Err(_) => {}
        Ok(Ok(removed)) => tracing::info!(removed, "stored responses: expired ones removed"),
        Ok(Err(error)) => tracing::warn!(%error, "stored responses: cannot remove expired ones"),
    }
}

/// Rolls up ledger rows past the retention and removes expired stored responses, hourly, off
/// the request threads.
fn prune_ledger(state: Arc<AppState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(PRUNE_FIRST).await;
        let mut ticks = tokio::time::interval(PRUNE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            prune_responses(&state).await;
            let Some(retention) = state.runtime().config.state.usage_retention else {
                continue;
            };
            let governance = state.governance.clone();
            match tokio::task::spawn_blocking(move || governance.prune(retention)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(
                        removed,
                        ?retention,
                        "usage ledger: old rows rolled up per day"
                    );
                }
                Ok(Err(error)) => tracing::warn!(%error, "usage ledger: cannot roll up old rows"),
                Err(_) => {}
            }
        }
    })
}

/// The admin API alone, for its own listener.
fn admin_app(state: Arc<AppState>) -> Router {
    crate::api::admin::router(state.clone())
        .fallback(health::unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            edge::edge,
        ))
        .with_state(state)
}

/// Flushes and stops the usage ledger's writer when the server stops.
struct CloseLedger(Arc<AppState>);

impl Drop for CloseLedger {
    fn drop(&mut self) {
        self.0.governance.close();
    }
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = interrupt => {},
            () = terminate => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
