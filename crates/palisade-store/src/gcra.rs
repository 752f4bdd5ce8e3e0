//! GCRA (generic cell rate algorithm) rules, decisions and the arithmetic
//! every backend shares.
//!
//! # Arithmetic
//!
//! All quantities are whole microseconds (`u64` here, integers below 2^53
//! in the Redis Lua script, where numbers are doubles).
//!
//! For a rule of `limit` requests per `period`:
//!
//! - emission interval `T = floor(period / limit)`;
//! - tolerance `tau = limit * T` — equal to `period` whenever `limit`
//!   divides it evenly, and otherwise at most `limit - 1` µs shorter, which
//!   keeps the burst at exactly `limit` (with `tau = period` and a rounded
//!   `T`, up to one extra request could slip through);
//! - per key, the state is one integer, the theoretical arrival time `tat`
//!   (absent = 0, i.e. in the past).
//!
//! A request of `cost` at time `now`:
//!
//! - `base = max(tat, now)`, `new_tat = base + cost * T`;
//! - **allowed** iff `new_tat - now <= tau`; then `tat := new_tat`,
//!   `remaining = floor((tau - (new_tat - now)) / T)`,
//!   `reset_after = new_tat - now`, `retry_after = None`;
//! - **denied** otherwise; nothing is stored,
//!   `remaining = floor((tau - (base - now)) / T)` (what is still available
//!   now), `reset_after = base - now`,
//!   `retry_after = (base + cost * T - tau) - now` — after waiting that long
//!   the same request fits.
//!
//! [`gcra_step`] is this step, in any time unit; the Redis Lua script is
//! its one transcription.
//!
//! The key expires `reset_after` (rounded up to a millisecond) after each
//! allowed request, when its state is indistinguishable from "empty".
//! A `cost` of 0 is a pure peek: it never changes the state.
//!
//! On Redis the clock is the server's (`redis.call('TIME')`), so replicas of
//! a service with skewed clocks agree. In-process the clock is
//! [`tokio::time::Instant`], so tests can run on a paused clock.

use std::time::Duration;

use crate::StoreError;

/// Largest period accepted, in microseconds (about 8.9 years): keeps every
/// quantity exact as a Lua double.
const MAX_PERIOD_US: u64 = 1 << 48;

/// A GCRA rule: `limit` requests per `period`, with a burst of `limit`.
///
/// ```
/// use palisade_store::GcraRule;
/// use std::time::Duration;
///
/// let rule = GcraRule::per_minute(60);
/// assert_eq!(rule, GcraRule::new(60, Duration::from_secs(60)));
/// assert_eq!(rule.emission_interval(), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GcraRule {
    /// Requests allowed per `period` (and the burst size).
    pub limit: u32,
    /// The window over which `limit` requests are allowed.
    pub period: Duration,
}

impl GcraRule {
    /// `limit` requests per `period`.
    pub const fn new(limit: u32, period: Duration) -> GcraRule {
        GcraRule { limit, period }
    }

    /// `limit` requests per second.
    pub const fn per_second(limit: u32) -> GcraRule {
        GcraRule::new(limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    pub const fn per_minute(limit: u32) -> GcraRule {
        GcraRule::new(limit, Duration::from_secs(60))
    }

    /// `limit` requests per hour.
    pub const fn per_hour(limit: u32) -> GcraRule {
        GcraRule::new(limit, Duration::from_secs(3600))
    }

    /// The emission interval `T = period / limit`, rounded down to whole
    /// microseconds (zero for a zero limit).
    pub fn emission_interval(&self) -> Duration {
        match self.limit {
            0 => Duration::ZERO,
            l => Duration::from_micros(period_us(self.period) / u64::from(l)),
        }
    }

    /// Checks the rule and `cost`, returning `(T, tau)` in microseconds.
    pub(crate) fn params(&self, cost: u32) -> Result<Params, StoreError> {
        if self.limit == 0 {
            return Err(StoreError::InvalidInput(
                "rate-limit rule has a zero limit".into(),
            ));
        }
        let period = period_us(self.period);
        if period > MAX_PERIOD_US {
            return Err(StoreError::InvalidInput(format!(
                "rate-limit period {:?} is too long (max about 8.9 years)",
                self.period
            )));
        }
        let t = period / u64::from(self.limit);
        if t == 0 {
            return Err(StoreError::InvalidInput(format!(
                "rate-limit rule {} per {:?} is finer than one request per microsecond",
                self.limit, self.period
            )));
        }
        if cost > self.limit {
            return Err(StoreError::InvalidInput(format!(
                "cost {cost} exceeds the limit {} and could never be allowed",
                self.limit
            )));
        }
        Ok(Params {
            t,
            tau: t * u64::from(self.limit),
            cost: u64::from(cost),
            limit: self.limit,
        })
    }
}

fn period_us(period: Duration) -> u64 {
    u64::try_from(period.as_micros()).unwrap_or(u64::MAX)
}

/// The outcome of a rate-limit check.
///
/// ```
/// use palisade_store::{GcraRule, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_store::StoreError> {
/// let store = Store::in_memory();
/// let d = store.rate_limit("user:1", GcraRule::per_minute(10), 1).await?;
/// assert!(d.allowed);
/// assert_eq!((d.limit, d.remaining), (10, 9));
/// assert_eq!(d.retry_after, None);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request is allowed (and, for an allowed single check, was
    /// counted).
    pub allowed: bool,
    /// The rule's limit (for `X-RateLimit-Limit`).
    pub limit: u32,
    /// Requests of cost 1 still allowed right now.
    pub remaining: u32,
    /// Time until the key is back to a full burst.
    pub reset_after: Duration,
    /// When denied: how long until this same request would be allowed.
    pub retry_after: Option<Duration>,
}

/// Validated parameters of one check, in microseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub(crate) t: u64,
    pub(crate) tau: u64,
    pub(crate) cost: u64,
    pub(crate) limit: u32,
}

/// One GCRA step, in whatever whole time unit the caller counts (the store
/// counts microseconds, `palisade-ratelimit`'s in-process limiter
/// nanoseconds): the [arithmetic](crate::gcra#arithmetic) every limiter shares,
/// written once.
///
/// `tat` is the key's theoretical arrival time (0 when absent), `inc` the
/// request's `cost * T` and `tau` the rule's tolerance `limit * T`. Nothing
/// is stored: when the step is allowed and `inc` is not 0, the caller
/// stores [`new_tat`](GcraStep::new_tat) (with a compare-and-swap, in a
/// transaction, …). Divide [`slack`](GcraStep::slack) by `T` for the
/// requests of cost 1 still allowed. No allocation, no division; the only
/// overflow possible is `max(tat, now) + inc`.
///
/// ```
/// use palisade_store::gcra::gcra_step;
///
/// // 10 per minute, in seconds: T = 6, tau = 60; a full bucket at t = 100.
/// let s = gcra_step(0, 100, 6, 60);
/// assert!(s.allowed);
/// assert_eq!((s.new_tat, s.slack / 6, s.reset_after), (106, 9, 6));
/// // Ten requests later the bucket is empty: wait one interval.
/// let s = gcra_step(160, 100, 6, 60);
/// assert!(!s.allowed);
/// assert_eq!((s.slack / 6, s.reset_after, s.retry_after), (0, 60, 6));
/// ```
#[inline]
pub fn gcra_step(tat: u64, now: u64, inc: u64, tau: u64) -> GcraStep {
    let base = tat.max(now);
    let new_tat = base + inc;
    let diff = new_tat - now;
    if diff <= tau {
        GcraStep {
            allowed: true,
            new_tat,
            slack: tau - diff,
            reset_after: diff,
            retry_after: 0,
        }
    } else {
        GcraStep {
            allowed: false,
            new_tat,
            slack: tau.saturating_sub(base - now),
            reset_after: base - now,
            retry_after: diff - tau,
        }
    }
}

/// The outcome of [`gcra_step`], in the caller's time unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcraStep {
    /// Whether the request fits.
    pub allowed: bool,
    /// `max(tat, now) + inc`: the TAT to store when allowed (and `inc` is
    /// not 0); meaningless when denied, where nothing is stored.
    pub new_tat: u64,
    /// The tolerance left after the request when allowed, or right now when
    /// denied; `slack / T` requests of cost 1 still fit.
    pub slack: u64,
    /// Time until the key is back to a full burst.
    pub reset_after: u64,
    /// When denied, how long until the same request fits; 0 when allowed.
    pub retry_after: u64,
}

/// One decision: the outcome and, when allowed with a non-zero cost, the new
/// TAT to store.
pub(crate) fn decide(tat: u64, now: u64, p: Params) -> (RateDecision, Option<u64>) {
    let s = gcra_step(tat, now, p.cost * p.t, p.tau);
    let d = RateDecision {
        allowed: s.allowed,
        limit: p.limit,
        remaining: remaining(s.slack / p.t, p.limit),
        reset_after: Duration::from_micros(s.reset_after),
        retry_after: (!s.allowed).then(|| Duration::from_micros(s.retry_after)),
    };
    (d, (s.allowed && p.cost > 0).then_some(s.new_tat))
}

/// The state of a key as seen by a check that did not consume (for the
/// passing checks of a denied batch).
pub(crate) fn unconsumed(tat: u64, now: u64, p: Params) -> RateDecision {
    let s = gcra_step(tat, now, 0, p.tau);
    RateDecision {
        allowed: true,
        limit: p.limit,
        remaining: remaining(s.slack / p.t, p.limit),
        reset_after: Duration::from_micros(s.reset_after),
        retry_after: None,
    }
}

fn remaining(n: u64, limit: u32) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX).min(limit)
}

/// Runs a batch all-or-nothing against `read` (current TAT of a key) and
/// returns the decisions and, when all allowed, the TATs to write (last
/// write per key wins; in check order).
pub(crate) fn decide_batch<K: PartialEq + Copy>(
    checks: &[(K, Params)],
    now: u64,
    mut read: impl FnMut(K) -> u64,
) -> (Vec<RateDecision>, Option<Vec<(K, u64)>>) {
    // (key, TAT before the batch, TAT as the batch goes on)
    let mut state: Vec<(K, u64, u64)> = Vec::with_capacity(checks.len());
    let mut decisions = Vec::with_capacity(checks.len());
    let mut all = true;
    for &(key, p) in checks {
        let i = match state.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                let tat = read(key);
                state.push((key, tat, tat));
                state.len() - 1
            }
        };
        let (d, new_tat) = decide(state[i].2, now, p);
        all &= d.allowed;
        if let Some(new_tat) = new_tat {
            state[i].2 = new_tat;
        }
        decisions.push(d);
    }
    if all {
        let writes = state
            .into_iter()
            .filter(|(_, b, t)| b != t)
            .map(|(k, _, t)| (k, t))
            .collect();
        return (decisions, Some(writes));
    }
    // Nothing is consumed: report passing checks against the untouched state.
    for (d, &(key, p)) in decisions.iter_mut().zip(checks) {
        if d.allowed
            && let Some(&(_, before, _)) = state.iter().find(|(k, _, _)| *k == key)
        {
            *d = unconsumed(before, now, p);
        }
    }
    (decisions, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(limit: u32, period_s: u64, cost: u32) -> Params {
        GcraRule::new(limit, Duration::from_secs(period_s))
            .params(cost)
            .unwrap()
    }

    #[test]
    fn burst_then_deny_with_exact_retry_after() {
        let rule = p(10, 60, 1); // T = 6 s
        let now = 1_000_000;
        let mut tat = 0;
        for i in 0..10 {
            let (d, new) = decide(tat, now, rule);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset_after, Duration::from_secs(6 * (u64::from(i) + 1)));
            tat = new.unwrap();
        }
        let (d, new) = decide(tat, now, rule);
        assert!(!d.allowed);
        assert_eq!(new, None);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(d.reset_after, Duration::from_secs(60));
        // After retry_after, exactly one fits again.
        let (d, _) = decide(tat, now + 6_000_000, rule);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn tau_is_a_multiple_of_t() {
        let rule = GcraRule::per_minute(7).params(1).unwrap();
        assert_eq!(rule.t, 8_571_428);
        assert_eq!(rule.tau, 7 * 8_571_428);
        let mut tat = 0;
        let mut allowed = 0;
        for _ in 0..20 {
            let (d, new) = decide(tat, 5, rule);
            if d.allowed {
                allowed += 1;
                tat = new.unwrap();
            }
        }
        assert_eq!(allowed, 7);
    }

    #[test]
    fn invalid_rules_are_errors() {
        assert!(GcraRule::per_second(0).params(1).is_err());
        assert!(
            GcraRule::new(10, Duration::from_nanos(5))
                .params(1)
                .is_err()
        );
        assert!(GcraRule::per_second(3).params(4).is_err());
        assert!(
            GcraRule::new(1, Duration::from_secs(u64::MAX / 4))
                .params(1)
                .is_err()
        );
    }

    #[test]
    fn zero_cost_peeks() {
        let rule = p(5, 5, 0);
        let (d, new) = decide(0, 100, rule);
        assert!(d.allowed);
        assert_eq!(d.remaining, 5);
        assert_eq!(new, None);
    }

    #[test]
    fn batch_is_all_or_nothing() {
        let a = p(5, 5, 1);
        let b = p(1, 5, 1);
        let mut state = [0u64, 0];
        let (ds, writes) = decide_batch(&[(0, a), (1, b)], 10, |k| state[k]);
        assert!(ds.iter().all(|d| d.allowed));
        for (k, t) in writes.unwrap() {
            state[k] = t;
        }
        let (ds, writes) = decide_batch(&[(0, a), (1, b)], 10, |k| state[k]);
        assert!(writes.is_none());
        assert!(ds[0].allowed && !ds[1].allowed);
        assert_eq!(ds[0].remaining, 4, "reported against the untouched state");
        // Same key twice: the second check sees the first one's consumption.
        let one = p(1, 5, 1);
        let (ds, writes) = decide_batch(&[(7, one), (7, one)], 10, |_| 0);
        assert!(writes.is_none());
        assert!(ds[0].allowed && !ds[1].allowed);
        assert_eq!(ds[0].remaining, 1);
    }
}
