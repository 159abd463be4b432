//! Upstream errors across protocols: an OpenAI, Anthropic or Gemini error (a status and body,
//! or an in-stream error event) classified into one `ErrorKind`, which `ApiError` then renders
//! in the caller's protocol with the status the caller's SDK expects.

use serde_json::Value;

/// What went wrong upstream, whatever protocol said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    /// The gateway's upstream key was refused.
    Authentication,
    /// The upstream account is out of credit or quota.
    Billing,
    Permission,
    NotFound,
    TooLarge,
    RateLimited,
    Server,
    Overloaded,
    Timeout,
}

impl ErrorKind {
    /// Classifies an HTTP status alone.
    pub fn of_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Authentication,
            402 => ErrorKind::Billing,
            403 => ErrorKind::Permission,
            404 => ErrorKind::NotFound,
            413 => ErrorKind::TooLarge,
            429 => ErrorKind::RateLimited,
            503 | 529 => ErrorKind::Overloaded,
            504 | 408 => ErrorKind::Timeout,
            500..=599 => ErrorKind::Server,
            _ => ErrorKind::InvalidRequest,
        }
    }

    /// Whether another deployment or a later attempt may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited | ErrorKind::Server | ErrorKind::Overloaded | ErrorKind::Timeout
        )
    }
}

/// An upstream error, classified, with the upstream's own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    pub kind: ErrorKind,
    pub message: String,
    /// OpenAI `code`, kept when it tells something (e.g. `context_length_exceeded`).
    pub code: Option<String>,
}

/// Reads an OpenAI error body (`{"error":{"message","type","code"}}`) with its status.
pub fn from_openai(status: u16, body: &Value) -> UpstreamFailure {
    let error = &body["error"];
    let kind_name = error["type"].as_str().unwrap_or_default();
    let code = error["code"].as_str().map(str::to_owned);
    let kind = if kind_name == "insufficient_quota"
        || matches!(
            code.as_deref(),
            Some("insufficient_quota" | "credit_balance_exhausted")
        ) {
        ErrorKind::Billing
    } else if status == 0 {
        // An in-stream error event carries no status.
        match kind_name {
            "rate_limit_error" | "rate_limit_exceeded" => ErrorKind::RateLimited,
            "invalid_request_error" => ErrorKind::InvalidRequest,
            _ => ErrorKind::Server,
        }
    } else {
        ErrorKind::of_status(status)
    };
    UpstreamFailure {
        kind,
        message: message_of(error, body),
        code,
    }
}

/// Reads an Anthropic error body (`{"type":"error","error":{"type","message"}}`); `status` 0
/// for an in-stream error event.
pub fn from_anthropic(status: u16, body: &Value) -> UpstreamFailure {
    let error = &body["error"];
    let kind = match error["type"].as_str().unwrap_or_default() {
        "invalid_request_error" => ErrorKind::InvalidRequest,
        "authentication_error" => ErrorKind::Authentication,
        "billing_error" => ErrorKind::Billing,
        "permission_error" => ErrorKind::Permission,
        "not_found_error" => ErrorKind::NotFound,
        "request_too_large" => ErrorKind::TooLarge,
        "rate_limit_error" => ErrorKind::RateLimited,
        "overloaded_error" => ErrorKind::Overloaded,
        "timeout_error" => ErrorKind::Timeout,
        "api_error" => ErrorKind::Server,
        _ if status == 0 => ErrorKind::Server,
        _ => ErrorKind::of_status(status),
    };
    UpstreamFailure {
        kind,
        message: message_of(error, body),
        code: None,
    }
}

/// Reads a Gemini error body (`{"error":{"code","message","status","details"}}`, or a
/// one-element array of it).
pub fn from_gemini(status: u16, body: &Value) -> UpstreamFailure {
    let body = match body {
        Value::Array(items) => items.first().unwrap_or(&Value::Null),
        other => other,
    };
    let error = &body["error"];
    let status = match status {
        0 => error["code"]
            .as_u64()
            .and_then(|code| u16::try_from(code).ok())
            .unwrap_or(500),
        status => status,
    };
    let reasons: Vec<&str> = error["details"]
        .as_array()
        .map(|details| {
            details
                .iter()
                .filter_map(|detail| detail["reason"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let kind = match error["status"].as_str().unwrap_or_default() {
        _ if reasons
            .iter()
            .any(|r| *r == "API_KEY_INVALID" || *r == "API_KEY_EXPIRED") =>
        {
            ErrorKind::Authentication
        }
        "UNAUTHENTICATED" => ErrorKind::Authentication,
        "PERMISSION_DENIED" => ErrorKind::Permission,
        "NOT_FOUND" => ErrorKind::NotFound,
        "RESOURCE_EXHAUSTED" => ErrorKind::RateLimited,
        "UNAVAILABLE" => ErrorKind::Overloaded,
        "DEADLINE_EXCEEDED" => ErrorKind::Timeout,
        "INTERNAL" => ErrorKind::Server,
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => ErrorKind::InvalidRequest,
        _ => ErrorKind::of_status(status),
    };
    UpstreamFailure {
        kind,
        message: message_of(error, body),
        code: None,
    }
}

fn message_of(error: &Value, body: &Value) -> String {
    match error["message"].as_str() {
        Some(message) if !message.is_empty() => message.to_owned(),
        _ => match error {
            Value::String(text) => text.clone(),
            _ => format!("the upstream answered {body}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_protocol_classifies() {
        let quota = json!({"error": {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}});
        assert_eq!(from_openai(429, &quota).kind, ErrorKind::Billing);
        let limit = json!({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}});
        assert_eq!(from_openai(429, &limit).kind, ErrorKind::RateLimited);
        let context = json!({"error": {"message": "too long", "type": "invalid_request_error", "code": "context_length_exceeded"}});
        let failure = from_openai(400, &context);
        assert_eq!(failure.kind, ErrorKind::InvalidRequest);
        assert_eq!(failure.code.as_deref(), Some("context_length_exceeded"));

        let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let failure = from_anthropic(529, &overloaded);
        assert_eq!(
            (failure.kind, failure.message.as_str()),
            (ErrorKind::Overloaded, "Overloaded")
        );
        assert_eq!(from_anthropic(0, &overloaded).kind, ErrorKind::Overloaded);

        let bad_key = json!([{"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]}}]);
        assert_eq!(from_gemini(400, &bad_key).kind, ErrorKind::Authentication);
        let exhausted =
            json!({"error": {"code": 429, "message": "Quota", "status": "RESOURCE_EXHAUSTED"}});
        assert_eq!(from_gemini(429, &exhausted).kind, ErrorKind::RateLimited);
        assert_eq!(
            from_gemini(0, &json!({"error": {"code": 503, "message": "x"}})).kind,
            ErrorKind::Overloaded
        );
    }

    #[test]
    fn retryable_kinds() {
        assert!(ErrorKind::Overloaded.retryable());
        assert!(ErrorKind::RateLimited.retryable());
        assert!(!ErrorKind::Billing.retryable());
        assert!(!ErrorKind::InvalidRequest.retryable());
    }
}
