//! The largest values the gateway takes from clients, upstreams, the admin API and the config,
//! in one place (the README's "Limits" list is this file in prose), and the arithmetic that
//! cannot overflow on them: times in the future are capped, counts and money saturate. A value
//! past its bound is refused with an error that names the field, never wrapped or unwrapped.

use std::time::Duration;

const DAY: u64 = 86_400;

/// `max_tokens` / `max_completion_tokens` / `max_output_tokens` a client may ask for.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000_000;

/// Any duration in the config file.
pub const MAX_CONFIG_DURATION: Duration = Duration::from_secs(10 * 365 * DAY);

/// `x-shepherd-cache-ttl` and a model's cache `ttl`.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(365 * DAY);

/// A virtual key's lifetime (`expires_in`) and how far ahead `expires_at` may be.
pub const MAX_KEY_LIFETIME: Duration = Duration::from_secs(100 * 365 * DAY);

/// A rotation's `overlap`: how long the previous secret keeps working.
pub const MAX_ROTATION_OVERLAP: Duration = Duration::from_secs(365 * DAY);

/// An upstream's `Retry-After`; longer ones are read as this (the breaker still reopens).
pub const MAX_UPSTREAM_RETRY_AFTER: Duration = Duration::from_secs(DAY);

/// Token counts an upstream may report for one request; larger ones are recorded as this.
pub const MAX_REPORTED_TOKENS: u64 = 10_000_000_000;

/// Unix seconds of the last second RFC 3339 writes with four digits (9999-12-31T23:59:59Z).
pub const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// The largest conversation `previous_response_id` may grow into (stored input, the output it
/// continues and the new input, as JSON): far past any model's context window, it keeps a chain
/// of continuations from growing every stored row and upstream body without end.
pub const MAX_CONVERSATION_BYTES: usize = 16 * 1024 * 1024;

/// `instant + duration`, or as far as `MAX_CONFIG_DURATION` ahead when that would overflow.
pub fn later(instant: tokio::time::Instant, duration: Duration) -> tokio::time::Instant {
    instant
        .checked_add(duration)
        .or_else(|| instant.checked_add(MAX_CONFIG_DURATION))
        .unwrap_or(instant)
}

/// `seconds` as a `SystemTime`, clamped to 1970..=9999 (so it always formats as RFC 3339).
pub fn system_time(seconds: i64) -> std::time::SystemTime {
    let seconds = u64::try_from(seconds.clamp(0, MAX_UNIX_SECONDS)).unwrap_or(0);
    std::time::UNIX_EPOCH + Duration::from_secs(seconds)
}

/// An RFC 3339 UTC time of unix `seconds`, clamped to 1970..=9999: reading never fails on a
/// stored value.
pub fn rfc3339(seconds: i64) -> String {
    humantime::format_rfc3339_seconds(system_time(seconds)).to_string()
}

/// A duration a person wrote (`30d`, `1h`), within `max`; the error names `field`.
pub fn duration(field: &str, text: &str, max: Duration) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|_| format!("`{field}` `{text}` is not a duration (e.g. 30s, 10m, 1h, 7d)"))?;
    if parsed > max {
        return Err(format!(
            "`{field}` `{text}` is longer than the maximum of {}",
            humantime::format_duration(max)
        ));
    }
    Ok(parsed)
}

/// Seconds as an `i64`, saturating.
pub fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded_and_times_never_overflow() {
        assert_eq!(
            duration("ttl", "10m", MAX_CACHE_TTL).unwrap(),
            Duration::from_secs(600)
        );
        let too_long = duration("x-shepherd-cache-ttl", "300000000000y", MAX_CACHE_TTL);
        assert!(too_long.unwrap_err().contains("x-shepherd-cache-ttl"));
        assert!(duration("ttl", "soon", MAX_CACHE_TTL).is_err());
        let now = tokio::time::Instant::now();
        assert!(later(now, Duration::MAX) > now);
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }
}
