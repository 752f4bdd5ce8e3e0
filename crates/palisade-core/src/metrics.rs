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
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
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

/// The name of the counter of requests seen without a peer address.
pub const MISSING_PEER_TOTAL: &str = "palisade_missing_peer_total";

/// Exports [`PeerIp::missing_count`](crate::key::PeerIp::missing_count), the
/// process-wide count of requests that reached a `PeerIp` key without a
/// peer address, as the counter `palisade_missing_peer_total`.
///
/// The counter reads the process-wide count when gathered, so it includes
/// requests seen before registration, and may be registered on several
/// registries.
///
/// ```
/// use palisade_core::key::{KeyExtractor, PeerIp};
///
/// let registry = prometheus::Registry::new();
/// palisade_core::metrics::register_missing_peer(&registry).unwrap();
/// let _ = PeerIp::new().extract(&http::Request::new(())); // no peer address
/// let family = &registry.gather()[0];
/// assert_eq!(family.name(), "palisade_missing_peer_total");
/// assert!(family.get_metric()[0].get_counter().get_value() >= 1.0);
/// ```
///
/// # Errors
/// When the registry already holds a metric of that name.
pub fn register_missing_peer(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(MissingPeerCollector::new()?))
}

/// Reads the process-wide missing-peer count at each gather.
struct MissingPeerCollector {
    descs: Vec<Desc>,
}

const MISSING_PEER_HELP: &str = "Requests keyed by peer IP that carried no peer address (a server setup mistake: no PeerAddr, axum ConnectInfo or tonic connect info).";

impl MissingPeerCollector {
    fn new() -> prometheus::Result<Self> {
        let counter = IntCounter::new(MISSING_PEER_TOTAL, MISSING_PEER_HELP)?;
        Ok(Self {
            descs: counter.desc().into_iter().cloned().collect(),
        })
    }
}

impl Collector for MissingPeerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        match IntCounter::new(MISSING_PEER_TOTAL, MISSING_PEER_HELP) {
            Ok(counter) => {
                counter.inc_by(crate::key::PeerIp::missing_count());
                counter.collect()
            }
            Err(_) => Vec::new(),
        }
    }
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

    fn missing_peer_value(r: &Registry) -> u64 {
        let families = r.gather();
        let family = families
            .iter()
            .find(|f| f.name() == MISSING_PEER_TOTAL)
            .expect("registered");
        family.get_metric()[0].get_counter().get_value() as u64
    }

    #[test]
    fn missing_peer_counter_follows_the_process_wide_count() {
        use crate::key::{KeyExtractor, MissingPeer, PeerIp};
        let r = Registry::new();
        register_missing_peer(&r).unwrap();
        assert!(register_missing_peer(&r).is_err(), "one per registry");
        // Other tests count concurrently: the counter only ever moves up,
        // by at least what this test adds.
        let before = missing_peer_value(&r);
        let req = http::Request::new(());
        for policy in [
            MissingPeer::SharedKey,
            MissingPeer::Skip,
            MissingPeer::Refuse,
        ] {
            let _ = PeerIp::new().when_missing(policy).extract(&req);
        }
        let after = missing_peer_value(&r);
        assert!(after >= before + 3, "{before} -> {after}");
        assert!(after <= PeerIp::missing_count());
        // A peer address is not counted.
        let mut with_peer = http::Request::new(());
        with_peer
            .extensions_mut()
            .insert(crate::key::PeerAddr("192.0.2.1:1".parse().unwrap()));
        assert!(PeerIp::new().extract(&with_peer).is_some());
    }
}
