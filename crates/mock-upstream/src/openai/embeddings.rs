//! `POST /v1/embeddings`: deterministic unit vectors derived from a hash of each input, as floats
//! or base64.

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::{ApiError, parse_object, required_model};
use crate::body::MockBody;
use crate::json_response;

const DEFAULT_EMBEDDING_DIMENSIONS: usize = 8;
const MAX_EMBEDDING_DIMENSIONS: usize = 16_384;

/// One input to embed.
enum EmbeddingInput<'a> {
    Text(&'a str),
    Tokens(&'a [Value]),
}

impl EmbeddingInput<'_> {
    fn tokens(&self) -> u64 {
        match self {
            EmbeddingInput::Text(t) => t.split_whitespace().count() as u64,
            EmbeddingInput::Tokens(t) => t.len() as u64,
        }
    }

    fn hash(&self) -> u64 {
        let mut h = Fnv::default();
        match self {
            EmbeddingInput::Text(t) => h.write(t.as_bytes()),
            EmbeddingInput::Tokens(toks) => {
                h.write(b"\0tokens");
                for t in *toks {
                    h.write(&t.as_i64().unwrap_or(-1).to_le_bytes());
                }
            }
        }
        h.0
    }
}

#[derive(Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The vector of a text input, as the OpenAI route gives it (shared with Gemini's embeddings).
pub(crate) fn text_vector(text: &str, dimensions: usize) -> Vec<f32> {
    embedding_vector(EmbeddingInput::Text(text).hash(), dimensions)
}

/// A deterministic unit-length vector derived from `seed`.
fn embedding_vector(seed: u64, dimensions: usize) -> Vec<f32> {
    let mut state = seed;
    let mut v: Vec<f32> = (0..dimensions)
        .map(|_| {
            let bits = (splitmix64(&mut state) >> 40) as u32; // 24 random bits
            (bits as f32 / (1u32 << 23) as f32) - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in &mut v {
            *x /= norm;
        }
    }
    v
}

fn embedding_inputs(input: Option<&Value>) -> Result<Vec<EmbeddingInput<'_>>, ApiError> {
    let invalid = || {
        ApiError::invalid(
            "'input' must be a non-empty string, array of strings, array of tokens, or array of \
             token arrays",
            Some("input"),
        )
    };
    match input {
        Some(Value::String(s)) => Ok(vec![EmbeddingInput::Text(s)]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_number) {
                return Ok(vec![EmbeddingInput::Tokens(items)]);
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(EmbeddingInput::Text(s)),
                    Value::Array(toks) if toks.iter().all(Value::is_number) => {
                        Ok(EmbeddingInput::Tokens(toks))
                    }
                    _ => Err(invalid()),
                })
                .collect()
        }
        _ => Err(invalid()),
    }
}

pub(super) fn embeddings(body: &Bytes) -> Result<Response<MockBody>, ApiError> {
    let req = parse_object(body)?;
    let model = required_model(&req)?;
    let inputs = embedding_inputs(req.get("input"))?;
    let dimensions = match req.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_EMBEDDING_DIMENSIONS,
        Some(d) => d
            .as_u64()
            .and_then(|d| usize::try_from(d).ok())
            .filter(|d| (1..=MAX_EMBEDDING_DIMENSIONS).contains(d))
            .ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "dimensions must be an integer between 1 and {MAX_EMBEDDING_DIMENSIONS}"
                    ),
                    Some("dimensions"),
                )
            })?,
    };
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(_) => {
            return Err(ApiError::invalid(
                "encoding_format must be 'float' or 'base64'",
                Some("encoding_format"),
            ));
        }
    };
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            tokens += input.tokens();
            let v = embedding_vector(input.hash(), dimensions);
            let embedding = if base64 {
                let mut bytes = Vec::with_capacity(v.len() * 4);
                for x in &v {
                    bytes.extend_from_slice(&x.to_le_bytes());
                }
                Value::String(base64_encode(&bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let resp = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(json_response(StatusCode::OK, &resp))
}

/// Standard base64 (with padding).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding_vector(EmbeddingInput::Text("x").hash(), 16);
        let b = embedding_vector(EmbeddingInput::Text("x").hash(), 16);
        assert_eq!(a, b);
        let norm: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
