//! Stored Responses API answers in SQLite: one row per response, read and deleted only with the
//! key that made it, removed once expired.

use rusqlite::{OptionalExtension, params};

use super::sqlite::{SqliteStore, db};
use super::{ResponseStore, StoreError, StoredResponse};

impl ResponseStore for SqliteStore {
    fn save_response(&self, stored: &StoredResponse) -> Result<(), StoreError> {
        self.ready_to_write()?;
        self.connection()
            .execute(
                "INSERT OR REPLACE INTO responses (id, key_id, created_ms, expires_ms, response, input)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    stored.id,
                    stored.key_id,
                    stored.created_ms,
                    stored.expires_ms,
                    stored.response,
                    stored.input
                ],
            )
            .map(|_| ())
            .map_err(db)
    }

    fn load_response(
        &self,
        id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<Option<StoredResponse>, StoreError> {
        self.connection()
            .query_row(
                "SELECT id, key_id, created_ms, expires_ms, response, input FROM responses
                 WHERE id = ?1 AND key_id = ?2 AND expires_ms > ?3",
                params![id, key_id, now_ms],
                |row| {
                    Ok(StoredResponse {
                        id: row.get(0)?,
                        key_id: row.get(1)?,
                        created_ms: row.get(2)?,
                        expires_ms: row.get(3)?,
                        response: row.get(4)?,
                        input: row.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(db)
    }

    fn delete_response(&self, id: &str, key_id: &str) -> Result<bool, StoreError> {
        self.ready_to_write()?;
        self.connection()
            .execute(
                "DELETE FROM responses WHERE id = ?1 AND key_id = ?2",
                params![id, key_id],
            )
            .map(|deleted| deleted > 0)
            .map_err(db)
    }

    fn prune_responses(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.ready_to_write()?;
        self.connection()
            .execute(
                "DELETE FROM responses WHERE expires_ms <= ?1",
                params![now_ms],
            )
            .map(|removed| removed as u64)
            .map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;

    fn stored(id: &str, key_id: &str, expires_ms: i64) -> StoredResponse {
        StoredResponse {
            id: id.to_owned(),
            key_id: key_id.to_owned(),
            created_ms: 1,
            expires_ms,
            response: r#"{"id":"x"}"#.to_owned(),
            input: "[]".to_owned(),
        }
    }

    #[test]
    fn a_response_is_its_keys_until_it_expires() {
        let store = SqliteStore::open(&Database::SqliteMemory).unwrap();
        store.save_response(&stored("resp_a", "k1", 100)).unwrap();
        store.save_response(&stored("resp_b", "k1", 300)).unwrap();
        assert_eq!(
            store.load_response("resp_a", "k1", 50).unwrap(),
            Some(stored("resp_a", "k1", 100))
        );
        assert_eq!(store.load_response("resp_a", "k2", 50).unwrap(), None);
        assert_eq!(store.load_response("resp_a", "k1", 100).unwrap(), None);
        assert!(!store.delete_response("resp_b", "k2").unwrap());
        assert_eq!(store.prune_responses(200).unwrap(), 1);
        assert!(store.delete_response("resp_b", "k1").unwrap());
        assert_eq!(store.load_response("resp_b", "k1", 0).unwrap(), None);
    }
}
