//! A retry budget: retries limited to a fraction of recent requests, so an
//! outage does not multiply the load on the upstream ("retry storms").

use std::{
    cell::Cell,
    fmt,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};
use tokio::time::Instant;

const SLOTS: usize = 10;
/// Units deposited for each request (fixed point, so fractions are exact).
const UNIT: i64 = 1000;
/// A deposit reads the clock once per this many deposits on a thread (a
/// clock read costs more than the rest of a deposit); withdrawals always
/// read it.
const CLOCK_EVERY: u32 = 8;

thread_local! {
    static TICKS: Cell<u32> = const { Cell::new(0) };
}

/// A lock-free retry budget over a sliding window.
///
/// Every request deposits into the budget; every retry (and every hedged
/// attempt) withdraws from it. A retry is allowed while the deposits of the
/// last `window` plus a reserve of `min_per_sec × window` retries cover it, so
/// retries stay near `ratio × requests + min_per_sec`. The window is split
/// into ten slots; each slot is one atomic word tagged with its time slot, so
/// deposits and withdrawals never take a lock and old slots expire by
/// themselves. It reads [`tokio::time::Instant`], so it follows a paused
/// test clock; a deposit reads the clock only once in a few deposits on a
/// thread and otherwise reuses the last time slot seen, so a deposit may be
/// counted in a slightly newer or older slot than its own.
///
/// Modelled on tower's `TpsBudget`.
///
/// ```
/// use palisade_retry::RetryBudget;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // 20 % of requests, no floor.
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw(), "10 requests buy 2 retries");
/// # }
/// ```
pub struct RetryBudget {
    slots: [AtomicU64; SLOTS],
    /// The newest time slot seen.
    current: AtomicU32,
    slot_nanos: u64,
    start: Instant,
    reserve: i64,
    withdraw_amount: i64,
    ratio: f32,
    min_per_sec: u32,
    window: Duration,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request over `window` (clamped
    /// to 1 s ..= 60 s), plus `min_per_sec` retries per second regardless.
    /// A `ratio` of 0 (or not finite) allows only the floor; it is capped
    /// at 1000.
    pub fn new(window: Duration, min_per_sec: u32, ratio: f32) -> Self {
        let window = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if ratio.is_finite() && ratio > 0.0 {
            ratio.min(1000.0)
        } else {
            0.0
        };
        let withdraw_amount = if ratio == 0.0 {
            1
        } else {
            ((UNIT as f64) / f64::from(ratio)).round().max(1.0) as i64
        };
        // The floor: min_per_sec retries for each second of the window.
        let floor_retries = i64::from(min_per_sec) * window.as_secs() as i64;
        let reserve = floor_retries.saturating_mul(withdraw_amount);
        Self {
            slots: Default::default(),
            current: AtomicU32::new(1),
            slot_nanos: (window.as_nanos() / SLOTS as u128).max(1) as u64,
            start: Instant::now(),
            reserve,
            withdraw_amount,
            ratio,
            min_per_sec,
            window,
        }
    }

    /// The window over which requests are remembered.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Retries allowed per request.
    pub fn ratio(&self) -> f32 {
        self.ratio
    }

    /// Retries allowed per second regardless of traffic.
    pub fn min_per_sec(&self) -> u32 {
        self.min_per_sec
    }

    /// Reads the clock: the current time slot (0 marks an empty slot).
    #[inline]
    fn epoch(&self) -> u32 {
        let nanos = self.start.elapsed().as_nanos() as u64;
        let epoch = (nanos / self.slot_nanos) as u32 + 1;
        self.current.fetch_max(epoch, Ordering::Relaxed);
        epoch
    }

    /// The current time slot, reading the clock only once in a while.
    #[inline]
    fn cheap_epoch(&self) -> u32 {
        let read = TICKS.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n % CLOCK_EVERY == 1
        });
        if read {
            self.epoch()
        } else {
            self.current.load(Ordering::Relaxed)
        }
    }

    #[inline]
    fn add(&self, epoch: u32, amount: i64) {
        let slot = &self.slots[epoch as usize % SLOTS];
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (e, count) = unpack(cur);
            // Never reset a newer slot with a stale time: count in it instead.
            let (epoch, count) = if e >= epoch {
                (e, i64::from(count))
            } else {
                (epoch, 0)
            };
            let next = pack(epoch, clamp_i32(count + amount));
            match slot.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Records a request.
    #[inline]
    pub fn deposit(&self) {
        if self.ratio > 0.0 {
            self.add(self.cheap_epoch(), UNIT);
        }
    }

    /// Takes one retry from the budget; `false` when there is none left.
    pub fn withdraw(&self) -> bool {
        let epoch = self.epoch();
        let balance = self.balance_at(epoch);
        if balance + self.reserve < self.withdraw_amount {
            return false;
        }
        self.add(epoch, -self.withdraw_amount);
        true
    }

    fn balance_at(&self, epoch: u32) -> i64 {
        let oldest = epoch.saturating_sub(SLOTS as u32 - 1);
        self.slots
            .iter()
            .map(|s| unpack(s.load(Ordering::Relaxed)))
            .filter(|(e, _)| *e != 0 && *e >= oldest && *e <= epoch)
            .map(|(_, c)| i64::from(c))
            .sum()
    }

    /// How many retries the budget would allow right now.
    pub fn available(&self) -> u64 {
        let total = self.balance_at(self.epoch()) + self.reserve;
        (total.max(0) / self.withdraw_amount) as u64
    }
}

fn clamp_i32(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

#[inline]
fn pack(epoch: u32, count: i32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(count as u32)
}

#[inline]
fn unpack(v: u64) -> (u32, i32) {
    ((v >> 32) as u32, v as u32 as i32)
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("window", &self.window)
            .field("min_per_sec", &self.min_per_sec)
            .field("ratio", &self.ratio)
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_alone_allows_min_per_sec_times_window() {
        let b = RetryBudget::new(Duration::from_secs(10), 2, 0.2);
        let mut n = 0;
        while b.withdraw() {
            n += 1;
            assert!(n < 1000);
        }
        assert_eq!(n, 20);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.5);
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.available(), 5);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 5, "still inside the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(b.available(), 0, "expired");
        assert!(!b.withdraw());
        b.deposit();
        b.deposit();
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ratio_is_floor_only() {
        let b = RetryBudget::new(Duration::from_secs(1), 3, 0.0);
        for _ in 0..100 {
            b.deposit();
        }
        assert_eq!(b.available(), 3);
        assert!(b.withdraw() && b.withdraw() && b.withdraw());
        assert!(!b.withdraw());
    }

    #[test]
    fn pack_roundtrip() {
        for (e, c) in [(0, 0), (1, -5), (u32::MAX, i32::MIN), (7, i32::MAX)] {
            assert_eq!(unpack(pack(e, c)), (e, c));
        }
    }

    #[tokio::test]
    async fn concurrent_deposits_are_not_lost() {
        let b = std::sync::Arc::new(RetryBudget::new(Duration::from_secs(60), 0, 1.0));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        b.deposit();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // A slot boundary may pass during the loop; deposits land in the
        // slot of their time either way and none is lost.
        assert_eq!(b.available(), 40_000);
    }
}
