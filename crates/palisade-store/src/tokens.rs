//! Token budgets: reserve before a call, settle with the true amount after.
//!
//! An LLM call's cost (tokens) is known only when its response ends, but a
//! budget must be enforced before it starts. A [`TokenRule`] is a bucket of
//! `quota` tokens refilled evenly over `period` (the same GCRA arithmetic as
//! [`GcraRule`](crate::GcraRule), one token being one cell of
//! `T = period / quota` µs). A call:
//!
//! 1. **reserves** an estimate ([`Store::token_reserve`](crate::Store::token_reserve)):
//!    admitted only when the estimate fits in what is left, otherwise refused
//!    with the time after which it would fit. An admitted reservation is a
//!    *lease*: it expires after [`TokenRule::lease`] (default 10 minutes);
//! 2. **settles** with the true amount
//!    ([`Store::token_settle`](crate::Store::token_settle)): the difference
//!    with the reservation is charged (more used) or refunded (less used).
//!    A reservation whose lease expired before it was settled was given back
//!    already, so the true amount is then charged in full.
//!
//! Expired leases are given back by the next reserve or settle on the key,
//! so a replica that crashed holding reservations does not keep their tokens.
//!
//! # Exactness
//!
//! Reserve and settle are each one atomic step: a Lua script on Redis and
//! Redis Cluster (the key and its lease set share a slot), a shard lock
//! in-process. The bucket's level never goes below zero. A reserve never
//! takes the level above `quota`; only a settle whose true amount is above
//! its reservation can, by that difference. While the level is above
//! `quota` nothing is admitted, so **the overshoot is at most the sum of the
//! true-up differences (`actual - reserved`, when positive) of the
//! reservations in flight when the budget filled** — one request at a time,
//! the last admitted request's difference — however many replicas share the
//! store.
//!
//! # State
//!
//! On Redis a key is a hash (`tat`, `seq`, `r<id>` = reserved tokens) plus a
//! sorted set of lease ids by expiry, named `{<key>}:leases` (or
//! `<key>:leases` when the key already has a hash tag) so both live in one
//! cluster slot. Reservation ids are `<server µs>-<seq>`: unique even after
//! the key expired and was created again.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::StoreError;

/// Largest period accepted, in microseconds (as for GCRA rules).
const MAX_PERIOD_US: u64 = 1 << 48;
/// Largest true amount one settle may charge.
pub const MAX_SETTLE: u64 = 1 << 32;

/// A token budget: `quota` tokens per `period`, reservations held for at
/// most `lease`.
///
/// ```
/// use palisade_store::TokenRule;
/// use std::time::Duration;
///
/// let rule = TokenRule::per_minute(100_000);
/// assert_eq!(rule.period, Duration::from_secs(60));
/// assert_eq!(rule.lease, Duration::from_secs(600));
/// let daily = TokenRule::new(2_000_000, Duration::from_secs(86_400)).lease(Duration::from_secs(120));
/// assert_eq!(daily.lease, Duration::from_secs(120));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenRule {
    /// Tokens per `period` (and the most one reservation may hold).
    pub quota: u64,
    /// The window over which `quota` tokens are allowed.
    pub period: Duration,
    /// How long a reservation is held before it is given back unsettled.
    pub lease: Duration,
}

impl TokenRule {
    /// The default lease: 10 minutes.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(600);

    /// `quota` tokens per `period`, with the default lease.
    pub const fn new(quota: u64, period: Duration) -> TokenRule {
        TokenRule {
            quota,
            period,
            lease: TokenRule::DEFAULT_LEASE,
        }
    }

    /// `quota` tokens per minute.
    pub const fn per_minute(quota: u64) -> TokenRule {
        TokenRule::new(quota, Duration::from_secs(60))
    }

    /// `quota` tokens per day.
    pub const fn per_day(quota: u64) -> TokenRule {
        TokenRule::new(quota, Duration::from_secs(86_400))
    }

    /// Sets the lease.
    #[must_use]
    pub const fn lease(mut self, lease: Duration) -> TokenRule {
        self.lease = lease;
        self
    }

    pub(crate) fn params(&self) -> Result<TokenParams, StoreError> {
        if self.quota == 0 {
            return Err(StoreError::InvalidInput(
                "token rule has a zero quota".into(),
            ));
        }
        let period = u64::try_from(self.period.as_micros()).unwrap_or(u64::MAX);
        if period > MAX_PERIOD_US {
            return Err(StoreError::InvalidInput(format!(
                "token period {:?} is too long (max about 8.9 years)",
                self.period
            )));
        }
        let t = period / self.quota;
        if t == 0 {
            return Err(StoreError::InvalidInput(format!(
                "token rule {} per {:?} is finer than one token per microsecond",
                self.quota, self.period
            )));
        }
        let lease = u64::try_from(self.lease.as_micros()).unwrap_or(u64::MAX);
        if lease == 0 || lease > MAX_PERIOD_US {
            return Err(StoreError::InvalidInput(format!(
                "token lease {:?} must be between 1µs and about 8.9 years",
                self.lease
            )));
        }
        Ok(TokenParams {
            t,
            tau: t * self.quota,
            quota: self.quota,
            lease,
        })
    }
}

/// Validated parameters, in microseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenParams {
    pub(crate) t: u64,
    pub(crate) tau: u64,
    pub(crate) quota: u64,
    pub(crate) lease: u64,
}

/// A held reservation: settle it with
/// [`Store::token_settle`](crate::Store::token_settle).
///
/// ```
/// use palisade_store::{Store, TokenRule};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_store::StoreError> {
/// let store = Store::in_memory();
/// let d = store.token_reserve("user:1", TokenRule::per_minute(1000), 300).await?;
/// let r = d.reservation.unwrap();
/// assert_eq!(r.amount(), 300);
/// let s = store.token_settle("user:1", TokenRule::per_minute(1000), &r, 120).await?;
/// assert!(s.held);
/// assert_eq!((s.charged, s.refunded), (120, 180));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenReservation {
    id: String,
    amount: u64,
}

impl TokenReservation {
    pub(crate) fn new(id: String, amount: u64) -> Self {
        Self { id, amount }
    }

    /// The reservation's id (unique per key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Tokens reserved.
    pub fn amount(&self) -> u64 {
        self.amount
    }
}

impl fmt::Display for TokenReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} tokens)", self.id, self.amount)
    }
}

/// The outcome of [`Store::token_reserve`](crate::Store::token_reserve).
///
/// ```
/// use palisade_store::{Store, TokenRule};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_store::StoreError> {
/// let store = Store::in_memory(); // on a paused clock: no refill between the calls
/// let rule = TokenRule::per_minute(1000);
/// assert!(store.token_reserve("k", rule, 800).await?.admitted());
/// let d = store.token_reserve("k", rule, 300).await?;
/// assert!(!d.admitted());
/// assert_eq!(d.remaining, 200);
/// assert_eq!(d.retry_after, Some(std::time::Duration::from_secs(6))); // 100 tokens at 60 ms each
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenDecision {
    /// The reservation, when admitted.
    pub reservation: Option<TokenReservation>,
    /// The rule's quota.
    pub quota: u64,
    /// Tokens still available right now (after this reservation, when
    /// admitted).
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset_after: Duration,
    /// When refused: how long until the same reservation would fit.
    pub retry_after: Option<Duration>,
}

impl TokenDecision {
    /// Whether the reservation was admitted.
    pub fn admitted(&self) -> bool {
        self.reservation.is_some()
    }
}

/// The outcome of [`Store::token_settle`](crate::Store::token_settle).
///
/// ```
/// use palisade_store::{Store, TokenRule};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), palisade_store::StoreError> {
/// let store = Store::in_memory();
/// let rule = TokenRule::per_minute(1000);
/// let r = store.token_reserve("k", rule, 100).await?.reservation.unwrap();
/// let s = store.token_settle("k", rule, &r, 250).await?; // used more than reserved
/// assert_eq!((s.held, s.charged, s.refunded, s.remaining), (true, 250, 0, 750));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenSettlement {
    /// Whether the reservation was still held (`false`: its lease had
    /// expired and its tokens were given back, so `charged` is the whole
    /// true amount).
    pub held: bool,
    /// Tokens charged (the true amount).
    pub charged: u64,
    /// Tokens of the reservation given back (`reserved - actual`, when
    /// positive and the reservation was held).
    pub refunded: u64,
    /// Tokens available right now.
    pub remaining: u64,
    /// Time until the bucket is full again.
    pub reset_after: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    amount: u64,
    expires: u64,
}

/// One key's ledger in the in-process store: the TAT of the token bucket
/// and the held leases. Every step is the transcription of the Redis
/// scripts (see the module docs); times in µs.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ledger {
    tat: u64,
    seq: u64,
    leases: HashMap<String, Lease>,
    /// The earliest lease expiry (`u64::MAX` when none): sweeping is skipped
    /// before it.
    next_expiry: u64,
}

impl Ledger {
    pub(crate) fn new() -> Self {
        Ledger {
            next_expiry: u64::MAX,
            ..Ledger::default()
        }
    }

    /// Approximate bytes held (for the in-process store's bounds).
    pub(crate) fn size(&self) -> usize {
        48 + self.leases.len() * 64
    }

    /// When the whole state may be dropped: once the bucket is full again
    /// and no lease is held.
    pub(crate) fn expires_at(&self, now: u64) -> u64 {
        let last = self.leases.values().map(|l| l.expires).max().unwrap_or(0);
        self.tat.max(last).max(now + 1)
    }

    /// Tokens outstanding (reserved or charged, not yet refilled) at `now`.
    #[cfg(test)]
    pub(crate) fn level(&self, now: u64, p: TokenParams) -> u64 {
        self.tat.saturating_sub(now).div_ceil(p.t)
    }

    /// Gives back every lease expired at `now`.
    fn sweep(&mut self, now: u64, p: TokenParams) {
        if now < self.next_expiry {
            return;
        }
        let mut next = u64::MAX;
        let mut back = 0u64;
        self.leases.retain(|_, l| {
            if l.expires <= now {
                back = back.saturating_add(l.amount);
                false
            } else {
                next = next.min(l.expires);
                true
            }
        });
        self.next_expiry = next;
        // One at a time in the script; the clamp makes the sum the same.
        self.tat = self
            .tat
            .max(now)
            .saturating_sub(back.saturating_mul(p.t))
            .max(now);
    }

    pub(crate) fn reserve(
        &mut self,
        now: u64,
        p: TokenParams,
        amount: u64,
        id: impl FnOnce(u64) -> String,
    ) -> TokenDecision {
        self.sweep(now, p);
        let base = self.tat.max(now);
        let new_tat = base + amount * p.t;
        let diff = new_tat - now;
        if diff <= p.tau {
            self.seq += 1;
            let id = id(self.seq);
            let expires = now.saturating_add(p.lease);
            self.leases.insert(id.clone(), Lease { amount, expires });
            self.next_expiry = self.next_expiry.min(expires);
            self.tat = new_tat;
            TokenDecision {
                reservation: Some(TokenReservation::new(id, amount)),
                quota: p.quota,
                remaining: (p.tau - diff) / p.t,
                reset_after: Duration::from_micros(diff),
                retry_after: None,
            }
        } else {
            TokenDecision {
                reservation: None,
                quota: p.quota,
                remaining: p.tau.saturating_sub(base - now) / p.t,
                reset_after: Duration::from_micros(base - now),
                retry_after: Some(Duration::from_micros(diff - p.tau)),
            }
        }
    }

    pub(crate) fn settle(
        &mut self,
        now: u64,
        p: TokenParams,
        id: &str,
        actual: u64,
    ) -> TokenSettlement {
        self.sweep(now, p);
        let base = self.tat.max(now);
        let (held, refunded) = match self.leases.remove(id) {
            Some(l) => {
                self.tat = (base + actual * p.t)
                    .saturating_sub(l.amount * p.t)
                    .max(now);
                if self.leases.is_empty() {
                    self.next_expiry = u64::MAX;
                }
                (true, l.amount.saturating_sub(actual))
            }
            None => {
                self.tat = base + actual * p.t;
                (false, 0)
            }
        };
        let diff = self.tat - now;
        TokenSettlement {
            held,
            charged: actual,
            refunded,
            remaining: p.tau.saturating_sub(diff) / p.t,
            reset_after: Duration::from_micros(diff),
        }
    }
}

/// The name of the lease set of `key`, in the same cluster slot.
pub(crate) fn lease_key(key: &str) -> Result<String, StoreError> {
    let has_tag = key
        .find('{')
        .is_some_and(|open| key[open + 1..].find('}').is_some_and(|close| close > 0));
    if has_tag {
        Ok(format!("{key}:leases"))
    } else if key.contains(['{', '}']) {
        Err(StoreError::InvalidInput(format!(
            "token key {key:?} has a brace but no hash tag; build it with Store::key or Store::grouped_key"
        )))
    } else {
        Ok(format!("{{{key}}}:leases"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(quota: u64, t: u64) -> TokenParams {
        TokenRule::new(quota, Duration::from_micros(quota * t))
            .lease(Duration::from_micros(50 * t))
            .params()
            .unwrap()
    }

    #[test]
    fn lease_keys_share_the_slot() {
        assert_eq!(
            lease_key("palisade:tok:u:1:v1").unwrap(),
            "{palisade:tok:u:1:v1}:leases"
        );
        assert_eq!(lease_key("p:{g}:tok").unwrap(), "p:{g}:tok:leases");
        assert!(lease_key("a}b").is_err());
        assert!(lease_key("a{}b").is_err());
    }

    #[test]
    fn invalid_rules_are_errors() {
        assert!(TokenRule::per_minute(0).params().is_err());
        assert!(
            TokenRule::new(10, Duration::from_nanos(5))
                .params()
                .is_err()
        );
        assert!(
            TokenRule::per_minute(5)
                .lease(Duration::ZERO)
                .params()
                .is_err()
        );
    }

    #[test]
    fn reserve_settle_expire() {
        let p = params(100, 10);
        let mut l = Ledger::new();
        let mut ids = 0;
        let mut id = |s| {
            ids += 1;
            format!("{s}")
        };
        let a = l.reserve(0, p, 60, &mut id).reservation.unwrap();
        assert!(l.reserve(0, p, 50, &mut id).reservation.is_none());
        let s = l.settle(0, p, a.id(), 20);
        assert_eq!((s.held, s.refunded, s.remaining), (true, 40, 80));
        let b = l.reserve(0, p, 80, &mut id).reservation.unwrap();
        assert_eq!(l.level(0, p), 100);
        // b's lease expires: its 80 come back; a late settle charges in full.
        let s = l.settle(500, p, b.id(), 30);
        assert!(!s.held);
        assert_eq!(l.level(500, p), 30);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(u64),
        Settle(usize, u64),
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u64..=100).prop_map(Op::Reserve),
            (0usize..16, 0u64..=160).prop_map(|(i, a)| Op::Settle(i, a)),
            (0u64..=400).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Any interleaving of reserve / settle / lease expiry keeps the
        /// ledger's invariants: the level is never negative and equals an
        /// independent model's; it goes above the quota only by the true-up
        /// differences settled since it was last within the quota.
        #[test]
        fn ledger_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let quota = 100u64;
            let t = 10u64; // µs a token: the bucket refills in 1000 µs
            let p = params(quota, t);
            let lease = p.lease;
            let mut l = Ledger::new();
            let mut now = 0u64;
            // The model, in tokens × T (exact): level, and held leases.
            let mut model_level = 0u64;
            let mut held: Vec<(TokenReservation, u64)> = Vec::new();
            let mut over_allowance = 0u64;
            // Expired or settled reservations, for late (second) settles.
            let mut stale: Vec<TokenReservation> = Vec::new();
            for op in ops {
                // The model gives back expired leases before every step.
                let sweep = |now: u64,
                             held: &mut Vec<(TokenReservation, u64)>,
                             stale: &mut Vec<TokenReservation>,
                             model_level: &mut u64| {
                    held.retain(|(r, exp)| {
                        if *exp <= now {
                            *model_level = model_level.saturating_sub(r.amount() * t);
                            stale.push(r.clone());
                            false
                        } else {
                            true
                        }
                    });
                };
                match op {
                    Op::Advance(dt) => {
                        now += dt;
                        model_level = model_level.saturating_sub(dt);
                        continue;
                    }
                    Op::Reserve(a) => {
                        sweep(now, &mut held, &mut stale, &mut model_level);
                        let d = l.reserve(now, p, a, |s| format!("{now}-{s}"));
                        let fits = model_level + a * t <= quota * t;
                        prop_assert_eq!(d.admitted(), fits);
                        if let Some(r) = d.reservation {
                            model_level += a * t;
                            held.push((r, now + lease));
                        } else {
                            let wait = d.retry_after.unwrap().as_micros() as u64;
                            prop_assert_eq!(model_level + a * t - quota * t, wait);
                        }
                    }
                    Op::Settle(i, actual) => {
                        sweep(now, &mut held, &mut stale, &mut model_level);
                        let (r, was_held) = if i % 4 != 0 && !held.is_empty() {
                            (held.remove(i % held.len()).0, true)
                        } else {
                            match stale.get(i % stale.len().max(1)) {
                                Some(r) => (r.clone(), false),
                                None => continue,
                            }
                        };
                        let s = l.settle(now, p, r.id(), actual);
                        prop_assert_eq!(s.held, was_held);
                        if was_held {
                            model_level = (model_level + actual * t).saturating_sub(r.amount() * t);
                            over_allowance += actual.saturating_sub(r.amount());
                        } else {
                            model_level += actual * t;
                            over_allowance += actual;
                        }
                        stale.push(r);
                    }
                }
                let level_us = l.tat.saturating_sub(now);
                prop_assert_eq!(level_us, model_level, "level matches the model");
                // Never negative (unsigned, and the TAT never trails the clock
                // by more than "empty").
                if level_us <= quota * t {
                    over_allowance = 0;
                }
                prop_assert!(
                    level_us <= (quota + over_allowance) * t,
                    "level {} over quota {} + allowance {}",
                    level_us / t, quota, over_allowance
                );
            }
        }
    }
}
