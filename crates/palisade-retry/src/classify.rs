//! Which outcomes are worth another attempt, and when.

use http::{HeaderMap, StatusCode};
use palisade_core::error_class::{self, ErrorClass};
use std::{
    error::Error as StdError,
    fmt,
    time::{Duration, SystemTime},
};

/// Why an attempt is retried (a bounded metric label).
///
/// ```
/// use palisade_retry::RetryReason;
///
/// assert_eq!(RetryReason::Connect.as_str(), "connect");
/// assert!(RetryReason::Connect.request_not_sent());
/// assert!(!RetryReason::Transport.request_not_sent());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryReason {
    /// The response status is one of the retryable statuses (502, 503, 504,
    /// 429 by default).
    Status,
    /// The gRPC status in the response headers is retryable (`UNAVAILABLE`
    /// by default).
    Grpc,
    /// The connection could not be made, or the request was refused before
    /// it was sent: safe for every method.
    Connect,
    /// The attempt (or the upstream) timed out.
    Timeout,
    /// The connection failed after the request may have been sent (reset,
    /// closed before the response).
    Transport,
    /// A generic service's classifier asked for a retry.
    Error,
}

impl RetryReason {
    pub(crate) const ALL: [RetryReason; 6] = [
        Self::Status,
        Self::Grpc,
        Self::Connect,
        Self::Timeout,
        Self::Transport,
        Self::Error,
    ];

    /// A short, stable, snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Grpc => "grpc",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Transport => "transport",
            Self::Error => "error",
        }
    }

    /// Whether the request surely never reached the upstream, so that even a
    /// non-idempotent request may be sent again.
    pub const fn request_not_sent(self) -> bool {
        matches!(self, Self::Connect)
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a classifier says about one attempt's result.
///
/// ```
/// use palisade_retry::{RetryReason, Verdict};
/// use std::time::Duration;
///
/// let v = Verdict::retry(RetryReason::Error).after(Duration::from_secs(1));
/// assert!(v.is_retry());
/// assert!(!Verdict::Done.is_retry());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Return this result as it is.
    Done,
    /// Another attempt may succeed.
    Retry {
        /// Why.
        reason: RetryReason,
        /// When the upstream asked to be called again (`Retry-After`), if it
        /// did; otherwise the backoff decides.
        after: Option<Duration>,
    },
}

impl Verdict {
    /// A retry for `reason`, with no hint of when.
    pub const fn retry(reason: RetryReason) -> Self {
        Self::Retry {
            reason,
            after: None,
        }
    }

    /// Adds the upstream's "call again after" hint to a retry.
    pub const fn after(self, delay: Duration) -> Self {
        match self {
            Self::Retry { reason, .. } => Self::Retry {
                reason,
                after: Some(delay),
            },
            Self::Done => Self::Done,
        }
    }

    /// Whether this asks for a retry.
    pub const fn is_retry(&self) -> bool {
        matches!(self, Self::Retry { .. })
    }
}

/// When the upstream asked to be called again, from its response headers:
/// `Retry-After` (seconds or an HTTP date), gRPC's
/// `grpc-retry-pushback-ms`, and — for `429 Too Many Requests` —
/// `X-RateLimit-Reset` / `RateLimit-Reset` (seconds to wait, or a Unix time
/// when the value is that large).
///
/// Returns `Some(Duration::MAX)` when the upstream said not to retry at all
/// (a negative gRPC pushback).
///
/// ```
/// use palisade_retry::retry_after;
/// use std::time::Duration;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("retry-after", "3".parse().unwrap());
/// assert_eq!(retry_after(http::StatusCode::SERVICE_UNAVAILABLE, &headers), Some(Duration::from_secs(3)));
/// ```
pub fn retry_after(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if let Some(v) = headers.get(http::header::RETRY_AFTER) {
        let v = v.to_str().ok()?.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            );
        }
    }
    if let Some(v) = headers.get("grpc-retry-pushback-ms") {
        let v = v.to_str().ok()?.trim();
        return match v.parse::<i64>() {
            Ok(ms) if ms < 0 => Some(Duration::MAX),
            Ok(ms) => Some(Duration::from_millis(ms as u64)),
            Err(_) => None,
        };
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let v = headers
            .get("x-ratelimit-reset")
            .or_else(|| headers.get("ratelimit-reset"))?;
        let secs = v.to_str().ok()?.trim().parse::<f64>().ok()?;
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        // A reset too far away to represent is longer than any cap: the
        // response is returned, not waited for.
        let Ok(after) = Duration::try_from_secs_f64(secs) else {
            return Some(Duration::MAX);
        };
        // Values this large are Unix times, not durations.
        if secs >= 1_000_000_000.0 {
            let Some(at) = SystemTime::UNIX_EPOCH.checked_add(after) else {
                return Some(Duration::MAX);
            };
            return Some(
                at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            );
        }
        return Some(after);
    }
    None
}

/// Classifies a transport error for retry, from core's typed reading of
/// its source chain ([`palisade_core::error_class::classify_error`]): a
/// refused connection (or a request hyper canceled before sending) is
/// [`RetryReason::Connect`], a timeout [`RetryReason::Timeout`], anything
/// else (reset, closed early, …) [`RetryReason::Transport`]. A
/// [`palisade_core::Error`] in the chain decides for itself: not retryable
/// gives `None`; its `retry_after` is returned.
///
/// ```
/// use palisade_retry::{RetryReason, classify_error};
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert_eq!(classify_error(&refused), Some((RetryReason::Connect, None)));
/// ```
pub fn classify_error(err: &(dyn StdError + 'static)) -> Option<(RetryReason, Option<Duration>)> {
    Some(match error_class::classify_error(err) {
        ErrorClass::Connect => (RetryReason::Connect, None),
        ErrorClass::Timeout => (RetryReason::Timeout, None),
        ErrorClass::Palisade {
            retryable: false, ..
        } => return None,
        ErrorClass::Palisade {
            timeout,
            retry_after,
            ..
        } => (
            if timeout {
                RetryReason::Timeout
            } else {
                RetryReason::Error
            },
            retry_after,
        ),
        _ => (RetryReason::Transport, None),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn huge_rate_limit_resets_mean_do_not_wait() {
        for huge in ["10000000000000000000", "1e300", "18446744073709551616"] {
            let mut h = http::HeaderMap::new();
            h.insert("x-ratelimit-reset", huge.parse().unwrap());
            assert_eq!(
                retry_after(StatusCode::TOO_MANY_REQUESTS, &h),
                Some(Duration::MAX),
                "{huge}"
            );
        }
    }

    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_seconds_date_and_pushback() {
        let s = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            retry_after(s, &headers(&[("retry-after", "120".into())])),
            Some(Duration::from_secs(120))
        );
        let at = SystemTime::now() + Duration::from_secs(30);
        let d = retry_after(s, &headers(&[("retry-after", httpdate::fmt_http_date(at))])).unwrap();
        assert!(
            d <= Duration::from_secs(30) && d >= Duration::from_secs(28),
            "{d:?}"
        );
        let past = SystemTime::now() - Duration::from_secs(30);
        assert_eq!(
            retry_after(
                s,
                &headers(&[("retry-after", httpdate::fmt_http_date(past))])
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(
            retry_after(s, &headers(&[("retry-after", "soon".into())])),
            None
        );
        assert_eq!(
            retry_after(s, &headers(&[("grpc-retry-pushback-ms", "250".into())])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(s, &headers(&[("grpc-retry-pushback-ms", "-1".into())])),
            Some(Duration::MAX)
        );
    }

    #[test]
    fn rate_limit_reset_only_on_429() {
        let h = headers(&[("x-ratelimit-reset", "7".into())]);
        assert_eq!(retry_after(StatusCode::SERVICE_UNAVAILABLE, &h), None);
        assert_eq!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, &h),
            Some(Duration::from_secs(7))
        );
        let epoch = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 20;
        let h = headers(&[("ratelimit-reset", epoch.to_string())]);
        let d = retry_after(StatusCode::TOO_MANY_REQUESTS, &h).unwrap();
        assert!(
            d <= Duration::from_secs(20) && d >= Duration::from_secs(18),
            "{d:?}"
        );
        let h = headers(&[("x-ratelimit-reset", "-4".into())]);
        assert_eq!(retry_after(StatusCode::TOO_MANY_REQUESTS, &h), None);
    }

    #[test]
    fn error_chain_classification() {
        use std::io;
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(classify_error(&reset), Some((RetryReason::Transport, None)));
        let timed = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(classify_error(&timed), Some((RetryReason::Timeout, None)));
        let wrapped = io::Error::other(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(classify_error(&wrapped), Some((RetryReason::Connect, None)));
        let open = palisade_core::Error::new(palisade_core::ErrorKind::CircuitOpen, "open")
            .with_retry_after(Duration::from_secs(30));
        assert_eq!(
            classify_error(&open),
            Some((RetryReason::Error, Some(Duration::from_secs(30))))
        );
        let bad = palisade_core::Error::new(palisade_core::ErrorKind::BadRequest, "bad");
        assert_eq!(classify_error(&bad), None);
    }
}
