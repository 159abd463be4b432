//! Relaying an upstream event stream to the client as it arrives: whole events only, the idle
//! and total timeouts enforced between chunks, and a break before `[DONE]` turned into a final
//! error event (never a fake `[DONE]`). Dropping the relay (client gone) drops the upstream call.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio::time::{Instant, timeout_at};

use super::errors::ApiError;
use crate::context::RequestContext;
use crate::providers::UpstreamBody;
use crate::wire::sse::{EventSplitter, data_event, data_payloads};

/// An upstream stream whose first chunk has arrived.
pub struct FirstChunk {
    chunk: Bytes,
    rest: UpstreamBody,
}

/// Waits for the first chunk of a stream, so that an early failure is still a plain error answer.
pub async fn first_chunk(
    mut body: UpstreamBody,
    deadline: Instant,
) -> Result<FirstChunk, ApiError> {
    loop {
        match timeout_at(deadline, body.next()).await {
            Err(_elapsed) => {
                return Err(ApiError::upstream_timeout(
                    "no stream data within the first-byte timeout",
                ));
            }
            Ok(None) => {
                return Err(ApiError::upstream_bad_response(
                    "the stream ended before any event",
                ));
            }
            Ok(Some(Err(error))) => {
                return Err(ApiError::upstream_bad_response(&error.to_string()));
            }
            Ok(Some(Ok(chunk))) if chunk.is_empty() => continue,
            Ok(Some(Ok(chunk))) => return Ok(FirstChunk { chunk, rest: body }),
        }
    }
}

pub struct Relay {
    upstream: UpstreamBody,
    pending_first: Option<Bytes>,
    splitter: EventSplitter,
    saw_done: bool,
    finished: bool,
    idle: Duration,
    deadline: Instant,
    ctx: Arc<RequestContext>,
}

impl Relay {
    pub fn new(
        first: FirstChunk,
        ctx: Arc<RequestContext>,
        idle: Duration,
        deadline: Instant,
    ) -> Self {
        Relay {
            upstream: first.rest,
            pending_first: Some(first.chunk),
            splitter: EventSplitter::default(),
            saw_done: false,
            finished: false,
            idle,
            deadline,
            ctx,
        }
    }

    pub fn into_response(self, status: StatusCode, mut headers: HeaderMap) -> Response {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
        let stream = futures_util::stream::unfold(self, |mut relay| async move {
            let piece = relay.next_piece().await?;
            Some((Ok::<_, std::convert::Infallible>(piece), relay))
        });
        let mut response = Response::new(Body::from_stream(stream));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// The next whole events to send, or `None` at the end.
    async fn next_piece(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            let chunk = match self.pending_first.take() {
                Some(chunk) => chunk,
                None => {
                    let wait_until = self.deadline.min(Instant::now() + self.idle);
                    match timeout_at(wait_until, self.upstream.next()).await {
                        Ok(Some(Ok(chunk))) => chunk,
                        Ok(None) => return self.end_of_upstream(),
                        Ok(Some(Err(error))) => {
                            return self.fail(
                                "upstream_stream_error",
                                &format!("The upstream stream broke: {error}"),
                            );
                        }
                        Err(_elapsed) if Instant::now() >= self.deadline => {
                            return self.fail(
                                "upstream_timeout",
                                "The stream passed the total time limit.",
                            );
                        }
                        Err(_elapsed) => {
                            let idle = self.idle.as_secs_f64();
                            return self.fail(
                                "upstream_timeout",
                                &format!("The upstream sent nothing for {idle}s."),
                            );
                        }
                    }
                }
            };
            if let Some(events) = self.splitter.push(chunk) {
                if data_payloads(&events).any(|data| data == b"[DONE]") {
                    self.saw_done = true;
                }
                return Some(events);
            }
        }
    }

    fn end_of_upstream(&mut self) -> Option<Bytes> {
        self.ctx.set_upstream_done();
        if self.saw_done {
            self.finished = true;
            self.ctx.set_body_done();
            return None;
        }
        self.fail(
            "upstream_stream_error",
            "The upstream ended the stream before it was complete.",
        )
    }

    /// Ends the stream with an OpenAI error event.
    fn fail(&mut self, code: &'static str, message: &str) -> Option<Bytes> {
        self.finished = true;
        self.ctx.set_upstream_done();
        self.ctx.set_stream_failed(code);
        let body = json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
        tracing::warn!(request_id = %self.ctx.request_id, code, message, "stream ended with an error event");
        Some(data_event(&body.to_string()))
    }
}
