//! Cached answers in the shared Redis (`cache.backend: redis`), readable by every replica.
//!
//! An entry is one Redis string with its TTL (`PX`): a JSON head (the canonical answer, the
//! deployment, whether a body follows) and a newline, then the exact body bytes when the
//! answer was first served whole. Streams are replayed from the canonical answer, as from the
//! memory store. Size is bounded by Redis' own `maxmemory` and eviction policy (entries all
//! carry a TTL, so `volatile-lru` or `allkeys-lru` both work); an entry above `MAX_ENTRY` is
//! not stored.
//!
//! Misses are coalesced across replicas with a short lock (`SET NX PX`): the replica that takes
//! it goes upstream; the others poll for the entry until it appears, the lock goes (the leader
//! failed: one of them takes over), or their own deadline.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::store::Entry;
use crate::store::redis::SharedRedis;
use crate::translate::ir;

/// Entries larger than this are not stored in Redis.
pub const MAX_ENTRY: usize = 8 * 1024 * 1024;
/// How long a replica may hold a key's fill lock before another may take it.
pub const LOCK_TTL: Duration = Duration::from_secs(30);
/// How often a waiting replica looks for the leader's answer.
pub const POLL: Duration = Duration::from_millis(25);

const UNLOCK_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

#[derive(Serialize, Deserialize)]
struct Head {
    answer: Option<ir::Response>,
    deployment: Arc<str>,
    has_body: bool,
}

#[derive(Debug)]
pub struct RedisCache {
    redis: Arc<SharedRedis>,
}

impl RedisCache {
    pub fn new(redis: Arc<SharedRedis>) -> RedisCache {
        RedisCache { redis }
    }

    fn entry_key(&self, key: &str) -> String {
        self.redis.key(&format!("cache:{key}"))
    }

    fn lock_key(&self, key: &str) -> String {
        self.redis.key(&format!("cache-lock:{key}"))
    }

    /// The entry of `key`, if Redis has a fresh one (and is up).
    pub async fn get(&self, key: &str) -> Option<Arc<Entry>> {
        let mut connection = self.redis.connection()?;
        let redis_key = self.entry_key(key);
        let mut pipe = redis::pipe();
        pipe.get(&redis_key).pttl(&redis_key);
        let (value, ttl_ms): (Option<Vec<u8>>, i64) =
            self.redis.within(pipe.query_async(&mut connection)).await?;
        let value = value?;
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).ok()?);
        decode(&value, Instant::now() + ttl)
    }

    /// Stores `entry` for `ttl` (off the request path) and then lets the key's lock go.
    pub fn put(&self, key: &str, entry: &Entry, ttl: Duration, lock: Option<String>) {
        let Some(value) = encode(entry) else {
            self.unlock(key, lock);
            return;
        };
        let Some(mut connection) = self.redis.connection() else {
            return;
        };
        let (redis_key, lock_key) = (self.entry_key(key), self.lock_key(key));
        let redis = self.redis.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        tokio::spawn(async move {
            let mut pipe = redis::pipe();
            pipe.pset_ex(&redis_key, value, ttl_ms).ignore();
            let unlock = redis::Script::new(UNLOCK_SCRIPT);
            if let Some(token) = &lock {
                pipe.load_script(&unlock)
                    .ignore()
                    .invoke_script(unlock.key(&lock_key).arg(token))
                    .ignore();
            }
            let _: Option<()> = redis.within(pipe.query_async(&mut connection)).await;
        });
    }

    /// Tries to take the fill lock of `key`; its token when taken.
    pub async fn lock(&self, key: &str) -> Option<String> {
        let mut connection = self.redis.connection()?;
        let token = format!("{}:{:x}", self.redis.replica_id(), fastrand::u64(..));
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(
                u64::try_from(LOCK_TTL.as_millis()).unwrap_or(30_000),
            ));
        let taken: Option<Option<String>> = self
            .redis
            .within(connection.set_options(self.lock_key(key), &token, options))
            .await;
        taken.flatten().map(|_| token)
    }

    /// Whether another replica holds the fill lock of `key` (false when Redis is down).
    pub async fn locked(&self, key: &str) -> bool {
        let Some(mut connection) = self.redis.connection() else {
            return false;
        };
        let exists: Option<bool> = self
            .redis
            .within(connection.exists(self.lock_key(key)))
            .await;
        exists.unwrap_or(false)
    }

    /// Lets the lock of `key` go (the fill ended without storing).
    pub fn unlock(&self, key: &str, lock: Option<String>) {
        let (Some(token), Some(mut connection)) = (lock, self.redis.connection()) else {
            return;
        };
        let lock_key = self.lock_key(key);
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let script = redis::Script::new(UNLOCK_SCRIPT);
            let mut invocation = script.key(&lock_key);
            invocation.arg(&token);
            let _: Option<i64> = redis.within(invocation.invoke_async(&mut connection)).await;
        });
    }

    pub fn is_up(&self) -> bool {
        self.redis.is_up()
    }
}

/// `{head}\n{body}`; `None` when too large.
fn encode(entry: &Entry) -> Option<Vec<u8>> {
    let head = Head {
        answer: entry.answer.clone(),
        deployment: entry.deployment.clone(),
        has_body: entry.body.is_some(),
    };
    let mut out = serde_json::to_vec(&head).ok()?;
    out.push(b'\n');
    if let Some(body) = &entry.body {
        out.extend_from_slice(body);
    }
    (out.len() <= MAX_ENTRY).then_some(out)
}

fn decode(value: &[u8], expires_at: Instant) -> Option<Arc<Entry>> {
    let split = memchr::memchr(b'\n', value)?;
    let head: Head = serde_json::from_slice(&value[..split]).ok()?;
    let body = head
        .has_body
        .then(|| Bytes::copy_from_slice(&value[split + 1..]));
    Some(Arc::new(Entry {
        answer: head.answer,
        body,
        deployment: head.deployment,
        expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::ir::{Finish, Part, ToolCall, Usage};

    #[test]
    fn entries_survive_the_round_trip() {
        let entry = Entry {
            answer: Some(ir::Response {
                id: Some("chatcmpl-1".into()),
                model: Some("m".into()),
                parts: vec![
                    Part::Thinking {
                        text: "hmm\nyes".into(),
                        signature: Some("sig".into()),
                    },
                    Part::Text("line one\nline two".into()),
                    Part::ToolCall(ToolCall {
                        id: "call_1".into(),
                        name: "f".into(),
                        arguments: "{\"a\":1}".into(),
                    }),
                ],
                finish: Finish::ToolCalls,
                stop_sequence: None,
                alternatives: Vec::new(),
                usage: Some(Usage {
                    input: 3,
                    output: 4,
                    ..Usage::default()
                }),
            }),
            body: Some(Bytes::from_static(b"{\"exact\":\n\"body\"}")),
            deployment: "p/m".into(),
            expires_at: Instant::now(),
        };
        let encoded = encode(&entry).unwrap();
        let decoded = decode(&encoded, entry.expires_at).unwrap();
        assert_eq!(decoded.answer, entry.answer);
        assert_eq!(decoded.body, entry.body);
        assert_eq!(decoded.deployment, entry.deployment);
        let bare = Entry {
            body: None,
            ..entry
        };
        assert_eq!(
            decode(&encode(&bare).unwrap(), bare.expires_at)
                .unwrap()
                .body,
            None
        );
        assert!(decode(b"not json\n", Instant::now()).is_none());
    }
}
