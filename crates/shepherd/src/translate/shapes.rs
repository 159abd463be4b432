//! The client shapes a gateway route speaks, each one codec behind the `ClientShape` trait, and
//! the upstream protocols' decoders: the one place that maps a route or a wire to its code.
//! The request path (`api/exchange.rs`, `answer.rs`, `attempts.rs`, `relay.rs`,
//! `cache/replay.rs`) asks these for codecs instead of matching on protocols; a new client shape
//! is one module plus its line in `Endpoint::shape` (see docs/architecture.md).

use serde_json::Value;

use super::errors::{self, UpstreamFailure};
use super::fields::{self, Row};
use super::ir::{Request, Response, Usage};
use super::stream::{Decoder, Encoder};
use super::{TranslateError, anthropic, gemini, openai, responses};
use crate::api::errors::ClientProtocol;
use crate::api::new_id;
use crate::config::Wire;
use crate::providers::{Endpoint, Operation};

/// What a response repeats of its request (Responses API only; empty for the other shapes).
pub use responses::response::Echo;

/// One client shape's codec: its requests decoded into the canonical form, canonical answers
/// and stream events encoded back.
pub trait ClientShape: Sync {
    /// The path clients call.
    fn route(&self) -> &'static str;
    /// The protocol of its errors.
    fn protocol(&self) -> ClientProtocol;
    /// The upstream protocol that takes this shape's bodies unchanged (pass-through), if any.
    fn passthrough(&self) -> Option<Wire>;
    /// What translation does with each top-level field.
    fn fields(&self) -> &'static [Row];
    fn decode_request(&self, body: &[u8]) -> Result<Request, TranslateError>;
    /// An answer body of this shape read back into the canonical form (for the cache).
    fn decode_answer(&self, body: &Value) -> Result<Response, String>;
    fn encode_answer(&self, answer: &Response, model: &str, usage: &Usage, echo: &Echo) -> Value;
    fn stream_encoder(&self, model: String, include_usage: bool, echo: Echo) -> Box<dyn Encoder>;
    /// Each answer has an identity of its own (a stored response): a cached answer is encoded
    /// anew rather than replayed byte for byte.
    fn fresh_per_answer(&self) -> bool {
        false
    }
    /// The usage object of one of this shape's answers (or stream events), read.
    fn usage_of(&self, usage: &Value) -> Option<Usage>;
    /// The same, from the usage object's JSON text (a shape may read it without a `Value`).
    fn usage_of_json(&self, json: &str) -> Option<Usage> {
        serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|usage| self.usage_of(&usage))
    }
    /// How a passed-through stream of this shape is watched (`api/watch.rs`).
    fn grammar(&self) -> Grammar;
    /// The upstream operation that takes this shape's bodies unchanged.
    fn passthrough_operation(&self) -> Operation;
    /// A passed-through stream reports usage only when asked (`stream_options.include_usage`,
    /// which the gateway then asks for itself).
    fn usage_on_request(&self) -> bool {
        false
    }
}

/// The event grammar of a stream, for watching it when it is passed through: where its end,
/// usage and errors are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grammar {
    /// OpenAI chunks: `data: [DONE]` ends, usage in a chunk, `{"error"}` events.
    OpenAiChunks,
    /// Anthropic named events: `message_stop` ends, usage in `message_start`/`message_delta`.
    Anthropic,
    /// Responses API typed events: `response.completed`/`incomplete` ends with the usage,
    /// `response.failed` and `error` fail.
    Responses,
}

impl Endpoint {
    /// The codec of the route's shape (`None` for embeddings, which are not chat).
    pub fn shape(self) -> Option<&'static dyn ClientShape> {
        match self {
            Endpoint::ChatCompletions => Some(&CHAT),
            Endpoint::Completions => Some(&COMPLETION),
            Endpoint::Messages => Some(&MessagesShape),
            Endpoint::Responses => Some(&ResponsesShape),
            Endpoint::Embeddings => None,
        }
    }
}

fn envelope(prefix: &str, model: &str) -> openai::response::Envelope {
    openai::response::Envelope {
        id: new_id(prefix),
        model: model.to_owned(),
        created: crate::api::unix_now(),
    }
}

/// OpenAI's chat completions and legacy completions: one codec, two routes.
struct OpenAiShape {
    route: &'static str,
    fields: &'static [Row],
    operation: Operation,
    /// The id prefix of its answers.
    prefix: &'static str,
    kind: openai::stream::ChunkKind,
    decode: fn(&[u8]) -> Result<Request, TranslateError>,
    encode: fn(&Response, &openai::response::Envelope, &Usage) -> Value,
}

const CHAT: OpenAiShape = OpenAiShape {
    route: "/v1/chat/completions",
    fields: fields::CHAT,
    operation: Operation::ChatCompletions,
    prefix: "chatcmpl-",
    kind: openai::stream::ChunkKind::Chat,
    decode: openai::request::decode_chat,
    encode: openai::response::encode_chat,
};

const COMPLETION: OpenAiShape = OpenAiShape {
    route: "/v1/completions",
    fields: fields::COMPLETION,
    operation: Operation::Completions,
    prefix: "cmpl-",
    kind: openai::stream::ChunkKind::Completion,
    decode: openai::request::decode_completion,
    encode: openai::response::encode_completion,
};

impl ClientShape for OpenAiShape {
    fn route(&self) -> &'static str {
        self.route
    }
    fn protocol(&self) -> ClientProtocol {
        ClientProtocol::OpenAi
    }
    fn passthrough(&self) -> Option<Wire> {
        Some(Wire::OpenAi)
    }
    fn fields(&self) -> &'static [Row] {
        self.fields
    }
    fn decode_request(&self, body: &[u8]) -> Result<Request, TranslateError> {
        (self.decode)(body)
    }
    fn decode_answer(&self, body: &Value) -> Result<Response, String> {
        openai::response::decode_chat(body)
    }
    fn usage_of(&self, usage: &Value) -> Option<Usage> {
        openai::response::usage_of(usage)
    }
    fn usage_of_json(&self, json: &str) -> Option<Usage> {
        openai::usage::usage_of_json(json)
    }
    fn grammar(&self) -> Grammar {
        Grammar::OpenAiChunks
    }
    fn passthrough_operation(&self) -> Operation {
        self.operation
    }
    fn usage_on_request(&self) -> bool {
        true
    }
    fn encode_answer(&self, answer: &Response, model: &str, usage: &Usage, _: &Echo) -> Value {
        (self.encode)(answer, &envelope(self.prefix, model), usage)
    }
    fn stream_encoder(&self, model: String, include_usage: bool, _: Echo) -> Box<dyn Encoder> {
        Box::new(openai::stream::ChatEncoder::new(
            envelope(self.prefix, &model),
            self.kind,
            include_usage,
        ))
    }
}

struct MessagesShape;

impl ClientShape for MessagesShape {
    fn route(&self) -> &'static str {
        "/v1/messages"
    }
    fn protocol(&self) -> ClientProtocol {
        ClientProtocol::Anthropic
    }
    fn passthrough(&self) -> Option<Wire> {
        Some(Wire::Anthropic)
    }
    fn fields(&self) -> &'static [Row] {
        fields::MESSAGES
    }
    fn decode_request(&self, body: &[u8]) -> Result<Request, TranslateError> {
        anthropic::request::decode(body)
    }
    fn decode_answer(&self, body: &Value) -> Result<Response, String> {
        anthropic::response::decode(body)
    }
    fn usage_of(&self, usage: &Value) -> Option<Usage> {
        usage
            .is_object()
            .then(|| anthropic::response::usage_of(usage, Usage::default()))
    }
    fn grammar(&self) -> Grammar {
        Grammar::Anthropic
    }
    fn passthrough_operation(&self) -> Operation {
        Operation::Messages
    }
    fn encode_answer(&self, answer: &Response, model: &str, usage: &Usage, _: &Echo) -> Value {
        anthropic::response::encode(answer, &new_id("msg_"), model, usage)
    }
    fn stream_encoder(&self, model: String, _: bool, _: Echo) -> Box<dyn Encoder> {
        Box::new(anthropic::stream::MessagesEncoder::new(
            new_id("msg_"),
            model,
        ))
    }
}

struct ResponsesShape;

impl ResponsesShape {
    fn envelope(model: &str, echo: Echo) -> responses::response::Envelope {
        responses::response::Envelope {
            id: new_id("resp_"),
            model: model.to_owned(),
            created: crate::api::unix_now(),
            echo,
        }
    }
}

impl ClientShape for ResponsesShape {
    fn route(&self) -> &'static str {
        "/v1/responses"
    }
    fn protocol(&self) -> ClientProtocol {
        ClientProtocol::OpenAi
    }
    /// OpenAI-compatible upstreams that offer `/responses` (`providers.*.responses: true`);
    /// the others get it translated.
    fn passthrough(&self) -> Option<Wire> {
        Some(Wire::OpenAi)
    }
    fn fields(&self) -> &'static [Row] {
        fields::RESPONSES
    }
    fn decode_request(&self, body: &[u8]) -> Result<Request, TranslateError> {
        responses::request::decode(body)
    }
    fn decode_answer(&self, body: &Value) -> Result<Response, String> {
        responses::response::decode(body)
    }
    fn usage_of(&self, usage: &Value) -> Option<Usage> {
        responses::response::usage_of(usage)
    }
    fn grammar(&self) -> Grammar {
        Grammar::Responses
    }
    fn passthrough_operation(&self) -> Operation {
        Operation::Responses
    }
    fn encode_answer(&self, answer: &Response, model: &str, usage: &Usage, echo: &Echo) -> Value {
        responses::response::encode(answer, &Self::envelope(model, echo.clone()), usage)
    }
    fn stream_encoder(&self, model: String, _: bool, echo: Echo) -> Box<dyn Encoder> {
        Box::new(responses::stream::ResponsesEncoder::new(Self::envelope(
            &model, echo,
        )))
    }
    fn fresh_per_answer(&self) -> bool {
        true
    }
}

/// A canonical request encoded for an upstream protocol, with the operation that takes it.
pub fn upstream_request(
    wire: Wire,
    request: &Request,
    default_max_tokens: u64,
) -> Result<(Operation, Value), TranslateError> {
    Ok(match wire {
        Wire::OpenAi => (
            Operation::ChatCompletions,
            openai::encode::encode_chat(request),
        ),
        Wire::Anthropic => (
            Operation::Messages,
            anthropic::request::encode(request, default_max_tokens)?,
        ),
        Wire::Gemini => (
            Operation::GenerateContent,
            gemini::request::encode(request)?,
        ),
    })
}

/// The decoder of an upstream protocol's stream.
pub fn upstream_decoder(wire: Wire) -> Box<dyn Decoder> {
    match wire {
        Wire::OpenAi => Box::<openai::stream::ChatDecoder>::default(),
        Wire::Anthropic => Box::<anthropic::stream::MessagesDecoder>::default(),
        Wire::Gemini => Box::<gemini::stream::GenerateDecoder>::default(),
    }
}

/// An upstream protocol's whole answer in the canonical form.
pub fn upstream_answer(wire: Wire, body: &Value) -> Result<Response, String> {
    match wire {
        Wire::OpenAi => openai::response::decode_chat(body),
        Wire::Anthropic => anthropic::response::decode(body),
        Wire::Gemini => gemini::response::decode(body),
    }
}

/// An upstream protocol's error body, classified.
pub fn upstream_failure(wire: Wire, status: u16, body: &Value) -> UpstreamFailure {
    match wire {
        Wire::OpenAi => errors::from_openai(status, body),
        Wire::Anthropic => errors::from_anthropic(status, body),
        Wire::Gemini => errors::from_gemini(status, body),
    }
}
