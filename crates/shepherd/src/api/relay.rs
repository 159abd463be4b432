//! Relaying an upstream event stream to the client as it arrives: whole events only, the idle
//! and total timeouts enforced between chunks, usage read on the way. Same protocol: events pass
//! as they came (OpenAI's usage chunk hidden when only the gateway asked for it). Different
//! protocols: each event is decoded and re-encoded at once. A break before the protocol's end
//! marker ends the stream with the client protocol's error event, never a fake end. Dropping the
//! relay (client gone) drops the upstream call.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use tokio::time::{Instant, timeout_at};

use super::answer::estimate;
use super::errors::{ApiError, ClientProtocol};
use crate::cache::Fill;
use crate::cache::replay::AnswerBuilder;
use crate::config::Wire;
use crate::context::RequestContext;
use crate::providers::{UpstreamBody, UpstreamError};
use crate::redact::Redactor;
use crate::routing::health::InflightGuard;
use crate::translate::errors::UpstreamFailure;
use crate::translate::ir::{Event, Usage, UsageSource};
use crate::translate::shapes;
use crate::translate::stream::{self as events, DecodeError, Decoder, Encoder};
use crate::wire::sse::EventSplitter;

pub use super::watch::Watch;

/// How events cross from the upstream to the client.
pub enum Mode {
    Passthrough(Watch),
    Translate(Box<Translator>),
}

pub struct Translator {
    pub decoder: Box<dyn Decoder>,
    pub encoder: Box<dyn Encoder>,
    scratch: Vec<Event>,
}

impl Translator {
    pub fn new(decoder: Box<dyn Decoder>, encoder: Box<dyn Encoder>) -> Self {
        Translator {
            decoder,
            encoder,
            scratch: Vec::with_capacity(8),
        }
    }
}

/// What the client's stream needs besides the upstream body.
pub struct Settings {
    pub ctx: Arc<RequestContext>,
    pub protocol: ClientProtocol,
    pub idle: Duration,
    pub deadline: Instant,
    pub prompt_estimate: u64,
    /// Masks the config's secrets in what the upstream sends back.
    pub redactor: Arc<Redactor>,
    /// Counts the stream as in flight on its deployment until it ends.
    pub inflight: Option<InflightGuard>,
    /// Gather the answer for the cache (the upstream's protocol, for a pass-through stream).
    pub capture: Option<Wire>,
    /// Turns true when the server's shutdown grace is over: the stream ends with an error.
    pub end: tokio::sync::watch::Receiver<bool>,
    /// The largest event taken from the upstream (`server.max_upstream_event`).
    pub max_event: usize,
}

/// What gathers a stream's answer for the cache: a decoder of the upstream's events (only a
/// pass-through stream needs one; a translated stream is decoded anyway), the answer so far,
/// and, once the stream is served, the right to store it.
struct Capture {
    decoder: Option<Box<dyn Decoder>>,
    builder: AnswerBuilder,
    fill: Option<(Fill, Arc<str>)>,
    events: Vec<Event>,
}

pub struct Relay {
    upstream: UpstreamBody,
    splitter: EventSplitter,
    mode: Mode,
    settings: Settings,
    capture: Option<Capture>,
    /// Output produced while waiting for the first event.
    primed: Option<Bytes>,
    /// The upstream's body has ended.
    ended: bool,
    finished: bool,
    /// What the upstream gave after a burst was gathered (its end or an error), taken next.
    held: Option<Option<Result<Bytes, UpstreamError>>>,
    /// The last look for a burst found one.
    bursting: bool,
    /// Chunks since the last look for a burst.
    since_gather: u32,
}

/// A burst of upstream chunks is gathered up to this many bytes before it is sent on.
const GATHER_LIMIT: usize = 64 * 1024;
/// Turns of the scheduler given to the upstream connection to hand over its next chunk (two
/// were enough under load in the bench; one was not).
const GATHER_YIELDS: u32 = 3;
/// After a look that found no burst, chunks taken one by one before the next look.
const GATHER_EVERY: u32 = 8;

/// Why a stream cannot go on.
enum Break {
    /// The upstream reported an error in its protocol.
    Upstream(UpstreamFailure),
    /// The upstream sent something that is not its protocol.
    Malformed(String),
}

/// What one upstream chunk comes to.
#[derive(Default)]
struct Step {
    /// What to send the client now.
    output: Option<Bytes>,
    /// Why the stream cannot go on after `output`.
    broke: Option<Break>,
}

impl Relay {
    /// Waits for the first events of the stream (within `first_byte_deadline`), so that an early
    /// failure (an error event, a malformed event, an empty stream) is still answered as a plain
    /// error with its status, and can be retried elsewhere.
    pub async fn start(
        upstream: UpstreamBody,
        mode: Mode,
        settings: Settings,
        first_byte_deadline: Instant,
    ) -> Result<Relay, ApiError> {
        let capture = settings.capture.map(|wire| Capture {
            decoder: matches!(mode, Mode::Passthrough(_)).then(|| shapes::upstream_decoder(wire)),
            builder: AnswerBuilder::default(),
            fill: None,
            events: Vec::new(),
        });
        let mut relay = Relay {
            upstream,
            splitter: EventSplitter::with_limit(settings.max_event),
            mode,
            settings,
            capture,
            primed: None,
            ended: false,
            finished: false,
            held: None,
            bursting: true,
            since_gather: 0,
        };
        loop {
            let step = match timeout_at(first_byte_deadline, relay.upstream.next()).await {
                Err(_elapsed) => {
                    return Err(ApiError::upstream_timeout(
                        "no stream data within the first-byte timeout",
                    ));
                }
                Ok(None) => {
                    relay.ended = true;
                    relay.process_rest()
                }
                Ok(Some(Err(error))) => {
                    return Err(ApiError::upstream_bad_response(&error.to_string()));
                }
                Ok(Some(Ok(chunk))) => relay.process(chunk),
            };
            if let Some(broke) = step.broke {
                // Nothing reached the client yet: a plain error, which may be retried.
                return Err(match broke {
                    Break::Upstream(failure) => relay.upstream_error(failure),
                    Break::Malformed(detail) => ApiError::upstream_bad_response(&detail),
                });
            }
            match step.output {
                Some(output) => {
                    if let Some(failure) = relay.early_failure() {
                        return Err(relay.upstream_error(failure));
                    }
                    relay.primed = Some(output);
                    return Ok(relay);
                }
                None if relay.ended => {
                    return Err(ApiError::upstream_bad_response(
                        "the stream ended before any event",
                    ));
                }
                None => {}
            }
        }
    }

    /// Stores the stream's answer in the cache when it completes.
    pub fn fill_cache(&mut self, fill: Fill, deployment: Arc<str>) {
        if let Some(capture) = &mut self.capture {
            capture.fill = Some((fill, deployment));
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

    /// The next events to send, or `None` at the end.
    async fn next_piece(&mut self) -> Option<Bytes> {
        if let Some(primed) = self.primed.take() {
            return Some(primed);
        }
        loop {
            if self.finished {
                return None;
            }
            if self.ended {
                return self.end_of_upstream();
            }
            let next = match self.held.take() {
                Some(held) => Ok(held),
                None => {
                    let wait_until = self
                        .settings
                        .deadline
                        .min(Instant::now() + self.settings.idle);
                    let next = tokio::select! {
                        biased;
                        _ = self.settings.end.wait_for(|end| *end) => None,
                        next = timeout_at(wait_until, self.upstream.next()) => Some(next),
                    };
                    let Some(next) = next else {
                        return self.fail(None, ApiError::stream_ended_by_shutdown());
                    };
                    next
                }
            };
            let step = match next {
                Ok(Some(Ok(chunk))) => {
                    let burst = self.gather_ready(chunk).await;
                    self.process(burst)
                }
                Ok(None) => {
                    self.ended = true;
                    self.process_rest()
                }
                Ok(Some(Err(error))) => {
                    return self.fail(
                        None,
                        ApiError::upstream_stream_error(&format!(
                            "The upstream stream broke: {error}"
                        )),
                    );
                }
                Err(_elapsed) if Instant::now() >= self.settings.deadline => {
                    return self.fail(
                        None,
                        ApiError::upstream_stream_timeout(
                            "The stream passed the total time limit.",
                        ),
                    );
                }
                Err(_elapsed) => {
                    let idle = self.settings.idle.as_secs_f64();
                    return self.fail(
                        None,
                        ApiError::upstream_stream_timeout(&format!(
                            "The upstream sent nothing for {idle}s."
                        )),
                    );
                }
            };
            match step {
                Step {
                    output,
                    broke: Some(broke),
                } => {
                    let error = match broke {
                        Break::Upstream(failure) => self.upstream_error(failure),
                        Break::Malformed(detail) => ApiError::upstream_stream_error(&format!(
                            "The upstream sent an invalid event: {detail}"
                        )),
                    };
                    return self.fail(output, error);
                }
                Step {
                    output: Some(output),
                    broke: None,
                } => return Some(output),
                Step {
                    output: None,
                    broke: None,
                } => {}
            }
        }
    }

    /// Takes the upstream chunks that are already there after `first` (a burst: events sent
    /// together, or a fast model's), so that they reach the client in one write rather than one
    /// write and one task round trip each. hyper's client connection hands a body over one HTTP
    /// chunk per turn of its task, so a few yields let it pass on what it has already read;
    /// nothing is waited for. Paced streams find nothing: after a miss, only every
    /// `GATHER_EVERY`th chunk tries again, so they pay a try per eight events.
    async fn gather_ready(&mut self, first: Bytes) -> Bytes {
        if !self.bursting && self.since_gather < GATHER_EVERY {
            self.since_gather += 1;
            return first;
        }
        self.since_gather = 0;
        let mut gathered: Option<BytesMut> = None;
        let mut yields = 0;
        while gathered.as_ref().map_or(first.len(), BytesMut::len) < GATHER_LIMIT {
            match self.upstream.next().now_or_never() {
                Some(Some(Ok(chunk))) => {
                    yields = 0;
                    gathered
                        .get_or_insert_with(|| {
                            let mut burst = BytesMut::with_capacity(4 * first.len());
                            burst.extend_from_slice(&first);
                            burst
                        })
                        .extend_from_slice(&chunk);
                }
                Some(end_or_error) => {
                    self.held = Some(end_or_error);
                    break;
                }
                None if yields >= GATHER_YIELDS => break,
                None => {
                    tokio::task::yield_now().await;
                    yields += 1;
                }
            }
        }
        self.bursting = gathered.is_some();
        gathered.map_or(first, BytesMut::freeze)
    }

    /// Takes one upstream chunk.
    fn process(&mut self, chunk: Bytes) -> Step {
        match self.splitter.push(chunk) {
            Ok(Some(whole)) => self.process_whole(whole),
            Ok(None) => Step::default(),
            Err(too_large) => Step {
                output: None,
                broke: Some(Break::Malformed(too_large.to_string())),
            },
        }
    }

    /// At the end of the upstream's body: an event it did not end with an empty line.
    fn process_rest(&mut self) -> Step {
        match self.splitter.finish() {
            Some(whole) => self.process_whole(whole),
            None => Step::default(),
        }
    }

    /// Takes whole events: forwarded as they are (watched), or translated one by one.
    fn process_whole(&mut self, whole: Bytes) -> Step {
        if let Some(capture) = &mut self.capture {
            capture.gather(&whole);
        }
        match &mut self.mode {
            Mode::Passthrough(watch) => {
                let watched = watch.watch(whole);
                Step {
                    output: watched.forward,
                    broke: watched.malformed.map(Break::Malformed),
                }
            }
            Mode::Translate(translator) => {
                let Ok(text) = std::str::from_utf8(&whole) else {
                    return Step {
                        output: None,
                        broke: Some(Break::Malformed("the stream is not UTF-8".to_owned())),
                    };
                };
                let mut out = BytesMut::new();
                let mut broke = None;
                for event in events::events(text) {
                    if let Err(error) = translator.decoder.decode(event, &mut translator.scratch) {
                        broke = Some(match error {
                            DecodeError::Upstream(failure) => Break::Upstream(failure),
                            DecodeError::Malformed(detail) => Break::Malformed(detail),
                        });
                        break;
                    }
                    for event in translator.scratch.drain(..) {
                        if let Some(capture) = &mut self.capture {
                            capture.builder.push(&event);
                        }
                        translator.encoder.encode(event, &mut out);
                    }
                }
                Step {
                    output: (!out.is_empty()).then(|| out.freeze()),
                    broke,
                }
            }
        }
    }

    fn end_of_upstream(&mut self) -> Option<Bytes> {
        self.finished = true;
        self.settings.inflight = None;
        self.settings.ctx.set_upstream_done();
        match &mut self.mode {
            Mode::Passthrough(watch) if watch.done => {
                let (usage, chars) = (watch.usage, watch.output_chars);
                self.record_usage(usage, chars);
                self.store_capture();
                self.settings.ctx.set_body_done();
                None
            }
            Mode::Passthrough(watch) if watch.failure.is_some() => {
                // The upstream's own error event already reached the client.
                let (usage, chars) = (watch.usage, watch.output_chars);
                self.record_usage(usage, chars);
                self.settings.ctx.set_stream_failed("upstream_stream_error");
                None
            }
            Mode::Translate(translator) if translator.decoder.complete() => {
                let (reported, chars) = translator.encoder.usage();
                let (usage, source) = self.final_usage(reported, chars);
                self.settings.ctx.set_usage(usage, source);
                let mut out = BytesMut::new();
                if let Mode::Translate(translator) = &mut self.mode {
                    translator.encoder.finish(&usage, &mut out);
                }
                self.store_capture();
                self.settings.ctx.set_body_done();
                Some(out.freeze())
            }
            _ => self.fail(
                None,
                ApiError::upstream_stream_error(
                    "The upstream ended the stream before it was complete.",
                ),
            ),
        }
    }

    /// A complete stream: its answer goes to the cache (with the usage that was recorded).
    fn store_capture(&mut self) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        let Some((fill, deployment)) = capture.fill else {
            return;
        };
        if let Some(mut answer) = capture.builder.finish() {
            if answer.usage.is_none() {
                answer.usage = self.settings.ctx.usage().map(|(usage, _)| usage);
            }
            fill.store(Some(answer), None, deployment);
        }
    }

    fn final_usage(&self, reported: Option<Usage>, chars: usize) -> (Usage, UsageSource) {
        match reported {
            Some(usage) => (usage, UsageSource::Reported),
            None => (
                estimate(self.settings.prompt_estimate, chars),
                UsageSource::Estimated,
            ),
        }
    }

    fn record_usage(&self, reported: Option<Usage>, chars: usize) {
        let (usage, source) = self.final_usage(reported, chars);
        self.settings.ctx.set_usage(usage, source);
    }

    /// Ends the stream: the events that could still be sent (`before`), then the client
    /// protocol's error event.
    fn fail(&mut self, before: Option<Bytes>, error: ApiError) -> Option<Bytes> {
        self.finished = true;
        self.settings.inflight = None;
        self.settings.ctx.set_upstream_done();
        self.settings.ctx.set_stream_failed(error.code);
        tracing::warn!(request_id = %self.settings.ctx.request_id, code = error.code,
                       message = %error.message, "stream ended with an error event");
        let mut out = BytesMut::new();
        if let Some(before) = before {
            out.extend_from_slice(&before);
        }
        match &mut self.mode {
            Mode::Passthrough(watch) => {
                let (usage, chars) = (watch.usage, watch.output_chars);
                watch.write_error(&error, &mut out);
                self.record_usage(usage, chars);
            }
            Mode::Translate(translator) => {
                let (reported, chars) = translator.encoder.usage();
                translator.encoder.fail(&error, &mut out);
                self.record_usage(reported, chars);
            }
        }
        Some(out.freeze())
    }

    /// A passed-through stream that began with the upstream's error event: the failure it
    /// reports, so that it can still be answered with a status.
    fn early_failure(&self) -> Option<UpstreamFailure> {
        match &self.mode {
            Mode::Passthrough(watch) => match &watch.failure {
                Some((failure, true)) => Some(failure.clone()),
                _ => None,
            },
            Mode::Translate(_) => None,
        }
    }

    /// An upstream's failure in the client's protocol, secrets redacted.
    fn upstream_error(&self, mut failure: UpstreamFailure) -> ApiError {
        failure.message = self.settings.redactor.text(&failure.message).into_owned();
        ApiError::from_upstream(&failure, self.settings.protocol)
    }
}

impl Capture {
    /// Decodes passed-through events on the side (a translated stream's events are pushed as
    /// they are decoded). Anything that does not decode just leaves the answer unstored.
    fn gather(&mut self, whole: &[u8]) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        let text = std::str::from_utf8(whole).unwrap_or_default();
        for event in events::events(text) {
            if decoder.decode(event, &mut self.events).is_err() {
                self.fill = None;
                self.decoder = None;
                return;
            }
            for event in self.events.drain(..) {
                self.builder.push(&event);
            }
        }
    }
}
