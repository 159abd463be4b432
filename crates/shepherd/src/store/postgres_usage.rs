//! The usage ledger in PostgreSQL: the same table, rollups and answers as SQLite's
//! (`sqlite_usage.rs`). A batch of records is one `INSERT ... SELECT FROM UNNEST(...)` statement
//! (one array per column); reports and spending sum the records and the per-day rollups
//! (`usage_daily`); pruning moves old rows into the rollups in slices, each one statement that
//! deletes the rows and adds up what it deleted, so a record written meanwhile is never lost.
//!
//! Days and hours are UTC and spelled as SQLite spells them; text is ordered byte by byte
//! (`COLLATE "C"`, SQLite's `BINARY`); sums past `i64::MAX` are clamped rather than failing.

use postgres::types::ToSql;

use super::postgres::{PRUNE_LOCK, PostgresStore, call, int, uint};
use super::{GroupBy, StoreError, StoreHealth, UsageQuery, UsageRecord, UsageRow, UsageStore};

/// Rows rolled up and removed per transaction, so the ledger is never locked for long.
const PRUNE_BATCH: i64 = 20_000;

/// The day (UTC, `YYYY-MM-DD`) of a unix-millisecond time, in SQL (as SQLite's
/// `strftime('%Y-%m-%d', ts_ms / 1000, 'unixepoch')`).
const DAY_OF_TS: &str = "to_char(to_timestamp(ts_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')";

/// The hour (UTC, `YYYY-MM-DDTHH:00`) of a unix-millisecond time, in SQL.
const HOUR_OF_TS: &str =
    "to_char(to_timestamp(ts_ms / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:00')";

/// A sum, clamped to what a BIGINT holds (`SUM(bigint)` is NUMERIC and never overflows); NULL
/// over no rows, as SQLite's (`LEAST` would skip the NULL).
fn sum(column: &str) -> String {
    format!(
        "(CASE WHEN SUM({column}) > 9223372036854775807 THEN 9223372036854775807
            ELSE SUM({column}) END)::BIGINT"
    )
}

/// The day (UTC, `YYYY-MM-DD`) of a unix-millisecond time, as SQLite's `strftime` says it; none
/// (SQL NULL: the comparison is false, as in SQLite) outside the years 0000 to 9999.
fn day_of(ms: i64) -> Option<String> {
    // SQLite divides the milliseconds first (truncating), then takes the day of the seconds.
    let days = (ms / 1000).div_euclid(86_400);
    // Days to civil date (proleptic Gregorian), after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (0..=9999)
        .contains(&year)
        .then(|| format!("{year:04}-{month:02}-{day:02}"))
}

/// A query parameter, owned so it can travel to the connection thread.
enum Param {
    Int(i64),
    Text(Option<String>),
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| match param {
            Param::Int(value) => value as &(dyn ToSql + Sync),
            Param::Text(value) => value as &(dyn ToSql + Sync),
        })
        .collect()
}

/// A batch of records, one array per column.
struct Columns {
    request_id: Vec<String>,
    ts_ms: Vec<i64>,
    key_id: Vec<String>,
    key_name: Vec<String>,
    model: Vec<Option<String>>,
    deployment: Vec<Option<String>>,
    route: Vec<String>,
    status: Vec<i32>,
    stream: Vec<bool>,
    prompt_tokens: Vec<i64>,
    completion_tokens: Vec<i64>,
    cached_tokens: Vec<i64>,
    reasoning_tokens: Vec<i64>,
    usage_source: Vec<Option<&'static str>>,
    cost_nano_usd: Vec<i64>,
    saved_nano_usd: Vec<i64>,
    latency_ms: Vec<f64>,
    ttft_ms: Vec<Option<f64>>,
    cache_hit: Vec<bool>,
    fallback: Vec<bool>,
}

impl Columns {
    fn of(records: &[UsageRecord]) -> Columns {
        let column = |f: &dyn Fn(&UsageRecord) -> i64| records.iter().map(f).collect();
        Columns {
            request_id: records.iter().map(|r| r.request_id.clone()).collect(),
            ts_ms: column(&|r| r.ts_ms),
            key_id: records.iter().map(|r| r.key_id.to_string()).collect(),
            key_name: records.iter().map(|r| r.key_name.to_string()).collect(),
            model: records.iter().map(|r| r.model.clone()).collect(),
            deployment: records
                .iter()
                .map(|r| r.deployment.as_deref().map(str::to_owned))
                .collect(),
            route: records.iter().map(|r| r.route.clone()).collect(),
            status: records.iter().map(|r| i32::from(r.status)).collect(),
            stream: records.iter().map(|r| r.stream).collect(),
            prompt_tokens: column(&|r| int(r.prompt_tokens)),
            completion_tokens: column(&|r| int(r.completion_tokens)),
            cached_tokens: column(&|r| int(r.cached_tokens)),
            reasoning_tokens: column(&|r| int(r.reasoning_tokens)),
            usage_source: records.iter().map(|r| r.usage_source).collect(),
            cost_nano_usd: column(&|r| int(r.cost_nano_usd)),
            saved_nano_usd: column(&|r| int(r.saved_nano_usd)),
            latency_ms: records.iter().map(|r| r.latency_ms).collect(),
            ttft_ms: records.iter().map(|r| r.ttft_ms).collect(),
            cache_hit: records.iter().map(|r| r.cache_hit).collect(),
            fallback: records.iter().map(|r| r.fallback).collect(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 20] {
        [
            &self.request_id,
            &self.ts_ms,
            &self.key_id,
            &self.key_name,
            &self.model,
            &self.deployment,
            &self.route,
            &self.status,
            &self.stream,
            &self.prompt_tokens,
            &self.completion_tokens,
            &self.cached_tokens,
            &self.reasoning_tokens,
            &self.usage_source,
            &self.cost_nano_usd,
            &self.saved_nano_usd,
            &self.latency_ms,
            &self.ttft_ms,
            &self.cache_hit,
            &self.fallback,
        ]
    }
}

const INSERT: &str = "INSERT INTO usage (request_id, ts_ms, key_id, key_name, model, deployment,
        route, status, stream, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,
        usage_source, cost_nano_usd, saved_nano_usd, latency_ms, ttft_ms, cache_hit, fallback)
    SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[],
        $6::TEXT[], $7::TEXT[], $8::INTEGER[], $9::BOOLEAN[], $10::BIGINT[], $11::BIGINT[],
        $12::BIGINT[], $13::BIGINT[], $14::TEXT[], $15::BIGINT[], $16::BIGINT[],
        $17::DOUBLE PRECISION[], $18::DOUBLE PRECISION[], $19::BOOLEAN[], $20::BOOLEAN[])";

impl UsageStore for PostgresStore {
    fn append(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        let columns = Columns::of(records);
        // One statement: one transaction, all the records or none.
        let written = call(&self.ledger, false, move |client| {
            client.execute(INSERT, &columns.params()).map(|_| ())
        });
        self.wrote(&written);
        written
    }

    fn spent(&self, key_id: &str, since_ms: i64) -> Result<u64, StoreError> {
        let key_id = key_id.to_owned();
        let since_day = day_of(since_ms);
        let sql = format!(
            "SELECT (SELECT {} FROM usage WHERE key_id = $1 AND ts_ms >= $2),
                    (SELECT {} FROM usage_daily WHERE key_id = $1 AND day >= $3)",
            sum("cost_nano_usd"),
            sum("cost_nano_usd"),
        );
        call(&self.general, true, move |client| {
            let row = client.query_one(&sql, &[&key_id, &since_ms, &since_day])?;
            let recent: Option<i64> = row.try_get(0)?;
            let rolled: Option<i64> = row.try_get(1)?;
            Ok(recent
                .map_or(0, uint)
                .saturating_add(rolled.map_or(0, uint)))
        })
    }

    fn report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let (sql, params) = report_sql(query);
        let group_by = query.group_by.clone();
        let rows = call(&self.general, true, move |client| {
            let rows = client.query(&sql, &refs(&params))?;
            let width = group_by.len();
            rows.iter()
                .map(|row| {
                    let mut groups = Vec::with_capacity(width);
                    for (n, group) in group_by.iter().enumerate() {
                        groups.push((group.name().to_owned(), row.try_get::<_, String>(n)?));
                    }
                    let sum = |n: usize| -> Result<u64, postgres::Error> {
                        Ok(row.try_get::<_, Option<i64>>(width + n)?.map_or(0, uint))
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
                .collect::<Result<Vec<_>, postgres::Error>>()
        })?;
        // An empty ledger reports no line, not one line of zeros.
        Ok(rows.into_iter().filter(|row| row.requests > 0).collect())
    }

    fn prune(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut removed = 0u64;
        loop {
            // One slice per job: appends queued behind a long prune go in between slices.
            let slice = call(&self.ledger, true, move |client| {
                prune_slice(client, before_ms)
            });
            self.wrote(&slice);
            match slice? {
                Some(deleted) => removed = removed.saturating_add(deleted),
                None => return Ok(removed),
            }
        }
    }

    fn health(&self) -> StoreHealth {
        PostgresStore::health(self)
    }
}

/// Rolls up and removes the oldest `PRUNE_BATCH` rows (and any at the same time as the last of
/// them) older than `before_ms`; none when there are no such rows. Prunes from several replicas
/// take turns (an advisory lock); the rows deleted are exactly the rows added up (one statement).
fn prune_slice(
    client: &mut postgres::Client,
    before_ms: i64,
) -> Result<Option<u64>, postgres::Error> {
    let mut transaction = client.transaction()?;
    transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&PRUNE_LOCK])?;
    let cutoff: Option<i64> = transaction
        .query_one(
            "SELECT MAX(ts_ms) FROM (SELECT ts_ms FROM usage WHERE ts_ms < $1
             ORDER BY ts_ms LIMIT $2) AS slice",
            &[&before_ms, &PRUNE_BATCH],
        )?
        .try_get(0)?;
    let Some(cutoff) = cutoff else {
        transaction.commit()?;
        return Ok(None);
    };
    let added = |column: &str| {
        format!(
            "{column} = LEAST(usage_daily.{column}::NUMERIC + EXCLUDED.{column},
                9223372036854775807)::BIGINT"
        )
    };
    let updates: Vec<String> = [
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_nano_usd",
        "saved_nano_usd",
        "cache_hits",
    ]
    .into_iter()
    .map(added)
    .collect();
    let sql = format!(
        "WITH moved AS (
            DELETE FROM usage WHERE ts_ms <= $1
            RETURNING ts_ms, key_id, key_name, model, deployment, route, status, prompt_tokens,
                completion_tokens, cached_tokens, reasoning_tokens, cost_nano_usd,
                saved_nano_usd, cache_hit
         ), rolled AS (
            INSERT INTO usage_daily (day, key_id, key_name, model, deployment, route, requests,
                errors, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,
                cost_nano_usd, saved_nano_usd, cache_hits)
            SELECT {DAY_OF_TS}, key_id, MAX(key_name COLLATE \"C\"), COALESCE(model, ''),
                COALESCE(deployment, ''), route, COUNT(*),
                COUNT(*) FILTER (WHERE status >= 400), {}, {}, {}, {}, {}, {},
                COUNT(*) FILTER (WHERE cache_hit)
            FROM moved
            GROUP BY 1, key_id, COALESCE(model, ''), COALESCE(deployment, ''), route
            ON CONFLICT (day, key_id, model, deployment, route) DO UPDATE SET {}
         )
         SELECT COUNT(*) FROM moved",
        sum("prompt_tokens"),
        sum("completion_tokens"),
        sum("cached_tokens"),
        sum("reasoning_tokens"),
        sum("cost_nano_usd"),
        sum("saved_nano_usd"),
        updates.join(", "),
    );
    let deleted: i64 = transaction.query_one(&sql, &[&cutoff])?.try_get(0)?;
    transaction.commit()?;
    Ok(Some(uint(deleted)))
}

/// A report over the records and the rollups: the same groups and sums from both, added up.
/// Rolled-up days have no hour: grouped by hour, they show at the day's first hour.
fn report_sql(query: &UsageQuery) -> (String, Vec<Param>) {
    let recent: Vec<&str> = query
        .group_by
        .iter()
        .map(|group| match group {
            GroupBy::Key => "key_name",
            GroupBy::Model => "COALESCE(model, '')",
            GroupBy::Deployment => "COALESCE(deployment, '')",
            GroupBy::Day => DAY_OF_TS,
            GroupBy::Hour => HOUR_OF_TS,
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
    let mut params: Vec<Param> = Vec::new();
    let mut recent_where = vec!["TRUE".to_owned()];
    let mut rolled_where = vec!["TRUE".to_owned()];
    // Rolled-up days compare with the day of a bound, as SQLite does (a NULL day: no match).
    if let Some(from) = query.from_ms {
        params.push(Param::Int(from));
        recent_where.push(format!("ts_ms >= ${}", params.len()));
        params.push(Param::Text(day_of(from)));
        rolled_where.push(format!("day >= ${}", params.len()));
    }
    if let Some(to) = query.to_ms {
        params.push(Param::Int(to));
        recent_where.push(format!("ts_ms < ${}", params.len()));
        params.push(Param::Text(day_of(to)));
        rolled_where.push(format!("day < ${}", params.len()));
    }
    if let Some(key) = &query.key_id {
        params.push(Param::Text(Some(key.clone())));
        let n = params.len();
        recent_where.push(format!("key_id = ${n}"));
        rolled_where.push(format!("key_id = ${n}"));
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
        let ordered: Vec<String> = names
            .iter()
            .map(|name| format!("{name} COLLATE \"C\""))
            .collect();
        (
            format!("{}, ", names.join(", ")),
            format!(
                " GROUP BY {} ORDER BY {}",
                names.join(", "),
                ordered.join(", ")
            ),
        )
    };
    let sums = [
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_nano_usd",
        "saved_nano_usd",
        "cache_hits",
    ]
    .map(sum)
    .join(", ");
    let recent_sums = format!(
        "COUNT(*) AS requests, COUNT(*) FILTER (WHERE status >= 400) AS errors,
            {} AS prompt_tokens, {} AS completion_tokens, {} AS cached_tokens,
            {} AS reasoning_tokens, {} AS cost_nano_usd, {} AS saved_nano_usd,
            COUNT(*) FILTER (WHERE cache_hit) AS cache_hits",
        sum("prompt_tokens"),
        sum("completion_tokens"),
        sum("cached_tokens"),
        sum("reasoning_tokens"),
        sum("cost_nano_usd"),
        sum("saved_nano_usd"),
    );
    let sql = format!(
        "SELECT {outer_groups}{sums}
         FROM (
            SELECT {}{recent_sums}
            FROM usage WHERE {}{}
            UNION ALL
            SELECT {}{sums}
            FROM usage_daily WHERE {}{}
         ) AS ledger{group}",
        columns(&recent),
        recent_where.join(" AND "),
        inner_group(recent.len()),
        columns(&rolled),
        rolled_where.join(" AND "),
        inner_group(rolled.len()),
    );
    (sql, params)
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
    use super::day_of;

    #[test]
    fn days_are_spelled_as_sqlite_spells_them() {
        for (ms, day) in [
            (0, Some("1970-01-01")),
            (-1500, Some("1969-12-31")),
            (-999, Some("1970-01-01")),
            (951_782_400_000, Some("2000-02-29")),
            (253_402_300_799_999, Some("9999-12-31")),
            (253_402_300_800_000, None),
            (-62_167_219_200_001, Some("0000-01-01")),
            (i64::MAX, None),
            (i64::MIN, None),
        ] {
            assert_eq!(day_of(ms).as_deref(), day, "{ms}");
        }
    }
}
