//! Managing virtual keys and reading usage, for the admin API and the `shepherd keys` /
//! `shepherd usage` commands alike: create (the secret is shown once), list, get, update,
//! revoke, rotate (the old secret stays valid for an overlap), and usage reports.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::Governance;
use super::admission::now_ms;
use super::keys::{self, Hasher};
use super::pricing::usd;
use crate::bounds;
use crate::config::BudgetPeriod;
use crate::store::{GroupBy, KeyStore, StoredKey, UsageQuery, UsageRow};

/// A problem with a management request, said to the operator.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    Invalid(String),
    #[error("no key with id `{0}`")]
    NotFound(String),
    #[error("virtual keys need `admin.key_secret` in the config")]
    NoSecret,
    #[error("{0}")]
    Store(String),
}

/// `absent` -> `None`, `null` -> `Some(None)`, a value -> `Some(Some(value))`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrency: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    pub usd: f64,
    pub period: Option<String>,
}

/// The fields of a key that can be set; absent fields keep their value on update, `null`
/// clears them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    pub name: Option<String>,
    pub models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub limits: Option<Option<LimitsSpec>>,
    #[serde(default, deserialize_with = "nullable")]
    pub budget: Option<Option<BudgetSpec>>,
    /// RFC 3339.
    #[serde(default, deserialize_with = "nullable")]
    pub expires_at: Option<Option<String>>,
    /// A duration from now (`30d`), instead of `expires_at`.
    pub expires_in: Option<String>,
    pub metadata: Option<Value>,
    pub enabled: Option<bool>,
    /// The model used when a request names none (`null` removes it).
    #[serde(default, deserialize_with = "nullable")]
    pub default_model: Option<Option<String>>,
}

fn apply(spec: KeySpec, key: &mut StoredKey, now: i64) -> Result<(), ManageError> {
    let invalid = |message: String| ManageError::Invalid(message);
    if let Some(name) = spec.name {
        if name.trim().is_empty() {
            return Err(invalid("`name` must not be empty".into()));
        }
        key.name = name;
    }
    if let Some(models) = spec.models {
        if let Some(bad) = models
            .iter()
            .find(|m| m.matches('*').count() > 1 || m.is_empty())
        {
            return Err(invalid(format!(
                "`{bad}` is not a model name or a one-`*` pattern"
            )));
        }
        key.models = models;
    }
    if let Some(limits) = spec.limits {
        let limits = limits.unwrap_or_default();
        if limits.rpm == Some(0) || limits.tpm == Some(0) || limits.concurrency == Some(0) {
            return Err(invalid(
                "limits must be at least 1 (or absent for none)".into(),
            ));
        }
        key.rpm = limits.rpm;
        key.tpm = limits.tpm;
        key.concurrency = limits.concurrency;
    }
    if let Some(budget) = spec.budget {
        match budget {
            None => {
                key.budget_nano_usd = None;
                key.budget_period = None;
            }
            Some(budget) => {
                if !(budget.usd.is_finite() && budget.usd >= 0.0) {
                    return Err(invalid("`budget.usd` must be a positive amount".into()));
                }
                let period = budget.period.unwrap_or_else(|| "month".to_owned());
                if BudgetPeriod::parse(&period).is_none() {
                    return Err(invalid(format!(
                        "`budget.period` `{period}` is not one of day, week, month, total"
                    )));
                }
                key.budget_nano_usd = Some((budget.usd * 1e9).round() as u64);
                key.budget_period = Some(period);
            }
        }
    }
    match (spec.expires_at, spec.expires_in) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "give `expires_at` or `expires_in`, not both".into(),
            ));
        }
        (Some(None), None) => key.expires_at = None,
        (Some(Some(at)), None) => {
            let time = humantime::parse_rfc3339_weak(&at)
                .map_err(|_| invalid(format!("`expires_at` `{at}` is not an RFC 3339 time")))?;
            let at_seconds = unix(time);
            if at_seconds > now.saturating_add(bounds::seconds(bounds::MAX_KEY_LIFETIME)) {
                return Err(invalid(format!(
                    "`expires_at` `{at}` is more than {} ahead",
                    humantime::format_duration(bounds::MAX_KEY_LIFETIME)
                )));
            }
            key.expires_at = Some(at_seconds);
        }
        (None, Some(duration)) => {
            let span = bounds::duration("expires_in", &duration, bounds::MAX_KEY_LIFETIME)
                .map_err(invalid)?;
            key.expires_at = Some(now.saturating_add(bounds::seconds(span)));
        }
        (None, None) => {}
    }
    if let Some(metadata) = spec.metadata {
        if !metadata.is_object() {
            return Err(invalid("`metadata` must be an object".into()));
        }
        key.metadata = metadata;
    }
    if let Some(default_model) = spec.default_model {
        if default_model
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return Err(invalid("`default_model` must not be empty".into()));
        }
        key.default_model = default_model;
    }
    if let Some(enabled) = spec.enabled {
        key.enabled = enabled;
        key.revoked_at = if enabled { None } else { Some(now) };
    }
    Ok(())
}

fn unix(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn rfc3339(seconds: i64) -> String {
    bounds::rfc3339(seconds)
}

/// A key as the admin API and the CLI show it: never a secret or its hash.
pub fn view(key: &StoredKey, spent_nano_usd: Option<u64>, inflight: Option<u32>) -> Value {
    let now = now_ms() / 1000;
    json!({
        "id": key.id,
        "name": key.name,
        "models": if key.models.is_empty() { vec!["*".to_owned()] } else { key.models.clone() },
        "limits": {"rpm": key.rpm, "tpm": key.tpm, "concurrency": key.concurrency},
        "budget": key.budget_nano_usd.map(|nano| json!({
            "usd": usd(nano),
            "period": key.budget_period.as_deref().unwrap_or("month"),
            "spent_usd": spent_nano_usd.map(usd),
        })),
        "expires_at": key.expires_at.map(rfc3339),
        "metadata": key.metadata,
        "default_model": key.default_model,
        "enabled": key.enabled,
        "created_at": rfc3339(key.created_at),
        "updated_at": rfc3339(key.updated_at),
        "revoked_at": key.revoked_at.map(rfc3339),
        "previous_secret_valid_until": key.previous_until.filter(|until| *until > now).map(rfc3339),
        "inflight": inflight,
    })
}

/// Creates a key; returns it with its full secret text (shown once).
pub fn create(
    store: &dyn KeyStore,
    hasher: Option<&Hasher>,
    spec: KeySpec,
) -> Result<(StoredKey, String), ManageError> {
    let hasher = hasher.ok_or(ManageError::NoSecret)?;
    if spec.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(ManageError::Invalid("`name` is required".into()));
    }
    let now = now_ms() / 1000;
    let id = keys::new_id().map_err(ManageError::Store)?;
    let fresh = keys::new_secret(&id).map_err(ManageError::Store)?;
    let mut key = StoredKey {
        id,
        name: String::new(),
        secret_hash: hasher.hash(&fresh.secret),
        previous_hash: None,
        previous_until: None,
        models: Vec::new(),
        rpm: None,
        tpm: None,
        concurrency: None,
        budget_nano_usd: None,
        budget_period: None,
        expires_at: None,
        metadata: json!({}),
        default_model: None,
        enabled: true,
        created_at: now,
        updated_at: now,
        revoked_at: None,
    };
    apply(spec, &mut key, now)?;
    store
        .save_key(&key)
        .map_err(|error| ManageError::Store(error.to_string()))?;
    Ok((key, fresh.text))
}

fn find(store: &dyn KeyStore, id: &str) -> Result<StoredKey, ManageError> {
    store
        .load_keys()
        .map_err(|error| ManageError::Store(error.to_string()))?
        .into_iter()
        .find(|key| key.id == id)
        .ok_or_else(|| ManageError::NotFound(id.to_owned()))
}

pub fn update(store: &dyn KeyStore, id: &str, spec: KeySpec) -> Result<StoredKey, ManageError> {
    let mut key = find(store, id)?;
    let now = now_ms() / 1000;
    apply(spec, &mut key, now)?;
    key.updated_at = now;
    store
        .save_key(&key)
        .map_err(|error| ManageError::Store(error.to_string()))?;
    Ok(key)
}

/// Revokes a key: refused from now on.
pub fn revoke(store: &dyn KeyStore, id: &str) -> Result<StoredKey, ManageError> {
    update(
        store,
        id,
        KeySpec {
            enabled: Some(false),
            ..KeySpec::default()
        },
    )
}

/// Issues a new secret; the old one stays valid for `overlap`. Returns the new key text.
pub fn rotate(
    store: &dyn KeyStore,
    hasher: Option<&Hasher>,
    id: &str,
    overlap: Duration,
) -> Result<(StoredKey, String), ManageError> {
    let hasher = hasher.ok_or(ManageError::NoSecret)?;
    let mut key = find(store, id)?;
    if !key.enabled {
        return Err(ManageError::Invalid(format!("key `{id}` is revoked")));
    }
    let now = now_ms() / 1000;
    let fresh = keys::new_secret(&key.id).map_err(ManageError::Store)?;
    key.previous_hash = Some(std::mem::replace(
        &mut key.secret_hash,
        hasher.hash(&fresh.secret),
    ));
    if overlap > bounds::MAX_ROTATION_OVERLAP {
        return Err(ManageError::Invalid(format!(
            "`overlap` is longer than the maximum of {}",
            humantime::format_duration(bounds::MAX_ROTATION_OVERLAP)
        )));
    }
    key.previous_until = Some(now.saturating_add(bounds::seconds(overlap)));
    key.updated_at = now;
    store
        .save_key(&key)
        .map_err(|error| ManageError::Store(error.to_string()))?;
    Ok((key, fresh.text))
}

/// Parses a report's window bound: RFC 3339, or a duration meaning "that long ago" (`24h`).
pub fn time_bound(text: &str) -> Result<i64, ManageError> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(now_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX / 2));
    }
    humantime::parse_rfc3339_weak(text)
        .map(|time| unix(time) * 1000)
        .map_err(|_| ManageError::Invalid(format!("`{text}` is neither a time nor a duration")))
}

pub fn group_by(text: &str) -> Result<Vec<GroupBy>, ManageError> {
    text.split(',')
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            GroupBy::parse(part).ok_or_else(|| {
                ManageError::Invalid(format!(
                    "cannot group by `{}`; use key, model, deployment, day or hour",
                    part.trim()
                ))
            })
        })
        .collect()
}

/// A report as JSON rows.
pub fn report_json(rows: &[UsageRow]) -> Value {
    Value::Array(
        rows.iter()
            .map(|row| {
                let mut line = serde_json::Map::new();
                for (name, value) in &row.groups {
                    line.insert(name.clone(), json!(value));
                }
                line.insert("requests".into(), json!(row.requests));
                line.insert("errors".into(), json!(row.errors));
                line.insert("prompt_tokens".into(), json!(row.prompt_tokens));
                line.insert("completion_tokens".into(), json!(row.completion_tokens));
                line.insert("cached_tokens".into(), json!(row.cached_tokens));
                line.insert("reasoning_tokens".into(), json!(row.reasoning_tokens));
                line.insert("cost_usd".into(), json!(usd(row.cost_nano_usd)));
                line.insert("saved_usd".into(), json!(usd(row.saved_nano_usd)));
                line.insert("cache_hits".into(), json!(row.cache_hits));
                Value::Object(line)
            })
            .collect(),
    )
}

impl Governance {
    pub fn create_key(&self, spec: KeySpec) -> Result<(StoredKey, String), ManageError> {
        let (key, text) = create(self.store.as_ref(), self.hasher(), spec)?;
        self.remember(key.clone());
        Ok((key, text))
    }

    pub fn update_key(&self, id: &str, spec: KeySpec) -> Result<StoredKey, ManageError> {
        let key = update(self.store.as_ref(), id, spec)?;
        self.remember(key.clone());
        Ok(key)
    }

    pub fn revoke_key(&self, id: &str) -> Result<StoredKey, ManageError> {
        let key = revoke(self.store.as_ref(), id)?;
        self.remember(key.clone());
        Ok(key)
    }

    pub fn rotate_key(
        &self,
        id: &str,
        overlap: Duration,
    ) -> Result<(StoredKey, String), ManageError> {
        let (key, text) = rotate(self.store.as_ref(), self.hasher(), id, overlap)?;
        self.remember(key.clone());
        Ok((key, text))
    }

    /// A key's view with its live figures (spending in the period, requests in flight).
    pub fn key_view(&self, key: &StoredKey) -> Value {
        let state = self.state(&key.id.as_str().into());
        let spent = key.budget_nano_usd.map(|_| state.spending_now().spent);
        view(key, spent, Some(state.inflight()))
    }

    pub fn report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, ManageError> {
        self.writer.flush();
        crate::store::UsageStore::report(self.store.as_ref(), query)
            .map_err(|error| ManageError::Store(error.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;
    use crate::store::sqlite::SqliteStore;

    #[test]
    fn create_update_rotate_revoke() {
        let store = SqliteStore::open(&Database::SqliteMemory).unwrap();
        let hasher = Hasher::new("server-secret-0123456789");
        let spec: KeySpec = serde_json::from_value(json!({
            "name": "reviews", "models": ["gpt-*"], "limits": {"rpm": 60},
            "budget": {"usd": 10, "period": "day"}, "expires_in": "30d", "metadata": {"team": "x"}
        }))
        .unwrap();
        let (key, text) = create(&store, Some(&hasher), spec).unwrap();
        let presented = keys::parse_virtual(&text).unwrap();
        assert_eq!(presented.id, key.id);
        assert!(hasher.matches(presented.secret, &key.secret_hash));
        assert_eq!(key.budget_nano_usd, Some(10_000_000_000));
        assert!(key.expires_at.unwrap() > now_ms() / 1000 + 29 * 86_400);

        let patch: KeySpec =
            serde_json::from_value(json!({"limits": null, "name": "reviews-v2"})).unwrap();
        let key = update(&store, &key.id, patch).unwrap();
        assert_eq!((key.rpm, key.name.as_str()), (None, "reviews-v2"));
        assert_eq!(
            key.budget_nano_usd,
            Some(10_000_000_000),
            "absent fields are kept"
        );

        let (rotated, new_text) =
            rotate(&store, Some(&hasher), &key.id, Duration::from_secs(3600)).unwrap();
        let new_secret = keys::parse_virtual(&new_text).unwrap().secret;
        assert!(hasher.matches(new_secret, &rotated.secret_hash));
        assert!(hasher.matches(presented.secret, rotated.previous_hash.as_ref().unwrap()));

        let revoked = revoke(&store, &key.id).unwrap();
        assert!(!revoked.enabled && revoked.revoked_at.is_some());
        assert!(rotate(&store, Some(&hasher), &key.id, Duration::ZERO).is_err());
        let shown = view(&revoked, None, None).to_string();
        assert!(!shown.contains(presented.secret) && !shown.contains("hash"));

        assert!(matches!(
            create(&store, None, KeySpec::default()),
            Err(ManageError::NoSecret)
        ));
        let nameless = create(&store, Some(&hasher), KeySpec::default()).unwrap_err();
        assert!(nameless.to_string().contains("name"));
        assert!(matches!(
            update(&store, "nope", KeySpec::default()),
            Err(ManageError::NotFound(_))
        ));
    }

    #[test]
    fn report_arguments() {
        assert_eq!(
            group_by("key, model,day").unwrap(),
            vec![GroupBy::Key, GroupBy::Model, GroupBy::Day]
        );
        assert!(group_by("colour").is_err());
        let since = time_bound("24h").unwrap();
        assert!((now_ms() - since - 86_400_000).abs() < 5_000);
        assert_eq!(time_bound("1970-01-02T00:00:00Z").unwrap(), 86_400_000);
        assert!(time_bound("yesterday-ish").is_err());
    }
}
