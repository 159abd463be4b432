//! Validated domain types of the config. Built once by `load.rs`; request-time code reads these
//! (names as `Arc<str>`, durations as `Duration`, enums where a choice is made), never raw YAML.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A secret value from config. Prints as `****` so it never reaches a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("****")
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    pub keys: Vec<KeyConfig>,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body: usize,
    pub timeouts: Timeouts,
    pub shutdown_grace: Duration,
    pub cors: Option<CorsConfig>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (and TLS) connect to an upstream.
    pub connect: Duration,
    /// From sending the request to the response head (and, for streams, the first chunk).
    pub first_byte: Duration,
    /// Longest silence between two stream chunks.
    pub idle: Duration,
    /// Whole request, stream included.
    pub total: Duration,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins, or `*` for any.
    pub allow_origins: Vec<String>,
    pub allow_headers: Vec<String>,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: Arc<str>,
    pub kind: ProviderKind,
}

#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// An upstream reached over HTTP.
    Remote(RemoteProvider),
    /// Answers inside the process (OpenAI protocol): no network, no key.
    Mock,
}

/// The protocol an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// OpenAI Chat Completions and friends (OpenAI, DeepSeek, Groq, vLLM, Ollama, relays…).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RemoteProvider {
    pub wire: Wire,
    /// Without a trailing slash: `https://api.openai.com/v1`, `https://api.anthropic.com`,
    /// `https://generativelanguage.googleapis.com`.
    pub base_url: String,
    pub api_keys: Vec<Secret>,
    pub headers: Vec<(String, String)>,
    /// Anthropic: `anthropic-version`; Gemini: API version (`v1beta`); OpenAI: unused.
    pub version: String,
    /// Anthropic: `max_tokens` when the client gave none.
    pub default_max_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The name clients ask for.
    pub name: Arc<str>,
    pub deployments: Vec<DeploymentConfig>,
}

#[derive(Debug, Clone)]
pub struct DeploymentConfig {
    pub provider: Arc<str>,
    pub upstream_model: Arc<str>,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub name: Arc<str>,
    pub key: Secret,
    pub models: Vec<ModelPattern>,
}

/// A model name, or a pattern with one `*` wildcard (`gpt-*`, `*-mini`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPattern(String);

impl ModelPattern {
    pub fn new(pattern: String) -> Self {
        ModelPattern(pattern)
    }

    pub fn matches(&self, model: &str) -> bool {
        match self.0.split_once('*') {
            None => self.0 == model,
            Some((prefix, suffix)) => {
                model.len() >= prefix.len() + suffix.len()
                    && model.starts_with(prefix)
                    && model.ends_with(suffix)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Human,
    Off,
}

#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Format of the per-request access log line (`off` disables it).
    pub access_log: LogFormat,
    /// Format of every other log line.
    pub log_format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `shepherd=debug`.
    pub log_level: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = |s: &str| ModelPattern::new(s.to_owned());
        assert!(p("gpt-4.1").matches("gpt-4.1"));
        assert!(!p("gpt-4.1").matches("gpt-4.1-mini"));
        assert!(p("gpt-*").matches("gpt-4.1-mini"));
        assert!(!p("gpt-*").matches("claude"));
        assert!(p("*-mini").matches("gpt-4.1-mini"));
        assert!(p("*").matches("anything"));
        assert!(!p("a*a").matches("a"));
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret::new("sk-live-123".to_owned());
        assert_eq!(format!("{secret:?}"), "****");
    }
}
