//! Prometheus metrics of the masking layer.

use prometheus::{IntCounterVec, Registry};

/// Counters registered on a caller-given registry:
/// `palisade_pii_values_masked_total{pattern}`,
/// `palisade_pii_bodies_masked_total{direction}` and
/// `palisade_pii_bodies_refused_total{direction, reason}`.
///
/// ```
/// let registry = prometheus::Registry::new();
/// let metrics = palisade_pii::PiiMetrics::register(&registry).unwrap();
/// # let _ = metrics;
/// assert_eq!(registry.gather().len(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct PiiMetrics {
    pub(crate) values: IntCounterVec,
    pub(crate) bodies: IntCounterVec,
    pub(crate) refused: IntCounterVec,
}

impl PiiMetrics {
    /// Registers the counters.
    ///
    /// # Errors
    /// When a metric of the same name is already registered.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use palisade_core::metrics::register_counter_vec;
        let m = Self {
            values: register_counter_vec(
                registry,
                "palisade_pii_values_masked_total",
                "Values masked, by pattern (`field` for sensitive field names).",
                &["pattern"],
            )?,
            bodies: register_counter_vec(
                registry,
                "palisade_pii_bodies_masked_total",
                "Bodies in which at least one value was masked.",
                &["direction"],
            )?,
            refused: register_counter_vec(
                registry,
                "palisade_pii_bodies_refused_total",
                "Bodies refused because they could not be masked.",
                &["direction", "reason"],
            )?,
        };
        m.values.with_label_values(&["field"]).inc_by(0);
        for d in ["request", "response"] {
            m.bodies.with_label_values(&[d]).inc_by(0);
            m.refused.with_label_values(&[d, "too_large"]).inc_by(0);
        }
        Ok(m)
    }

    pub(crate) fn record(&self, direction: &str, stats: &crate::MaskStats) {
        if stats.total() == 0 {
            return;
        }
        self.bodies.with_label_values(&[direction]).inc();
        for (name, n) in stats.iter() {
            self.values.with_label_values(&[name]).inc_by(n);
        }
        if stats.fields() > 0 {
            self.values
                .with_label_values(&["field"])
                .inc_by(stats.fields());
        }
    }
}
