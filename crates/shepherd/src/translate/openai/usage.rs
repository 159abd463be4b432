//! OpenAI's `usage` object read straight from its JSON text, without building a `Value` (it is
//! read from every answer that passes through): the same numbers as `response::usage_of` on the
//! parsed value, for any input — missing or non-integer fields count as absent, a repeated field
//! counts its last value, and a `usage` that is not an object (or has no integer
//! `prompt_tokens`) is no usage.

use std::fmt;

use serde::Deserializer;
use serde::de::{IgnoredAny, MapAccess, Visitor};

use crate::translate::ir::Usage;

/// The usage in `json` (the text of a `usage` value), as `response::usage_of` reads it.
pub fn usage_of_json(json: &str) -> Option<Usage> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let read = deserializer.deserialize_any(UsageVisitor).ok()?;
    deserializer.end().ok()?;
    let read = read?;
    Some(Usage {
        input: read.prompt?,
        output: read.completion.unwrap_or(0),
        cache_read: read.prompt_details.first.unwrap_or(0),
        cache_write: read.prompt_details.second.unwrap_or(0),
        reasoning: read.completion_details.first.unwrap_or(0),
    })
}

#[derive(Default)]
struct Read {
    prompt: Option<u64>,
    completion: Option<u64>,
    prompt_details: Details,
    completion_details: Details,
}

/// Two counters of a details object (`cached_tokens` and `cache_write_tokens`, or
/// `reasoning_tokens`).
#[derive(Default)]
struct Details {
    first: Option<u64>,
    second: Option<u64>,
}

/// Any JSON value: `Some` for a non-negative integer, `None` for anything else.
struct LooseU64;

impl<'de> Visitor<'de> for LooseU64 {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_u64<E>(self, value: u64) -> Result<Option<u64>, E> {
        Ok(Some(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Option<u64>, E> {
        Ok(u64::try_from(value).ok())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

struct Loose;

impl<'de> serde::de::DeserializeSeed<'de> for Loose {
    type Value = Option<u64>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<u64>, D::Error> {
        deserializer.deserialize_any(LooseU64)
    }
}

/// A details object: its two counters by name; anything that is not an object has none.
struct DetailsVisitor {
    first: &'static str,
    second: &'static str,
}

impl<'de> Visitor<'de> for DetailsVisitor {
    type Value = Details;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Details, A::Error> {
        let mut details = Details::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.first {
                details.first = map.next_value_seed(Loose)?;
            } else if key == self.second {
                details.second = map.next_value_seed(Loose)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(details)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_unit<E>(self) -> Result<Details, E> {
        Ok(Details::default())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Details, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Details::default())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for DetailsVisitor {
    type Value = Details;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Details, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// The usage object; `None` when it is not an object.
struct UsageVisitor;

impl<'de> Visitor<'de> for UsageVisitor {
    type Value = Option<Read>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Read>, A::Error> {
        let mut read = Read::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "prompt_tokens" => read.prompt = map.next_value_seed(Loose)?,
                "completion_tokens" => read.completion = map.next_value_seed(Loose)?,
                "prompt_tokens_details" => {
                    read.prompt_details = map.next_value_seed(DetailsVisitor {
                        first: "cached_tokens",
                        second: "cache_write_tokens",
                    })?;
                }
                "completion_tokens_details" => {
                    read.completion_details = map.next_value_seed(DetailsVisitor {
                        first: "reasoning_tokens",
                        second: "",
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(read))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Option<Read>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Option<Read>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Option<Read>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Option<Read>, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Option<Read>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Option<Read>, E> {
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Read>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::openai::response::usage_of;

    #[test]
    fn agrees_with_the_value_reader_on_any_input() {
        let cases = [
            r#"{"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}"#,
            r#"{"prompt_tokens":12,"completion_tokens":30,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":9,"accepted_prediction_tokens":0}}"#,
            r#"{"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 3}}"#,
            r#"{"prompt_tokens": 5, "completion_tokens": 2.0}"#,
            r#"{"prompt_tokens": 5.5, "completion_tokens": 2}"#,
            r#"{"prompt_tokens": -1}"#,
            r#"{"prompt_tokens": "5"}"#,
            r#"{"completion_tokens": 5}"#,
            r#"{"prompt_tokens": 5, "prompt_tokens_details": null, "completion_tokens_details": "x"}"#,
            r#"{"prompt_tokens": 5, "prompt_tokens_details": [1, 2], "completion_tokens_details": 3}"#,
            r#"{"prompt_tokens": 1, "prompt_tokens": 8, "completion_tokens": 2}"#,
            r#"{"prompt_tokens": 3, "extra": {"nested": [1, {"a": null}]}, "completion_tokens": 1}"#,
            r#"{"prompt_tokens": 18446744073709551615, "completion_tokens": 18446744073709551616}"#,
            r#"{"prompt_tokens": 2, "completion_tokens_details": {"reasoning_tokens": null}}"#,
            r#"{"prompt_\u0074okens": 6}"#,
            "null",
            "7",
            "[]",
            r#""usage""#,
            "{}",
        ];
        for case in cases {
            let value: serde_json::Value = serde_json::from_str(case).unwrap_or_default();
            assert_eq!(usage_of_json(case), usage_of(&value), "{case}");
        }
    }
}
