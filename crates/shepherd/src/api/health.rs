//! Liveness and readiness probes, `/metrics`, and the JSON answers for unknown routes and wrong
//! methods.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::errors::ApiError;
use crate::state::AppState;

/// `/healthz`: the process is alive.
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `/readyz`: ready for traffic; 503 while draining for shutdown. The state backends are listed
/// too: a failing ledger (usage kept in memory and retried) or a Redis outage under
/// `on_redis_failure: open` (local limits meanwhile) makes the gateway `degraded`, still serving
/// (taking every replica out of service for a state outage would be a full outage); a Redis
/// outage under `closed` makes it unready, since it refuses every request meanwhile.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store = state.governance.store.health();
    let mut checks = serde_json::Map::new();
    checks.insert(
        state.governance.store_kind().to_owned(),
        json!(store.detail),
    );
    let mut up = store.up;
    let mut refusing = false;
    if let Some(redis) = &state.governance.redis {
        let health = redis.health();
        checks.insert("redis".to_owned(), json!(health.detail));
        up &= health.up;
        refusing = !health.up && redis.config.on_failure == crate::config::RedisFailure::Closed;
    }
    let checks = serde_json::Value::Object(checks);
    if refusing {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "checks": checks})),
        )
            .into_response()
    } else if state.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "checks": checks})),
        )
            .into_response()
    } else if !up {
        Json(json!({"status": "degraded", "checks": checks})).into_response()
    } else {
        Json(json!({"status": "ready", "checks": checks})).into_response()
    }
}

/// `/metrics`: every metric in Prometheus' text format.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub async fn unknown_route(method: Method, uri: Uri) -> Response {
    ApiError::unknown_route(method.as_str(), uri.path()).into_response()
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}
