//! How long to wait before the next attempt: exponential backoff with a cap
//! and jitter.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How a computed backoff delay is randomised, so that many clients that
/// failed together do not all come back together.
///
/// ```
/// use palisade_retry::Jitter;
///
/// let j: Jitter = serde_json::from_str("\"decorrelated\"").unwrap();
/// assert_eq!(j, Jitter::Decorrelated);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Jitter {
    /// The exact exponential delay (`initial × base^(n-1)`, capped).
    #[default]
    None,
    /// A uniformly random delay between zero and the exponential delay.
    Full,
    /// Half the exponential delay plus a random part of up to the other half.
    Equal,
    /// A random delay between the initial delay and three times the previous
    /// delay, capped ("decorrelated jitter").
    Decorrelated,
}

/// Exponential backoff: `initial × base^(n-1)` for the n-th retry, capped at
/// `max`, then jittered.
///
/// ```
/// use palisade_retry::{Backoff, Jitter};
/// use std::time::Duration;
///
/// let b = Backoff::new(Duration::from_secs(2), 2.0, Duration::from_secs(10), Jitter::None);
/// let delays: Vec<_> = (1..=4).map(|n| b.delay(n, Duration::ZERO).as_secs()).collect();
/// assert_eq!(delays, [2, 4, 8, 10]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    base: f64,
    max: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// A backoff starting at `initial`, multiplied by `base` for each further
    /// retry, never above `max`. A `base` below 1 or not finite is taken as 1.
    pub fn new(initial: Duration, base: f64, max: Duration, jitter: Jitter) -> Self {
        let base = if base.is_finite() && base >= 1.0 {
            base
        } else {
            1.0
        };
        Self {
            initial: initial.min(max),
            base,
            max,
            jitter,
        }
    }

    /// The delay cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before retry number `retry` (1 for the first retry).
    /// `previous` is the delay used before the previous retry (zero for the
    /// first); only decorrelated jitter uses it.
    pub fn delay(&self, retry: u32, previous: Duration) -> Duration {
        let exp = retry.saturating_sub(1).min(1024) as i32;
        let raw = self.initial.as_secs_f64() * self.base.powi(exp);
        let capped = if raw.is_finite() && raw < self.max.as_secs_f64() {
            Duration::from_secs_f64(raw)
        } else {
            self.max
        };
        match self.jitter {
            Jitter::None => capped,
            Jitter::Full => random_between(Duration::ZERO, capped),
            Jitter::Equal => {
                let half = capped / 2;
                half + random_between(Duration::ZERO, capped - half)
            }
            Jitter::Decorrelated => {
                let prev = if previous.is_zero() {
                    self.initial
                } else {
                    previous
                };
                let upper = prev.saturating_mul(3).min(self.max);
                random_between(self.initial.min(upper), upper)
            }
        }
    }
}

fn random_between(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_nanos().min(u64::MAX as u128) as u64;
    low + Duration::from_nanos(fastrand::u64(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn exponential_and_capped() {
        let b = Backoff::new(2 * S, 2.0, 10 * S, Jitter::None);
        assert_eq!(b.delay(1, Duration::ZERO), 2 * S);
        assert_eq!(b.delay(2, 2 * S), 4 * S);
        assert_eq!(b.delay(3, 4 * S), 8 * S);
        assert_eq!(b.delay(4, 8 * S), 10 * S);
        assert_eq!(b.delay(u32::MAX, 10 * S), 10 * S);
    }

    #[test]
    fn bad_base_is_constant_backoff() {
        for base in [f64::NAN, f64::INFINITY, 0.5, -3.0] {
            let b = Backoff::new(S, base, 10 * S, Jitter::None);
            assert_eq!(b.delay(5, S), S, "{base}");
        }
    }

    /// `n` delays from `delay`, checking each is within `[low, high]`, and
    /// that they vary and spread over the range: some in its lowest
    /// quarter, some in its highest, and mostly distinct. A constant delay,
    /// or one that only wobbles a little, fails (for uniform samples, 1000
    /// all outside one quarter happen with a probability of 0.75^1000).
    fn assert_spread(
        what: &str,
        low: Duration,
        high: Duration,
        mut delay: impl FnMut() -> Duration,
    ) {
        let samples: Vec<Duration> = (0..1000).map(|_| delay()).collect();
        for d in &samples {
            assert!(
                *d >= low && *d <= high,
                "{what}: {d:?} outside {low:?}..={high:?}"
            );
        }
        let quarter = (high - low) / 4;
        assert!(
            samples.iter().any(|d| *d < low + quarter),
            "{what}: never in the lowest quarter"
        );
        assert!(
            samples.iter().any(|d| *d > high - quarter),
            "{what}: never in the highest quarter"
        );
        let distinct: std::collections::HashSet<_> = samples.iter().collect();
        assert!(
            distinct.len() > 900,
            "{what}: {} distinct delays",
            distinct.len()
        );
    }

    #[test]
    fn full_jitter_spreads_from_zero_to_the_delay() {
        let full = Backoff::new(2 * S, 2.0, 10 * S, Jitter::Full);
        assert_spread("full", Duration::ZERO, 8 * S, || {
            full.delay(3, Duration::ZERO)
        });
    }

    #[test]
    fn equal_jitter_spreads_over_the_upper_half() {
        let equal = Backoff::new(2 * S, 2.0, 10 * S, Jitter::Equal);
        assert_spread("equal", 4 * S, 8 * S, || equal.delay(3, Duration::ZERO));
        // Capped delays are jittered too.
        assert_spread("equal, capped", 5 * S, 10 * S, || {
            equal.delay(9, Duration::ZERO)
        });
    }

    #[test]
    fn decorrelated_jitter_spreads_up_to_three_times_the_previous_delay() {
        let deco = Backoff::new(S, 2.0, 10 * S, Jitter::Decorrelated);
        // First retry: between the initial delay and three times it.
        assert_spread("decorrelated, first", S, 3 * S, || {
            deco.delay(1, Duration::ZERO)
        });
        // It follows the previous delay (not the retry number): after 3 s,
        // up to 9 s, whatever the retry.
        assert_spread("decorrelated, after 3 s", S, 9 * S, || deco.delay(1, 3 * S));
        // And is capped.
        assert_spread("decorrelated, capped", S, 10 * S, || deco.delay(7, 8 * S));
        // A chain of delays, each fed the last, stays in its range and varies.
        let mut prev = Duration::ZERO;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let d = deco.delay(2, prev);
            let upper = if prev.is_zero() {
                3 * S
            } else {
                (prev * 3).min(10 * S)
            };
            assert!(d >= S && d <= upper, "{d:?} after {prev:?}");
            seen.insert(d);
            prev = d;
        }
        assert!(seen.len() > 900, "decorrelated jitter is random");
    }

    #[test]
    fn no_jitter_is_exact() {
        let none = Backoff::new(2 * S, 2.0, 10 * S, Jitter::None);
        assert!((0..100).all(|_| none.delay(3, Duration::ZERO) == 8 * S));
    }
}
