//! Shepherd, a self-hosted AI API gateway: one OpenAI-compatible endpoint with per-service keys
//! in front of every LLM provider. See `docs/architecture.md` for the path of a request.

pub mod api;
pub mod bounds;
pub mod cache;
pub mod cli;
pub mod config;
pub mod context;
pub mod governance;
pub mod memory;
pub mod providers;
pub mod redact;
pub mod routing;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod translate;
pub mod wire;
