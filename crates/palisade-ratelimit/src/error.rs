//! The rate limiter's error.

use crate::quota::Decision;
use palisade_core::{Error, ErrorKind};
use palisade_store::StoreError;
use std::{sync::Arc, time::Duration};

/// The problem type of a rejection's `application/problem+json` body, as
/// the IETF rate-limit headers draft registers it.
pub const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// What the rate limiter can fail with.
///
/// Converts into [`palisade_core::Error`] (429 with `Retry-After` for a
/// rejection, 503 when the store is down and the limiter fails closed).
///
/// ```
/// use palisade_ratelimit::{LocalLimiter, Quota, RateLimitError};
///
/// let err = LocalLimiter::new(Quota::per_second(0)).unwrap_err();
/// assert!(matches!(err, RateLimitError::InvalidConfig(_)));
/// let core: palisade_core::Error = err.into();
/// assert_eq!(core.http_status(), 500);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// A limit refused the request.
    #[error("rate limit {limit:?} exceeded")]
    Exceeded {
        /// The name of the limit that refused.
        limit: Arc<str>,
        /// Its decision (remaining, reset, retry-after).
        decision: Decision,
    },
    /// The store could not decide and the limiter fails closed.
    #[error("rate-limit store unavailable")]
    StoreUnavailable(#[source] StoreError),
    /// The configuration is invalid (the message names what and why).
    #[error("invalid rate-limit configuration: {0}")]
    InvalidConfig(String),
    /// A programmatic check named a limit the limiter does not have.
    #[error("no rate limit named {0:?}")]
    UnknownLimit(String),
    /// The key extractor refused a request that has no key (a `PeerIp` with
    /// `MissingPeer::Refuse` and no peer address); converts back into the
    /// extractor's error as it is.
    #[error("{0}")]
    KeyRefused(Box<Error>),
}

impl RateLimitError {
    /// Whether a limit refused the request.
    pub fn is_exceeded(&self) -> bool {
        matches!(self, Self::Exceeded { .. })
    }

    /// How long until the request may succeed, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Exceeded { decision, .. } => decision.retry_after,
            Self::StoreUnavailable(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<RateLimitError> for Error {
    fn from(err: RateLimitError) -> Self {
        match err {
            err @ RateLimitError::Exceeded { .. } => {
                let mut e = Error::new(ErrorKind::RateLimited, "rate limit exceeded")
                    .with_problem_type(QUOTA_EXCEEDED);
                if let Some(after) = err.retry_after() {
                    e = e.with_retry_after(after);
                }
                e.with_source(err)
            }
            err @ RateLimitError::StoreUnavailable(_) => {
                Error::new(ErrorKind::Unavailable, "rate limiting is unavailable")
                    .with_retry_after(Duration::from_secs(1))
                    .with_source(err)
            }
            err @ (RateLimitError::InvalidConfig(_) | RateLimitError::UnknownLimit(_)) => {
                Error::new(ErrorKind::Internal, "rate limiter misconfigured").with_source(err)
            }
            RateLimitError::KeyRefused(inner) => *inner,
        }
    }
}
