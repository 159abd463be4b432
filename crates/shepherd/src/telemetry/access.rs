//! The access log: one line per request (JSON or human), written straight into the buffered log
//! output. It bypasses `tracing`'s field visitors: this runs once per request, on the hot path.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::SystemTime;

use serde::Serialize;

use super::output;
use crate::config::LogFormat;

/// The `target` field of access lines, as in the general log.
pub const TARGET: &str = "shepherd::access";

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Chooses the access log format once per process; until then (in-process tests) it is off.
pub fn init(format: LogFormat) {
    let _already_set = FORMAT.set(format);
}

fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Off)
}

/// One request as the access log shows it. Never holds a key, only its name.
#[derive(Debug, Serialize)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    pub method: &'a str,
    pub route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    /// The request named no model; `model` is the key's or route's default.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub default_model: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deployment: Option<&'a str>,
    pub status: u16,
    pub stream: bool,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream_connect_ms: Option<f64>,
    pub upstream_first_byte_ms: Option<f64>,
    pub upstream_total_ms: Option<f64>,
    pub total_ms: f64,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(flatten)]
    pub usage: Option<TokenCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// The token counts of a request: prompt (cached included), completion (reasoning included),
/// and whether the upstream reported them or the gateway estimated them.
#[derive(Debug, Serialize)]
pub struct TokenCounts {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// `reported` or `estimated`.
    pub usage: &'static str,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: Rfc3339,
    level: &'static str,
    message: &'static str,
    #[serde(flatten)]
    record: &'a AccessRecord<'a>,
    target: &'static str,
}

/// An RFC 3339 UTC timestamp with microseconds, as the general log writes them.
impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

struct Rfc3339(humantime::Rfc3339Timestamp);

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Writes one access line in the configured format.
pub fn write(record: &AccessRecord<'_>) {
    let format = format();
    if format == LogFormat::Off {
        return;
    }
    let now = humantime::format_rfc3339_micros(SystemTime::now());
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        let written = match format {
            LogFormat::Json => serde_json::to_writer(
                &mut *line,
                &JsonLine {
                    timestamp: Rfc3339(now),
                    level: "INFO",
                    message: "request",
                    record,
                    target: TARGET,
                },
            )
            .is_ok(),
            LogFormat::Human | LogFormat::Off => human(&mut line, &Rfc3339(now), record).is_ok(),
        };
        if written {
            line.push(b'\n');
            output::append(&line);
        }
    });
}

fn human(out: &mut Vec<u8>, now: &Rfc3339, r: &AccessRecord<'_>) -> std::io::Result<()> {
    write!(
        out,
        "{}  INFO {TARGET}: request request_id={} method={} route={} status={} stream={}",
        now.0, r.request_id, r.method, r.route, r.status, r.stream
    )?;
    for (name, value) in [
        ("key", r.key),
        ("model", r.model),
        ("deployment", r.deployment),
        ("error", r.error),
    ] {
        if let Some(value) = value {
            write!(out, " {name}={value}")?;
        }
    }
    if let Some(ip) = r.client_ip {
        write!(out, " client_ip={ip}")?;
    }
    write!(out, " bytes_in={} bytes_out={}", r.bytes_in, r.bytes_out)?;
    for (name, value) in [
        ("upstream_connect_ms", r.upstream_connect_ms),
        ("upstream_first_byte_ms", r.upstream_first_byte_ms),
        ("upstream_total_ms", r.upstream_total_ms),
    ] {
        if let Some(value) = value {
            write!(out, " {name}={value}")?;
        }
    }
    if let Some(usage) = &r.usage {
        write!(
            out,
            " prompt_tokens={} completion_tokens={} cached_tokens={} reasoning_tokens={} usage={}",
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.reasoning_tokens,
            usage.usage
        )?;
    }
    if let Some(cost) = r.cost_usd {
        write!(out, " cost_usd={cost}")?;
    }
    write!(out, " total_ms={} outcome={}", r.total_ms, r.outcome)
}
