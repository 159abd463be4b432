//! Logging: one subscriber with two outputs, the access log (one line per request, target
//! `shepherd::access`) and everything else, each in JSON or human form.

use std::net::IpAddr;

use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{LogFormat, TelemetryConfig};
use crate::context::Outcome;

const ACCESS_TARGET: &str = "shepherd::access";

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
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let is_access = |meta: &tracing::Metadata<'_>| meta.target() == ACCESS_TARGET;
    let mut layers: Vec<BoxedLayer> = Vec::new();
    if let Some(access) = layer(access_format) {
        layers.push(access.with_filter(filter_fn(is_access)).boxed());
    }
    if let Some(general) = layer(log_format) {
        let not_access = filter_fn(move |m| !is_access(m));
        layers.push(general.with_filter(not_access).with_filter(filter).boxed());
    }
    let _already_set = tracing_subscriber::registry().with(layers).try_init();
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
                .with_writer(std::io::stdout),
        )),
        LogFormat::Human => Some(Box::new(fmt::layer().with_writer(std::io::stdout))),
    }
}

/// One request as the access log shows it. Never holds a key, only its name.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub key: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub route: &'a str,
    pub model: Option<&'a str>,
    pub deployment: Option<&'a str>,
    pub status: u16,
    pub stream: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_connect_ms: Option<f64>,
    pub upstream_first_byte_ms: Option<f64>,
    pub upstream_total_ms: Option<f64>,
    pub total_ms: f64,
    pub outcome: Outcome,
    pub error: Option<&'static str>,
}

pub fn access_log(record: &AccessRecord<'_>) {
    let outcome = match record.outcome {
        Outcome::Complete => "complete",
        Outcome::ClientGone => "client_gone",
        Outcome::StreamError => "stream_error",
    };
    tracing::info!(
        target: ACCESS_TARGET,
        request_id = record.request_id,
        key = record.key,
        client_ip = record.client_ip.map(tracing::field::display),
        method = record.method,
        route = record.route,
        model = record.model,
        deployment = record.deployment,
        status = record.status,
        stream = record.stream,
        bytes_in = record.bytes_in,
        bytes_out = record.bytes_out,
        upstream_connect_ms = record.upstream_connect_ms,
        upstream_first_byte_ms = record.upstream_first_byte_ms,
        upstream_total_ms = record.upstream_total_ms,
        total_ms = record.total_ms,
        outcome,
        error = record.error,
        "request"
    );
}
