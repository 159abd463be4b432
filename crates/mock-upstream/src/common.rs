//! Helpers shared by every protocol: the deterministic reply (an echo of the last message, padded
//! and truncated by words), its spreading over stream chunks, the tool-call rule and the split of
//! the tool arguments.

/// Content chunks of a stream when the behaviour does not say.
pub(crate) const DEFAULT_CHUNKS: usize = 4;
/// The arguments of every mock tool call.
pub(crate) const TOOL_ARGUMENTS: &str = r#"{"location":"Paris"}"#;
/// The completion tokens reported for a tool call.
pub(crate) const TOOL_COMPLETION_TOKENS: u64 = 12;
/// The prompt tokens added per message (and per system prompt) on top of its words.
pub(crate) const TOKENS_PER_MESSAGE: u64 = 4;

const MAX_ECHO_CHARS: usize = 200;
const REPLY_PREFIX: &str = "Mock reply to: ";
const PAD_WORD: &str = "lorem";

/// The words of the reply to `input`, padded with filler words up to `min_words`.
pub(crate) fn reply_words(input: &str, min_words: usize) -> Vec<String> {
    let truncated: String = input.chars().take(MAX_ECHO_CHARS).collect();
    let mut words: Vec<String> = REPLY_PREFIX
        .split_whitespace()
        .chain(truncated.split_whitespace())
        .map(str::to_owned)
        .collect();
    while words.len() < min_words {
        words.push(PAD_WORD.to_owned());
    }
    words
}

/// Truncates `words` to `max_tokens` words; returns whether it had to.
pub(crate) fn truncate_words(words: &mut Vec<String>, max_tokens: Option<u64>) -> bool {
    match max_tokens.and_then(|m| usize::try_from(m).ok()) {
        Some(max) if max < words.len() => {
            words.truncate(max);
            true
        }
        _ => false,
    }
}

/// Spreads `words` over exactly `pieces` stream chunks (words keep their separating spaces, so
/// the concatenation of the pieces is `words.join(" ")`).
pub(crate) fn spread_words(words: &[String], pieces: usize) -> Vec<String> {
    let n = words.len();
    (0..pieces)
        .map(|i| {
            let (start, end) = (i * n / pieces, (i + 1) * n / pieces);
            let mut piece = String::new();
            for (j, word) in words[start..end].iter().enumerate() {
                if start + j > 0 {
                    piece.push(' ');
                }
                piece.push_str(word);
            }
            piece
        })
        .collect()
}

/// Splits `s` (ASCII) into `pieces` non-empty parts (fewer if `s` is shorter).
pub(crate) fn split_ascii(s: &str, pieces: usize) -> Vec<&str> {
    let pieces = pieces.clamp(1, s.len().max(1));
    let n = s.len();
    (0..pieces)
        .filter_map(|i| s.get(i * n / pieces..(i + 1) * n / pieces))
        .collect()
}

/// Whether the last message asks for the weather (then a request with tools gets a tool call).
pub(crate) fn wants_tool(last_text: &str) -> bool {
    last_text.to_ascii_lowercase().contains("weather")
}

/// The number of whitespace-separated words of `text` (the mock's token count).
pub(crate) fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// Appends `text` to `out`, separated by a space.
pub(crate) fn push_text(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_spread_and_padded() {
        let words = reply_words("hi", 6);
        assert_eq!(words.len(), 6);
        let pieces = spread_words(&words, 6);
        assert_eq!(pieces.concat(), words.join(" "));
        assert!(pieces.iter().all(|p| !p.is_empty()));

        let words = reply_words("a b c d e f g h", 3);
        let pieces = spread_words(&words, 3);
        assert_eq!(pieces.len(), 3);
        assert_eq!(pieces.concat(), "Mock reply to: a b c d e f g h");
    }

    #[test]
    fn truncation_and_argument_pieces() {
        let mut words = reply_words("a b c", 4);
        assert!(!truncate_words(&mut words, Some(6)));
        assert!(!truncate_words(&mut words, None));
        assert!(truncate_words(&mut words, Some(2)));
        assert_eq!(words.join(" "), "Mock reply");

        let parts = split_ascii(TOOL_ARGUMENTS, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.concat(), TOOL_ARGUMENTS);
        assert_eq!(split_ascii(TOOL_ARGUMENTS, 1000).concat(), TOOL_ARGUMENTS);
    }
}
