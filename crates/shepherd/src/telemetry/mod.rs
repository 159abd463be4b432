//! Telemetry: logs now; metrics and traces join here, all names in one place.

pub mod access;
pub mod logging;
pub mod output;
