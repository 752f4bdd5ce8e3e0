//! Quotas: how many requests per period, and by which algorithm.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Largest sliding-window limit: its counters are packed into one atomic word.
pub(crate) const MAX_SLIDING_LIMIT: u32 = (1 << 20) - 1;

/// The algorithm a limit counts with.
///
/// ```
/// use palisade_ratelimit::Algorithm;
///
/// assert_eq!(Algorithm::default(), Algorithm::Gcra);
/// let a: Algorithm = serde_json::from_str("\"sliding_window\"").unwrap();
/// assert_eq!(a, Algorithm::SlidingWindow);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm: a token bucket of `limit` tokens refilled
    /// evenly over the period (one every `period / limit`), so a burst of
    /// `limit` is allowed and then one request per emission interval. Exact,
    /// one atomic word per key; the only algorithm on Redis.
    #[default]
    Gcra,
    /// Two-window weighted counter (the previous window's count, weighted by
    /// how much of it still overlaps the sliding window, plus the current
    /// window's). Smooths the boundary burst of a fixed window; limits up to
    /// 1 048 575 per period. In-process only.
    SlidingWindow,
    /// Counts requests in fixed, aligned windows of one period; the count
    /// resets at each window boundary. In-process only.
    FixedWindow,
}

impl Algorithm {
    /// A short, stable name (`gcra`, `sliding_window`, `fixed_window`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::FixedWindow => "fixed_window",
        }
    }
}

/// `limit` requests per `period`, counted by an [`Algorithm`].
///
/// ```
/// use palisade_ratelimit::{Algorithm, Quota};
/// use std::time::Duration;
///
/// let q = Quota::per_minute(60);
/// assert_eq!(q.limit(), 60);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(q.algorithm(), Algorithm::Gcra);
/// let w = Quota::per_second(10).with_algorithm(Algorithm::FixedWindow);
/// assert_eq!(w.algorithm(), Algorithm::FixedWindow);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: u32,
    period: Duration,
    algorithm: Algorithm,
}

impl Quota {
    /// `limit` requests per `period` (GCRA).
    pub const fn new(limit: u32, period: Duration) -> Self {
        Self {
            limit,
            period,
            algorithm: Algorithm::Gcra,
        }
    }

    /// `limit` requests per second.
    pub const fn per_second(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    pub const fn per_minute(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(60))
    }

    /// `limit` requests per hour.
    pub const fn per_hour(limit: u32) -> Self {
        Self::new(limit, Duration::from_secs(3600))
    }

    /// The same quota counted by `algorithm`.
    pub const fn with_algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Requests allowed per period (also the burst).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The period.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks that the quota can be enforced exactly.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Err("a limit must allow at least one request per period".into());
        }
        let period = self.period_nanos();
        if period == 0 || period >= 1 << 62 {
            return Err(format!(
                "period {:?} must be above zero and below about 146 years",
                self.period
            ));
        }
        if period / u64::from(self.limit) == 0 {
            return Err(format!(
                "{} per {:?} is finer than one request per nanosecond",
                self.limit, self.period
            ));
        }
        if self.algorithm == Algorithm::SlidingWindow && self.limit > MAX_SLIDING_LIMIT {
            return Err(format!(
                "sliding-window limits go up to {MAX_SLIDING_LIMIT} per period, not {}",
                self.limit
            ));
        }
        Ok(())
    }

    pub(crate) fn period_nanos(&self) -> u64 {
        u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The outcome of one rate-limit check.
///
/// ```
/// use palisade_ratelimit::{LocalLimiter, Quota};
///
/// let limiter = LocalLimiter::new(Quota::per_minute(2)).unwrap();
/// let d = limiter.check(&"alice");
/// assert!(d.allowed);
/// assert_eq!((d.limit, d.remaining), (2, 1));
/// assert_eq!(d.retry_after, None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// The quota's limit (`X-RateLimit-Limit`).
    pub limit: u32,
    /// Requests of cost 1 still allowed now (`X-RateLimit-Remaining`).
    pub remaining: u32,
    /// Time until the quota is whole again (`X-RateLimit-Reset`).
    pub reset_after: Duration,
    /// When denied: how long until this same request would be allowed
    /// (`Retry-After`); `None` when allowed, or when the request costs more
    /// than the limit and can never be allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// An "allowed, nothing counted" decision (used when a limit does not
    /// apply or the store failed open).
    pub(crate) const fn unlimited() -> Self {
        Self {
            allowed: true,
            limit: u32::MAX,
            remaining: u32::MAX,
            reset_after: Duration::ZERO,
            retry_after: None,
        }
    }
}

impl From<palisade_store::RateDecision> for Decision {
    fn from(d: palisade_store::RateDecision) -> Self {
        Self {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_after: d.reset_after,
            retry_after: d.retry_after,
        }
    }
}
