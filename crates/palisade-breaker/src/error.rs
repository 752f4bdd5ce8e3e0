//! The breaker's errors: [`CircuitOpen`] and [`BreakerError`].

use crate::Breaker;
use palisade_core::{BoxError, ErrorKind};
use std::{fmt, time::Duration};

/// A call was rejected because its circuit is open (or half-open with no
/// trial permit left, or forced open).
///
/// Converts into [`palisade_core::Error`] (HTTP 503 with `Retry-After`, gRPC
/// `UNAVAILABLE`); the client-facing message never names the key.
///
/// ```
/// use palisade_breaker::{Breaker, Config};
///
/// let breaker = Breaker::new("payments", Config::default()).unwrap();
/// breaker.force_open();
/// let open = breaker.try_acquire().unwrap_err();
/// assert_eq!(open.breaker(), "payments");
/// let err = palisade_core::Error::from(open);
/// assert_eq!(err.http_status(), 503);
/// ```
#[derive(Clone)]
pub struct CircuitOpen {
    /// The breaker that rejected the call: one pointer, so a `Result`
    /// carrying this error stays two words and is returned in registers.
    pub(crate) breaker: Breaker,
}

impl fmt::Debug for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitOpen")
            .field("breaker", &self.breaker())
            .field("key", &self.key())
            .field("retry_after", &self.retry_after())
            .field("forced", &self.is_forced())
            .finish()
    }
}

impl CircuitOpen {
    /// The name of the breaker that rejected the call.
    pub fn breaker(&self) -> &str {
        self.breaker.name()
    }

    /// The key of the per-key breaker that rejected the call, if any.
    pub fn key(&self) -> Option<&str> {
        self.breaker.key()
    }

    /// When to try again: while open, the time until trial calls (at least
    /// 1 s); half-open with every trial permit taken, 1 s; forced open, the
    /// recovery timeout. Read from the breaker when asked — normally right
    /// after the rejection — so every rejection's answer carries
    /// `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.breaker.retry_after()
    }

    /// Whether the breaker is forced open by an operator (read when asked).
    pub fn is_forced(&self) -> bool {
        self.breaker.is_forced_open()
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker {:?}", self.breaker())?;
        if let Some(key) = self.key() {
            write!(f, " (key {:?})", key)?;
        }
        if self.is_forced() {
            f.write_str(" is forced open")
        } else {
            f.write_str(" is open")
        }
    }
}

impl std::error::Error for CircuitOpen {}

impl From<CircuitOpen> for palisade_core::Error {
    fn from(open: CircuitOpen) -> Self {
        let mut err = palisade_core::Error::new(ErrorKind::CircuitOpen, "circuit breaker is open")
            .with_problem_type("https://palisade.invalid/problems/circuit-open");
        if let Some(after) = open.retry_after() {
            err = err.with_retry_after(after);
        }
        err.with_source(open)
    }
}

/// The error of a breaker wrapping a generic service: the circuit was open,
/// or the inner service failed.
///
/// ```
/// use palisade_breaker::{BreakerError, CircuitBreakerLayer};
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CircuitBreakerLayer::new("tool");
/// layer.breaker().unwrap().force_open();
/// let mut svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) });
/// let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
/// assert!(err.is_open());
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BreakerError<E> {
    /// The circuit was open; the inner service was not called.
    #[error(transparent)]
    Open(CircuitOpen),
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
    /// The per-key breaker's key extractor refused the request
    /// ([`KeyExtractor::refusal`](palisade_core::key::KeyExtractor::refusal):
    /// a [`PeerIp`](palisade_core::key::PeerIp) with
    /// [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse) and
    /// no peer address); the inner service was not called. The extractor's
    /// error (HTTP 500, gRPC `INTERNAL`), boxed to keep the `Result` small;
    /// converting into [`palisade_core::Error`] gives it back.
    ///
    /// ```
    /// use palisade_breaker::{BreakerError, CircuitBreakerLayer};
    /// use palisade_core::key::{MissingPeer, PeerIp};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::builder("per-client")
    ///     .per_key(PeerIp::new().when_missing(MissingPeer::Refuse))
    ///     .build()
    ///     .unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service_fn(|_req: http::Request<()>| async { Ok::<_, std::io::Error>("called") });
    /// let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    /// assert!(matches!(err, BreakerError::Refused(_)));
    /// assert!(err.is_refused());
    /// assert_eq!(palisade_core::Error::from(err).http_status(), 500);
    /// # }
    /// ```
    #[error(transparent)]
    Refused(Box<palisade_core::Error>),
}

impl<E> BreakerError<E> {
    /// Whether the call was rejected by an open circuit.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open(_))
    }

    /// The rejection, if the circuit was open.
    pub fn as_open(&self) -> Option<&CircuitOpen> {
        match self {
            Self::Open(o) => Some(o),
            Self::Inner(_) | Self::Refused(_) => None,
        }
    }

    /// Whether the key extractor refused the request
    /// ([`BreakerError::Refused`]).
    ///
    /// ```
    /// use palisade_breaker::BreakerError;
    /// use palisade_core::{Error, ErrorKind};
    ///
    /// let err = BreakerError::<std::io::Error>::Refused(Box::new(Error::new(
    ///     ErrorKind::Internal,
    ///     "no peer address",
    /// )));
    /// assert!(err.is_refused() && !err.is_open());
    /// ```
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// The inner service's error, if it failed.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(e) => Some(e),
            Self::Open(_) | Self::Refused(_) => None,
        }
    }
}

impl<E: Into<BoxError>> From<BreakerError<E>> for palisade_core::Error {
    fn from(err: BreakerError<E>) -> Self {
        match err {
            BreakerError::Open(open) => open.into(),
            BreakerError::Refused(err) => *err,
            BreakerError::Inner(e) => {
                let e: BoxError = e.into();
                match e.downcast::<palisade_core::Error>() {
                    Ok(core) => *core,
                    Err(e) => palisade_core::Error::new(ErrorKind::Upstream, "upstream failed")
                        .with_source(e),
                }
            }
        }
    }
}
