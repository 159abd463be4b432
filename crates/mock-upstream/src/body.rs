//! Response bodies: a complete body sent at once, or a server-sent-events stream that yields each
//! pre-built event as its own frame, honours the inter-chunk delay, can be cut or stalled
//! mid-stream, and counts completed and aborted streams.
//!
//! The stream is protocol-agnostic: each protocol module builds the events (already framed as
//! SSE, `data: ...\n\n` or `event: ...\ndata: ...\n\n`) and marks which of them are content
//! chunks.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::State;
use crate::behavior::Behavior;

/// How long a stream waits before cutting the connection, so that the chunks produced before
/// the cut reach the client.
const CUT_FLUSH_GRACE: Duration = Duration::from_millis(5);

/// The body of every response of the mock.
pub enum MockBody {
    /// A complete body, sent as one frame with a content-length.
    Full(Option<Bytes>),
    /// A server-sent-events stream.
    Sse(SseBody),
}

impl MockBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> MockBody {
        MockBody::Full(Some(bytes.into()))
    }
}

impl MockBody {
    /// Rewrites the body in the spaced style (see [`crate::style`]).
    pub fn restyle(&mut self) {
        match self {
            MockBody::Full(Some(bytes)) => *bytes = crate::style::spaced_body(bytes),
            MockBody::Full(None) => {}
            MockBody::Sse(sse) => {
                for (n, event) in sse.events.iter_mut().enumerate() {
                    *event = crate::style::spaced_event(event, n);
                }
            }
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            MockBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(sse) => sse.poll_event(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

/// How a stream ends early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Abort the connection after this many content chunks.
    Cut(usize),
    /// Send nothing more after this many content chunks, until the client leaves.
    Stall(usize),
}

impl Stop {
    /// The number of content chunks sent before the stop.
    pub fn after(self) -> usize {
        match self {
            Stop::Cut(n) | Stop::Stall(n) => n,
        }
    }

    /// The early stop requested by `behavior` (the earlier one wins; a cut wins a tie).
    pub fn from_behavior(behavior: &Behavior) -> Option<Stop> {
        match (behavior.cut_after, behavior.stall_after) {
            (Some(c), Some(s)) if s < c => Some(Stop::Stall(s)),
            (Some(c), _) => Some(Stop::Cut(c)),
            (None, Some(s)) => Some(Stop::Stall(s)),
            (None, None) => None,
        }
    }
}

/// The events of a stream and where its content chunks are.
#[derive(Debug, Default)]
pub struct SsePlan {
    /// Every event in order, fully framed (the last one is typically `data: [DONE]\n\n`).
    pub events: Vec<Bytes>,
    /// Index in `events` of the first content chunk.
    pub content_start: usize,
    /// Number of content chunks (`events[content_start..content_start + content_len]`).
    pub content_len: usize,
    /// Pause before each content chunk.
    pub delay: Duration,
    /// Early end of the stream.
    pub stop: Option<Stop>,
    /// The protocol's in-stream error event, sent instead of the rest of the stream when the
    /// behaviour asks for `stream_error_after`.
    pub error_event: Option<Bytes>,
}

impl SsePlan {
    /// Sets `delay` and `stop` from a behaviour, and replaces the end of the stream by the error
    /// event when it asks for `stream_error_after` (a cut or stall at the same chunk or earlier
    /// wins).
    pub fn with_behavior(mut self, behavior: &Behavior) -> SsePlan {
        self.delay = Duration::from_millis(behavior.chunk_delay_ms.unwrap_or(0));
        self.stop = Stop::from_behavior(behavior);
        if let Some(n) = behavior.malformed_after {
            let at = self.content_start + n.min(self.content_len);
            self.events
                .insert(at, Bytes::from_static(b"data: {not json\n\n"));
            self.content_len += 1;
        }
        if let (Some(n), Some(error)) = (behavior.stream_error_after, self.error_event.take())
            && self.stop.is_none_or(|stop| stop.after() > n)
        {
            let n = n.min(self.content_len);
            self.events.truncate(self.content_start + n);
            self.events.push(error);
            self.content_len = n;
            self.stop = None;
        }
        self
    }
}

/// A streaming body produced from an [`SsePlan`]. Counts `streams_started` when created,
/// `streams_completed` when the last event is handed to the connection, and `streams_aborted`
/// when dropped before that (the client went away) unless the mock cut the stream itself.
pub struct SseBody {
    events: Vec<Bytes>,
    next: usize,
    content_start: usize,
    content_end: usize,
    delay: Duration,
    stop: Option<(usize, Stop)>,
    sleep: Option<Pin<Box<Sleep>>>,
    delayed: Option<usize>,
    completed: bool,
    cut: bool,
    state: Arc<State>,
}

impl SseBody {
    /// Starts a stream.
    pub fn new(plan: SsePlan, state: Arc<State>) -> SseBody {
        state
            .counters
            .streams_started
            .fetch_add(1, Ordering::Relaxed);
        let content_start = plan.content_start.min(plan.events.len());
        let content_end = (content_start + plan.content_len).min(plan.events.len());
        let stop = plan.stop.map(|stop| {
            let n = stop.after();
            (content_start + n.min(content_end - content_start), stop)
        });
        SseBody {
            events: plan.events,
            next: 0,
            content_start,
            content_end,
            delay: plan.delay,
            stop,
            sleep: None,
            delayed: None,
            completed: false,
            cut: false,
            state,
        }
    }

    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.cut {
            return Poll::Ready(None);
        }
        let i = self.next;
        match self.stop {
            Some((at, Stop::Cut(_))) if at == i => {
                // Let the connection flush what was already produced first: hyper drops
                // buffered output (h2 even queued frames) when the body fails.
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(CUT_FLUSH_GRACE)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.sleep = None;
                self.cut = true;
                return Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "mock-upstream: stream cut on purpose",
                ))));
            }
            // Never woken: the body stays pending until the connection drops it.
            Some((at, Stop::Stall(_))) if at == i => return Poll::Pending,
            _ => {}
        }
        let Some(event) = self.events.get(i) else {
            return Poll::Ready(None);
        };
        if !self.delay.is_zero()
            && (self.content_start..self.content_end).contains(&i)
            && self.delayed != Some(i)
        {
            let delay = self.delay;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
            self.delayed = Some(i);
        }
        let event = event.clone();
        self.next += 1;
        if self.next == self.events.len() {
            self.completed = true;
            self.state
                .counters
                .streams_completed
                .fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(Some(Ok(Frame::data(event))))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if !self.completed && !self.cut {
            self.state
                .counters
                .streams_aborted
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Frames a JSON value as one `data: <json>\n\n` event.
pub fn sse_data(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Frames a JSON value as one `event: <name>\ndata: <json>\n\n` event.
pub fn sse_named(name: &str, value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {value}\n\n"))
}

/// The OpenAI end-of-stream event.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";
