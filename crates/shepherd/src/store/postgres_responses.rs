//! Stored Responses API answers in PostgreSQL, shared by every replica: a conversation started
//! on one continues on any other. Read and deleted only with the key that made them.

use super::postgres::{PostgresStore, call};
use super::{ResponseStore, StoreError, StoredResponse};

impl ResponseStore for PostgresStore {
    fn save_response(&self, stored: &StoredResponse) -> Result<(), StoreError> {
        let stored = stored.clone();
        call(&self.general, true, move |client| {
            client
                .execute(
                    "INSERT INTO responses (id, key_id, created_ms, expires_ms, response, input)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO UPDATE SET key_id = EXCLUDED.key_id,
                        created_ms = EXCLUDED.created_ms, expires_ms = EXCLUDED.expires_ms,
                        response = EXCLUDED.response, input = EXCLUDED.input",
                    &[
                        &stored.id,
                        &stored.key_id,
                        &stored.created_ms,
                        &stored.expires_ms,
                        &stored.response,
                        &stored.input,
                    ],
                )
                .map(|_| ())
        })
    }

    fn load_response(
        &self,
        id: &str,
        key_id: &str,
        now_ms: i64,
    ) -> Result<Option<StoredResponse>, StoreError> {
        let (id, key_id) = (id.to_owned(), key_id.to_owned());
        call(&self.general, true, move |client| {
            let row = client.query_opt(
                "SELECT id, key_id, created_ms, expires_ms, response, input FROM responses
                 WHERE id = $1 AND key_id = $2 AND expires_ms > $3",
                &[&id, &key_id, &now_ms],
            )?;
            row.map(|row| {
                Ok(StoredResponse {
                    id: row.try_get(0)?,
                    key_id: row.try_get(1)?,
                    created_ms: row.try_get(2)?,
                    expires_ms: row.try_get(3)?,
                    response: row.try_get(4)?,
                    input: row.try_get(5)?,
                })
            })
            .transpose()
        })
    }

    fn delete_response(&self, id: &str, key_id: &str) -> Result<bool, StoreError> {
        let (id, key_id) = (id.to_owned(), key_id.to_owned());
        call(&self.general, true, move |client| {
            client
                .execute(
                    "DELETE FROM responses WHERE id = $1 AND key_id = $2",
                    &[&id, &key_id],
                )
                .map(|deleted| deleted > 0)
        })
    }

    fn prune_responses(&self, now_ms: i64) -> Result<u64, StoreError> {
        call(&self.ledger, true, move |client| {
            client.execute("DELETE FROM responses WHERE expires_ms <= $1", &[&now_ms])
        })
    }
}
