//! Retry timing: exponential backoff with jitter, and the upstream's `Retry-After`.
//!
//! Backoff follows AWS's "Exponential Backoff And Jitter" (Brooker, 2015) in its "equal jitter"
//! form: `d = min(max, initial × 2^attempt)`, wait `d/2 + jitter × d/2`, so retries spread out
//! without ever retrying at once. `Retry-After` is RFC 9110 §10.2.3 (delay-seconds or an
//! HTTP-date); `retry-after-ms` is the millisecond variant OpenAI and Anthropic send.

use std::time::{Duration, SystemTime};

use crate::catalog::RetryPolicy;

/// The wait before retry number `attempt` (0 = the first retry); `jitter` in `[0, 1)`.
pub fn backoff(policy: &RetryPolicy, attempt: u32, jitter: f64) -> Duration {
    let base = policy.initial_backoff.saturating_mul(1u32 << attempt.min(20)).min(policy.max_backoff);
    let half = base / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Parses a `Retry-After` value (seconds, fractional accepted, or an HTTP-date) relative to `now`.
/// Returns `None` for an unparseable value; a date in the past gives zero.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses a `retry-after-ms` value.
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms = value.trim().parse::<f64>().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64((ms / 1000.0).min(86_400.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_equal_jitter_and_caps() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        assert_eq!(backoff(&p, 0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 0, 0.5), Duration::from_millis(150));
        assert_eq!(backoff(&p, 1, 0.5), Duration::from_millis(300));
        assert_eq!(backoff(&p, 5, 1.0), Duration::from_secs(1));
    }

    /// Shared case C24 Config 4: an HTTP-date 20 s ahead parses like `retry-after: 20`.
    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("20", now), Some(Duration::from_secs(20)));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:20 GMT", now), Some(Duration::from_secs(20)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after_ms("1500"), Some(Duration::from_millis(1500)));
    }
}
