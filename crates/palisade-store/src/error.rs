//! The store's error type.

use std::time::Duration;

pub use palisade_core::BoxError;

/// What can go wrong talking to the store.
///
/// The split that matters to callers: [`is_unavailable`](StoreError::is_unavailable)
/// (the store could not be reached or did not answer in time — a fail-open /
/// fail-closed decision) versus [`is_bad_data`](StoreError::is_bad_data) (the
/// store answered, but what it holds is not what the operation expects).
///
/// ```
/// use palisade_store::StoreError;
/// use std::time::Duration;
///
/// let err = StoreError::Timeout(Duration::from_millis(250));
/// assert!(err.is_unavailable());
/// assert!(!err.is_bad_data());
/// assert_eq!(err.to_string(), "store operation timed out after 250ms");
/// ```
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached: connection refused or dropped, cluster
    /// down, node failing over, server loading.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What happened, for logs.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The operation did not finish within the per-operation timeout.
    #[error("store operation timed out after {0:?}")]
    Timeout(Duration),
    /// The store answered, but the data is not what the operation expects
    /// (a counter that is not an integer, a stream read as a string, a reply
    /// of the wrong shape).
    #[error("bad data in store: {0}")]
    BadData(String),
    /// The store configuration (URL, prefix, limits) is invalid.
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    /// The request itself is invalid (a rate-limit rule with a zero limit, a
    /// cost above the limit, keys that must share a cluster slot but do not).
    #[error("invalid store request: {0}")]
    InvalidInput(String),
}

impl StoreError {
    /// `true` for [`Unavailable`](StoreError::Unavailable) and
    /// [`Timeout`](StoreError::Timeout): the store could not answer, a retry
    /// later may help.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Timeout(_)
        )
    }

    /// `true` for [`BadData`](StoreError::BadData).
    pub fn is_bad_data(&self) -> bool {
        matches!(self, StoreError::BadData(_))
    }

    /// `true` for [`Timeout`](StoreError::Timeout).
    pub fn is_timeout(&self) -> bool {
        matches!(self, StoreError::Timeout(_))
    }

    pub(crate) fn unavailable(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StoreError::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> Self {
        use redis::{ErrorKind as K, ServerErrorKind as S};
        match err.kind() {
            K::Io
            | K::ClusterConnectionNotFound
            | K::Server(
                S::BusyLoading
                | S::TryAgain
                | S::ClusterDown
                | S::MasterDown
                | S::ReadOnly
                | S::Moved
                | S::Ask,
            ) => StoreError::unavailable(err.to_string(), err),
            K::AuthenticationFailed | K::InvalidClientConfig | K::Server(S::NoPerm) => {
                StoreError::InvalidConfig(err.to_string())
            }
            K::Server(S::CrossSlot) => StoreError::InvalidInput(err.to_string()),
            _ if err.is_timeout() || err.is_connection_dropped() || err.is_connection_refusal() => {
                StoreError::unavailable(err.to_string(), err)
            }
            _ => StoreError::BadData(err.to_string()),
        }
    }
}

/// Unavailable and timed-out stores become [`ErrorKind::Unavailable`]
/// (503, gRPC `UNAVAILABLE`, retryable); everything else (bad data, bad
/// configuration, an invalid request built by a layer) becomes
/// [`ErrorKind::Internal`]. The client-facing message names no key or
/// address; the store error stays reachable through `source()`.
///
/// [`ErrorKind::Unavailable`]: palisade_core::ErrorKind::Unavailable
/// [`ErrorKind::Internal`]: palisade_core::ErrorKind::Internal
///
/// ```
/// use palisade_core::ErrorKind;
/// use palisade_store::StoreError;
/// use std::time::Duration;
///
/// let err: palisade_core::Error = StoreError::Timeout(Duration::from_millis(250)).into();
/// assert_eq!(err.kind(), ErrorKind::Unavailable);
/// let err: palisade_core::Error = StoreError::BadData("not a number".into()).into();
/// assert_eq!(err.kind(), ErrorKind::Internal);
/// ```
impl From<StoreError> for palisade_core::Error {
    fn from(err: StoreError) -> Self {
        use palisade_core::{Error, ErrorKind};
        let (kind, message) = match &err {
            StoreError::Unavailable { .. } => (ErrorKind::Unavailable, "store unavailable"),
            StoreError::Timeout(_) => (ErrorKind::Unavailable, "store did not answer in time"),
            _ => (ErrorKind::Internal, "internal store error"),
        };
        Error::new(kind, message).with_source(err)
    }
}
