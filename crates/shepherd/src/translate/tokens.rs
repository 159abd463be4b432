//! Counting a request's input tokens with OpenAI's own tokenizers (tiktoken's `o200k_base` for
//! current models, `cl100k_base` for GPT-4 and GPT-3.5), for upstreams that have no counting
//! endpoint (OpenAI-compatible ones, the built-in mock). Text is counted exactly; the framing
//! follows OpenAI's chat format (3 tokens per message, 3 to prime the reply); tool schemas are
//! counted as their JSON text and each image or document as 85 tokens (a low-detail tile), which
//! are approximations. The tables load on first use (tens of MB, so never at start).

use tiktoken_rs::CoreBPE;
use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};

use super::ir::{Part, Request};

/// Tokens of framing per message, and to prime the reply (OpenAI's chat format).
const PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;
/// Tokens per tool definition beyond its name, description and schema text.
const PER_TOOL: u64 = 8;
/// An image or document: the cost of one low-detail tile.
const PER_ATTACHMENT: u64 = 85;

/// A count, and the tokenizer that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub tokens: u64,
    /// `o200k_base` or `cl100k_base`.
    pub encoding: &'static str,
}

/// The input tokens of `request` for `model` (the upstream's model name chooses the tokenizer;
/// unknown names get `o200k_base`).
pub fn count(request: &Request, model: &str) -> Count {
    let (bpe, encoding) = match get_tokenizer(model) {
        Some(Tokenizer::Cl100kBase) => (tiktoken_rs::cl100k_base_singleton(), "cl100k_base"),
        _ => (tiktoken_rs::o200k_base_singleton(), "o200k_base"),
    };
    let text = |text: &str| bpe.count_ordinary(text) as u64;
    let mut tokens = REPLY_PRIMING;
    if let Some(system) = &request.system {
        tokens += PER_MESSAGE + 1 + text(system);
    }
    for message in &request.messages {
        tokens += PER_MESSAGE + 1;
        for part in &message.parts {
            tokens += part_tokens(bpe, part);
        }
    }
    for tool in &request.tools {
        tokens += PER_TOOL + text(&tool.name) + text(&tool.parameters.to_string());
        if let Some(description) = &tool.description {
            tokens += text(description);
        }
    }
    Count { tokens, encoding }
}

fn part_tokens(bpe: &CoreBPE, part: &Part) -> u64 {
    let text = |text: &str| bpe.count_ordinary(text) as u64;
    match part {
        Part::Text(body) => text(body),
        Part::Image(_) | Part::Document(_) => PER_ATTACHMENT,
        Part::ToolCall(call) => PER_MESSAGE + text(&call.name) + text(&call.arguments),
        Part::ToolResult(result) => {
            PER_MESSAGE
                + result
                    .content
                    .iter()
                    .map(|part| part_tokens(bpe, part))
                    .sum::<u64>()
        }
        Part::Thinking { text: body, .. } => text(body),
        Part::RedactedThinking(data) => (data.len() as u64).div_ceil(4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::{Message, Role};

    #[test]
    fn text_is_counted_with_the_models_tokenizer() {
        let request = Request {
            system: Some("You are terse.".into()),
            messages: vec![Message {
                role: Role::User,
                parts: vec![Part::Text("hello world".into())],
            }],
            ..Request::default()
        };
        let count = count(&request, "gpt-4o");
        // "You are terse." is 4 tokens and "hello world" 2 in o200k_base; framing 3 + 4 + 4.
        assert_eq!(count.encoding, "o200k_base");
        assert_eq!(count.tokens, 3 + (3 + 1 + 4) + (3 + 1 + 2));
        assert_eq!(super::count(&request, "gpt-4").encoding, "cl100k_base");
        assert_eq!(super::count(&request, "qwen3-32b").encoding, "o200k_base");
    }
}
