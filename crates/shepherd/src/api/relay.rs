//! Relaying an upstream event stream to the client as it arrives: whole events only, the idle
//! and total timeouts enforced between chunks, usage read on the way. Same protocol: events pass
//! as they came (OpenAI's usage chunk hidden when only the gateway asked for it). Different
//! protocols: each event is decoded and re-encoded at once. A break before the protocol's end
//! marker ends the stream with the client protocol's error event, never a fake end. Dropping the
//! relay (client gone) drops the upstream call.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use memchr::memmem;
use serde_json::Value;
use tokio::time::{Instant, timeout_at};

use super::answer::estimate;
use super::errors::{ApiError, ClientProtocol};
use crate::cache::Fill;
use crate::cache::replay::AnswerBuilder;
use crate::config::{Secret, Wire};
use crate::context::RequestContext;
use crate::providers::{UpstreamBody, redact_secrets};
use crate::routing::health::InflightGuard;
use crate::translate::errors::{UpstreamFailure, from_anthropic, from_openai};
use crate::translate::ir::{Event, Usage, UsageSource};
use crate::translate::stream::{self as events, DecodeError, Decoder, Encoder};
use crate::translate::{anthropic, openai};
use crate::wire::sse::{EventSplitter, data_payloads};

/// How events cross from the upstream to the client.
pub enum Mode {
    Passthrough(Watch),
    Translate(Box<Translator>),
}

/// What a passed-through stream is watched for.
#[derive(Debug)]
pub struct Watch {
    wire: Wire,
    hide_usage_chunk: bool,
    /// `[DONE]` or `message_stop` seen.
    done: bool,
    /// The upstream sent its own error event (forwarded as is).
    failed: bool,
    usage: Option<Usage>,
    output_chars: usize,
}

impl Watch {
    pub fn new(wire: Wire, hide_usage_chunk: bool) -> Self {
        Watch {
            wire,
            hide_usage_chunk,
            done: false,
            failed: false,
            usage: None,
            output_chars: 0,
        }
    }
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
    pub secrets: Arc<[Secret]>,
    /// Counts the stream as in flight on its deployment until it ends.
    pub inflight: Option<InflightGuard>,
    /// Gather the answer for the cache (the upstream's protocol, for a pass-through stream).
    pub capture: Option<Wire>,
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
    finished: bool,
}

/// Why a chunk could not be relayed.
enum Break {
    /// The upstream reported an error in its protocol.
    Upstream(UpstreamFailure),
    /// The upstream sent something that is not its protocol.
    Malformed(String),
}

impl Relay {
    /// Waits for the first events of the stream (within `first_byte_deadline`), so that an early
    /// failure is still answered as a plain error with its status.
    pub async fn start(
        upstream: UpstreamBody,
        mode: Mode,
        settings: Settings,
        first_byte_deadline: Instant,
    ) -> Result<Relay, ApiError> {
        let capture = settings.capture.map(|wire| Capture {
            decoder: matches!(mode, Mode::Passthrough(_)).then(|| upstream_decoder(wire)),
            builder: AnswerBuilder::default(),
            fill: None,
            events: Vec::new(),
        });
        let mut relay = Relay {
            upstream,
            splitter: EventSplitter::default(),
            mode,
            settings,
            capture,
            primed: None,
            finished: false,
        };
        loop {
            let chunk = match timeout_at(first_byte_deadline, relay.upstream.next()).await {
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
                Ok(Some(Ok(chunk))) => chunk,
            };
            match relay.process(chunk) {
                Ok(None) => continue,
                Ok(Some(output)) => {
                    if let Some(failure) = relay.early_failure(&output) {
                        return Err(ApiError::from_upstream(
                            &relay.redacted(failure),
                            relay.settings.protocol,
                        ));
                    }
                    relay.primed = Some(output);
                    return Ok(relay);
                }
                Err(Break::Upstream(failure)) => {
                    return Err(ApiError::from_upstream(
                        &relay.redacted(failure),
                        relay.settings.protocol,
                    ));
                }
                Err(Break::Malformed(detail)) => {
                    return Err(ApiError::upstream_bad_response(&detail));
                }
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
            let wait_until = self
                .settings
                .deadline
                .min(Instant::now() + self.settings.idle);
            let chunk = match timeout_at(wait_until, self.upstream.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => return self.end_of_upstream(),
                Ok(Some(Err(error))) => {
                    return self.fail(ApiError::upstream_stream_error(&format!(
                        "The upstream stream broke: {error}"
                    )));
                }
                Err(_elapsed) if Instant::now() >= self.settings.deadline => {
                    return self.fail(ApiError::upstream_stream_timeout(
                        "The stream passed the total time limit.",
                    ));
                }
                Err(_elapsed) => {
                    let idle = self.settings.idle.as_secs_f64();
                    return self.fail(ApiError::upstream_stream_timeout(&format!(
                        "The upstream sent nothing for {idle}s."
                    )));
                }
            };
            match self.process(chunk) {
                Ok(Some(output)) => return Some(output),
                Ok(None) => {}
                Err(Break::Upstream(failure)) => {
                    let failure = self.redacted(failure);
                    let error = ApiError::from_upstream(&failure, self.settings.protocol);
                    return self.fail(error);
                }
                Err(Break::Malformed(detail)) => {
                    return self.fail(ApiError::upstream_stream_error(&format!(
                        "The upstream sent an invalid event: {detail}"
                    )));
                }
            }
        }
    }

    /// Takes one upstream chunk; returns what to send the client now, if anything.
    fn process(&mut self, chunk: Bytes) -> Result<Option<Bytes>, Break> {
        let Some(whole) = self.splitter.push(chunk) else {
            return Ok(None);
        };
        if let Some(capture) = &mut self.capture {
            capture.gather(&whole);
        }
        match &mut self.mode {
            Mode::Passthrough(watch) => Ok(watch_events(watch, whole)),
            Mode::Translate(translator) => {
                let mut out = BytesMut::new();
                for event in events::events(&whole) {
                    translator
                        .decoder
                        .decode(event, &mut translator.scratch)
                        .map_err(|error| match error {
                            DecodeError::Upstream(failure) => Break::Upstream(failure),
                            DecodeError::Malformed(detail) => Break::Malformed(detail),
                        })?;
                    for event in translator.scratch.drain(..) {
                        if let Some(capture) = &mut self.capture {
                            capture.builder.push(&event);
                        }
                        translator.encoder.encode(event, &mut out);
                    }
                }
                Ok((!out.is_empty()).then(|| out.freeze()))
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
            Mode::Passthrough(watch) if watch.failed => {
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
            _ => {
                self.finished = false;
                self.fail(ApiError::upstream_stream_error(
                    "The upstream ended the stream before it was complete.",
                ))
            }
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

    /// Ends the stream with the client protocol's error event.
    fn fail(&mut self, error: ApiError) -> Option<Bytes> {
        self.finished = true;
        self.settings.inflight = None;
        self.settings.ctx.set_upstream_done();
        self.settings.ctx.set_stream_failed(error.code);
        tracing::warn!(request_id = %self.settings.ctx.request_id, code = error.code,
                       message = %error.message, "stream ended with an error event");
        let mut out = BytesMut::new();
        match &mut self.mode {
            Mode::Passthrough(watch) => {
                let (usage, chars) = (watch.usage, watch.output_chars);
                self.record_usage(usage, chars);
                match self.settings.protocol {
                    ClientProtocol::OpenAi => {
                        events::write_data(
                            &mut out,
                            &error.body(ClientProtocol::OpenAi).to_string(),
                        );
                    }
                    ClientProtocol::Anthropic => {
                        events::write_named(
                            &mut out,
                            "error",
                            &error.body(ClientProtocol::Anthropic),
                        );
                    }
                }
            }
            Mode::Translate(translator) => {
                let (reported, chars) = translator.encoder.usage();
                translator.encoder.fail(&error, &mut out);
                self.record_usage(reported, chars);
            }
        }
        Some(out.freeze())
    }

    /// A passed-through stream whose first event is the upstream's error event: the failure it
    /// reports, so that it can still be answered with a status.
    fn early_failure(&self, output: &[u8]) -> Option<UpstreamFailure> {
        let Mode::Passthrough(watch) = &self.mode else {
            return None;
        };
        if !watch.failed {
            return None;
        }
        let first = events::events(output).next()?;
        let data: Value = serde_json::from_str(first.data.trim()).ok()?;
        data.get("error")?;
        Some(passthrough_failure(watch.wire, &data))
    }

    fn redacted(&self, mut failure: UpstreamFailure) -> UpstreamFailure {
        if let Some(clean) = redact_secrets(failure.message.as_bytes(), &self.settings.secrets) {
            failure.message = String::from_utf8_lossy(&clean).into_owned();
        }
        failure
    }
}

impl Capture {
    /// Decodes passed-through events on the side (a translated stream's events are pushed as
    /// they are decoded). Anything that does not decode just leaves the answer unstored.
    fn gather(&mut self, whole: &[u8]) {
        let Some(decoder) = &mut self.decoder else {
            return;
        };
        for event in events::events(whole) {
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

/// The decoder of an upstream protocol's stream.
pub fn upstream_decoder(wire: Wire) -> Box<dyn Decoder> {
    match wire {
        Wire::OpenAi => Box::<openai::stream::ChatDecoder>::default(),
        Wire::Anthropic => Box::<anthropic::stream::MessagesDecoder>::default(),
        Wire::Gemini => Box::<crate::translate::gemini::stream::GenerateDecoder>::default(),
    }
}

/// Watches passed-through events (end marker, usage, the upstream's error event); returns what
/// to forward: the same bytes, or the events minus a hidden usage chunk. Runs per chunk: OpenAI
/// events are scanned as bytes, and parsed only for the usage chunk.
fn watch_events(watch: &mut Watch, whole: Bytes) -> Option<Bytes> {
    let mut hidden = false;
    match watch.wire {
        Wire::Anthropic => {
            for event in events::events(&whole) {
                match event.name.unwrap_or_default() {
                    "message_start" | "message_delta" => {
                        if let Ok(value) = serde_json::from_str::<Value>(event.data.trim()) {
                            let usage = value
                                .get("message")
                                .map_or(&value["usage"], |message| &message["usage"]);
                            if usage.is_object() {
                                let base = watch.usage.unwrap_or_default();
                                watch.usage = Some(anthropic::response::usage_of(usage, base));
                            }
                        }
                    }
                    "content_block_delta" => {
                        watch.output_chars += content_chars(event.data.as_bytes());
                    }
                    "message_stop" => watch.done = true,
                    "error" => watch.failed = true,
                    _ => {}
                }
            }
        }
        _ => {
            for data in data_payloads(&whole) {
                if data == b"[DONE]" {
                    watch.done = true;
                } else if data.starts_with(b"{\"error\"") {
                    watch.failed = true;
                } else if memmem::find(data, b"\"usage\":{").is_some() {
                    if let Ok(value) = serde_json::from_slice::<Value>(data) {
                        watch.usage = openai::response::usage_of(&value["usage"]).or(watch.usage);
                        let no_choices = value["choices"].as_array().is_none_or(Vec::is_empty);
                        hidden |= watch.hide_usage_chunk && no_choices;
                    }
                } else {
                    watch.output_chars += content_chars(data);
                }
            }
        }
    }
    if !hidden {
        return Some(whole);
    }
    // Rare (once per stream): rebuild the events without the usage chunk.
    let text = String::from_utf8_lossy(&whole);
    let mut out = BytesMut::with_capacity(whole.len());
    for block in text.split_inclusive("\n\n") {
        let is_usage_chunk = block.contains("\"usage\":{")
            && events::events(block.as_bytes()).all(|event| {
                serde_json::from_str::<Value>(event.data.trim())
                    .ok()
                    .is_some_and(|v| v["choices"].as_array().is_none_or(Vec::is_empty))
            });
        if !is_usage_chunk {
            out.extend_from_slice(block.as_bytes());
        }
    }
    (!out.is_empty()).then(|| out.freeze())
}

/// The JSON string fields that hold generated text: OpenAI `content`, `text` and tool
/// `arguments`, Anthropic `text`, `partial_json` and `thinking` deltas.
static TEXT_FIELDS: LazyLock<[memmem::Finder<'static>; 5]> = LazyLock::new(|| {
    [
        memmem::Finder::new(b"\"content\":\""),
        memmem::Finder::new(b"\"text\":\""),
        memmem::Finder::new(b"\"arguments\":\""),
        memmem::Finder::new(b"\"partial_json\":\""),
        memmem::Finder::new(b"\"thinking\":\""),
    ]
});

/// Characters of generated text in one event, for a usage estimate when the upstream reports
/// none.
fn content_chars(data: &[u8]) -> usize {
    TEXT_FIELDS
        .iter()
        .map(|finder| {
            finder
                .find_iter(data)
                .map(|at| string_length(&data[at + finder.needle().len()..]))
                .sum::<usize>()
        })
        .sum()
}

/// Length of a JSON string body up to its closing quote.
fn string_length(bytes: &[u8]) -> usize {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The failure in an upstream's error event, for the protocols that pass through.
pub fn passthrough_failure(wire: Wire, data: &Value) -> UpstreamFailure {
    match wire {
        Wire::Anthropic => from_anthropic(0, data),
        _ => from_openai(0, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_chunk_hidden_when_only_the_gateway_asked() {
        let mut watch = Watch::new(Wire::OpenAi, true);
        let events = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n\
data: [DONE]\n\n",
        );
        let out = watch_events(&mut watch, events).unwrap();
        let text = std::str::from_utf8(&out).unwrap();
        assert!(!text.contains("prompt_tokens"), "{text}");
        assert!(text.contains("\"content\":\"hi\"") && text.ends_with("data: [DONE]\n\n"));
        assert!(watch.done);
        assert_eq!(watch.usage.unwrap().input, 3);
        assert_eq!(watch.output_chars, 2);

        let mut keep = Watch::new(Wire::OpenAi, false);
        let events =
            Bytes::from_static(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n");
        assert_eq!(watch_events(&mut keep, events.clone()).unwrap(), events);
    }

    #[test]
    fn anthropic_usage_is_read_on_the_side() {
        let mut watch = Watch::new(Wire::Anthropic, false);
        let events = Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        assert_eq!(watch_events(&mut watch, events.clone()).unwrap(), events);
        let usage = watch.usage.unwrap();
        assert_eq!((usage.input, usage.output), (10, 7));
        assert!(watch.done);
    }

    #[test]
    fn content_characters() {
        assert_eq!(content_chars(br#"{"delta":{"content":"a\"b"}}"#), 4);
        assert_eq!(
            content_chars(br#"{"delta":{"tool_calls":[{"function":{"arguments":"{}"}}]}}"#),
            2
        );
        assert_eq!(content_chars(br#"{"delta":{"content":null}}"#), 0);
    }
}
