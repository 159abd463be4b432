//! Client keys. Static keys come from the config; virtual keys are issued by the gateway as
//! `sk-shep-<id>-<secret>`: the id is public and finds the key, the secret is shown once and
//! stored only as an HMAC-SHA256 under the server's `key_secret`, compared in constant time.
//! A rotated key keeps its previous secret valid until the overlap ends.

use std::sync::Arc;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

use crate::config::{Budget, KeyConfig, KeyLimits, ModelPattern};

pub const VIRTUAL_PREFIX: &str = "sk-shep-";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// What a key may do: its models, limits, budget and life.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// `static:<name>` for config keys, the public id for virtual keys.
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub models: Vec<ModelPattern>,
    pub limits: KeyLimits,
    pub budget: Option<Budget>,
    pub metadata: Value,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
    /// The model used when a request names none.
    pub default_model: Option<Arc<str>>,
}

impl ClientKey {
    pub fn allows(&self, model: &str) -> bool {
        self.models.iter().any(|pattern| pattern.matches(model))
    }

    pub fn of_config(config: &KeyConfig) -> ClientKey {
        ClientKey {
            id: format!("static:{}", config.name).into(),
            name: config.name.clone(),
            models: config.models.clone(),
            limits: config.limits,
            budget: config.budget,
            metadata: config.metadata.clone(),
            expires_at: config.expires_at,
            default_model: config.default_model.clone(),
        }
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// A presented `sk-shep-<id>-<secret>`, split.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// Splits a virtual key; `None` when the text is not one.
pub fn parse_virtual(text: &str) -> Option<Presented<'_>> {
    let rest = text.strip_prefix(VIRTUAL_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    let valid = id.len() == ID_LEN
        && id.bytes().all(|b| ID_ALPHABET.contains(&b))
        && secret.len() == SECRET_LEN
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    valid.then_some(Presented { id, secret })
}

/// Hashes and checks key secrets under the server's secret.
#[derive(Debug)]
pub struct Hasher {
    key: hmac::Key,
}

/// A stored secret: HMAC-SHA256 of the secret, 32 bytes.
pub type SecretHash = Vec<u8>;

impl Hasher {
    pub fn new(server_secret: &str) -> Hasher {
        Hasher {
            key: hmac::Key::new(hmac::HMAC_SHA256, server_secret.as_bytes()),
        }
    }

    pub fn hash(&self, secret: &str) -> SecretHash {
        hmac::sign(&self.key, secret.as_bytes()).as_ref().to_vec()
    }

    /// Constant-time check of `secret` against `hash`.
    pub fn matches(&self, secret: &str, hash: &[u8]) -> bool {
        hmac::verify(&self.key, secret.as_bytes(), hash).is_ok()
    }
}

fn random_text(random: &SystemRandom, alphabet: &[u8], len: usize) -> Result<String, String> {
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut buffer = [0u8; 64];
    while out.len() < len {
        random
            .fill(&mut buffer)
            .map_err(|_| "the system's random source failed".to_owned())?;
        for byte in buffer {
            if usize::from(byte) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(byte) % alphabet.len()]));
            }
        }
    }
    Ok(out)
}

/// A fresh key: its public id and its full text (`sk-shep-<id>-<secret>`), with the secret.
#[derive(Debug)]
pub struct NewKey {
    pub id: String,
    pub secret: String,
    pub text: String,
}

pub fn new_id() -> Result<String, String> {
    random_text(&SystemRandom::new(), ID_ALPHABET, ID_LEN)
}

pub fn new_secret(id: &str) -> Result<NewKey, String> {
    let secret = random_text(&SystemRandom::new(), SECRET_ALPHABET, SECRET_LEN)?;
    Ok(NewKey {
        id: id.to_owned(),
        text: format!("{VIRTUAL_PREFIX}{id}-{secret}"),
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_and_verify() {
        let id = new_id().unwrap();
        let key = new_secret(&id).unwrap();
        let presented = parse_virtual(&key.text).unwrap();
        assert_eq!(presented.id, id);
        assert_eq!(presented.secret, key.secret);
        let hasher = Hasher::new("server-secret-0123456789");
        let hash = hasher.hash(&key.secret);
        assert_eq!(hash.len(), 32);
        assert!(hasher.matches(&key.secret, &hash));
        assert!(!hasher.matches("wrong", &hash));
        assert!(!Hasher::new("another-secret-0123456789").matches(&key.secret, &hash));
        assert_ne!(new_id().unwrap(), id, "ids are random");
    }

    #[test]
    fn only_well_formed_virtual_keys_parse() {
        assert!(parse_virtual("sk-plain-key").is_none());
        assert!(parse_virtual("sk-shep-short-abc").is_none());
        assert!(parse_virtual(&format!("sk-shep-abcdefghijkl-{}", "x".repeat(31))).is_none());
        assert!(parse_virtual(&format!("sk-shep-ABCDEFGHIJKL-{}", "x".repeat(32))).is_none());
        assert!(parse_virtual(&format!("sk-shep-abcdefghijkl-{}", "x".repeat(32))).is_some());
    }
}
