//! Telemetry: the access log, the general log, and the metrics (every name in `metrics.rs`).

pub mod access;
pub mod logging;
pub mod metrics;
pub mod output;
