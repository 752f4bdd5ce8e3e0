//! The in-process limiter: one atomic word per key in a sharded map.

use crate::quota::{Algorithm, Decision, Quota};
use dashmap::DashMap;
use palisade_store::gcra::gcra_step;
use std::{
    fmt,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher},
    sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    time::Duration,
};
use tokio::time::Instant;

/// Where in-process limiters read the time.
///
/// ```
/// use palisade_ratelimit::{Clock, LocalLimiter, Quota};
///
/// assert_eq!(Clock::default(), Clock::Tokio);
/// let fast = LocalLimiter::new(Quota::per_second(10)).unwrap().with_clock(Clock::Tsc);
/// assert!(fast.check(&1).allowed);
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Clock {
    /// [`tokio::time::Instant`]: follows tokio's paused test clock
    /// (`#[tokio::test(start_paused = true)]`, `tokio::time::advance`).
    #[default]
    Tokio,
    /// The CPU time-stamp counter (through `quanta`): a few times cheaper to
    /// read than the OS clock, which matters at millions of decisions per
    /// second; ignores tokio's paused clock.
    Tsc,
}

/// Nanoseconds since a start, from the chosen clock (clones share the
/// start, so their readings compare).
#[derive(Clone)]
pub(crate) struct TimeSource {
    start: Instant,
    tsc: Option<(quanta::Clock, u64)>,
}

impl TimeSource {
    pub(crate) fn new(clock: Clock) -> Self {
        Self {
            start: Instant::now(),
            tsc: (clock == Clock::Tsc).then(|| {
                let c = quanta::Clock::new();
                let raw = c.raw();
                (c, raw)
            }),
        }
    }

    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match &self.tsc {
            Some((c, start)) => c.delta_as_nanos(*start, c.raw()),
            None => {
                let d = Instant::now().saturating_duration_since(self.start);
                u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
            }
        }
    }

    pub(crate) fn clock(&self) -> Clock {
        if self.tsc.is_some() {
            Clock::Tsc
        } else {
            Clock::Tokio
        }
    }
}

/// Default bound on the number of keys one limiter tracks.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Keys are already uniformly hashed (keyed foldhash): the map uses them as is.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type PassThroughMap<V> = DashMap<u64, V, BuildHasherDefault<PassThrough>>;
type Cells = DashMap<u64, AtomicU64, BuildHasherDefault<PassThrough>>;

/// An in-process, lock-free rate limiter for one [`Quota`], keyed.
///
/// Each key's whole state is one `AtomicU64` (GCRA: the theoretical arrival
/// time; windows: the window index and its counters), updated with a
/// compare-and-swap loop under a shard's read lock: no global mutex, no
/// allocation once a key exists. Keys are stored as a 64-bit `foldhash` of
/// the key, seeded at random per limiter (clients cannot aim for collisions
/// without the seed).
///
/// The key space is bounded ([`DEFAULT_MAX_KEYS`] by default). When it is
/// full, keys whose state has expired (nothing to remember) are evicted; if
/// every key is still active, new keys share one overflow bucket — stricter,
/// never looser, than their own bucket would be.
///
/// Time is [`tokio::time::Instant`] by default, so tests can pause and
/// advance it; [`Clock::Tsc`] reads the CPU counter instead.
///
/// ```
/// use palisade_ratelimit::{LocalLimiter, Quota};
///
/// let limiter = LocalLimiter::new(Quota::per_minute(3)).unwrap();
/// for _ in 0..3 {
///     assert!(limiter.check(&"alice").allowed);
/// }
/// let denied = limiter.check(&"alice");
/// assert!(!denied.allowed);
/// assert_eq!(denied.retry_after.unwrap().as_secs_f64().ceil(), 20.0);
/// assert!(limiter.check(&"bob").allowed, "keys are independent");
/// ```
pub struct LocalLimiter {
    quota: Quota,
    period: u64,
    t: u64,
    inv_t: f64,
    time: TimeSource,
    cells: Cells,
    hasher: foldhash::quality::RandomState,
    len: AtomicUsize,
    max_keys: usize,
    overflow: AtomicU64,
    last_sweep: AtomicU64,
    sweep_interval: u64,
}

impl fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("quota", &self.quota)
            .field("keys", &self.len())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl LocalLimiter {
    /// A limiter enforcing `quota` per key, tracking up to
    /// [`DEFAULT_MAX_KEYS`] keys.
    ///
    /// # Errors
    /// When the quota cannot be enforced (zero limit or period, finer than a
    /// request per nanosecond, a sliding window above its maximum).
    pub fn new(quota: Quota) -> Result<Self, crate::RateLimitError> {
        Self::with_max_keys(quota, DEFAULT_MAX_KEYS)
    }

    /// A limiter tracking up to `max_keys` keys (at least 1).
    ///
    /// # Errors
    /// As [`LocalLimiter::new`].
    pub fn with_max_keys(quota: Quota, max_keys: usize) -> Result<Self, crate::RateLimitError> {
        quota
            .validate()
            .map_err(crate::RateLimitError::InvalidConfig)?;
        let period = quota.period_nanos();
        Ok(Self {
            quota,
            period,
            t: period / u64::from(quota.limit()),
            inv_t: 1.0 / (period / u64::from(quota.limit())) as f64,
            time: TimeSource::new(Clock::Tokio),
            cells: DashMap::with_hasher(BuildHasherDefault::default()),
            hasher: foldhash::quality::RandomState::default(),
            len: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            overflow: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            sweep_interval: (period / 16).max(1_000_000),
        })
    }

    /// Reads the time from `clock` (default [`Clock::Tokio`]).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.time = TimeSource::new(clock);
        self
    }

    /// Reads the time from `time` (the engine shares one source between
    /// its limits, so one reading serves a whole request).
    pub(crate) fn with_time(mut self, time: TimeSource) -> Self {
        self.time = time;
        self
    }

    /// The clock this limiter reads.
    pub fn clock(&self) -> Clock {
        self.time.clock()
    }

    /// The quota this limiter enforces.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// How many keys are tracked now.
    pub fn len(&self) -> usize {
        self.len.load(Relaxed)
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks and counts one request for `key`.
    #[inline]
    pub fn check<K: Hash + ?Sized>(&self, key: &K) -> Decision {
        self.check_n(key, 1)
    }

    /// Checks and counts a request of weight `cost` for `key`. A cost above
    /// the limit is denied with no `retry_after` (it can never pass); a cost
    /// of zero only reads the state.
    #[inline]
    pub fn check_n<K: Hash + ?Sized>(&self, key: &K, cost: u32) -> Decision {
        let hash = self.hasher.hash_one(key);
        self.check_hashed(hash, self.quota.limit(), cost, self.now())
    }

    /// Removes every key whose state has expired; returns how many were
    /// removed. Runs by itself when the key space is full.
    pub fn evict_idle(&self) -> usize {
        let now = self.now();
        self.sweep(now)
    }

    /// Hashes a key's display form (the identity keys have on every backend).
    #[inline]
    pub(crate) fn hash_bytes(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.time.now()
    }

    /// The emission interval for `limit` and its inverse (the quota's own
    /// are precomputed).
    #[inline]
    fn interval(&self, limit: u32) -> (u64, f64) {
        if limit == self.quota.limit() {
            (self.t, self.inv_t)
        } else {
            let t = (self.period / u64::from(limit.max(1))).max(1);
            (t, 1.0 / t as f64)
        }
    }

    /// Checks against `limit` per period (a tier may override the quota's).
    /// `now` comes from this limiter's time source.
    pub(crate) fn check_hashed(&self, hash: u64, limit: u32, cost: u32, now: u64) -> Decision {
        if cost > limit {
            return Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: None,
            };
        }
        self.with_cell(hash, now, |cell| match self.quota.algorithm() {
            Algorithm::Gcra => {
                let (t, inv_t) = self.interval(limit);
                gcra(cell, now, t, inv_t, limit, cost)
            }
            Algorithm::FixedWindow => fixed(cell, now, self.period, limit, cost),
            Algorithm::SlidingWindow => sliding(cell, now, self.period, limit, cost),
        })
    }

    /// Gives back what an allowed check of `cost` took (when another limit
    /// of the same request refused it).
    pub(crate) fn refund(&self, hash: u64, limit: u32, cost: u32, now: u64) {
        if cost == 0 {
            return;
        }
        let cost = u64::from(cost);
        let take = |cell: &AtomicU64| {
            let _ = cell.fetch_update(Relaxed, Relaxed, |s| match self.quota.algorithm() {
                Algorithm::Gcra => Some(s.saturating_sub(cost * self.interval(limit).0)),
                Algorithm::FixedWindow => {
                    let (w, c) = unpack_fixed(s);
                    (w == fixed_window(now, self.period))
                        .then(|| pack_fixed(w, c.saturating_sub(cost as u32)))
                }
                Algorithm::SlidingWindow => {
                    let (w, p, c) = unpack_sliding(s);
                    (w == sliding_window(now, self.period))
                        .then(|| pack_sliding(w, p, c.saturating_sub(cost as u32)))
                }
            });
        };
        if let Some(cell) = self.cells.get(&hash) {
            take(&cell);
        } else {
            take(&self.overflow);
        }
    }

    #[inline]
    fn with_cell<R>(&self, hash: u64, now: u64, f: impl FnOnce(&AtomicU64) -> R) -> R {
        if let Some(cell) = self.cells.get(&hash) {
            return f(&cell);
        }
        if self.len.load(Relaxed) >= self.max_keys {
            self.maybe_sweep(now);
            if self.len.load(Relaxed) >= self.max_keys {
                tracing::debug!(
                    max_keys = self.max_keys,
                    "rate-limit key space full: new key shares the overflow bucket"
                );
                return f(&self.overflow);
            }
        }
        let cell = self
            .cells
            .entry(hash)
            .or_insert_with(|| {
                self.len.fetch_add(1, Relaxed);
                AtomicU64::new(0)
            })
            .downgrade();
        f(&cell)
    }

    fn maybe_sweep(&self, now: u64) {
        let last = self.last_sweep.load(Relaxed);
        if (last != 0 && now.saturating_sub(last) < self.sweep_interval)
            || self
                .last_sweep
                .compare_exchange(last, now.max(1), Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        self.sweep(now);
    }

    fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        self.cells.retain(|_, cell| {
            let keep = !self.idle(cell.load(Relaxed), now);
            if !keep {
                removed += 1;
            }
            keep
        });
        self.len.fetch_sub(removed, Relaxed);
        if removed > 0 {
            tracing::debug!(removed, "evicted idle rate-limit keys");
        }
        removed
    }

    fn idle(&self, state: u64, now: u64) -> bool {
        match self.quota.algorithm() {
            Algorithm::Gcra => state <= now,
            Algorithm::FixedWindow => unpack_fixed(state).0 != fixed_window(now, self.period),
            Algorithm::SlidingWindow => {
                let (w, _, _) = unpack_sliding(state);
                let cur = sliding_window(now, self.period);
                w != cur && w != cur.wrapping_sub(1) & WINDOW_MASK
            }
        }
    }
}

/// `x / t` without a hardware division: a float estimate (off by at most
/// one for the magnitudes here), then corrected to the exact quotient.
#[inline]
fn div(x: u64, t: u64, inv_t: f64) -> u64 {
    let mut q = (x as f64 * inv_t) as u64;
    if q.saturating_mul(t) > x {
        q -= 1;
    } else if (q + 1).saturating_mul(t) <= x {
        q += 1;
    }
    q
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// GCRA on one atomic TAT (nanoseconds since the limiter's start): the
/// store's [`gcra_step`] in a compare-and-swap loop.
#[inline]
fn gcra(cell: &AtomicU64, now: u64, t: u64, inv_t: f64, limit: u32, cost: u32) -> Decision {
    let tau = t * u64::from(limit);
    let inc = t * u64::from(cost);
    let mut tat = cell.load(Relaxed);
    loop {
        let s = gcra_step(tat, now, inc, tau);
        if s.allowed
            && inc != 0
            && let Err(actual) = cell.compare_exchange_weak(tat, s.new_tat, Relaxed, Relaxed)
        {
            tat = actual;
            continue;
        }
        return Decision {
            allowed: s.allowed,
            limit,
            remaining: clamp_u32(div(s.slack, t, inv_t)).min(limit),
            reset_after: Duration::from_nanos(s.reset_after),
            retry_after: (!s.allowed).then(|| Duration::from_nanos(s.retry_after)),
        };
    }
}

fn fixed_window(now: u64, period: u64) -> u32 {
    (now / period) as u32
}

fn unpack_fixed(s: u64) -> (u32, u32) {
    ((s >> 32) as u32, s as u32)
}

fn pack_fixed(w: u32, c: u32) -> u64 {
    (u64::from(w) << 32) | u64::from(c)
}

/// Fixed window: (window index, count) in one word.
fn fixed(cell: &AtomicU64, now: u64, period: u64, limit: u32, cost: u32) -> Decision {
    let w = fixed_window(now, period);
    let left = Duration::from_nanos(period - now % period);
    let mut state = cell.load(Relaxed);
    loop {
        let (sw, sc) = unpack_fixed(state);
        let count = if sw == w { sc } else { 0 };
        let Some(new) = count.checked_add(cost).filter(|&n| n <= limit) else {
            return Decision {
                allowed: false,
                limit,
                remaining: limit.saturating_sub(count),
                reset_after: left,
                retry_after: Some(left),
            };
        };
        let reset_after = if new == 0 { Duration::ZERO } else { left };
        let decision = Decision {
            allowed: true,
            limit,
            remaining: limit - new,
            reset_after,
            retry_after: None,
        };
        if cost == 0 {
            return decision;
        }
        match cell.compare_exchange_weak(state, pack_fixed(w, new), Relaxed, Relaxed) {
            Ok(_) => return decision,
            Err(actual) => state = actual,
        }
    }
}

const WINDOW_MASK: u64 = (1 << 24) - 1;
const COUNT_MASK: u64 = (1 << 20) - 1;

fn sliding_window(now: u64, period: u64) -> u64 {
    (now / period) & WINDOW_MASK
}

fn unpack_sliding(s: u64) -> (u64, u32, u32) {
    (
        s >> 40,
        ((s >> 20) & COUNT_MASK) as u32,
        (s & COUNT_MASK) as u32,
    )
}

fn pack_sliding(w: u64, prev: u32, cur: u32) -> u64 {
    (w << 40) | (u64::from(prev) << 20) | u64::from(cur)
}

/// Sliding window (two-window weighted counter): (window index mod 2^24,
/// previous count, current count) in one word.
fn sliding(cell: &AtomicU64, now: u64, period: u64, limit: u32, cost: u32) -> Decision {
    let w = sliding_window(now, period);
    let elapsed = now % period;
    let (p128, e128) = (u128::from(period), u128::from(elapsed));
    let cap = u128::from(limit) * p128;
    let mut state = cell.load(Relaxed);
    loop {
        let (sw, sp, sc) = unpack_sliding(state);
        let (prev, cur) = if sw == w {
            (sp, sc)
        } else if sw == w.wrapping_sub(1) & WINDOW_MASK {
            (sc, 0)
        } else {
            (0, 0)
        };
        // Everything below is in units of 1/period requests.
        let used = u128::from(prev) * (p128 - e128) + u128::from(cur) * p128;
        let need = u128::from(cost) * p128;
        let reset = |cur: u32| {
            let e = u64::try_from(e128).unwrap_or(0);
            if cur > 0 {
                Duration::from_nanos(2 * period - e)
            } else if prev > 0 {
                Duration::from_nanos(period - e)
            } else {
                Duration::ZERO
            }
        };
        if used + need > cap {
            let wait = if cur + cost <= limit {
                // Later in this window, as the previous window slides out.
                let room = u128::from(limit - cur - cost) * p128 / u128::from(prev.max(1));
                p128.saturating_sub(room).saturating_sub(e128)
            } else {
                // In the next window, once enough of this one slid out.
                let room = u128::from(limit - cost) * p128 / u128::from(cur.max(1));
                (p128 - e128) + p128.saturating_sub(room)
            };
            return Decision {
                allowed: false,
                limit,
                remaining: clamp_u32(u64::try_from(cap.saturating_sub(used) / p128).unwrap_or(0)),
                reset_after: reset(cur),
                retry_after: Some(Duration::from_nanos(
                    u64::try_from(wait.max(1)).unwrap_or(u64::MAX),
                )),
            };
        }
        let new_cur = cur + cost;
        let decision = Decision {
            allowed: true,
            limit,
            remaining: clamp_u32(u64::try_from((cap - used - need) / p128).unwrap_or(0)).min(limit),
            reset_after: reset(new_cur),
            retry_after: None,
        };
        if cost == 0 {
            return decision;
        }
        match cell.compare_exchange_weak(state, pack_sliding(w, prev, new_cur), Relaxed, Relaxed) {
            Ok(_) => return decision,
            Err(actual) => state = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gcra_burst_exact_then_refill() {
        let l = LocalLimiter::new(Quota::per_minute(10)).unwrap();
        for i in 0..10 {
            let d = l.check(&"k");
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset_after, Duration::from_secs(6 * u64::from(i + 1)));
        }
        let d = l.check(&"k");
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(Duration::from_secs(6)));
        assert_eq!(d.reset_after, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(6) - Duration::from_nanos(1)).await;
        assert!(!l.check(&"k").allowed);
        tokio::time::advance(Duration::from_nanos(1)).await;
        assert!(l.check(&"k").allowed);
        assert!(!l.check(&"k").allowed);
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..10 {
            assert!(l.check(&"k").allowed);
        }
        assert!(!l.check(&"k").allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_costs_and_refunds() {
        let l = LocalLimiter::new(Quota::per_second(10)).unwrap();
        assert!(l.check_n(&1, 7).allowed);
        let d = l.check_n(&1, 4);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 3);
        assert_eq!(d.retry_after, Some(Duration::from_millis(100)));
        let over = l.check_n(&1, 11);
        assert!(!over.allowed && over.retry_after.is_none());
        let h = l.hasher.hash_one(1);
        l.refund(h, 10, 7, l.now());
        assert!(l.check_n(&1, 10).allowed);
        assert_eq!(l.check_n(&1, 0).remaining, 0, "cost 0 peeks");
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_window_resets_at_the_boundary() {
        let l =
            LocalLimiter::new(Quota::per_second(3).with_algorithm(Algorithm::FixedWindow)).unwrap();
        tokio::time::advance(Duration::from_millis(400)).await;
        for i in 0..3 {
            assert_eq!(l.check(&"a").remaining, 2 - i);
        }
        let d = l.check(&"a");
        assert!(!d.allowed);
        let boundary = Duration::from_nanos(1_000_000_000 - l.now() % 1_000_000_000);
        assert_eq!(d.retry_after, Some(boundary));
        tokio::time::advance(boundary).await;
        assert!(l.check(&"a").allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn sliding_window_weights_the_previous_window() {
        let q = Quota::per_second(10).with_algorithm(Algorithm::SlidingWindow);
        let l = LocalLimiter::new(q).unwrap();
        let off = l.now() % 1_000_000_000;
        tokio::time::advance(Duration::from_nanos(1_000_000_000 - off)).await; // window start
        for _ in 0..10 {
            assert!(l.check(&"a").allowed);
        }
        assert!(!l.check(&"a").allowed);
        // 25 % into the next window: the previous 10 weigh 7.5 → 2 more fit.
        tokio::time::advance(Duration::from_millis(1250)).await;
        assert!(l.check(&"a").allowed);
        assert!(l.check(&"a").allowed);
        let d = l.check(&"a");
        assert!(!d.allowed);
        // prev=10, cur=2: one more fits when 10*(1-e) <= 7, i.e. e >= 0.3.
        assert_eq!(d.retry_after, Some(Duration::from_millis(50)));
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(l.check(&"a").allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn key_space_is_bounded_and_idle_keys_are_evicted() {
        let l = LocalLimiter::with_max_keys(Quota::per_second(1), 4).unwrap();
        for k in 0..4 {
            assert!(l.check(&k).allowed);
        }
        assert_eq!(l.len(), 4);
        // Full of active keys: newcomers share the overflow bucket.
        assert!(l.check(&100).allowed);
        assert!(!l.check(&101).allowed, "overflow bucket is shared");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.check(&200).allowed);
        assert_eq!(l.len(), 1, "idle keys evicted to make room");
        assert_eq!(l.evict_idle(), 0);
    }

    #[test]
    fn tsc_clock_admits_exactly_the_limit_across_threads() {
        let q = Quota::new(500, Duration::from_secs(36_000));
        let l = std::sync::Arc::new(LocalLimiter::new(q).unwrap().with_clock(Clock::Tsc));
        assert_eq!(l.clock(), Clock::Tsc);
        let allowed: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || (0..400).filter(|_| l.check(&"k").allowed).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_fixed_window_limits_do_not_overflow() {
        let q =
            Quota::new(u32::MAX, Duration::from_secs(3600)).with_algorithm(Algorithm::FixedWindow);
        let l = LocalLimiter::new(q).unwrap();
        assert!(l.check_n(&1, u32::MAX).allowed);
        let d = l.check_n(&1, u32::MAX);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn float_division_is_exact() {
        for t in [
            1u64,
            3,
            7,
            1_000,
            8_571_428_571,
            6_000_000_000,
            (1 << 40) + 17,
        ] {
            let inv = 1.0 / t as f64;
            for q in [0u64, 1, 5, 1_000_000, u64::from(u32::MAX)] {
                let Some(base) = q.checked_mul(t) else {
                    continue;
                };
                for x in [base.saturating_sub(1), base, base + 1, base + t / 2] {
                    if x < 1 << 62 {
                        assert_eq!(div(x, t, inv), x / t, "{x} / {t}");
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_quotas_are_rejected() {
        assert!(LocalLimiter::new(Quota::per_second(0)).is_err());
        assert!(LocalLimiter::new(Quota::new(10, Duration::from_nanos(5))).is_err());
        let q = Quota::per_second(2_000_000).with_algorithm(Algorithm::SlidingWindow);
        assert!(LocalLimiter::new(q).is_err());
    }

    #[test]
    fn concurrent_threads_admit_exactly_the_limit() {
        let l = std::sync::Arc::new(
            LocalLimiter::new(Quota::new(1000, Duration::from_secs(36_000))).unwrap(),
        );
        let allowed: u32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || (0..1000).filter(|_| l.check(&"hot").allowed).count() as u32)
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed, 1000);
    }
}
