//! What translation does with every top-level field a client sends, per upstream protocol:
//! carried (the upstream gets its equivalent), dropped (the upstream has none; the answer says so
//! in `x-shepherd-dropped`), or refused (400 naming the field: going on without it would change
//! the answer in a way the client cannot see). Fields outside these tables are dropped and named
//! too, so nothing a client sent vanishes without a word. `docs/translation.md` is this table in
//! prose; a test keeps the two in step.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::TranslateError;
use super::ir::{Request, Tool};
use crate::config::Wire;
use crate::providers::Endpoint;

/// What becomes of one field on the way to one upstream protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Carried,
    Dropped,
    /// Refused, with the reason.
    Refused(&'static str),
}

use Fate::{Carried as C, Dropped as D, Refused as R};

/// One field: its fate towards OpenAI-compatible, Anthropic and Gemini upstreams.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub field: &'static str,
    pub openai: Fate,
    pub anthropic: Fate,
    pub gemini: Fate,
}

const fn row(field: &'static str, openai: Fate, anthropic: Fate, gemini: Fate) -> Row {
    Row {
        field,
        openai,
        anthropic,
        gemini,
    }
}

const AUDIO: Fate = R("audio output is not translated; use an OpenAI-compatible model");
const LEGACY_FUNCTIONS: Fate = R("the legacy `functions` API is not translated; use `tools`");
const WEB_SEARCH: Fate = R("web search runs only on OpenAI upstreams");
const SERVER_SIDE: Fate = R("this runs only on Anthropic upstreams");
const SUFFIX: Fate = R("insertion (`suffix`) is not translated");
const ECHO: Fate = R("`echo` is not translated");
const BEST_OF: Fate = R("`best_of` is not translated");

/// OpenAI `/v1/chat/completions` (an OpenAI upstream gets it passed through).
pub const CHAT: &[Row] = &[
    row("model", C, C, C),
    row("messages", C, C, C),
    row("stream", C, C, C),
    row("stream_options", C, C, C),
    row("max_tokens", C, C, C),
    row("max_completion_tokens", C, C, C),
    row("temperature", C, C, C),
    row("top_p", C, C, C),
    row("stop", C, C, C),
    row("n", C, C, C),
    row("seed", C, D, C),
    row("frequency_penalty", C, D, C),
    row("presence_penalty", C, D, C),
    row("tools", C, C, C),
    row("tool_choice", C, C, C),
    row("parallel_tool_calls", C, C, D),
    row("response_format", C, C, C),
    row("reasoning_effort", C, C, C),
    row("user", C, C, D),
    row("safety_identifier", C, C, D),
    row("logprobs", C, D, D),
    row("top_logprobs", C, D, D),
    row("logit_bias", C, D, D),
    row("metadata", C, D, D),
    row("store", C, D, D),
    row("service_tier", C, D, D),
    row("prompt_cache_key", C, D, D),
    row("prompt_cache_retention", C, D, D),
    row("prediction", C, D, D),
    row("verbosity", C, D, D),
    row("modalities", C, AUDIO, AUDIO),
    row("audio", C, AUDIO, AUDIO),
    row("web_search_options", C, WEB_SEARCH, WEB_SEARCH),
    row("functions", C, LEGACY_FUNCTIONS, LEGACY_FUNCTIONS),
    row("function_call", C, LEGACY_FUNCTIONS, LEGACY_FUNCTIONS),
];

/// OpenAI's legacy `/v1/completions`.
pub const COMPLETION: &[Row] = &[
    row("model", C, C, C),
    row("prompt", C, C, C),
    row("stream", C, C, C),
    row("stream_options", C, C, C),
    row("max_tokens", C, C, C),
    row("temperature", C, C, C),
    row("top_p", C, C, C),
    row("stop", C, C, C),
    row("n", C, C, C),
    row("seed", C, D, C),
    row("frequency_penalty", C, D, C),
    row("presence_penalty", C, D, C),
    row("user", C, C, D),
    row("logprobs", C, D, D),
    row("logit_bias", C, D, D),
    row("suffix", C, SUFFIX, SUFFIX),
    row("echo", C, ECHO, ECHO),
    row("best_of", C, BEST_OF, BEST_OF),
];

/// OpenAI `/v1/embeddings` (only Gemini translates them).
pub const EMBEDDINGS: &[Row] = &[
    row("model", C, C, C),
    row("input", C, C, C),
    row("dimensions", C, C, C),
    row("encoding_format", C, C, C),
    row("user", C, D, D),
];

/// Anthropic `/v1/messages` (an Anthropic upstream gets it passed through).
pub const MESSAGES: &[Row] = &[
    row("model", C, C, C),
    row("messages", C, C, C),
    row("max_tokens", C, C, C),
    row("system", C, C, C),
    row("stop_sequences", C, C, C),
    row("temperature", C, C, C),
    row("top_p", C, C, C),
    row("top_k", D, C, C),
    row("stream", C, C, C),
    row("tools", C, C, C),
    row("tool_choice", C, C, C),
    row("metadata", C, C, D),
    row("thinking", C, C, C),
    row("output_config", C, C, C),
    row("service_tier", D, C, D),
    row("context_management", D, C, D),
    row("inference_geo", D, C, D),
    row("container", SERVER_SIDE, C, SERVER_SIDE),
    row("mcp_servers", SERVER_SIDE, C, SERVER_SIDE),
];

const STORED: Fate = R(
    "conversation objects and background responses are not kept by the gateway: continue with `previous_response_id`, or send the whole conversation in `input`",
);
const PROMPT_TEMPLATE: Fate =
    R("prompt templates live on OpenAI's servers; send `instructions` and `input`");

/// OpenAI `/v1/responses`, translated for every upstream (chat completions, messages,
/// generateContent). Built-in tools are refused by the decoder, naming the tool.
pub const RESPONSES: &[Row] = &[
    row("model", C, C, C),
    row("input", C, C, C),
    row("instructions", C, C, C),
    row("stream", C, C, C),
    row("max_output_tokens", C, C, C),
    row("temperature", C, C, C),
    row("top_p", C, C, C),
    row("tools", C, C, C),
    row("tool_choice", C, C, C),
    row("parallel_tool_calls", C, C, D),
    row("text", C, C, C),
    row("reasoning", C, C, C),
    row("user", C, C, D),
    row("safety_identifier", C, C, D),
    row("metadata", D, D, D),
    // Handled by the gateway (`api/stored.rs`): `previous_response_id` is taken out before
    // translation (the conversation put in `input`), `store` says whether the gateway keeps it.
    row("store", C, C, C),
    row("previous_response_id", C, C, C),
    row("include", D, D, D),
    row("truncation", D, D, D),
    row("service_tier", D, D, D),
    row("prompt_cache_key", D, D, D),
    row("top_logprobs", D, D, D),
    row("stream_options", D, D, D),
    row("max_tool_calls", D, D, D),
    row("conversation", STORED, STORED, STORED),
    row("background", STORED, STORED, STORED),
    row("prompt", PROMPT_TEMPLATE, PROMPT_TEMPLATE, PROMPT_TEMPLATE),
];

/// The table of a client route.
pub fn table(endpoint: Endpoint) -> &'static [Row] {
    endpoint.shape().map_or(EMBEDDINGS, |shape| shape.fields())
}

impl Row {
    fn fate(&self, upstream: Wire) -> Fate {
        match upstream {
            Wire::OpenAi => self.openai,
            Wire::Anthropic => self.anthropic,
            Wire::Gemini => self.gemini,
        }
    }
}

/// Checks the top-level fields of a client body about to be translated for `upstream`: the
/// fields that will be dropped (named in `x-shepherd-dropped`), or the first refused one.
pub fn check(
    endpoint: Endpoint,
    upstream: Wire,
    body: &[u8],
) -> Result<Vec<String>, TranslateError> {
    let Ok(fields) = serde_json::from_slice::<BTreeMap<String, &RawValue>>(body) else {
        // The decoder says what is wrong with the body.
        return Ok(Vec::new());
    };
    let table = table(endpoint);
    let mut dropped = Vec::new();
    for (name, value) in fields {
        if is_empty(name.as_str(), value.get()) {
            continue;
        }
        let fate = table
            .iter()
            .find(|row| row.field == name)
            .map_or(Fate::Dropped, |row| row.fate(upstream));
        match fate {
            Fate::Carried => {}
            Fate::Dropped => dropped.push(name),
            Fate::Refused(reason) => return Err(TranslateError::field(&name, reason)),
        }
    }
    Ok(dropped)
}

/// A value that asks for nothing: `null`, `false`, an empty list or object, and `1` for the
/// counts whose default is 1.
fn is_empty(field: &str, value: &str) -> bool {
    match value.trim() {
        "null" | "false" | "[]" | "{}" | "\"\"" => true,
        "1" => matches!(field, "n" | "best_of"),
        _ => false,
    }
}

/// Fields nested deeper that the upstream has no place for: tool `strict` flags (Gemini) and
/// Anthropic `cache_control` marks (any other upstream).
pub fn nested_drops(request: &Request, upstream: Wire, dropped: &mut Vec<String>) {
    if upstream == Wire::Gemini && request.tools.iter().any(|tool: &Tool| tool.strict) {
        dropped.push("tools[].strict".to_owned());
    }
    if upstream != Wire::Anthropic && request.cache_control {
        dropped.push("cache_control".to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_carried_dropped_or_refused_per_upstream() {
        let body = br#"{"model":"m","messages":[],"seed":7,"logprobs":true,"n":1,
                         "parallel_tool_calls":false,"metadata":null,"x_unknown":{"a":1}}"#;
        let to_anthropic = check(Endpoint::ChatCompletions, Wire::Anthropic, body).unwrap();
        assert_eq!(to_anthropic, ["logprobs", "seed", "x_unknown"]);
        let to_gemini = check(Endpoint::ChatCompletions, Wire::Gemini, body).unwrap();
        assert_eq!(to_gemini, ["logprobs", "x_unknown"]);
        let refused = check(
            Endpoint::ChatCompletions,
            Wire::Gemini,
            br#"{"model":"m","messages":[],"functions":[{"name":"f"}]}"#,
        )
        .unwrap_err();
        assert_eq!(refused.field.as_deref(), Some("functions"));
        let anthropic = br#"{"model":"m","max_tokens":5,"messages":[],"top_k":5,"mcp_servers":[]}"#;
        assert_eq!(
            check(Endpoint::Messages, Wire::OpenAi, anthropic).unwrap(),
            ["top_k"]
        );
        assert!(
            check(Endpoint::Messages, Wire::Gemini, anthropic)
                .unwrap()
                .is_empty()
        );
        let mcp = br#"{"model":"m","max_tokens":5,"messages":[],"mcp_servers":[{"url":"x"}]}"#;
        assert!(check(Endpoint::Messages, Wire::OpenAi, mcp).is_err());
    }

    #[test]
    fn the_documentation_names_every_field() {
        let docs = include_str!("../../../../docs/translation.md");
        for (table, name) in [
            (CHAT, "chat"),
            (COMPLETION, "completions"),
            (EMBEDDINGS, "embeddings"),
            (MESSAGES, "messages"),
            (RESPONSES, "responses"),
        ] {
            for row in table {
                assert!(
                    docs.contains(&format!("`{}`", row.field)),
                    "docs/translation.md does not name `{}` ({name})",
                    row.field
                );
            }
        }
    }
}
