//! Prometheus metrics of the cache layers.

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

/// The cache's Prometheus metric families, registered once per registry and
/// shared (cheap clones) by every cache built with them; each cache labels
/// its series with its `cache` name.
///
/// - `palisade_cache_requests_total{cache, outcome}`: outcome is `hit`,
///   `miss`, `stale`, `revalidated`, `coalesced` or `bypass`.
/// - `palisade_cache_evictions_total{cache}`, `palisade_cache_store_errors_total{cache}`
/// - `palisade_cache_bytes{cache}` (L1 bytes)
/// - `palisade_cache_upstream_seconds{cache}`: upstream latency on misses.
///
/// # Example
///
/// ```
/// use palisade_cache::{CacheLayer, CacheMetrics};
///
/// let registry = prometheus::Registry::new();
/// let metrics = CacheMetrics::register(&registry).unwrap();
/// let _layer = CacheLayer::builder().name("api").metrics(metrics).build().unwrap();
/// assert!(registry.gather().iter().any(|f| f.name() == "palisade_cache_bytes"));
/// ```
#[derive(Clone, Debug)]
pub struct CacheMetrics {
    requests: IntCounterVec,
    evictions: IntCounterVec,
    store_errors: IntCounterVec,
    bytes: IntGaugeVec,
    upstream: HistogramVec,
}

impl CacheMetrics {
    /// Registers the families on `registry` (once per registry).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use palisade_core::metrics::*;
        Ok(Self {
            requests: register_counter_vec(
                registry,
                "palisade_cache_requests_total",
                "Cache lookups by outcome.",
                &["cache", "outcome"],
            )?,
            evictions: register_counter_vec(
                registry,
                "palisade_cache_evictions_total",
                "L1 entries evicted for room.",
                &["cache"],
            )?,
            store_errors: register_counter_vec(
                registry,
                "palisade_cache_store_errors_total",
                "Failed L2 store operations (cache bypassed).",
                &["cache"],
            )?,
            bytes: register_int_gauge_vec(
                registry,
                "palisade_cache_bytes",
                "Bytes held in L1.",
                &["cache"],
            )?,
            upstream: register_histogram_vec(
                registry,
                "palisade_cache_upstream_seconds",
                "Upstream latency of cache misses.",
                &["cache"],
                None,
            )?,
        })
    }

    pub(crate) fn resolve(&self, name: &str) -> Resolved {
        let r = |o: &str| self.requests.with_label_values(&[name, o]);
        Resolved {
            hit: r("hit"),
            miss: r("miss"),
            stale: r("stale"),
            revalidated: r("revalidated"),
            coalesced: r("coalesced"),
            bypass: r("bypass"),
            evictions: self.evictions.with_label_values(&[name]),
            store_errors: self.store_errors.with_label_values(&[name]),
            bytes: self.bytes.with_label_values(&[name]),
            upstream: self.upstream.with_label_values(&[name]),
        }
    }
}

/// Series of one cache, resolved once.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) hit: IntCounter,
    pub(crate) miss: IntCounter,
    pub(crate) stale: IntCounter,
    pub(crate) revalidated: IntCounter,
    pub(crate) coalesced: IntCounter,
    pub(crate) bypass: IntCounter,
    pub(crate) evictions: IntCounter,
    pub(crate) store_errors: IntCounter,
    pub(crate) bytes: IntGauge,
    pub(crate) upstream: Histogram,
}
