//! Retry policy: which failures are worth another attempt, how long to wait before it
//! (exponential backoff with full jitter, or the upstream's `Retry-After`, capped), and how a
//! `Retry-After` is read (`retry-after-ms`, seconds, or an HTTP date).

use std::time::{Duration, SystemTime};

use axum::http::HeaderMap;

use crate::config::RetryConfig;
use crate::translate::errors::ErrorKind;

/// What a failed attempt means for the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Another attempt (another deployment, or the same after a pause) may succeed.
    Retry,
    /// The upstream key was refused: take it out of rotation and try another at once.
    KeyRefused,
    /// The prompt is too long for the model: only a fallback model may help.
    ContextWindow,
    /// The answer stands (e.g. 400, 404): give it to the client.
    Final,
}

/// The verdict on an upstream error of this kind (`code`: OpenAI's error code, if any).
pub fn verdict(kind: ErrorKind, code: Option<&str>) -> Verdict {
    match kind {
        ErrorKind::Authentication | ErrorKind::Billing | ErrorKind::Permission => {
            Verdict::KeyRefused
        }
        ErrorKind::RateLimited | ErrorKind::Server | ErrorKind::Overloaded | ErrorKind::Timeout => {
            Verdict::Retry
        }
        ErrorKind::InvalidRequest if code == Some("context_length_exceeded") => {
            Verdict::ContextWindow
        }
        ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::TooLarge => Verdict::Final,
    }
}

/// The pause before retry number `retry` (0 for the first retry): a random duration up to
/// `backoff * 2^retry`, capped at `max_backoff` (full jitter).
pub fn backoff(policy: &RetryConfig, retry: u32) -> Duration {
    let ceiling = policy
        .backoff
        .saturating_mul(1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX))
        .min(policy.max_backoff);
    ceiling.mul_f64(fastrand::f64())
}

/// The upstream's `retry-after-ms` or `retry-after` (seconds or an HTTP date), if any; at most
/// `bounds::MAX_UPSTREAM_RETRY_AFTER` (an upstream cannot bench a deployment for years).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let cap = crate::bounds::MAX_UPSTREAM_RETRY_AFTER;
    let seconds = |value: f64| {
        (value.is_finite() && value >= 0.0)
            .then(|| Duration::try_from_secs_f64(value).unwrap_or(cap).min(cap))
    };
    if let Some(wait) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(|ms| seconds(ms / 1000.0))
    {
        return Some(wait);
    }
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(value) = value.parse::<f64>() {
        return seconds(value);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(cap),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(ErrorKind::RateLimited, None), Verdict::Retry);
        assert_eq!(verdict(ErrorKind::Overloaded, None), Verdict::Retry);
        assert_eq!(
            verdict(ErrorKind::Authentication, None),
            Verdict::KeyRefused
        );
        assert_eq!(verdict(ErrorKind::Billing, None), Verdict::KeyRefused);
        assert_eq!(verdict(ErrorKind::InvalidRequest, None), Verdict::Final);
        assert_eq!(
            verdict(ErrorKind::InvalidRequest, Some("context_length_exceeded")),
            Verdict::ContextWindow
        );
        assert_eq!(verdict(ErrorKind::NotFound, None), Verdict::Final);
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_caps() {
        let policy = RetryConfig {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
            max_retry_after: Duration::from_secs(30),
        };
        for retry in 0..8 {
            let ceiling = Duration::from_millis((100u64 << retry).min(700));
            for _ in 0..200 {
                assert!(backoff(&policy, retry) <= ceiling);
            }
        }
        let samples: Vec<Duration> = (0..200).map(|_| backoff(&policy, 3)).collect();
        assert!(
            samples.iter().any(|d| *d < Duration::from_millis(200)),
            "jitter reaches low"
        );
        assert!(
            samples.iter().any(|d| *d > Duration::from_millis(500)),
            "and high"
        );
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert("retry-after-ms", HeaderValue::from_static("1500"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        headers.remove("retry-after-ms");
        let in_a_minute = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(61));
        headers.insert("retry-after", HeaderValue::from_str(&in_a_minute).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(55) && wait <= Duration::from_secs(61),
            "{wait:?}"
        );
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        // A hostile or broken upstream cannot overflow a duration or bench a deployment for ever.
        let day = crate::bounds::MAX_UPSTREAM_RETRY_AFTER;
        for huge in ["1e30", "18446744073709551615", "99999999999999"] {
            headers.insert("retry-after", HeaderValue::from_static(huge));
            assert_eq!(retry_after(&headers), Some(day), "{huge}");
        }
        headers.insert("retry-after-ms", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&headers), Some(day));
    }
}
