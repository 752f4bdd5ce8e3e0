//! One limit: atomics only, so admitting and finishing a call takes no lock.

use crate::Algorithm;
use prometheus::{IntCounter, IntGauge};
use std::{
    fmt,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering::*},
    time::Duration,
};
use tokio::{sync::Notify, time::Instant};

/// The settings every limit of a layer shares.
pub(crate) struct Settings {
    pub(crate) algorithm: Algorithm,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) initial: f64,
    pub(crate) max_queue: usize,
    pub(crate) queue_timeout: Duration,
    pub(crate) gauges: Option<Gauges>,
}

pub(crate) struct Gauges {
    pub(crate) limit: IntGauge,
    pub(crate) in_flight: IntGauge,
    pub(crate) queued: IntGauge,
    pub(crate) refused: IntCounter,
}

/// A learned limit and the calls under it.
pub(crate) struct Limiter {
    /// The limit, an `f64`'s bits (its whole part admits).
    limit: AtomicU64,
    in_flight: AtomicUsize,
    pub(crate) queued: AtomicUsize,
    /// No-load latency in seconds, an `f64`'s bits (0: none yet).
    long_rtt: AtomicU64,
    /// Cuts so far: a refusal of a call admitted before the last cut is the
    /// same congestion, and not cut for again.
    cuts: AtomicU64,
    pub(crate) freed: Notify,
    /// The key, for logs.
    label: String,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight.load(Relaxed))
            .finish()
    }
}

/// How a call ended, for the algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sample {
    Success,
    Dropped,
    /// Not judged (the caller went away): frees the slot only.
    Ignore,
}

impl Limiter {
    pub(crate) fn new(initial: f64, label: String) -> Self {
        Self {
            limit: AtomicU64::new(initial.to_bits()),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            long_rtt: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
            freed: Notify::new(),
            label,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        f64::from_bits(self.limit.load(Relaxed)) as usize
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Takes a slot if one is free: the calls in flight before it, and the
    /// count of cuts so far.
    pub(crate) fn try_acquire(&self, s: &Settings) -> Option<(usize, u64)> {
        let limit = self.limit();
        let got = self
            .in_flight
            .fetch_update(AcqRel, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|n| (n, self.cuts.load(Acquire)));
        if got.is_some()
            && let Some(g) = &s.gauges
        {
            g.in_flight.inc();
        }
        got
    }

    /// Frees a slot taken at `started` (timed for the gradient only) with
    /// `in_flight` calls before it and `cuts` cuts so far, and learns from
    /// the call.
    pub(crate) fn release(
        &self,
        s: &Settings,
        started: Option<Instant>,
        in_flight: usize,
        cuts: u64,
        sample: Sample,
    ) {
        self.in_flight.fetch_sub(1, AcqRel);
        if let Some(g) = &s.gauges {
            g.in_flight.dec();
        }
        if sample != Sample::Ignore {
            self.learn(s, started, in_flight, cuts, sample == Sample::Dropped);
        }
        if self.queued.load(Acquire) > 0 {
            self.freed.notify_one();
        }
    }

    fn learn(
        &self,
        s: &Settings,
        started: Option<Instant>,
        in_flight: usize,
        cuts: u64,
        dropped: bool,
    ) {
        let old = f64::from_bits(self.limit.load(Relaxed));
        let new = if dropped {
            if self
                .cuts
                .compare_exchange(cuts, cuts + 1, AcqRel, Relaxed)
                .is_err()
            {
                return; // already cut for this congestion
            }
            let ratio = match s.algorithm {
                Algorithm::Aimd { backoff_ratio } => backoff_ratio,
                Algorithm::Gradient { .. } => 0.9,
            };
            old * ratio
        } else {
            match s.algorithm {
                Algorithm::Aimd { .. } => {
                    // Grow only while the limit is in use: an idle limit
                    // proves nothing.
                    if (in_flight + 1) * 2 < old as usize {
                        return;
                    }
                    old + 1.0 / old.max(1.0)
                }
                Algorithm::Gradient {
                    tolerance,
                    smoothing,
                } => {
                    let Some(started) = started else { return };
                    let rtt = Instant::now()
                        .saturating_duration_since(started)
                        .as_secs_f64();
                    let long = self.long_rtt(rtt, old);
                    if (in_flight + 1) * 2 < old as usize || rtt <= 0.0 {
                        return;
                    }
                    let gradient = (tolerance * long / rtt).clamp(0.5, 1.0);
                    let target = old * gradient + old.sqrt();
                    // About `limit` samples arrive per round trip: each
                    // moves the limit a `limit`-th of the smoothed step, so
                    // it moves once per round, on that round's latency.
                    let weight = smoothing / old.max(1.0);
                    old * (1.0 - weight) + target * weight
                }
            }
        };
        let new = new.clamp(s.min, s.max);
        if new == old {
            return;
        }
        // A concurrent update may win; the next sample corrects it.
        self.limit.store(new.to_bits(), Relaxed);
        if new as usize != old as usize {
            tracing::debug!(key = %self.label, from = old as usize, to = new as usize, "adaptive concurrency limit changed");
            if let Some(g) = &s.gauges {
                g.limit.set(new as i64);
            }
            if new > old {
                // Room for a queued call.
                self.freed.notify_one();
            }
        }
    }

    /// Folds `rtt` into the no-load latency — the lowest seen, drifting up
    /// by 1/10 000 of the gap per round trip (about `limit` samples) so a
    /// lasting change of the upstream's own speed is learnt — and returns it.
    fn long_rtt(&self, rtt: f64, limit: f64) -> f64 {
        let prev = f64::from_bits(self.long_rtt.load(Relaxed));
        let noload = if prev == 0.0 || rtt < prev {
            rtt
        } else {
            prev + (rtt - prev) / (10_000.0 * limit.max(1.0))
        };
        self.long_rtt.store(noload.to_bits(), Relaxed);
        noload
    }
}

impl Settings {
    pub(crate) fn refused(&self) {
        if let Some(g) = &self.gauges {
            g.refused.inc();
        }
    }
}
