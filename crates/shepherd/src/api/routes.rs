//! The handler of every client route (chat completions, completions, embeddings, messages,
//! responses): the shared request path (`proxy.rs`), errors in the route's protocol. The routes
//! are registered from `Endpoint::ALL`, each at its shape's path.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, post};

use super::proxy::proxy;
use crate::context::RequestContext;
use crate::providers::Endpoint;
use crate::state::AppState;

/// `POST` on `endpoint`'s route.
pub fn client_route(endpoint: Endpoint) -> MethodRouter<Arc<AppState>> {
    post(
        move |State(state): State<Arc<AppState>>,
              Extension(ctx): Extension<Arc<RequestContext>>,
              headers: HeaderMap,
              body: Body| async move {
            match proxy(&state, &ctx, endpoint, &headers, body).await {
                Ok(response) => response,
                Err(error) => error
                    .in_protocol(endpoint.client_protocol())
                    .into_response(),
            }
        },
    )
}
