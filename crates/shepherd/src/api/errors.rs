//! `ApiError`: every failure a client can see, with its status, a low-cardinality kind, and who is
//! to blame; rendered in the caller's protocol: OpenAI's `{"error":{"message","type","param",
//! "code"}}` or Anthropic's `{"type":"error","error":{"type","message"}}`.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::translate::errors::{ErrorKind, UpstreamFailure};

/// The protocol a client speaks, which decides the shape of its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientProtocol {
    #[default]
    OpenAi,
    Anthropic,
}

impl ClientProtocol {
    /// The protocol of a route, for errors raised before a handler runs.
    pub fn of_path(path: &str) -> ClientProtocol {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            ClientProtocol::Anthropic
        } else {
            ClientProtocol::OpenAi
        }
    }

    /// The protocol of a request: its route's, except on the routes both protocols share
    /// (`/v1/models…`), where a caller that sends `anthropic-version` speaks Anthropic.
    pub fn of_request(path: &str, headers: &axum::http::HeaderMap) -> ClientProtocol {
        let shared = path == "/v1/models" || path.starts_with("/v1/models/");
        if shared && headers.contains_key("anthropic-version") {
            ClientProtocol::Anthropic
        } else {
            ClientProtocol::of_path(path)
        }
    }
}

/// Who caused a failure; decides retry and alerting later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Gateway,
    Upstream,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI error `type`.
    pub kind: &'static str,
    /// OpenAI error `code` (also the metric/log reason).
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<Box<str>>,
    pub blame: Blame,
    /// The protocol the error is rendered in.
    pub protocol: ClientProtocol,
    /// Extra response headers (`retry-after`, rate-limit headers).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// For a refusal by a limit: which one (`ip`, `route`, `key`, `model`, `concurrency`,
    /// `budget`).
    pub limit_scope: Option<&'static str>,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: String,
    ) -> Self {
        let blame = if status.is_server_error() {
            Blame::Gateway
        } else {
            Blame::Client
        };
        ApiError {
            status,
            kind,
            code,
            message,
            param: None,
            blame,
            protocol: ClientProtocol::OpenAi,
            headers: Vec::new(),
            limit_scope: None,
        }
    }

    /// The same error, to be rendered in `protocol`.
    pub fn in_protocol(mut self, protocol: ClientProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.retain(|(existing, _)| *existing != name);
        self.headers.push((name, value));
        self
    }

    /// An upstream's error, classified, as the client's protocol expects it (OpenAI and
    /// Anthropic differ for billing and overload). The message must be redacted already.
    pub fn from_upstream(failure: &UpstreamFailure, protocol: ClientProtocol) -> Self {
        let message = format!("The upstream provider answered: {}", failure.message);
        let anthropic = protocol == ClientProtocol::Anthropic;
        let (status, kind, code) = match failure.kind {
            ErrorKind::InvalidRequest => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                match failure.code.as_deref() {
                    Some("context_length_exceeded") => "context_length_exceeded",
                    _ => "upstream_invalid_request",
                },
            ),
            ErrorKind::Authentication => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                "upstream_auth_failed",
            ),
            ErrorKind::Billing if anthropic => (
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "insufficient_quota",
            ),
            ErrorKind::Billing => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "insufficient_quota",
            ),
            ErrorKind::Permission => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                "upstream_permission_denied",
            ),
            ErrorKind::NotFound => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
            ),
            ErrorKind::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
            ),
            ErrorKind::RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "rate_limit_exceeded",
            ),
            ErrorKind::Server => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "upstream_error",
            ),
            ErrorKind::Overloaded if anthropic => (
                StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "overloaded_error",
                "upstream_overloaded",
            ),
            ErrorKind::Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable_error",
                "upstream_overloaded",
            ),
            ErrorKind::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "upstream_timeout",
            ),
        };
        let mut error = Self::new(status, kind, code, message).in_protocol(protocol);
        error.blame = Blame::Upstream;
        if failure.kind == ErrorKind::Billing {
            error = error.with_header(
                HeaderName::from_static("x-should-retry"),
                HeaderValue::from_static("false"),
            );
        }
        error
    }

    /// A client request that cannot be translated for the upstream.
    pub fn untranslatable(field: Option<&str>, message: &str) -> Self {
        let error = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            match field {
                Some(field) => format!("Invalid value for '{field}': {message}"),
                None => format!("Invalid request: {message}"),
            },
        );
        match field {
            Some(field) => error.with_param(field),
            None => error,
        }
    }

    pub fn unsupported(message: String) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "unsupported_for_provider",
            message,
        )
    }

    pub(super) fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into().into_boxed_str());
        self
    }

    fn upstream(mut self) -> Self {
        self.blame = Blame::Upstream;
        self
    }

    pub fn invalid_json(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_json",
            format!("We could not parse the JSON body of your request: {detail}"),
        )
    }

    pub fn invalid_field(field: &str, detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_type",
            format!("Invalid value for '{field}': {detail}"),
        )
        .with_param(field)
    }

    /// A request header with a value the gateway cannot take.
    pub fn invalid_header(name: &str, detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_header",
            format!("Invalid value for the header '{name}': {detail}"),
        )
        .with_param(name)
    }

    /// The server's shutdown grace ended while this stream was still running.
    pub fn stream_ended_by_shutdown() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            "server_shutting_down",
            "The gateway is shutting down and ended this stream; retry the request.".to_owned(),
        )
    }

    /// The client did not send its whole body in time.
    pub fn body_timeout(within: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "The request body did not arrive within {}.",
                humantime::format_duration(within)
            ),
        )
    }

    pub fn missing_field(field: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "missing_required_parameter",
            format!("Missing required parameter: '{field}'."),
        )
        .with_param(field)
    }

    pub fn bad_body(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_body",
            format!("Could not read the request body: {detail}"),
        )
    }

    pub fn missing_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "missing_api_key",
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'."
                .to_owned(),
        )
    }

    pub fn invalid_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided.".to_owned(),
        )
    }

    pub fn model_not_allowed(model: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "model_not_allowed",
            format!("This key is not allowed to use the model '{model}'."),
        )
        .with_param("model")
    }

    pub fn model_not_on_route(model: &str, route: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "model_not_allowed",
            format!("The model '{model}' is not served on {route}."),
        )
        .with_param("model")
    }

    pub fn unknown_model(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("The model '{model}' does not exist or you do not have access to it."),
        )
        .with_param("model")
    }

    pub fn unknown_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Invalid URL ({method} {path})"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("Method {method} is not allowed on {path}"),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    }

    pub fn upstream_unreachable(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_unreachable",
            format!("The upstream provider could not be reached: {detail}"),
        )
        .upstream()
    }

    pub fn upstream_bad_response(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_bad_response",
            format!("The upstream provider sent an invalid response: {detail}"),
        )
        .upstream()
    }

    /// A stream that broke after it began (the message is the whole story).
    pub fn upstream_stream_error(message: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            "upstream_stream_error",
            message.to_owned(),
        )
        .upstream()
    }

    /// A stream that stalled or ran out of time after it began.
    pub fn upstream_stream_timeout(message: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "upstream_timeout",
            message.to_owned(),
        )
        .upstream()
    }

    pub fn upstream_timeout(what: &str) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "upstream_timeout",
            format!("The upstream provider did not answer in time ({what})."),
        )
        .upstream()
    }

    /// A limit refused the request (`kind`: `requests` or `tokens`, as OpenAI types them).
    pub fn rate_limited(
        kind: &'static str,
        scope: &'static str,
        what: &str,
        retry_after: std::time::Duration,
        too_large: bool,
    ) -> Self {
        let seconds = retry_after.as_secs_f64();
        let message = if too_large {
            format!(
                "This request alone needs more {kind} than the limit of {what} allows; make it smaller."
            )
        } else {
            format!("Rate limit reached for {what}. Please try again in {seconds:.3}s.")
        };
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            kind,
            "rate_limit_exceeded",
            message,
        );
        error.limit_scope = Some(scope);
        if too_large {
            // Waiting does not help a request that can never fit: no Retry-After.
            return error;
        }
        let wait = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        error
            .with_header(header::RETRY_AFTER, HeaderValue::from(wait.max(1)))
            .with_header(
                HeaderName::from_static("retry-after-ms"),
                HeaderValue::from(u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX)),
            )
    }

    /// The key has `max` requests in flight already.
    pub fn concurrency_limited(max: u32) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "requests",
            "concurrency_limit_exceeded",
            format!(
                "This key already has {max} requests in flight, its limit; retry when one ends."
            ),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"));
        error.limit_scope = Some("concurrency");
        error
    }

    /// The key's budget for the period cannot cover this request.
    pub fn budget_exhausted(budget: &crate::config::Budget, left: u64, estimate: u64) -> Self {
        let mut error = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "insufficient_quota",
            "insufficient_quota",
            format!(
                "This key's budget of ${:.4} per {} is spent (${:.6} left; this request may cost up to ${:.6}).",
                budget.nano_usd as f64 / 1e9,
                budget.period.as_str(),
                left as f64 / 1e9,
                estimate as f64 / 1e9
            ),
        )
        .with_header(
            HeaderName::from_static("x-should-retry"),
            HeaderValue::from_static("false"),
        );
        error.limit_scope = Some("budget");
        error
    }

    /// The shared state (Redis) is down and `state.on_redis_failure` is `closed`.
    pub fn state_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "state_unavailable",
            "The gateway cannot reach the shared state that enforces limits (Redis); requests are refused until it is back.".to_owned(),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// The admin API is off: the config has no `admin` section.
    pub fn admin_disabled() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "admin_disabled",
            "The admin API is disabled: set admin.master_key and admin.key_secret in the config."
                .to_owned(),
        )
    }

    /// A refused admin request.
    pub fn admin(status: StatusCode, message: &str) -> Self {
        let code = match status.as_u16() {
            400 | 422 => "invalid_request",
            404 => "not_found",
            405 => "method_not_allowed",
            409 => "conflict",
            413 => "request_too_large",
            415 => "unsupported_media_type",
            _ if status.is_client_error() => "invalid_request",
            _ => "internal_error",
        };
        Self::new(
            status,
            if status.is_server_error() {
                "server_error"
            } else {
                "invalid_request_error"
            },
            code,
            message.to_owned(),
        )
    }

    /// The key is past its expiry time.
    pub fn expired_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "expired_api_key",
            "This API key has expired.".to_owned(),
        )
    }

    /// Every deployment of the model (and of its fallbacks) is out of service for now.
    pub fn no_healthy_deployment(model: &str, retry_after: std::time::Duration) -> Self {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable_error",
            "no_healthy_deployment",
            format!("No healthy deployment can serve '{model}' right now; retry in {seconds}s."),
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    /// The request came through too many Shepherd gateways (they are chained in a loop).
    pub fn loop_detected(hops: u32, limit: u32) -> Self {
        Self::new(
            StatusCode::LOOP_DETECTED,
            "invalid_request_error",
            "loop_detected",
            format!(
                "The request passed {hops} gateways (limit {limit}); gateways may be chained in a loop."
            ),
        )
    }

    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting_down",
            "The gateway is shutting down; retry on another replica.".to_owned(),
        )
    }

    pub fn internal(detail: &str) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            format!("The gateway failed to handle the request: {detail}"),
        )
    }

    /// The OpenAI error object, `{"error":{"message","type","param","code"}}`.
    pub fn openai_body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }

    /// Anthropic's error type for this error.
    pub fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 422 => "invalid_request_error",
            401 => "authentication_error",
            402 => "billing_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            508 => "invalid_request_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 | 529 => "overloaded_error",
            504 => "timeout_error",
            _ => "api_error",
        }
    }

    /// The error body in `protocol`'s shape.
    pub fn body(&self, protocol: ClientProtocol) -> serde_json::Value {
        match protocol {
            ClientProtocol::OpenAi => self.openai_body(),
            ClientProtocol::Anthropic => json!({
                "type": "error",
                "error": {"type": self.anthropic_type(), "message": self.message},
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body(self.protocol).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response.extensions_mut().insert(self);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let body = ApiError::invalid_field("stream", "expected a boolean").openai_body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "stream");
        assert_eq!(body["error"]["code"], "invalid_type");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("'stream'")
        );
        let body = ApiError::invalid_key().openai_body();
        assert!(body["error"]["param"].is_null());
    }

    #[test]
    fn anthropic_shape() {
        let error = ApiError::invalid_key().in_protocol(ClientProtocol::Anthropic);
        let body = error.body(ClientProtocol::Anthropic);
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"].as_object().unwrap().len(), 2);
        assert_eq!(
            ClientProtocol::of_path("/v1/messages"),
            ClientProtocol::Anthropic
        );
        assert_eq!(
            ClientProtocol::of_path("/v1/models"),
            ClientProtocol::OpenAi
        );
    }

    #[test]
    fn upstream_failures_per_protocol() {
        let overloaded = UpstreamFailure {
            kind: ErrorKind::Overloaded,
            message: "busy".into(),
            code: None,
        };
        let openai = ApiError::from_upstream(&overloaded, ClientProtocol::OpenAi);
        assert_eq!(openai.status, 503);
        assert_eq!(openai.kind, "service_unavailable_error");
        let anthropic = ApiError::from_upstream(&overloaded, ClientProtocol::Anthropic);
        assert_eq!(anthropic.status.as_u16(), 529);
        assert_eq!(anthropic.anthropic_type(), "overloaded_error");
        let billing = UpstreamFailure {
            kind: ErrorKind::Billing,
            message: "no".into(),
            code: None,
        };
        assert_eq!(
            ApiError::from_upstream(&billing, ClientProtocol::OpenAi).status,
            429
        );
        let anthropic = ApiError::from_upstream(&billing, ClientProtocol::Anthropic);
        assert_eq!(
            (anthropic.status.as_u16(), anthropic.anthropic_type()),
            (402, "billing_error")
        );
        let auth = UpstreamFailure {
            kind: ErrorKind::Authentication,
            message: "bad key".into(),
            code: None,
        };
        assert_eq!(
            ApiError::from_upstream(&auth, ClientProtocol::OpenAi).status,
            502
        );
    }
}
