//! OpenAI's `usage` object read straight from its JSON text, without building a `Value` (it is
//! read from every answer that passes through): the same numbers as `response::usage_of` on the
//! parsed value, for any input — missing or non-integer fields count as absent, a repeated field
//! counts its last value, and a `usage` that is not an object (or has no integer
//! `prompt_tokens`) is no usage.

use std::fmt;

use serde::Deserializer;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::translate::ir::Usage;

/// The visitor methods for kinds of JSON value a visitor does not read: each gives `$value`
/// (sequences and maps are skipped through first).
macro_rules! answer_unread {
    (scalars => $value:expr) => {
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
    (integers => $value:expr) => {
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
    (maps => $value:expr) => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($value)
        }
    };
}

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
    answer_unread!(scalars => None);
    answer_unread!(maps => None);
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
    answer_unread!(scalars => Details::default());
    answer_unread!(integers => Details::default());
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
    answer_unread!(scalars => None);
    answer_unread!(integers => None);
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
            r#"{"prompt_tokens": {"a": 1}, "completion_tokens": [1]}"#,
            r#"{"prompt_tokens": 4, "completion_tokens": {"n": [2]}, "prompt_tokens_details": true}"#,
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
