//! Prometheus metrics of the rate limiter.

use palisade_core::metrics::register_counter_vec;
use palisade_store::StoreError;
use prometheus::{IntCounter, IntCounterVec, Registry};

/// A limit's own decision (a metric label).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Allowed = 0,
    Rejected = 1,
    ShadowRejected = 2,
    FailOpen = 3,
    FailClosed = 4,
}

const OUTCOMES: [&str; 5] = [
    "allowed",
    "rejected",
    "shadow_rejected",
    "fail_open",
    "fail_closed",
];

/// The rate limiter's metrics, registered once per registry and shared by
/// every limiter built with [`RateLimiterBuilder::metrics`](crate::RateLimiterBuilder::metrics):
///
/// - `palisade_ratelimit_decisions_total{limit, tier, outcome}` — each
///   limit's decision per request; `outcome` is `allowed`, `rejected`,
///   `shadow_rejected`, `fail_open` or `fail_closed`; `tier` is `none` for
///   untiered limits;
/// - `palisade_ratelimit_store_errors_total{kind}` — `unavailable`,
///   `timeout` or `other`;
/// - `palisade_ratelimit_memo_rejections_total{limit}` — refusals answered
///   from the in-process memo of keys already over their limit, without a
///   store round trip.
///
/// Labels are bounded: limit and tier names come from the configuration.
///
/// ```
/// use palisade_ratelimit::RateLimitMetrics;
///
/// let registry = prometheus::Registry::new();
/// let metrics = RateLimitMetrics::register(&registry).unwrap();
/// assert!(RateLimitMetrics::register(&registry).is_err(), "once per registry");
/// # let _ = metrics;
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitMetrics {
    decisions: IntCounterVec,
    store_errors: IntCounterVec,
    memo: IntCounterVec,
}

/// Pre-resolved counters of one (limit, tier): no label lookup per request.
#[derive(Debug)]
pub(crate) struct SlotCounters([IntCounter; 5]);

impl SlotCounters {
    #[inline]
    pub(crate) fn inc(&self, outcome: Outcome) {
        self.0[outcome as usize].inc();
    }
}

impl RateLimitMetrics {
    /// Registers the metrics on `registry`.
    ///
    /// # Errors
    /// When they are already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            decisions: register_counter_vec(
                registry,
                "palisade_ratelimit_decisions_total",
                "Rate-limit decisions, per limit, tier and outcome.",
                &["limit", "tier", "outcome"],
            )?,
            store_errors: register_counter_vec(
                registry,
                "palisade_ratelimit_store_errors_total",
                "Rate-limit store failures, per kind.",
                &["kind"],
            )?,
            memo: register_counter_vec(
                registry,
                "palisade_ratelimit_memo_rejections_total",
                "Refusals answered from the in-process memo without a store round trip.",
                &["limit"],
            )?,
        })
    }

    pub(crate) fn slot(&self, limit: &str, tier: &str) -> SlotCounters {
        SlotCounters(OUTCOMES.map(|o| self.decisions.with_label_values(&[limit, tier, o])))
    }

    pub(crate) fn store_error(&self, err: &StoreError) {
        let kind = if err.is_timeout() {
            "timeout"
        } else if err.is_unavailable() {
            "unavailable"
        } else {
            "other"
        };
        self.store_errors.with_label_values(&[kind]).inc();
    }

    pub(crate) fn memo_hit(&self, limit: &str) {
        self.memo.with_label_values(&[limit]).inc();
    }
}
