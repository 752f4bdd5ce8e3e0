//! Helpers to register Prometheus metrics on a caller-given registry.
//!
//! Every palisade metric name starts with `palisade_`, and labels are bounded
//! (layer name, outcome, tier — never a raw user key or URL). Register a
//! layer's metrics once per registry and share them between its instances.
//!
//! # Example
//!
//! ```
//! let registry = prometheus::Registry::new();
//! let calls = palisade_core::metrics::register_counter_vec(
//!     &registry,
//!     "palisade_example_calls_total",
//!     "Calls by outcome.",
//!     &["outcome"],
//! )
//! .unwrap();
//! calls.with_label_values(&["success"]).inc();
//! assert_eq!(registry.gather().len(), 1);
//! ```

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, core::Collector,
};

/// Latency buckets in seconds, from 100 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn check_name(name: &str) -> prometheus::Result<()> {
    if name.starts_with("palisade_") {
        Ok(())
    } else {
        Err(prometheus::Error::Msg(format!(
            "metric name {name:?} must start with \"palisade_\""
        )))
    }
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> prometheus::Result<C> {
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

/// Registers an integer counter family.
pub fn register_counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    check_name(name)?;
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// Registers an integer gauge family.
pub fn register_int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    check_name(name)?;
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// Registers a histogram family (seconds, [`LATENCY_BUCKETS`] unless given).
pub fn register_histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Option<&[f64]>,
) -> prometheus::Result<HistogramVec> {
    check_name(name)?;
    let opts = HistogramOpts::new(name, help).buckets(buckets.unwrap_or(LATENCY_BUCKETS).to_vec());
    register(registry, HistogramVec::new(opts, labels)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_prefixed_and_unique() {
        let r = Registry::new();
        assert!(register_counter_vec(&r, "calls_total", "x", &[]).is_err());
        let g = register_int_gauge_vec(&r, "palisade_state", "x", &["name"]).unwrap();
        g.with_label_values(&["a"]).set(1);
        assert!(register_int_gauge_vec(&r, "palisade_state", "x", &["name"]).is_err());
        let h = register_histogram_vec(&r, "palisade_latency_seconds", "x", &[], None).unwrap();
        h.with_label_values(&[] as &[&str]).observe(0.003);
        assert_eq!(r.gather().len(), 2);
    }
}
