//! The retry layer's errors.

use crate::RetryReason;
use palisade_core::{BoxError, ErrorKind};
use std::fmt;

/// Why retrying stopped while the last attempt had still failed in a
/// retryable way (a bounded metric label).
///
/// ```
/// use palisade_retry::StopReason;
///
/// assert_eq!(StopReason::Budget.to_string(), "budget");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// Every allowed attempt was made.
    MaxAttempts,
    /// The overall deadline would pass before the next attempt.
    Deadline,
    /// The retry budget is spent (a retry storm is being held back).
    Budget,
    /// The upstream asked to be called again later than the delay cap.
    RetryAfterTooLong,
    /// The request body was larger than the replay buffer, so it was sent
    /// once, streamed, and cannot be sent again.
    BodyTooLarge,
    /// The request is not idempotent (e.g. `POST`) and may have reached the
    /// upstream.
    NotIdempotent,
}

impl StopReason {
    pub(crate) const ALL: [StopReason; 6] = [
        Self::MaxAttempts,
        Self::Deadline,
        Self::Budget,
        Self::RetryAfterTooLong,
        Self::BodyTooLarge,
        Self::NotIdempotent,
    ];

    /// A short, stable, snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MaxAttempts => "max_attempts",
            Self::Deadline => "deadline",
            Self::Budget => "budget",
            Self::RetryAfterTooLong => "retry_after_too_long",
            Self::BodyTooLarge => "body_too_large",
            Self::NotIdempotent => "not_idempotent",
        }
    }

    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the last attempt failed.
///
/// ```
/// use palisade_retry::LastFailure;
///
/// let f: LastFailure<std::io::Error> = LastFailure::TimedOut;
/// assert!(f.into_error().is_none());
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum LastFailure<E> {
    /// The inner service returned this error.
    Error(E),
    /// The attempt timed out (per-attempt timeout or overall deadline).
    TimedOut,
}

impl<E> LastFailure<E> {
    /// The inner service's error, if the attempt ended with one.
    pub fn into_error(self) -> Option<E> {
        match self {
            Self::Error(e) => Some(e),
            Self::TimedOut => None,
        }
    }
}

/// Retries stopped and the last attempt had failed: the typed error holding
/// the last failure and the number of attempts made.
///
/// ```
/// use palisade_retry::{LastFailure, RetriesExhausted, StopReason};
///
/// # fn check(e: &RetriesExhausted<std::io::Error>) {
/// println!("{} attempts, stopped by {}", e.attempts(), e.reason());
/// if let LastFailure::Error(io) = e.last() {
///     println!("last error: {io}");
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct RetriesExhausted<E> {
    pub(crate) attempts: u32,
    pub(crate) reason: StopReason,
    pub(crate) retry_reason: RetryReason,
    pub(crate) last: LastFailure<E>,
}

impl<E> RetriesExhausted<E> {
    /// Attempts made, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Why retrying stopped.
    pub fn reason(&self) -> StopReason {
        self.reason
    }

    /// Why the last attempt would have been retried.
    pub fn retry_reason(&self) -> RetryReason {
        self.retry_reason
    }

    /// The last attempt's failure.
    pub fn last(&self) -> &LastFailure<E> {
        &self.last
    }

    /// The last attempt's failure, owned.
    pub fn into_last(self) -> LastFailure<E> {
        self.last
    }
}

/// The error of a retried service.
///
/// ```
/// use palisade_retry::RetryError;
///
/// let err: RetryError<std::io::Error> = RetryError::Inner(std::io::Error::other("bad input"));
/// let core: palisade_core::Error = err.into();
/// assert_eq!(core.http_status(), 502);
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryError<E> {
    /// The inner service's error, returned as it was: the classifier said a
    /// retry would not help.
    Inner(E),
    /// The last attempt failed in a retryable way and retrying stopped.
    Exhausted(RetriesExhausted<E>),
}

impl<E> RetryError<E> {
    /// The inner service's error, if there is one (`Inner`, or the last
    /// error of `Exhausted`).
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Exhausted(x) => x.last.into_error(),
        }
    }

    /// Whether retries were exhausted.
    pub fn is_exhausted(&self) -> bool {
        matches!(self, Self::Exhausted(_))
    }

    /// Whether the last attempt timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Exhausted(RetriesExhausted {
                last: LastFailure::TimedOut,
                ..
            })
        )
    }

    /// Attempts made (1 for `Inner`).
    pub fn attempts(&self) -> u32 {
        match self {
            Self::Inner(_) => 1,
            Self::Exhausted(x) => x.attempts,
        }
    }
}

impl<E: fmt::Display> fmt::Display for RetryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inner(e) => fmt::Display::fmt(e, f),
            Self::Exhausted(x) => {
                write!(
                    f,
                    "gave up after {} attempt{} ({}): ",
                    x.attempts,
                    if x.attempts == 1 { "" } else { "s" },
                    x.reason
                )?;
                match &x.last {
                    LastFailure::Error(e) => fmt::Display::fmt(e, f),
                    LastFailure::TimedOut => f.write_str("attempt timed out"),
                }
            }
        }
    }
}

impl<E> std::error::Error for RetryError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Inner(e) => e.source(),
            Self::Exhausted(RetriesExhausted {
                last: LastFailure::Error(e),
                ..
            }) => Some(e),
            Self::Exhausted(_) => None,
        }
    }
}

impl<E> From<RetryError<E>> for palisade_core::Error
where
    E: Into<BoxError>,
{
    fn from(err: RetryError<E>) -> Self {
        match err {
            RetryError::Inner(e) => {
                let e: BoxError = e.into();
                match e.downcast::<palisade_core::Error>() {
                    Ok(core) => *core,
                    Err(e) => palisade_core::Error::new(ErrorKind::Upstream, "upstream failed")
                        .with_source(e),
                }
            }
            RetryError::Exhausted(x) => {
                let msg = format!(
                    "upstream failed after {} attempt{} ({})",
                    x.attempts,
                    if x.attempts == 1 { "" } else { "s" },
                    x.reason
                );
                match x.last {
                    LastFailure::TimedOut => palisade_core::Error::new(ErrorKind::Timeout, msg),
                    LastFailure::Error(e) => {
                        let e: BoxError = e.into();
                        let (kind, after) = match e.downcast_ref::<palisade_core::Error>() {
                            Some(core) => (core.kind(), core.retry_after()),
                            None => (ErrorKind::Upstream, None),
                        };
                        let out = palisade_core::Error::new(kind, msg).with_source(e);
                        match after {
                            Some(a) => out.with_retry_after(a),
                            None => out,
                        }
                    }
                }
            }
        }
    }
}

/// Builds the `Exhausted` error (kept here so the fields stay private).
pub(crate) fn exhausted<E>(
    attempts: u32,
    reason: StopReason,
    retry_reason: RetryReason,
    last: LastFailure<E>,
) -> RetryError<E> {
    RetryError::Exhausted(RetriesExhausted {
        attempts,
        reason,
        retry_reason,
        last,
    })
}
