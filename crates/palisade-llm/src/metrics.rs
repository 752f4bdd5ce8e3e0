//! Prometheus metrics of token budgets.

use palisade_core::metrics::register_counter_vec;
use prometheus::{IntCounter, IntCounterVec, Registry};

/// A token movement (a metric label).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Event {
    Reserved = 0,
    Charged = 1,
    Refunded = 2,
    Refused = 3,
}

const EVENTS: [&str; 4] = ["reserved", "charged", "refunded", "refused"];

/// A request's admission (a metric label).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    Admitted = 0,
    Refused = 1,
    ShadowRefused = 2,
    FailOpen = 3,
    FailClosed = 4,
    Unkeyed = 5,
}

const OUTCOMES: [&str; 6] = [
    "admitted",
    "refused",
    "shadow_refused",
    "fail_open",
    "fail_closed",
    "unkeyed",
];

/// The token budgets' metrics, registered once per registry and shared by
/// every layer built with
/// [`TokenBudgetBuilder::metrics`](crate::TokenBudgetBuilder::metrics):
///
/// - `palisade_llm_tokens_total{limit, tier, event}` — tokens `reserved` at
///   admission, `charged` (the true amount) and `refunded` (reserved but
///   not used) at settlement, and `refused` (asked for by refused
///   requests); `tier` is `none` for untiered limits;
/// - `palisade_llm_decisions_total{limit, outcome}` — per request:
///   `admitted`, `refused`, `shadow_refused` (log-only), `fail_open`,
///   `fail_closed` (store down) or `unkeyed` (no key, not budgeted).
///
/// Labels are bounded: limit names come from the configuration.
///
/// ```
/// use palisade_llm::TokenMetrics;
///
/// let registry = prometheus::Registry::new();
/// let metrics = TokenMetrics::register(&registry).unwrap();
/// assert!(TokenMetrics::register(&registry).is_err(), "once per registry");
/// # let _ = metrics;
/// ```
#[derive(Clone, Debug)]
pub struct TokenMetrics {
    tokens: IntCounterVec,
    decisions: IntCounterVec,
}

impl TokenMetrics {
    /// Registers the metrics on `registry`.
    ///
    /// # Errors
    /// When they are already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            tokens: register_counter_vec(
                registry,
                "palisade_llm_tokens_total",
                "Tokens reserved, charged, refunded and refused, per limit and tier.",
                &["limit", "tier", "event"],
            )?,
            decisions: register_counter_vec(
                registry,
                "palisade_llm_decisions_total",
                "Token budget admissions, per limit and outcome.",
                &["limit", "outcome"],
            )?,
        })
    }

    pub(crate) fn counters(&self, limit: &str, tier: &str) -> Counters {
        Counters {
            tokens: EVENTS.map(|e| self.tokens.with_label_values(&[limit, tier, e])),
            decisions: OUTCOMES.map(|o| self.decisions.with_label_values(&[limit, o])),
        }
    }
}

/// Pre-resolved counters of one limit.
#[derive(Debug)]
pub(crate) struct Counters {
    tokens: [IntCounter; 4],
    decisions: [IntCounter; 6],
}

impl Counters {
    pub(crate) fn tokens(&self, event: Event, n: u64) {
        self.tokens[event as usize].inc_by(n);
    }

    pub(crate) fn outcome(&self, outcome: Outcome) {
        self.decisions[outcome as usize].inc();
    }
}
