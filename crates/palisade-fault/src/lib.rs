//! Fault injection for game days and tests: added latency, an error answer
//! (an HTTP status or a gRPC code) or an aborted call, each with a
//! percentage, selected by route, by key, or — from trusted callers only —
//! by the `x-palisade-fault` request header.
//!
//! The layer is **off unless configured**: with no rule and no trusted
//! header source it passes every call through untouched. An untrusted
//! request can never turn a fault on: `x-palisade-fault` (and its token
//! header) are honoured only from peers in [`FaultLayerBuilder::trust_peers`]
//! or with the shared secret of [`FaultLayerBuilder::trust_token`], and are
//! removed from every request before it goes on, trusted or not.
//!
//! Injected faults look like real ones to the layers around: an error
//! answer is a response with that status (gRPC: `grpc-status`) that a
//! circuit breaker counts and a retry retries, added latency is a slow
//! upstream that a timeout cuts, and an aborted call is a response whose
//! body fails at once (a server resets the stream or closes the
//! connection); for generic services ([`FaultLayer::for_services`]) the
//! error and the abort are a typed [`FaultError`].
//!
//! Each decision draws from one seeded generator
//! ([`FaultLayerBuilder::seed`]), so tests can count the percentages.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade_fault::{Fault, FaultLayer, Rule};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Every call under /flaky is answered 503.
//! let layer = FaultLayer::builder()
//!     .rule(Rule::path_prefix("/flaky").fault(Fault::new().error(503, 100.0)))
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from("ok"))))
//! });
//! let flaky = http::Request::builder().uri("/flaky/x").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(flaky).await.unwrap().status(), 503);
//! let fine = http::Request::builder().uri("/fine").body(()).unwrap();
//! assert_eq!(svc.oneshot(fine).await.unwrap().status(), 200);
//! # }
//! ```

mod config;
mod layer;
mod rng;

pub use config::{ConfigError, FaultConfig, HeaderKeyIfSet, RuleConfig};
pub use layer::{
    FaultInjection, FaultLayer, FaultLayerBuilder, NoKey, ResponseFuture, ServiceFaultInjection,
    ServiceFaultLayer, ServiceResponseFuture,
};

use http::StatusCode;
use palisade_core::GrpcCode;
use prometheus::{IntCounterVec, Registry};
use std::time::Duration;

/// The request header a trusted caller names a fault in, e.g.
/// `x-palisade-fault: delay=200ms, status=503, percent=50`.
pub const FAULT_HEADER: &str = "x-palisade-fault";
/// The request header carrying the shared secret of
/// [`FaultLayerBuilder::trust_token`].
pub const FAULT_TOKEN_HEADER: &str = "x-palisade-fault-token";

/// A percentage (0–100) as parts per million, so a draw is one comparison.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Chance(u32);

impl Chance {
    const WHOLE: u32 = 1_000_000;

    fn percent(p: f64) -> Result<Self, BuildError> {
        if !(0.0..=100.0).contains(&p) {
            return Err(BuildError::Percent(p));
        }
        Ok(Self((p * 10_000.0).round() as u32))
    }

    fn hit(self, draw: u64) -> bool {
        self.0 != 0 && (draw % u64::from(Self::WHOLE)) < u64::from(self.0)
    }
}

/// What an error fault answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultAnswer {
    /// The HTTP status (to HTTP requests).
    pub status: StatusCode,
    /// The gRPC code (to gRPC requests).
    pub grpc: GrpcCode,
}

impl FaultAnswer {
    /// The gRPC code closest to an HTTP status.
    fn for_status(status: StatusCode) -> Self {
        let grpc = match status.as_u16() {
            400 => GrpcCode::InvalidArgument,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::NotFound,
            429 => GrpcCode::ResourceExhausted,
            504 | 408 => GrpcCode::DeadlineExceeded,
            501 => GrpcCode::Unimplemented,
            502..=503 => GrpcCode::Unavailable,
            _ => GrpcCode::Internal,
        };
        Self { status, grpc }
    }
}

/// What to inject into a call: each part with its own percentage, drawn
/// independently. An added delay comes first; then an abort, else an error
/// answer, else the real call.
///
/// ```
/// use palisade_fault::Fault;
/// use std::time::Duration;
///
/// let fault = Fault::new()
///     .delay(Duration::from_millis(300), 25.0) // a quarter of calls 300 ms slower
///     .error(503, 5.0)                         // 5 % answered 503 (gRPC UNAVAILABLE)
///     .abort(1.0);                             // 1 % cut off
/// assert!(!fault.is_empty());
/// assert!(Fault::new().is_empty());
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    delay: Option<(Duration, f64)>,
    error: Option<(u16, Option<GrpcCode>, f64)>,
    abort: Option<f64>,
}

impl Fault {
    /// No fault.
    pub fn new() -> Self {
        Self::default()
    }

    /// Delays `percent` % of calls by `by`.
    pub fn delay(mut self, by: Duration, percent: f64) -> Self {
        self.delay = Some((by, percent));
        self
    }

    /// Answers `percent` % of calls with `status` (gRPC requests: the code
    /// closest to it, or the one [`Fault::grpc_code`] names) instead of
    /// calling the service.
    pub fn error(mut self, status: u16, percent: f64) -> Self {
        let grpc = self.error.and_then(|(_, g, _)| g);
        self.error = Some((status, grpc, percent));
        self
    }

    /// The gRPC code error answers carry (with [`Fault::error`]).
    pub fn grpc_code(mut self, code: GrpcCode) -> Self {
        let (status, _, percent) = self.error.unwrap_or((503, None, 0.0));
        self.error = Some((status, Some(code), percent));
        self
    }

    /// Cuts off `percent` % of calls: the response's body fails at once (a
    /// server resets the stream or closes the connection); for generic
    /// services, [`FaultError::Aborted`].
    pub fn abort(mut self, percent: f64) -> Self {
        self.abort = Some(percent);
        self
    }

    /// Whether this injects nothing.
    pub fn is_empty(&self) -> bool {
        self.delay.is_none() && self.error.is_none() && self.abort.is_none()
    }

    pub(crate) fn compile(&self) -> Result<Compiled, BuildError> {
        let mut out = Compiled::default();
        if let Some((by, p)) = self.delay {
            out.delay = Some((by, Chance::percent(p)?));
        }
        if let Some((status, grpc, p)) = self.error {
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.as_u16() >= 400)
                .ok_or(BuildError::Status(status))?;
            let mut answer = FaultAnswer::for_status(status);
            if let Some(code) = grpc {
                answer.grpc = code;
            }
            out.error = Some((answer, Chance::percent(p)?));
        }
        if let Some(p) = self.abort {
            out.abort = Chance::percent(p)?;
        }
        Ok(out)
    }
}

/// A [`Fault`] checked and ready to draw from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Compiled {
    pub(crate) delay: Option<(Duration, Chance)>,
    pub(crate) error: Option<(FaultAnswer, Chance)>,
    pub(crate) abort: Chance,
}

/// What one call gets: decided when it is made.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Decision {
    pub(crate) delay: Option<Duration>,
    pub(crate) outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) enum Outcome {
    #[default]
    Call,
    Answer(FaultAnswer),
    Abort,
}

impl Compiled {
    pub(crate) fn decide(&self, rng: &rng::Rng) -> Decision {
        let delay = self
            .delay
            .and_then(|(by, chance)| chance.hit(rng.next()).then_some(by));
        let outcome = if self.abort.hit(rng.next()) {
            Outcome::Abort
        } else if let Some((answer, chance)) = self.error
            && chance.hit(rng.next())
        {
            Outcome::Answer(answer)
        } else {
            Outcome::Call
        };
        Decision { delay, outcome }
    }
}

/// Which calls a [`Fault`] applies to: every condition set must hold (none
/// set: every call).
///
/// ```
/// use palisade_fault::{Fault, Rule};
///
/// let rule = Rule::path_prefix("/v1/chat").key("tenant-a").fault(Fault::new().abort(10.0));
/// # let _ = rule;
/// ```
#[derive(Clone, Debug, Default)]
pub struct Rule {
    pub(crate) path_prefix: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) fault: Fault,
}

impl Rule {
    /// A rule for every call.
    pub fn all() -> Self {
        Self::default()
    }

    /// A rule for HTTP requests whose path starts with `prefix` (never
    /// matches for generic services).
    pub fn path_prefix(prefix: impl Into<String>) -> Self {
        Self::all().and_path_prefix(prefix)
    }

    /// Adds a path-prefix condition.
    pub fn and_path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Only calls whose key (from [`FaultLayerBuilder::key`]) displays as
    /// `key`.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// What to inject.
    pub fn fault(mut self, fault: Fault) -> Self {
        self.fault = fault;
        self
    }
}

/// Why a fault layer cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A percentage outside 0–100.
    #[error("percentage {0} is not within 0–100")]
    Percent(f64),
    /// An error answer whose status is not a 4xx or 5xx.
    #[error("status {0} is not an error status (400–599)")]
    Status(u16),
    /// An `x-palisade-fault` header that does not parse.
    #[error("invalid x-palisade-fault header")]
    Header,
}

impl BuildError {
    /// The configuration field at fault (for errors naming the key).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Percent(_) => "percent",
            Self::Status(_) => "status",
            Self::Header => "header",
        }
    }
}

/// Why a call through a [`ServiceFaultInjection`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FaultError<E> {
    /// An injected error answer; the service was not called.
    #[error("injected fault: {}", .0.status)]
    Injected(FaultAnswer),
    /// An injected abort; the service was not called.
    #[error("injected fault: call aborted")]
    Aborted,
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<E> FaultError<E> {
    /// Whether the fault layer made this error (not the inner service).
    pub fn is_injected(&self) -> bool {
        !matches!(self, Self::Inner(_))
    }
}

/// The error of an aborted call's response body.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("injected fault: connection aborted")]
pub struct Aborted(pub(crate) ());

/// The fault layer's metrics: `palisade_fault_injected_total{name, kind}`
/// (`kind`: `delay`, `error`, `abort`), registered once on a caller-given
/// registry.
///
/// ```
/// use palisade_fault::{FaultLayer, FaultMetrics};
///
/// let metrics = FaultMetrics::register(&prometheus::Registry::new()).unwrap();
/// let layer = FaultLayer::builder().metrics(&metrics, "upstream").build().unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct FaultMetrics {
    injected: IntCounterVec,
}

impl FaultMetrics {
    /// Registers the family on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            injected: palisade_core::metrics::register_counter_vec(
                registry,
                "palisade_fault_injected_total",
                "Faults injected, by kind (delay, error, abort).",
                &["name", "kind"],
            )?,
        })
    }
}
