//! Read-only views under `/admin` that the console shows and scripts may use alike:
//! `GET /admin/session` (the console session's CSRF token), `GET /admin/overview` (today and
//! this month from the ledger, hourly series, latency and time to first token of this
//! replica's recent requests), `GET /admin/deployments` (health, circuit, in-flight, latency,
//! recent errors, canary share) and `GET /admin/requests` (the live tail), plus the usage
//! report as CSV. Documented in docs/admin-api.md.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::errors::ApiError;
use crate::config::{BudgetPeriod, CanaryRule, DeploymentConfig};
use crate::governance::period;
use crate::governance::pricing::usd;
use crate::routing::circuit::CircuitState;
use crate::state::AppState;
use crate::store::{GroupBy, UsageQuery, UsageRow};
use crate::telemetry::recent::{self, Filter, RecentRequest};

const DAY_MS: i64 = 86_400_000;
/// Recent errors shown per deployment.
const ERRORS_SHOWN: usize = 5;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// `GET /admin/session`: the CSRF token of the caller's console session.
pub async fn session(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match state.console.of(&headers) {
        Some(session) => {
            Json(json!({"object": "console.session", "csrf_token": session.csrf})).into_response()
        }
        None => ApiError::admin(
            StatusCode::NOT_FOUND,
            "no console session: this request was not made with the console's cookie",
        )
        .into_response(),
    }
}

/// Totals of one period, from the ledger.
#[derive(Debug, Serialize)]
struct Totals {
    requests: u64,
    errors: u64,
    error_rate: f64,
    prompt_tokens: u64,
    completion_tokens: u64,
    cost_usd: f64,
    cache_hits: u64,
    cache_hit_ratio: f64,
    saved_usd: f64,
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn totals(rows: &[UsageRow]) -> Totals {
    let sum = |field: fn(&UsageRow) -> u64| rows.iter().map(field).sum::<u64>();
    let (requests, errors, hits) = (
        sum(|r| r.requests),
        sum(|r| r.errors),
        sum(|r| r.cache_hits),
    );
    Totals {
        requests,
        errors,
        error_rate: ratio(errors, requests),
        prompt_tokens: sum(|r| r.prompt_tokens),
        completion_tokens: sum(|r| r.completion_tokens),
        cost_usd: usd(sum(|r| r.cost_nano_usd)),
        cache_hits: hits,
        cache_hit_ratio: ratio(hits, requests),
        saved_usd: usd(sum(|r| r.saved_nano_usd)),
    }
}

fn report(state: &AppState, query: &UsageQuery) -> Result<Vec<UsageRow>, String> {
    state
        .governance
        .report(query)
        .map_err(|error| error.to_string())
}

/// `GET /admin/overview`.
pub async fn overview(State(state): State<Arc<AppState>>) -> Response {
    let now = now_ms();
    let today = period::start_ms(BudgetPeriod::Day, now);
    let month = period::start_ms(BudgetPeriod::Month, now);
    let reader = state.clone();
    let read = tokio::task::spawn_blocking(move || {
        let since = |from_ms: i64, group_by: Vec<GroupBy>| UsageQuery {
            group_by,
            from_ms: Some(from_ms),
            to_ms: None,
            key_id: None,
        };
        Ok::<_, String>((
            report(&reader, &since(today, vec![]))?,
            report(&reader, &since(month, vec![]))?,
            report(&reader, &since(now - DAY_MS, vec![GroupBy::Hour]))?,
        ))
    })
    .await
    .map_err(|error| error.to_string())
    .and_then(|read| read);
    let (today_rows, month_rows, hourly) = match read {
        Ok(read) => read,
        Err(error) => {
            return ApiError::admin(StatusCode::INTERNAL_SERVER_ERROR, &error).into_response();
        }
    };
    let series: Vec<Value> = hourly
        .iter()
        .map(|row| {
            json!({
                "hour": row.groups.first().map_or("", |(_, value)| value.as_str()),
                "requests": row.requests,
                "errors": row.errors,
                "tokens": row.prompt_tokens + row.completion_tokens,
                "cost_usd": usd(row.cost_nano_usd),
                "cache_hits": row.cache_hits,
            })
        })
        .collect();
    let (latency, first_token) = recent::latency();
    Json(json!({
        "object": "console.overview",
        "generated_at_ms": now,
        "today": totals(&today_rows),
        "month": totals(&month_rows),
        "last_24h_by_hour": series,
        "latency_ms": latency,
        "time_to_first_token_ms": first_token,
        // Besides this call.
        "in_flight": state
            .active_requests
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(1),
    }))
    .into_response()
}

#[derive(Debug, Serialize)]
struct RecentError {
    time_ms: i64,
    status: u16,
    error: Option<&'static str>,
    request_id: String,
}

#[derive(Debug, Serialize)]
struct DeploymentView {
    name: String,
    model: String,
    provider: String,
    upstream_model: String,
    weight: u32,
    canary: bool,
    healthy: bool,
    circuit: &'static str,
    in_flight: u64,
    /// Moving average of time to first byte.
    latency_ms: Option<f64>,
    recent_requests: usize,
    recent_errors: usize,
    last_errors: Vec<RecentError>,
}

#[derive(Debug, Serialize)]
struct ModelView {
    model: String,
    /// How requests are picked for the canary, if the model has one.
    canary_rule: Option<String>,
    /// Share of this replica's recent requests for the model served by the canary set.
    canary_share: Option<f64>,
    deployments: Vec<DeploymentView>,
}

fn circuit_name(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed => "closed",
        CircuitState::Open => "open",
        CircuitState::HalfOpen => "half_open",
    }
}

fn rule_text(rule: &CanaryRule) -> String {
    match rule {
        CanaryRule::KeyShare(share) => format!("{:.0}% of keys", share * 100.0),
        CanaryRule::Header => "requests with x-shepherd-canary: true".to_owned(),
        CanaryRule::KeyNames(names) => format!("{} key name pattern(s)", names.len()),
        CanaryRule::Ips(ranges) => format!("{} address range(s)", ranges.len()),
    }
}

/// `GET /admin/deployments`.
pub async fn deployments(State(state): State<Arc<AppState>>) -> Response {
    let runtime = state.runtime();
    let health: HashMap<String, _> = state.health.snapshot().into_iter().collect();
    let tail = recent::newest(&Filter::default(), recent::CAPACITY);
    let mut by_deployment: HashMap<&str, Vec<&RecentRequest>> = HashMap::new();
    for request in &tail {
        if let Some(deployment) = request.deployment.as_deref() {
            by_deployment.entry(deployment).or_default().push(request);
        }
    }
    let view = |model: &str, deployment: &DeploymentConfig, canary: bool| {
        let name = format!("{}/{}", deployment.provider, deployment.upstream_model);
        let live = health.get(&name);
        let seen = by_deployment
            .get(name.as_str())
            .map_or(&[][..], Vec::as_slice);
        let failed: Vec<&&RecentRequest> = seen.iter().filter(|r| r.status >= 400).collect();
        DeploymentView {
            model: model.to_owned(),
            provider: deployment.provider.to_string(),
            upstream_model: deployment.upstream_model.to_string(),
            weight: deployment.weight,
            canary,
            healthy: live.is_none_or(|health| health.is_healthy()),
            circuit: live.map_or("closed", |health| circuit_name(health.breaker.state())),
            in_flight: live.map_or(0, |health| health.inflight()),
            latency_ms: live
                .and_then(|health| health.latency())
                .map(|latency| latency.as_secs_f64() * 1000.0),
            recent_requests: seen.len(),
            recent_errors: failed.len(),
            last_errors: failed
                .iter()
                .take(ERRORS_SHOWN)
                .map(|request| RecentError {
                    time_ms: request.time_ms,
                    status: request.status,
                    error: request.error,
                    request_id: request.request_id.as_str().to_owned(),
                })
                .collect(),
            name,
        }
    };
    let models: Vec<ModelView> = runtime
        .config
        .models
        .iter()
        .map(|model| {
            let mut deployments: Vec<DeploymentView> = model
                .deployments
                .iter()
                .map(|deployment| view(&model.name, deployment, false))
                .collect();
            let canary = model.canary.as_ref();
            if let Some(canary) = canary {
                deployments.extend(
                    canary
                        .deployments
                        .iter()
                        .map(|d| view(&model.name, d, true)),
                );
            }
            let share = canary.map(|_| {
                let served: usize = deployments.iter().map(|d| d.recent_requests).sum();
                let by_canary: usize = deployments
                    .iter()
                    .filter(|d| d.canary)
                    .map(|d| d.recent_requests)
                    .sum();
                ratio(by_canary as u64, served as u64)
            });
            ModelView {
                model: model.name.to_string(),
                canary_rule: canary.map(|canary| rule_text(&canary.rule)),
                canary_share: share,
                deployments,
            }
        })
        .collect();
    Json(json!({"object": "list", "data": models})).into_response()
}

#[derive(Debug, Deserialize)]
pub struct RequestsParams {
    key: Option<String>,
    model: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// `GET /admin/requests?key=&model=&status=&limit=`: the newest requests first.
pub async fn requests(Query(params): Query<RequestsParams>) -> Response {
    let filter = Filter {
        key: params.key.as_deref().filter(|v| !v.is_empty()),
        model: params.model.as_deref().filter(|v| !v.is_empty()),
        status: params.status.as_deref().filter(|v| !v.is_empty()),
    };
    let limit = params.limit.unwrap_or(100).clamp(1, recent::CAPACITY);
    Json(json!({"object": "list", "data": recent::newest(&filter, limit)})).into_response()
}

/// A CSV field, quoted when it must be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// The usage report as CSV (`GET /admin/usage?format=csv`).
pub fn usage_csv(rows: &[UsageRow]) -> Response {
    let mut out = String::new();
    let groups: Vec<&str> = rows
        .first()
        .map(|row| row.groups.iter().map(|(name, _)| name.as_str()).collect())
        .unwrap_or_default();
    let mut head: Vec<&str> = groups.clone();
    head.extend([
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "reasoning_tokens",
        "cost_usd",
        "saved_usd",
        "cache_hits",
    ]);
    out.push_str(&head.join(","));
    out.push('\n');
    for row in rows {
        let mut line: Vec<String> = row
            .groups
            .iter()
            .map(|(_, value)| csv_field(value))
            .collect();
        line.extend([
            row.requests.to_string(),
            row.errors.to_string(),
            row.prompt_tokens.to_string(),
            row.completion_tokens.to_string(),
            row.cached_tokens.to_string(),
            row.reasoning_tokens.to_string(),
            format!("{:.9}", usd(row.cost_nano_usd)),
            format!("{:.9}", usd(row.saved_nano_usd)),
            row.cache_hits.to_string(),
        ]);
        out.push_str(&line.join(","));
        out.push('\n');
    }
    let mut response = out.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"shepherd-usage.csv\""),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
