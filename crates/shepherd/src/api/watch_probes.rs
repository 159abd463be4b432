//! What the stream watch (`watch.rs`) reads of each upstream event: borrowed probes that take
//! only the fields it needs (usage, errors, text lengths, finish reasons), and summaries filled
//! while parsing so that no list is built per event.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A Responses API stream event, as little of it as the watch needs: its type, its number,
/// and the length of a text or arguments delta.
#[derive(Deserialize)]
pub(super) struct ResponsesProbe<'a> {
    #[serde(rename = "type", default, borrow)]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) sequence_number: Option<u64>,
    #[serde(default)]
    pub(super) delta: TextLen,
}

/// An OpenAI chunk (chat or legacy completion), as little of it as the watch needs.
#[derive(Deserialize)]
pub(super) struct ChunkProbe<'a> {
    #[serde(default)]
    pub(super) choices: Option<ChoicesSummary>,
    #[serde(default, borrow)]
    pub(super) usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub(super) error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct ChoiceProbe {
    #[serde(default)]
    pub(super) delta: Option<DeltaProbe>,
    /// A legacy completion's text.
    #[serde(default)]
    pub(super) text: TextLen,
    #[serde(default, deserialize_with = "present")]
    pub(super) finish_reason: Option<()>,
}

#[derive(Deserialize)]
pub(super) struct DeltaProbe {
    #[serde(default)]
    pub(super) content: TextLen,
    #[serde(default)]
    pub(super) refusal: TextLen,
    /// DeepSeek, vLLM and others.
    #[serde(default)]
    pub(super) reasoning_content: TextLen,
    /// OpenRouter and others.
    #[serde(default)]
    pub(super) reasoning: TextLen,
    #[serde(default)]
    pub(super) tool_calls: Option<ToolCallsSummary>,
    #[serde(default)]
    pub(super) function_call: Option<FunctionProbe>,
}

/// A chunk's `choices`, summed while read (one list per event would be an allocation per
/// event): the characters of output they carry, and whether any carries content, a tool call
/// or a finish reason.
#[derive(Default)]
pub(super) struct ChoicesSummary {
    pub(super) chars: usize,
    pub(super) carries_content: bool,
}

impl<'de> Deserialize<'de> for ChoicesSummary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ChoicesVisitor)
    }
}

struct ChoicesVisitor;

impl<'de> Visitor<'de> for ChoicesVisitor {
    type Value = ChoicesSummary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of choices")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ChoicesSummary, A::Error> {
        let mut summary = ChoicesSummary::default();
        while let Some(choice) = seq.next_element::<ChoiceProbe>()? {
            let delta = choice.delta.as_ref();
            let calls = delta.and_then(|delta| delta.tool_calls.as_ref());
            let chars = choice.text.0
                + delta.map_or(0, |delta| {
                    delta.content.0
                        + delta.refusal.0
                        + delta.reasoning_content.0
                        + delta.reasoning.0
                        + delta
                            .function_call
                            .as_ref()
                            .map_or(0, |call| call.arguments.0)
                        + calls.map_or(0, |calls| calls.arguments)
                });
            let calls = calls.is_some_and(|calls| calls.count > 0)
                || delta.is_some_and(|delta| delta.function_call.is_some());
            summary.chars += chars;
            summary.carries_content |= chars > 0 || calls || choice.finish_reason.is_some();
        }
        Ok(summary)
    }
}

/// A delta's `tool_calls`, summed while read: how many, and the characters of their arguments.
#[derive(Default)]
pub(super) struct ToolCallsSummary {
    pub(super) count: usize,
    pub(super) arguments: usize,
}

impl<'de> Deserialize<'de> for ToolCallsSummary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ToolCallsVisitor)
    }
}

struct ToolCallsVisitor;

impl<'de> Visitor<'de> for ToolCallsVisitor {
    type Value = ToolCallsSummary;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of tool calls")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ToolCallsSummary, A::Error> {
        let mut summary = ToolCallsSummary::default();
        while let Some(call) = seq.next_element::<ToolCallProbe>()? {
            summary.count += 1;
            summary.arguments += call.function.map_or(0, |function| function.arguments.0);
        }
        Ok(summary)
    }
}

#[derive(Deserialize)]
pub(super) struct ToolCallProbe {
    #[serde(default)]
    pub(super) function: Option<FunctionProbe>,
}

#[derive(Deserialize)]
pub(super) struct FunctionProbe {
    #[serde(default)]
    pub(super) arguments: TextLen,
}

/// An Anthropic stream event, as little of it as the watch needs.
#[derive(Deserialize)]
pub(super) struct AnthropicProbe<'a> {
    #[serde(rename = "type", default, borrow)]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) message: Option<MessageProbe<'a>>,
    #[serde(default, borrow)]
    pub(super) usage: Option<&'a RawValue>,
    #[serde(default)]
    pub(super) content_block: Option<BlockProbe>,
    #[serde(default)]
    pub(super) delta: Option<BlockProbe>,
}

#[derive(Deserialize)]
pub(super) struct MessageProbe<'a> {
    #[serde(default, borrow)]
    pub(super) usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct BlockProbe {
    #[serde(default)]
    pub(super) text: TextLen,
    #[serde(default)]
    pub(super) thinking: TextLen,
    #[serde(default)]
    pub(super) partial_json: TextLen,
}

/// Some value, `null` being none.
pub(super) fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<()>, D::Error> {
    let value = Option::<IgnoredAny>::deserialize(deserializer)?;
    Ok(value.map(|_| ()))
}

/// The length of a JSON string value, unescaped; any other value (null, a list of parts…)
/// counts 0 and is skipped without being built.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TextLen(pub(super) usize);

impl<'de> Deserialize<'de> for TextLen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextLenVisitor)
    }
}

struct TextLenVisitor;

impl<'de> Visitor<'de> for TextLenVisitor {
    type Value = TextLen;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<TextLen, E> {
        Ok(TextLen(text.len()))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_unit<E: de::Error>(self) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_none<E: de::Error>(self) -> Result<TextLen, E> {
        Ok(TextLen(0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextLen, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TextLen(0))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TextLen, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(TextLen(0))
    }
}
