//! Client-facing handlers, one file per protocol, and what they share: authentication, body
//! reading, the proxy path (exchange planning, whole answers, stream relaying) and errors in the
//! caller's shape.

pub mod admin;
mod answer;
mod attempts;
pub mod auth;
mod body;
pub mod console;
pub mod count_tokens;
pub mod errors;
mod exchange;
pub mod health;
pub mod models;
mod proxy;
mod relay;
pub mod routes;
pub mod stored;
pub mod views;
pub mod watch;
mod watch_probes;

/// The client routes, as limits name them.
pub const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
];

/// The routes whose answers can be cached.
pub const CACHEABLE_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/responses",
];

pub use answer::{new_id, unix_now};
pub use attempts::{
    ATTEMPTS_HEADER, CANARY_HEADER, DEPLOYMENT_HEADER, DROPPED_HEADER, FALLBACK_HEADER,
};
