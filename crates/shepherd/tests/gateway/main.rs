//! Black-box tests of the real server (router, lifecycle, binary) against mock-upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bad_input;
mod cache;
mod check;
mod client_limits;
mod common;
mod conformance;
mod console;
mod decisions;
mod errors;
mod governance;
mod key_commands;
mod ledger_faults;
mod limits_backends;
mod metrics;
mod passthrough;
mod postgres_store;
mod protocol_routes;
mod reload;
mod replicas;
mod resilience;
mod secrets;
mod shutdown;
mod stored_responses;
mod streaming;
mod tls;
mod traces;
mod upstream_limits;
mod upstream_pool;
mod wire_fidelity;
