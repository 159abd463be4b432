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
/// too: a failing ledger (usage kept in memory and retried) makes the gateway `degraded`, still
/// serving (taking every replica out of service for a ledger outage would be a full outage).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let store = state.governance.store.health();
    let checks = json!({state.governance.store_kind(): store.detail});
    if state.draining.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "checks": checks})),
        )
            .into_response()
    } else if !store.up {
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
