//! Lock-free sliding windows: the last N calls (an atomic ring) or the last
//! N seconds (atomic one-second buckets).
//!
//! Both are approximate under races (a slot overwritten by two threads at
//! once may be counted once), never wrong by more than the racing calls,
//! and never block.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

const OK: u8 = 1;
const FAIL: u8 = 2;
const SLOW: u8 = 4;

/// Totals of a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn count(size: u32) -> Self {
        Self::Count(CountWindow::new(size))
    }

    pub(crate) fn time(secs: u32) -> Self {
        Self::Time(TimeWindow::new(secs))
    }

    /// Records call number `seq` (a count window's slot); `now_secs` is only
    /// read by a time window.
    #[inline]
    pub(crate) fn record(&self, seq: u64, failure: bool, slow: bool, now_secs: u64) {
        match self {
            Self::Count(w) => w.record(seq, failure, slow),
            Self::Time(w) => w.record(failure, slow, now_secs),
        }
    }

    /// Whether recording a plain success as call `seq` would change
    /// nothing (a count window whose slot already holds one).
    #[inline(always)]
    pub(crate) fn success_is_noop(&self, seq: u64) -> bool {
        match self {
            Self::Count(w) => w.slots[w.index(seq)].load(Relaxed) == OK,
            Self::Time(_) => false,
        }
    }

    pub(crate) fn totals(&self, now_secs: u64) -> Totals {
        match self {
            Self::Count(w) => w.totals(),
            Self::Time(w) => w.totals(now_secs),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }

    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Self::Time(_))
    }
}

/// The last `size` calls: a ring of one-byte slots and running totals. The
/// caller numbers the calls (its call counter), so a steady stream of
/// successes costs one load per call.
#[derive(Debug)]
pub(crate) struct CountWindow {
    /// `u64::MAX / len + 1`: a slot index by multiplication, not division
    /// (Lemire's fastmod).
    magic: u64,
    slots: Box<[AtomicU8]>,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        let len = u64::from(size.max(1));
        Self {
            magic: (u64::MAX / len).wrapping_add(1),
            slots: (0..len).map(|_| AtomicU8::new(0)).collect(),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    #[inline]
    fn record(&self, seq: u64, failure: bool, slow: bool) {
        let code = OK | if failure { FAIL } else { 0 } | if slow { SLOW } else { 0 };
        let slot = &self.slots[self.index(seq)];
        let old = slot.load(Relaxed);
        if old == code {
            return;
        }
        slot.store(code, Relaxed);
        if old == 0 {
            self.calls.fetch_add(1, Relaxed);
        }
        adjust(&self.failures, old & FAIL != 0, failure);
        adjust(&self.slow, old & SLOW != 0, slow);
    }

    /// `seq % len` for `len` ≤ 2¹⁶: the low 32 bits of `seq` by fastmod
    /// (a slot is skipped once every 2³² calls, which a window never notices).
    #[inline(always)]
    fn index(&self, seq: u64) -> usize {
        let low = self.magic.wrapping_mul(u64::from(seq as u32));
        ((u128::from(low) * self.slots.len() as u128) >> 64) as usize
    }

    fn totals(&self) -> Totals {
        Totals {
            calls: self.calls.load(Relaxed),
            failures: self.failures.load(Relaxed),
            slow: self.slow.load(Relaxed),
        }
    }

    fn reset(&self) {
        for s in self.slots.iter() {
            s.store(0, Relaxed);
        }
        self.calls.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.slow.store(0, Relaxed);
    }
}

#[inline]
fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Relaxed);
        }
        (true, false) => {
            // Saturating: a reset racing a record must not wrap.
            let _ = counter.fetch_update(Relaxed, Relaxed, |v| v.checked_sub(1));
        }
        _ => {}
    }
}

#[derive(Debug)]
struct Bucket {
    /// The second this bucket holds, plus one (0 = never used).
    epoch: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// The calls of the last `secs` seconds, in one bucket per second.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
}

impl TimeWindow {
    fn new(secs: u32) -> Self {
        Self {
            buckets: (0..secs.max(1))
                .map(|_| Bucket {
                    epoch: AtomicU64::new(0),
                    calls: AtomicU32::new(0),
                    failures: AtomicU32::new(0),
                    slow: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool, now_secs: u64) {
        let tag = now_secs + 1;
        let b = &self.buckets[(now_secs % self.buckets.len() as u64) as usize];
        let seen = b.epoch.load(Relaxed);
        if seen != tag
            && seen < tag
            && b.epoch
                .compare_exchange(seen, tag, Relaxed, Relaxed)
                .is_ok()
        {
            b.calls.store(0, Relaxed);
            b.failures.store(0, Relaxed);
            b.slow.store(0, Relaxed);
        }
        b.calls.fetch_add(1, Relaxed);
        if failure {
            b.failures.fetch_add(1, Relaxed);
        }
        if slow {
            b.slow.fetch_add(1, Relaxed);
        }
    }

    fn totals(&self, now_secs: u64) -> Totals {
        let len = self.buckets.len() as u64;
        let oldest = (now_secs + 1).saturating_sub(len - 1);
        let mut t = Totals::default();
        for b in self.buckets.iter() {
            let e = b.epoch.load(Relaxed);
            if e >= oldest.max(1) && e <= now_secs + 1 {
                t.calls += b.calls.load(Relaxed);
                t.failures += b.failures.load(Relaxed);
                t.slow += b.slow.load(Relaxed);
            }
        }
        t
    }

    fn reset(&self) {
        for b in self.buckets.iter() {
            b.epoch.store(0, Relaxed);
            b.calls.store(0, Relaxed);
            b.failures.store(0, Relaxed);
            b.slow.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = Window::count(4);
        for (i, f) in [true, true, false, false].into_iter().enumerate() {
            w.record(i as u64, f, false, 0);
        }
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        // Two successes push both failures out.
        w.record(4, false, true, 0);
        w.record(5, false, false, 0);
        assert_eq!(
            w.totals(0),
            Totals {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.totals(0), Totals::default());
    }

    #[test]
    fn fastmod_index_is_the_remainder() {
        for len in [1u32, 2, 3, 7, 100, 1000, 65_536] {
            let Window::Count(w) = Window::count(len) else {
                unreachable!()
            };
            for seq in (0..5000u64).chain([u64::from(u32::MAX) - 3, u64::from(u32::MAX)]) {
                assert_eq!(w.index(seq), ((seq as u32) % len) as usize, "{seq} % {len}");
            }
        }
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = Window::time(3);
        w.record(0, true, false, 10);
        w.record(0, false, false, 11);
        w.record(0, true, true, 12);
        assert_eq!(
            w.totals(12),
            Totals {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        // At second 13 the bucket of second 10 has left the window.
        assert_eq!(w.totals(13).calls, 2);
        w.record(0, false, false, 13);
        assert_eq!(
            w.totals(13),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.totals(100).calls, 0);
    }
}
