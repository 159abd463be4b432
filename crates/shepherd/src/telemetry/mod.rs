//! Telemetry: the access log, the general log, the metrics (every name in `metrics.rs`) and
//! OpenTelemetry traces (`traces.rs`).

pub mod access;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod recent;
pub mod traces;
