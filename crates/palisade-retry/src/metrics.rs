//! Prometheus metrics of the retry layer.

use crate::{RetryReason, StopReason};
use palisade_core::metrics::register_counter_vec;
use prometheus::{IntCounter, IntCounterVec, Registry};

/// The retry layer's metric families, registered once on a caller-given
/// registry and shared by every retry layer (each layer labels its series
/// with its own `name`).
///
/// - `palisade_retry_attempts_total{name, kind}`: attempts sent (`first`,
///   `retry`, `hedge`).
/// - `palisade_retry_retries_total{name, reason}`: retries by reason
///   (`status`, `grpc`, `connect`, `timeout`, `transport`, `error`).
/// - `palisade_retry_stopped_total{name, reason}`: calls whose last attempt
///   failed and that were not retried further (`max_attempts` — exhausted —,
///   `deadline`, `budget`, `retry_after_too_long`, `body_too_large`,
///   `not_idempotent`).
/// - `palisade_retry_budget_denied_total{name}`: retries the budget refused.
/// - `palisade_retry_not_replayable_total{name}`: requests whose body was
///   over the replay limit and were streamed through once (counted whether
///   or not they failed).
/// - `palisade_timeout_elapsed_total{name}`: requests the
///   [`TimeoutLayer`](crate::timeout::TimeoutLayer) answered with 504.
/// - `palisade_bulkhead_rejected_total{name}`: requests the
///   [`BulkheadLayer`](crate::bulkhead::BulkheadLayer) answered with 503.
///
/// ```
/// use palisade_retry::{RetryLayer, RetryMetrics};
///
/// let registry = prometheus::Registry::new();
/// let metrics = RetryMetrics::register(&registry).unwrap();
/// let layer = RetryLayer::builder().metrics(&metrics, "tools").build().unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RetryMetrics {
    attempts: IntCounterVec,
    retries: IntCounterVec,
    stopped: IntCounterVec,
    budget_denied: IntCounterVec,
    not_replayable: IntCounterVec,
    timeouts: IntCounterVec,
    bulkhead_rejected: IntCounterVec,
}

impl RetryMetrics {
    /// Registers the families on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            attempts: register_counter_vec(
                registry,
                "palisade_retry_attempts_total",
                "Attempts sent, by kind (first, retry, hedge).",
                &["name", "kind"],
            )?,
            retries: register_counter_vec(
                registry,
                "palisade_retry_retries_total",
                "Retries, by reason.",
                &["name", "reason"],
            )?,
            stopped: register_counter_vec(
                registry,
                "palisade_retry_stopped_total",
                "Failed calls not retried further, by reason (max_attempts means exhausted).",
                &["name", "reason"],
            )?,
            budget_denied: register_counter_vec(
                registry,
                "palisade_retry_budget_denied_total",
                "Retries refused by the retry budget.",
                &["name"],
            )?,
            not_replayable: register_counter_vec(
                registry,
                "palisade_retry_not_replayable_total",
                "Requests whose body was over the replay limit, sent once.",
                &["name"],
            )?,
            timeouts: register_counter_vec(
                registry,
                "palisade_timeout_elapsed_total",
                "Requests answered with 504 / DEADLINE_EXCEEDED by the timeout layer.",
                &["name"],
            )?,
            bulkhead_rejected: register_counter_vec(
                registry,
                "palisade_bulkhead_rejected_total",
                "Requests answered with 503 by a full bulkhead.",
                &["name"],
            )?,
        })
    }

    pub(crate) fn timeout_counter(&self, name: &str) -> IntCounter {
        self.timeouts.with_label_values(&[name])
    }

    pub(crate) fn bulkhead_counter(&self, name: &str) -> IntCounter {
        self.bulkhead_rejected.with_label_values(&[name])
    }

    pub(crate) fn handles(&self, name: &str) -> MetricHandles {
        MetricHandles {
            first: self.attempts.with_label_values(&[name, "first"]),
            retry: self.attempts.with_label_values(&[name, "retry"]),
            hedge: self.attempts.with_label_values(&[name, "hedge"]),
            retries: RetryReason::ALL.map(|r| self.retries.with_label_values(&[name, r.as_str()])),
            stopped: StopReason::ALL.map(|r| self.stopped.with_label_values(&[name, r.as_str()])),
            budget_denied: self.budget_denied.with_label_values(&[name]),
            not_replayable: self.not_replayable.with_label_values(&[name]),
        }
    }
}

/// One layer's series, resolved once so the hot path is one atomic add.
#[derive(Clone, Debug)]
pub(crate) struct MetricHandles {
    pub(crate) first: IntCounter,
    pub(crate) retry: IntCounter,
    pub(crate) hedge: IntCounter,
    pub(crate) retries: [IntCounter; 6],
    pub(crate) stopped: [IntCounter; 6],
    pub(crate) budget_denied: IntCounter,
    pub(crate) not_replayable: IntCounter,
}
