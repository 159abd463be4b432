//! Telemetry: logs now; metrics and traces join here, all names in one place.

pub mod logging;
