//! Edge middleware: request id (taken from the client or generated, always returned), the
//! `RequestContext` every later stage writes to, and the byte-counting body that ends it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::api::errors::{ApiError, ClientProtocol};
use crate::context::RequestContext;
use crate::state::AppState;
use axum::response::IntoResponse;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Routes whose requests get no access log line (probes would drown the log).
const QUIET_ROUTES: &[&str] = &["/healthz", "/readyz", "/metrics"];

pub async fn edge(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_acceptable_id(id))
        .map_or_else(new_request_id, str::to_owned);
    let client_ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let path = request.uri().path();
    let logged = !QUIET_ROUTES.contains(&path);
    let protocol = ClientProtocol::of_request(path, request.headers());
    let ctx = Arc::new(RequestContext::new(
        request_id,
        client_ip,
        request.method().as_str(),
        path,
        logged,
        // With `telemetry.metrics: false` (read at start) requests are not counted at all.
        state.metrics.enabled.then(|| state.metrics.clone()),
        state.traces.as_ref().filter(|_| logged).map(|traces| {
            let route = crate::context::route_label(path);
            traces.request(request.headers(), request.method().as_str(), route)
        }),
    ));
    request.extensions_mut().insert(ctx.clone());
    let mut response = next.run(request).await;
    // Errors raised outside a handler (unknown route, wrong method, panic) take the shape of
    // the route's protocol too.
    let misrendered = response
        .extensions()
        .get::<ApiError>()
        .filter(|error| error.protocol != protocol)
        .cloned();
    if let Some(error) = misrendered {
        response = error.in_protocol(protocol).into_response();
    }
    ctx.set_status(response.status().as_u16());
    if let Some(error) = response.extensions().get::<ApiError>() {
        ctx.set_error(error.code);
        if let Some(scope) = error.limit_scope {
            state.metrics.ratelimited.with_label_values(&[scope]).inc();
        }
        if error.status.is_server_error() {
            tracing::warn!(request_id = %ctx.request_id, code = error.code, message = %error.message, "request failed");
        }
    }
    if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response.map(|body| Body::new(CountingBody { inner: body, ctx }))
}

/// Client-given ids are kept when they are short printable ASCII.
fn is_acceptable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// 128 random bits in hex.
fn new_request_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The response body, counting bytes out and holding the request's context until it ends.
struct CountingBody {
    inner: Body,
    ctx: Arc<RequestContext>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.ctx.add_bytes_out(data.len());
                }
                if self.inner.is_end_stream() {
                    self.ctx.set_body_done();
                }
            }
            Poll::Ready(None) => self.ctx.set_body_done(),
            _ => {}
        }
        polled
    }

    // A body with a known length is not polled past its last frame, hence the check above.
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
