//! `mock-upstream`: a fast mock of LLM provider HTTP APIs (OpenAI-compatible, Anthropic Messages
//! and Gemini generateContent) with fault injection, for benchmarks and black-box tests of the
//! Shepherd gateway.
//!
//! The server is plain hyper (HTTP/1.1 and h2c on the same port), does no per-request logging,
//! and keeps only a cheap in-memory record of the requests it received.
//!
//! * Protocol routes live in their own modules (`openai`, `anthropic`, `gemini`; dispatch in
//!   `route`); each one builds complete bodies or an SSE plan (the list of events) that the
//!   shared streaming body replays. Errors, injected or not, take the shape of the protocol of
//!   the route.
//! * Fault injection ([`Behavior`]) comes from a server-wide default, overridden per request by
//!   `x-mock-*` headers.
//! * Control routes under `/_mock` (`POST /_mock/behavior`, `POST /_mock/reset`,
//!   `GET /_mock/requests`, `GET /_mock/stats`, `GET /_mock/behavior`) are not recorded.

mod anthropic;
pub mod behavior;
mod body;
mod common;
mod control;
mod gemini;
mod openai;
mod record;
mod route;
pub mod style;

use std::convert::Infallible;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub use behavior::Behavior;
pub use openai::MODELS;
pub use record::{RecordedRequest, Stats};
pub use style::Style;

use body::{MockBody, SseBody, SsePlan};
use record::Counters;
use route::Protocol;

/// The shared state of a mock server: recorded requests, counters and the default behaviour.
#[derive(Debug)]
pub struct State {
    record: bool,
    requests: Mutex<Vec<RecordedRequest>>,
    behavior: Mutex<Arc<Behavior>>,
    counters: Counters,
    next_id: AtomicU64,
    /// Requests left to fail under a server-wide `fail_times`.
    fail_remaining: AtomicU64,
}

impl State {
    /// A fresh state; with `record == false` requests are counted but not kept.
    pub fn new(record: bool) -> State {
        State {
            record,
            requests: Mutex::new(Vec::new()),
            behavior: Mutex::new(Arc::new(Behavior::default())),
            counters: Counters::default(),
            next_id: AtomicU64::new(1),
            fail_remaining: AtomicU64::new(0),
        }
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    /// The default behaviour applied to every request.
    pub fn behavior(&self) -> Behavior {
        Behavior::clone(&lock(&self.behavior))
    }

    /// Sets the default behaviour applied to every request (`fail_times` starts counting now).
    pub fn set_behavior(&self, behavior: Behavior) {
        self.fail_remaining
            .store(behavior.fail_times.unwrap_or(0), Ordering::Relaxed);
        *lock(&self.behavior) = Arc::new(behavior);
    }

    /// Under a server-wide `fail_times`: whether this request is one of those that fail.
    fn takes_a_failure(&self) -> bool {
        self.fail_remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }

    /// Clears recorded requests, counters and the default behaviour.
    pub fn reset(&self) {
        lock(&self.requests).clear();
        self.counters.reset();
        self.set_behavior(Behavior::default());
    }

    /// The counters since the start or the last reset.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    fn default_behavior(&self) -> Arc<Behavior> {
        Arc::clone(&lock(&self.behavior))
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A mock server on `127.0.0.1:<random port>`, running in a spawned tokio task until dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Binds `127.0.0.1:0` and serves in a spawned tokio task until dropped.
    pub async fn start() -> io::Result<MockUpstream> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(true));
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(MockUpstream { addr, state, task })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT` (no `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order (control routes excluded).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Sets the default behaviour applied to every request (per-request headers override it
    /// field by field).
    pub fn set_behavior(&self, behavior: Behavior) {
        self.state.set_behavior(behavior);
    }

    /// Clears recorded requests, stats and the default behaviour.
    pub fn reset(&self) {
        self.state.reset();
    }

    /// The counters since the start or the last reset.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// The shared state of the server.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1.1 and h2c on an already-bound listener until the future is dropped (which also
/// closes every open connection).
pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(4096);
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    state.counters.connections.fetch_add(1, Ordering::Relaxed);
                    // Best effort: a failure only costs latency.
                    let _ = stream.set_nodelay(true);
                    let builder = Arc::clone(&builder);
                    let state = Arc::clone(&state);
                    connections.spawn(async move {
                        let service = service_fn(move |req| handle(Arc::clone(&state), req));
                        // Connection errors (resets, cut streams) are expected; nothing to do.
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    });
                }
                // Typically EMFILE: back off a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            let protocol = Protocol::of(parts.uri.path());
            return Ok(protocol.invalid(format!("could not read the request body: {e}")));
        }
    };
    let path = parts.uri.path();
    if path == "/_mock" || path.starts_with("/_mock/") {
        return Ok(control::control(&state, &parts.method, path, &body));
    }

    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = record::InFlight::enter(&state.counters);
    if state.record {
        let recorded = RecordedRequest::new(&parts, body.clone());
        lock(&state.requests).push(recorded);
    }
    let mut behavior = match state.default_behavior().with_headers(&parts.headers) {
        Ok(b) => b,
        Err(message) => return Ok(Protocol::of(parts.uri.path()).invalid(message)),
    };
    if behavior.fail_times.is_some() && !state.takes_a_failure() {
        behavior.status = None;
        behavior.retry_after = None;
    }
    if let Some(refused) = &behavior.refuse_key
        && route::presented_key(&parts) == *refused
    {
        behavior.status = Some(401);
    }
    if let Some(ms) = behavior.latency_ms.filter(|ms| *ms > 0) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = route::respond(&state, &parts, &body, &behavior);
    if behavior.style == style::Style::Spaced {
        resp.body_mut().restyle();
    }
    if let Some(value) = behavior
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        resp.headers_mut().insert(RETRY_AFTER, value);
    }
    Ok(resp)
}

/// A complete JSON answer.
pub(crate) fn json_response(status: StatusCode, value: &Value) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A server-sent-events answer replaying `plan`.
pub(crate) fn sse_response(
    status: StatusCode,
    plan: SsePlan,
    state: &Arc<State>,
) -> Response<MockBody> {
    let mut resp = Response::new(MockBody::Sse(SseBody::new(plan, Arc::clone(state))));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
