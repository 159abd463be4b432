//! Logging: the `tracing` subscriber for everything but the access log (which `access.rs`
//! writes itself), in JSON or human form, into the buffered output.

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use super::output::BufferedStdout;
use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber. `SHEPHERD_LOG` (a filter) and `SHEPHERD_LOG_FORMAT`
/// (`json` | `human`) override the config.
pub fn init(telemetry: &TelemetryConfig) {
    let level = std::env::var("SHEPHERD_LOG").unwrap_or_else(|_| telemetry.log_level.clone());
    let env_format = std::env::var("SHEPHERD_LOG_FORMAT").ok();
    let pick = |configured: LogFormat| match env_format.as_deref() {
        Some("json") => LogFormat::Json,
        Some("human") => LogFormat::Human,
        _ => configured,
    };
    let (access_format, log_format) = (
        pick_access(telemetry.access_log, &pick),
        pick(telemetry.log_format),
    );
    super::access::init(access_format);
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    if let Some(general) = layer(log_format) {
        let _already_set = tracing_subscriber::registry()
            .with(general.with_filter(filter))
            .try_init();
    }
}

fn pick_access(configured: LogFormat, pick: &dyn Fn(LogFormat) -> LogFormat) -> LogFormat {
    if configured == LogFormat::Off {
        LogFormat::Off
    } else {
        pick(configured)
    }
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

fn layer(format: LogFormat) -> Option<BoxedLayer> {
    match format {
        LogFormat::Off => None,
        LogFormat::Json => Some(Box::new(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(BufferedStdout),
        )),
        LogFormat::Human => Some(Box::new(fmt::layer().with_writer(BufferedStdout))),
    }
}
