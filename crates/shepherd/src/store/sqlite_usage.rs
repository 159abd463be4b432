//! The usage ledger in SQLite: records appended in batches, reports and spending summed over the
//! records and the per-day rollups (`usage_daily`) that records past `state.usage_retention`
//! become, so reports by day and budgets over long periods outlive the rows themselves.

use rusqlite::{OptionalExtension, params, params_from_iter};

use super::sqlite::{SqliteStore, db, int, uint};
use super::{GroupBy, StoreError, StoreHealth, UsageQuery, UsageRecord, UsageRow, UsageStore};

/// Rows rolled up and removed per transaction, so the ledger is never locked for long.
const PRUNE_BATCH: i64 = 20_000;

/// The day (UTC, `YYYY-MM-DD`) of a unix-millisecond time, in SQL.
const DAY_OF_TS: &str = "strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')";

impl UsageStore for SqliteStore {
    fn append(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let written = self.ready_to_write().and_then(|()| self.insert(records));
        match &written {
            Ok(()) => self.set_health(StoreHealth::up()),
            Err(error) => self.set_health(StoreHealth::down(&error.to_string())),
        }
        written
    }

    fn release_memory(&self) {
        // The page cache refills from the OS's file cache on the next write.
        if let Err(error) = self.connection().execute_batch("PRAGMA shrink_memory") {
            tracing::debug!(%error, "usage ledger: shrink_memory failed");
        }
    }

    fn spent(&self, key_id: &str, since_ms: i64) -> Result<u64, StoreError> {
        let connection = self.connection();
        let recent: Option<i64> = connection
            .query_row(
                "SELECT SUM(cost_nano_usd) FROM usage WHERE key_id = ?1 AND ts_ms >= ?2",
                params![key_id, since_ms],
                |row| row.get(0),
            )
            .optional()
            .map_err(db)?
            .flatten();
        let rolled: Option<i64> = connection
            .query_row(
                "SELECT SUM(cost_nano_usd) FROM usage_daily
                 WHERE key_id = ?1 AND day >= strftime('%Y-%m-%d', ?2 / 1000, 'unixepoch')",
                params![key_id, since_ms],
                |row| row.get(0),
            )
            .optional()
            .map_err(db)?
            .flatten();
        Ok(recent
            .map_or(0, uint)
            .saturating_add(rolled.map_or(0, uint)))
    }

    fn report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let (sql, values) = report_sql(query);
        let connection = self.connection();
        let mut statement = connection.prepare(&sql).map_err(db)?;
        let width = query.group_by.len();
        let rows = statement
            .query_map(params_from_iter(values), |row| {
                let mut groups = Vec::with_capacity(width);
                for (n, group) in query.group_by.iter().enumerate() {
                    groups.push((group.name().to_owned(), row.get::<_, String>(n)?));
                }
                let sum = |n: usize| -> rusqlite::Result<u64> {
                    Ok(row.get::<_, Option<i64>>(width + n)?.map_or(0, uint))
                };
                Ok(UsageRow {
                    groups,
                    requests: sum(0)?,
                    errors: sum(1)?,
                    prompt_tokens: sum(2)?,
                    completion_tokens: sum(3)?,
                    cached_tokens: sum(4)?,
                    reasoning_tokens: sum(5)?,
                    cost_nano_usd: sum(6)?,
                    saved_nano_usd: sum(7)?,
                    cache_hits: sum(8)?,
                })
            })
            .map_err(db)?;
        let rows = rows.collect::<Result<Vec<_>, _>>().map_err(db)?;
        // An empty ledger reports no line, not one line of zeros.
        Ok(rows.into_iter().filter(|row| row.requests > 0).collect())
    }

    fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.ready_to_write()?;
        let mut removed = 0u64;
        loop {
            let mut connection = self.connection();
            let transaction = connection.transaction().map_err(db)?;
            let cutoff: Option<i64> = transaction
                .query_row(
                    "SELECT MAX(ts_ms) FROM (SELECT ts_ms FROM usage WHERE ts_ms < ?1
                     ORDER BY ts_ms LIMIT ?2)",
                    params![before_ms, PRUNE_BATCH],
                    |row| row.get(0),
                )
                .map_err(db)?;
            let Some(cutoff) = cutoff else {
                transaction.commit().map_err(db)?;
                return Ok(removed);
            };
            transaction
                .execute(
                    &format!(
                        "INSERT INTO usage_daily (day, key_id, key_name, model, deployment, route,
                            requests, errors, prompt_tokens, completion_tokens, cached_tokens,
                            reasoning_tokens, cost_nano_usd, saved_nano_usd, cache_hits)
                         SELECT {DAY_OF_TS}, key_id, MAX(key_name), COALESCE(model, ''),
                            COALESCE(deployment, ''), route, COUNT(*), SUM(status >= 400),
                            SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens),
                            SUM(reasoning_tokens), SUM(cost_nano_usd), SUM(saved_nano_usd),
                            SUM(cache_hit)
                         FROM usage WHERE ts_ms <= ?1
                         GROUP BY 1, key_id, COALESCE(model, ''), COALESCE(deployment, ''), route
                         ON CONFLICT (day, key_id, model, deployment, route) DO UPDATE SET
                            requests = requests + excluded.requests,
                            errors = errors + excluded.errors,
                            prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                            completion_tokens = completion_tokens + excluded.completion_tokens,
                            cached_tokens = cached_tokens + excluded.cached_tokens,
                            reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
                            cost_nano_usd = cost_nano_usd + excluded.cost_nano_usd,
                            saved_nano_usd = saved_nano_usd + excluded.saved_nano_usd,
                            cache_hits = cache_hits + excluded.cache_hits"
                    ),
                    params![cutoff],
                )
                .map_err(db)?;
            let deleted = transaction
                .execute("DELETE FROM usage WHERE ts_ms <= ?1", params![cutoff])
                .map_err(db)?;
            transaction.commit().map_err(db)?;
            removed += deleted as u64;
        }
    }

    fn health(&self) -> StoreHealth {
        SqliteStore::health(self)
    }
}

impl SqliteStore {
    fn insert(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let mut connection = self.connection();
        let transaction = connection.transaction().map_err(db)?;
        {
            let mut insert = transaction
                .prepare(
                    "INSERT INTO usage (request_id, ts_ms, key_id, key_name, model, deployment,
                        route, status, stream, prompt_tokens, completion_tokens, cached_tokens,
                        reasoning_tokens, usage_source, cost_nano_usd, saved_nano_usd, latency_ms,
                        ttft_ms, cache_hit, fallback)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                        ?16, ?17, ?18, ?19, ?20)",
                )
                .map_err(db)?;
            for r in records {
                insert
                    .execute(params![
                        r.request_id,
                        r.ts_ms,
                        r.key_id,
                        r.key_name,
                        r.model,
                        r.deployment,
                        r.route,
                        r.status,
                        r.stream,
                        int(r.prompt_tokens),
                        int(r.completion_tokens),
                        int(r.cached_tokens),
                        int(r.reasoning_tokens),
                        r.usage_source,
                        int(r.cost_nano_usd),
                        int(r.saved_nano_usd),
                        r.latency_ms,
                        r.ttft_ms,
                        r.cache_hit,
                        r.fallback,
                    ])
                    .map_err(db)?;
            }
        }
        transaction.commit().map_err(db)
    }
}

/// A report over the records and the rollups: the same groups and sums from both, added up.
/// Rolled-up days have no hour: grouped by hour, they show at the day's first hour.
fn report_sql(query: &UsageQuery) -> (String, Vec<rusqlite::types::Value>) {
    let recent: Vec<&str> = query
        .group_by
        .iter()
        .map(|group| match group {
            GroupBy::Key => "key_name",
            GroupBy::Model => "COALESCE(model, '')",
            GroupBy::Deployment => "COALESCE(deployment, '')",
            GroupBy::Day => DAY_OF_TS,
            GroupBy::Hour => "strftime('%Y-%m-%dT%H:00', ts_ms / 1000, 'unixepoch')",
        })
        .collect();
    let rolled: Vec<&str> = query
        .group_by
        .iter()
        .map(|group| match group {
            GroupBy::Key => "key_name",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment",
            GroupBy::Day => "day",
            GroupBy::Hour => "day || 'T00:00'",
        })
        .collect();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut recent_where = vec!["1 = 1".to_owned()];
    let mut rolled_where = vec!["1 = 1".to_owned()];
    if let Some(from) = query.from_ms {
        values.push(from.into());
        let n = values.len();
        recent_where.push(format!("ts_ms >= ?{n}"));
        rolled_where.push(format!(
            "day >= strftime('%Y-%m-%d', ?{n} / 1000, 'unixepoch')"
        ));
    }
    if let Some(to) = query.to_ms {
        values.push(to.into());
        let n = values.len();
        recent_where.push(format!("ts_ms < ?{n}"));
        rolled_where.push(format!(
            "day < strftime('%Y-%m-%d', ?{n} / 1000, 'unixepoch')"
        ));
    }
    if let Some(key) = &query.key_id {
        values.push(key.clone().into());
        let n = values.len();
        recent_where.push(format!("key_id = ?{n}"));
        rolled_where.push(format!("key_id = ?{n}"));
    }
    let columns = |list: &[&str]| {
        list.iter()
            .enumerate()
            .map(|(n, column)| format!("{column} AS g{n}, "))
            .collect::<String>()
    };
    let names: Vec<String> = (0..recent.len()).map(|n| format!("g{n}")).collect();
    let (outer_groups, group) = if names.is_empty() {
        (String::new(), String::new())
    } else {
        (
            format!("{}, ", names.join(", ")),
            format!(" GROUP BY {0} ORDER BY {0}", names.join(", ")),
        )
    };
    let sql = format!(
        "SELECT {outer_groups}SUM(requests), SUM(errors), SUM(prompt_tokens),
            SUM(completion_tokens), SUM(cached_tokens), SUM(reasoning_tokens),
            SUM(cost_nano_usd), SUM(saved_nano_usd), SUM(cache_hits)
         FROM (
            SELECT {}COUNT(*) AS requests, SUM(status >= 400) AS errors,
                SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens,
                SUM(cached_tokens) AS cached_tokens, SUM(reasoning_tokens) AS reasoning_tokens,
                SUM(cost_nano_usd) AS cost_nano_usd, SUM(saved_nano_usd) AS saved_nano_usd,
                SUM(cache_hit) AS cache_hits
            FROM usage WHERE {}{}
            UNION ALL
            SELECT {}SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens),
                SUM(cached_tokens), SUM(reasoning_tokens), SUM(cost_nano_usd),
                SUM(saved_nano_usd), SUM(cache_hits)
            FROM usage_daily WHERE {}{}
         ){group}",
        columns(&recent),
        recent_where.join(" AND "),
        inner_group(recent.len()),
        columns(&rolled),
        rolled_where.join(" AND "),
        inner_group(rolled.len()),
    );
    (sql, values)
}

fn inner_group(width: usize) -> String {
    if width == 0 {
        String::new()
    } else {
        format!(
            " GROUP BY {}",
            (1..=width)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Database;

    fn record(key: &str, model: &str, ts_ms: i64, cost: u64) -> UsageRecord {
        UsageRecord {
            request_id: format!("r{ts_ms}"),
            ts_ms,
            key_id: key.into(),
            key_name: format!("name-{key}").into(),
            model: Some(model.to_owned()),
            deployment: Some(format!("p/{model}").into()),
            route: "/v1/chat/completions".to_owned(),
            status: 200,
            stream: false,
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 2,
            reasoning_tokens: 1,
            usage_source: Some("reported"),
            cost_nano_usd: cost,
            saved_nano_usd: 0,
            latency_ms: 12.5,
            ttft_ms: Some(3.0),
            cache_hit: false,
            fallback: false,
        }
    }

    fn by(groups: &[GroupBy]) -> UsageQuery {
        UsageQuery {
            group_by: groups.to_vec(),
            ..UsageQuery::default()
        }
    }

    #[test]
    fn usage_sums_and_groups() {
        let store = SqliteStore::open(&Database::SqliteMemory).unwrap();
        assert!(store.report(&UsageQuery::default()).unwrap().is_empty());
        let day = 86_400_000;
        store
            .append(&[
                record("a", "m1", 1000, 100),
                record("a", "m2", 2000, 200),
                record("b", "m1", day + 5, 400),
            ])
            .unwrap();
        assert_eq!(store.spent("a", 0).unwrap(), 300);
        assert_eq!(store.spent("a", 1500).unwrap(), 200);
        assert_eq!(store.spent("nobody", 0).unwrap(), 0);
        let rows = store.report(&by(&[GroupBy::Key, GroupBy::Day])).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].groups,
            vec![
                ("key".into(), "name-a".into()),
                ("day".into(), "1970-01-01".into())
            ]
        );
        assert_eq!(
            (
                rows[0].requests,
                rows[0].prompt_tokens,
                rows[0].cost_nano_usd
            ),
            (2, 20, 300)
        );
        assert_eq!(rows[1].groups[1].1, "1970-01-02");
        let total = store
            .report(&UsageQuery {
                from_ms: Some(1500),
                ..UsageQuery::default()
            })
            .unwrap();
        assert_eq!((total[0].requests, total[0].cost_nano_usd), (2, 600));
    }

    #[test]
    fn pruned_rows_live_on_as_daily_rollups() {
        let store = SqliteStore::open(&Database::SqliteMemory).unwrap();
        let day = 86_400_000;
        let mut records = Vec::new();
        for n in 0..50 {
            records.push(record("a", "m1", n * 1000, 10));
            records.push(record("b", "m2", day + n * 1000, 20));
            records.push(record("a", "m1", 3 * day + n, 30));
        }
        store.append(&records).unwrap();
        let before = store.report(&by(&[GroupBy::Key, GroupBy::Day])).unwrap();
        let spent_before = store.spent("a", 0).unwrap();
        // Everything before day 3 becomes rollups; day 3 stays as rows.
        assert_eq!(store.prune(3 * day).unwrap(), 100);
        let remaining: i64 = store
            .connection()
            .query_row("SELECT COUNT(*) FROM usage", [], |row| row.get(0))
            .unwrap();
        assert_eq!(remaining, 50);
        let after = store.report(&by(&[GroupBy::Key, GroupBy::Day])).unwrap();
        assert_eq!(before, after, "reports by day are the same");
        assert_eq!(store.spent("a", 0).unwrap(), spent_before);
        assert_eq!(store.spent("a", 3 * day).unwrap(), 1500);
        // Pruning twice adds nothing twice.
        assert_eq!(store.prune(3 * day).unwrap(), 0);
        let totals = store.report(&UsageQuery::default()).unwrap();
        assert_eq!(totals[0].requests, 150);
        assert_eq!(totals[0].cost_nano_usd, 50 * 10 + 50 * 20 + 50 * 30);
    }
}
