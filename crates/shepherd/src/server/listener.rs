//! The accept loop of every listener: hyper (HTTP/1.1 and HTTP/2) on each connection (over TLS
//! when `server.tls` is set: the handshake runs in the connection's task, within the `header`
//! timeout, so a slow handshake never holds the accept loop), with the
//! client-side timeouts (`server.client_timeouts`) enforced on the connection itself, a cap on
//! open connections (`server.max_connections`: past it a new connection gets a 503 and is
//! closed), and the shutdown: while draining, answers say `connection: close`; when told to
//! stop, the loop stops accepting and open connections are closed gracefully.
//!
//! The timeouts follow the connection's state, known exactly because every request is counted
//! in and out of the connection: while a request is in flight nothing times out here (upstream
//! timeouts and the body timeout apply); between requests a connection must start its next
//! request within `keep_alive`, and once its first byte arrived, complete the head within
//! `header` (a new connection gets `header` from the start). Slowloris heads, idle floods and
//! silent connections are closed; a busy stream never is.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, Version, header};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::ClientTimeouts;

/// Routes that do not count as work in flight (probes and scrapes keep coming while draining).
const QUIET_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// How long a refused connection is given to take its 503.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// How long open connections get to close by themselves once the server stops.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What every listener shares with the server's lifecycle.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// Set on SIGTERM: answers say `connection: close`.
    pub draining: Arc<AtomicBool>,
    /// Requests in flight on every listener, probes excepted.
    pub active: Arc<AtomicUsize>,
    /// Becomes true when the listeners must stop accepting and close their connections.
    pub stop: watch::Receiver<bool>,
}

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeouts: ClientTimeouts,
    pub max_connections: usize,
}

/// Serves `router` on `listener` (over TLS with `tls`) until `lifecycle.stop` turns true.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    lifecycle: Lifecycle,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        // The connection's own timer (`ClientIo`) times heads; hyper's would also close idle
        // keep-alive connections after the (shorter) head timeout.
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(AtomicUsize::new(0));
    let mut stop = lifecycle.stop.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: wait a little rather than spin.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if open.load(Ordering::Relaxed) >= limits.max_connections {
            tokio::spawn(refuse(stream));
            continue;
        }
        let connection = Arc::new(Connection {
            inflight: AtomicUsize::new(0),
            reader: AtomicWaker::new(),
            started: AtomicU64::new(0),
            _open: OpenGuard::new(open.clone()),
        });
        let service = ConnService {
            router: router.clone(),
            remote,
            connection: connection.clone(),
            lifecycle: lifecycle.clone(),
        };
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            // Resets, timeouts, failed handshakes and clients going away end connections;
            // nothing to report.
            let service = hyper::service::service_fn(move |request| service.call(request));
            match tls {
                None => {
                    let io = TokioIo::new(ClientIo::new(stream, connection, limits.timeouts));
                    let served = builder.serve_connection_with_upgrades(io, service);
                    let _ = watcher.watch(served.into_owned()).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.timeouts.header, acceptor.accept(stream));
                    let Ok(Ok(stream)) = handshake.await else {
                        return;
                    };
                    let io = TokioIo::new(ClientIo::new(stream, connection, limits.timeouts));
                    let served = builder.serve_connection_with_upgrades(io, service);
                    let _ = watcher.watch(served.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(CLOSE_WAIT, graceful.shutdown()).await;
}

/// Answers a connection over `max_connections` with a 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = r#"{"error":{"message":"The gateway has too many open connections; retry shortly.","type":"service_unavailable_error","param":null,"code":"too_many_connections"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// One client connection.
#[derive(Debug)]
struct Connection {
    /// Requests of this connection in flight (HTTP/2 has several).
    inflight: AtomicUsize,
    /// The connection's task, woken when its last request ends so that its idle timer starts
    /// (hyper does not read again by itself after a response).
    reader: AtomicWaker,
    /// Requests of this connection so far.
    started: AtomicU64,
    _open: OpenGuard,
}

/// Counts an open connection while it lives.
#[derive(Debug)]
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The router on one connection: the client's address for the handlers, the request counted
/// in flight until its response body ends, `connection: close` while draining.
#[derive(Clone)]
struct ConnService {
    router: Router,
    remote: SocketAddr,
    connection: Arc<Connection>,
    lifecycle: Lifecycle,
}

impl ConnService {
    fn call(
        &self,
        mut request: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + use<> {
        request.extensions_mut().insert(ConnectInfo(self.remote));
        let quiet = QUIET_ROUTES.contains(&request.uri().path());
        let http1 = request.version() <= Version::HTTP_11;
        let guard = InFlight::enter(
            self.connection.clone(),
            (!quiet).then(|| self.lifecycle.active.clone()),
        );
        let draining = self.lifecycle.draining.clone();
        let mut router = self.router.clone();
        async move {
            let response = match router.call(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (mut parts, body) = response.into_parts();
            if http1 && draining.load(Ordering::Relaxed) {
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(Response::from_parts(
                parts,
                Body::new(GuardedBody {
                    inner: body,
                    _guard: guard,
                }),
            ))
        }
    }
}

/// A request in flight: on its connection, and (probes excepted) on the server.
struct InFlight {
    connection: Arc<Connection>,
    active: Option<Arc<AtomicUsize>>,
}

impl InFlight {
    fn enter(connection: Arc<Connection>, active: Option<Arc<AtomicUsize>>) -> Self {
        connection.inflight.fetch_add(1, Ordering::AcqRel);
        connection.started.fetch_add(1, Ordering::AcqRel);
        if let Some(active) = &active {
            active.fetch_add(1, Ordering::AcqRel);
        }
        InFlight { connection, active }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.connection.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.connection.reader.wake();
        }
        if let Some(active) = &self.active {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A response body that keeps its request in flight until it ends or is dropped.
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection's stream, closing it when the client takes too long (see the module
/// documentation).
struct ClientIo<T> {
    inner: T,
    connection: Arc<Connection>,
    timeouts: ClientTimeouts,
    /// A request was in flight when last looked.
    busy: bool,
    /// The connection's request count when last looked (a request may come and go between
    /// two reads).
    seen_requests: u64,
    /// Part of the next request's head has arrived (HTTP/1).
    in_head: bool,
    /// The connection speaks HTTP/2: frames come and go between requests (pings, settings),
    /// so only idleness counts.
    http2: bool,
    /// Bytes read so far while they may still be the HTTP/2 preface, and whether they are.
    preface_seen: usize,
    preface_matches: bool,
    deadline: Pin<Box<Sleep>>,
}

/// The start of an HTTP/2 connection.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<T> ClientIo<T> {
    fn new(inner: T, connection: Arc<Connection>, timeouts: ClientTimeouts) -> Self {
        ClientIo {
            inner,
            connection,
            timeouts,
            busy: false,
            seen_requests: 0,
            in_head: false,
            http2: false,
            preface_seen: 0,
            preface_matches: true,
            // A new connection must send its first request's head in time.
            deadline: Box::pin(tokio::time::sleep(timeouts.header)),
        }
    }

    fn reset(&mut self, after: Duration) {
        self.deadline
            .as_mut()
            .reset(crate::bounds::later(Instant::now(), after));
    }

    /// Follows the connection's requests in and out; whether the connection is timed now.
    fn observe(&mut self) -> bool {
        if self.connection.inflight.load(Ordering::Acquire) > 0 {
            self.busy = true;
            self.in_head = false;
            return false;
        }
        let requests = self.connection.started.load(Ordering::Acquire);
        if self.busy || requests != self.seen_requests {
            self.busy = false;
            self.in_head = false;
            self.seen_requests = requests;
            self.reset(self.timeouts.keep_alive);
        }
        true
    }

    /// Takes note of bytes read.
    fn received(&mut self, read: &[u8]) {
        if read.is_empty() {
            return;
        }
        if self.preface_seen < H2_PREFACE.len() {
            let upto = (H2_PREFACE.len() - self.preface_seen).min(read.len());
            self.preface_matches &=
                read[..upto] == H2_PREFACE[self.preface_seen..self.preface_seen + upto];
            self.preface_seen += upto;
            if self.preface_matches && self.preface_seen == H2_PREFACE.len() {
                self.http2 = true;
            }
        }
        if self.busy {
            return;
        }
        if self.http2 {
            self.reset(self.timeouts.keep_alive);
        } else if !self.in_head {
            self.in_head = true;
            self.reset(self.timeouts.header);
        }
    }

    fn timed_out(&self) -> io::Error {
        let what = if self.in_head {
            "the request head took too long"
        } else {
            "the connection was idle too long"
        };
        io::Error::new(io::ErrorKind::TimedOut, format!("client timeout: {what}"))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let timed = this.observe();
        if timed && this.deadline.is_elapsed() {
            return Poll::Ready(Err(this.timed_out()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                this.received(&filled[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                if timed && this.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(this.timed_out()));
                }
                this.connection.reader.register(cx.waker());
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
