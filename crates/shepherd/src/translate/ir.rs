//! The canonical form every translation goes through: a chat request, a whole response, the
//! events of a stream and one usage record. Client protocols decode into it and encode out of
//! it; upstream protocols do the reverse. Nothing here knows a wire format.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A chat request, whatever protocol it came in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// The model as the upstream knows it.
    pub model: String,
    /// Every system (and developer) instruction, joined in order.
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: Option<bool>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub stop: Vec<String>,
    /// OpenAI `n`, Gemini `candidateCount`.
    pub candidates: Option<u64>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub response_format: Option<ResponseFormat>,
    pub reasoning: Option<Reasoning>,
    /// An end-user id for the provider's abuse monitoring.
    pub user: Option<String>,
    pub stream: bool,
    /// The client marked parts for Anthropic's prompt cache (`cache_control`).
    pub cache_control: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Part {
    Text(String),
    Image(Media),
    /// A PDF or other document.
    Document(Media),
    ToolCall(ToolCall),
    ToolResult(ToolResult),
    /// Model reasoning (Anthropic thinking, Gemini thought parts), with the provider's signature.
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Anthropic's encrypted thinking, returned as is.
    RedactedThinking(String),
}

/// Image or document bytes, inline or by URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Media {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, exactly as the model wrote them.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call_id: String,
    /// Text and images.
    pub content: Vec<Part>,
    pub is_error: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments (always an object schema).
    pub parameters: Value,
    /// Arguments must follow the schema exactly (OpenAI and Anthropic structured outputs).
    pub strict: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Named(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { name: String, schema: Value },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reasoning {
    /// `minimal`, `low`, `medium`, `high`…
    Effort(String),
    /// A token budget.
    Budget(u64),
    Disabled,
}

impl Reasoning {
    /// A thinking budget in tokens for providers that take one (a gateway convention for
    /// efforts).
    pub fn budget(&self) -> Option<u64> {
        match self {
            Reasoning::Budget(tokens) => Some(*tokens),
            Reasoning::Disabled => None,
            Reasoning::Effort(effort) => match effort.as_str() {
                "none" => None,
                "minimal" => Some(1024),
                "low" => Some(2048),
                "medium" => Some(8192),
                _ => Some(24576),
            },
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

/// A whole (non-streamed) answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: Option<String>,
    pub model: Option<String>,
    /// Text, tool calls and thinking, in order (of the first choice).
    pub parts: Vec<Part>,
    pub finish: Finish,
    /// The stop sequence that ended the answer, when the upstream says.
    pub stop_sequence: Option<String>,
    /// The choices after the first, when several were asked for (OpenAI `n`, Gemini's
    /// `candidateCount`): choice 1, 2, …
    pub alternatives: Vec<Choice>,
    pub usage: Option<Usage>,
}

/// One more choice of an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub parts: Vec<Part>,
    pub finish: Finish,
    pub stop_sequence: Option<String>,
}

impl Response {
    /// The text parts joined (of the first choice).
    pub fn text(&self) -> String {
        text_of(&self.parts)
    }

    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        self.parts.iter().filter_map(|part| match part {
            Part::ToolCall(call) => Some(call),
            _ => None,
        })
    }

    /// Every choice, the first one included, in order.
    pub fn choices(&self) -> impl Iterator<Item = ChoiceRef<'_>> {
        std::iter::once(ChoiceRef {
            parts: &self.parts,
            finish: self.finish,
            stop_sequence: self.stop_sequence.as_deref(),
        })
        .chain(self.alternatives.iter().map(|choice| ChoiceRef {
            parts: &choice.parts,
            finish: choice.finish,
            stop_sequence: choice.stop_sequence.as_deref(),
        }))
    }
}

/// A view of one choice of an answer.
#[derive(Debug, Clone, Copy)]
pub struct ChoiceRef<'a> {
    pub parts: &'a [Part],
    pub finish: Finish,
    pub stop_sequence: Option<&'a str>,
}

impl ChoiceRef<'_> {
    /// The text parts joined.
    pub fn text(&self) -> String {
        text_of(self.parts)
    }
}

/// The text parts of `parts` joined.
pub fn text_of(parts: &[Part]) -> String {
    parts
        .iter()
        .filter_map(|part| match part {
            Part::Text(text) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The finish a choice with tool calls really had: some upstreams say `stop` (or `end_turn`)
/// after calling tools, which would end a client's agent loop.
pub fn finish_with_calls(finish: Finish, has_calls: bool) -> Finish {
    match finish {
        Finish::Stop if has_calls => Finish::ToolCalls,
        other => other,
    }
}

/// One event of a stream, as it arrives.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The answer began.
    Start {
        id: Option<String>,
        model: Option<String>,
    },
    /// The events that follow belong to this choice (0 until said otherwise; only answers with
    /// several choices say it).
    Choice(usize),
    Text(String),
    Thinking(String),
    /// A tool call began; `index` counts the choice's tool calls from 0 in the order they began.
    ToolStart {
        index: usize,
        id: String,
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolArgs {
        index: usize,
        fragment: String,
    },
    Finish {
        reason: Finish,
        stop_sequence: Option<String>,
    },
    /// Usage so far (each one replaces the last).
    Usage(Usage),
}

/// Token counts of one request, normalised: `input` includes cached tokens, `output` includes
/// reasoning tokens, whatever the upstream's own convention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input: u64,
    /// Part of `input` read from the provider's prompt cache.
    pub cache_read: u64,
    /// Part of `input` written to the provider's prompt cache.
    pub cache_write: u64,
    pub output: u64,
    /// Part of `output` spent on reasoning.
    pub reasoning: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    /// The counts within what one request can plausibly use (`bounds::MAX_REPORTED_TOKENS`):
    /// an upstream reporting absurd numbers cannot overflow sums, budgets or reports.
    pub fn clamped(self) -> Usage {
        let cap = |n: u64| n.min(crate::bounds::MAX_REPORTED_TOKENS);
        Usage {
            input: cap(self.input),
            cache_read: cap(self.cache_read),
            cache_write: cap(self.cache_write),
            output: cap(self.output),
            reasoning: cap(self.reasoning),
        }
    }
}

/// Whether token counts came from the upstream or were estimated by the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    Reported,
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Reported => "reported",
            UsageSource::Estimated => "estimated",
        }
    }
}

/// A rough token count of `text` (about four characters a token), for when the upstream
/// reports none.
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}
