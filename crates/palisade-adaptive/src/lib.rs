//! An adaptive concurrency limit: the layer finds how many calls the
//! upstream can take at once from what it observes — refusals and latency —
//! as Netflix's concurrency-limits and Envoy's adaptive concurrency filter
//! do, instead of a number tuned once for yesterday's load.
//!
//! # Algorithms
//!
//! - [`Algorithm::Aimd`] (the default): each call that ends in a refusal
//!   (HTTP 429 / 503 / 504, gRPC `RESOURCE_EXHAUSTED` / `UNAVAILABLE` /
//!   `DEADLINE_EXCEEDED`, or an error) cuts the limit by a ratio (0.9),
//!   once per round trip; each success while the limit is in use adds one
//!   call per round (`+1 / limit` per success).
//! - [`Algorithm::Gradient`]: compares each call's latency with the
//!   upstream's no-load latency (the lowest seen, slowly forgetting); when
//!   latency grows past a tolerance (a queue builds up upstream) the limit
//!   shrinks in proportion, and when it does not, the limit grows by about
//!   its square root per sample, smoothed. A refusal cuts it as AIMD does.
//!
//! Either stays within `min`–`max`, starting at `initial`
//! ([`AdaptiveLayerBuilder::limits`]).
//!
//! # What is measured
//!
//! [`Measure::Head`] (the default) times a call until the response head —
//! the time to first byte, right for LLM upstreams whose streamed answers'
//! length is not congestion. [`Measure::Body`] times it to the end of the
//! response body, and the call holds its slot until then.
//!
//! # Past the limit
//!
//! A call over the limit is refused at once — HTTP 503 with `Retry-After:
//! 1`, gRPC `RESOURCE_EXHAUSTED`, [`AdaptiveError::Refused`] for generic
//! services ([`AdaptiveLayer::for_services`]) — or, with
//! [`AdaptiveLayerBuilder::queue`], waits in a bounded queue for a slot,
//! at most its deadline.
//!
//! # Per key
//!
//! With [`AdaptiveLayerBuilder::key`] each key (an upstream host, a tool, a
//! model) learns its own limit. Keys are kept for the layer's life (their
//! limit is what was learned): use a key with few values.
//!
//! # Observability
//!
//! [`AdaptiveMetrics`]: `palisade_adaptive_limit`, `…_in_flight`,
//! `…_queued` (gauges) and `palisade_adaptive_refused_total`, labelled by
//! the layer's name. A change of a limit's whole value is a `debug`
//! tracing event (`from`, `to`, `key`).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade_adaptive::AdaptiveLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = AdaptiveLayer::builder().limits(1, 10, 200).build().unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
//!     });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(layer.limit(), 10);
//! # }
//! ```

mod config;
mod layer;
mod limiter;

pub use config::{AdaptiveConfig, AlgorithmKind, ConfigError};
pub use layer::{
    AdaptiveBody, AdaptiveConcurrency, AdaptiveLayer, AdaptiveLayerBuilder, NoKey, PathPrefixKey,
    ResponseFuture, ServiceAdaptiveConcurrency, ServiceAdaptiveLayer, ServiceResponseFuture,
};

use prometheus::{IntCounterVec, IntGaugeVec, Registry};
use serde::{Deserialize, Serialize};

/// How the limit moves.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Algorithm {
    /// Additive increase, multiplicative decrease (see the
    /// [crate docs](crate)).
    Aimd {
        /// The limit is multiplied by this on a refusal (0.5–1, default 0.9).
        backoff_ratio: f64,
    },
    /// Latency gradient (see the [crate docs](crate)).
    Gradient {
        /// Latency may grow to this many times the no-load latency before
        /// the limit shrinks (≥ 1, default 1.5).
        tolerance: f64,
        /// Weight of each new estimate (0–1, default 0.2).
        smoothing: f64,
    },
}

impl Algorithm {
    /// AIMD with its defaults.
    pub const fn aimd() -> Self {
        Self::Aimd { backoff_ratio: 0.9 }
    }

    /// The gradient algorithm with its defaults.
    pub const fn gradient() -> Self {
        Self::Gradient {
            tolerance: 1.5,
            smoothing: 0.2,
        }
    }
}

impl Default for Algorithm {
    fn default() -> Self {
        Self::aimd()
    }
}

/// Where a call's latency ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Measure {
    /// At the response head (time to first byte; the default).
    #[default]
    Head,
    /// At the end of the response body.
    Body,
}

/// Why an adaptive layer cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `min ≤ initial ≤ max` and `min ≥ 1` do not hold.
    #[error("limits must satisfy 1 ≤ min ≤ initial ≤ max (got {min}, {initial}, {max})")]
    Limits {
        /// The minimum.
        min: usize,
        /// The initial limit.
        initial: usize,
        /// The maximum.
        max: usize,
    },
    /// An algorithm parameter out of range.
    #[error("{field} is out of range: {reason}")]
    Parameter {
        /// The parameter.
        field: &'static str,
        /// Its range.
        reason: &'static str,
    },
}

/// Why a call through a [`ServiceAdaptiveConcurrency`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdaptiveError<E> {
    /// The call's key was at its limit (and its queue full); nothing was
    /// called.
    #[error("concurrency limit reached (limit {limit})")]
    Refused {
        /// The limit at the time.
        limit: usize,
    },
    /// The call waited in the queue past its deadline; nothing was called.
    #[error("no concurrency slot within the queue deadline")]
    QueueTimeout,
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<E: Into<palisade_core::BoxError>> From<AdaptiveError<E>> for palisade_core::Error {
    fn from(err: AdaptiveError<E>) -> Self {
        use palisade_core::{Error, ErrorKind};
        match err {
            AdaptiveError::Refused { limit } => layer::refusal(limit),
            AdaptiveError::QueueTimeout => Error::new(
                ErrorKind::Overloaded,
                "no concurrency slot within the queue deadline",
            )
            .with_retry_after(std::time::Duration::from_secs(1)),
            AdaptiveError::Inner(e) => {
                Error::new(ErrorKind::Upstream, "the service failed").with_source(e)
            }
        }
    }
}

/// The adaptive layer's metrics, registered once on a caller-given
/// registry and labelled by each layer's `name`:
/// `palisade_adaptive_limit`, `palisade_adaptive_in_flight`,
/// `palisade_adaptive_queued` (gauges; for a keyed layer, the limit of the
/// key that changed last and the sums of the others) and
/// `palisade_adaptive_refused_total`.
///
/// ```
/// use palisade_adaptive::{AdaptiveLayer, AdaptiveMetrics};
///
/// let registry = prometheus::Registry::new();
/// let metrics = AdaptiveMetrics::register(&registry).unwrap();
/// let layer = AdaptiveLayer::builder().metrics(&metrics, "llm").build().unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct AdaptiveMetrics {
    limit: IntGaugeVec,
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    refused: IntCounterVec,
}

impl AdaptiveMetrics {
    /// Registers the families on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use palisade_core::metrics::{register_counter_vec, register_int_gauge_vec};
        Ok(Self {
            limit: register_int_gauge_vec(
                registry,
                "palisade_adaptive_limit",
                "Current adaptive concurrency limit.",
                &["name"],
            )?,
            in_flight: register_int_gauge_vec(
                registry,
                "palisade_adaptive_in_flight",
                "Calls in flight under an adaptive limit.",
                &["name"],
            )?,
            queued: register_int_gauge_vec(
                registry,
                "palisade_adaptive_queued",
                "Calls waiting for an adaptive concurrency slot.",
                &["name"],
            )?,
            refused: register_counter_vec(
                registry,
                "palisade_adaptive_refused_total",
                "Calls refused by an adaptive concurrency limit (or whose queue wait ran out).",
                &["name"],
            )?,
        })
    }
}
