//! The cache's error type.

use palisade_core::{Error, ErrorKind};

/// What can go wrong in the cache's own API (building, invalidation).
///
/// Lookups never fail: when the store fails, the cache is bypassed.
///
/// ```
/// let err = palisade_cache::CacheError::Invalid("l1_max_entries must be > 0".into());
/// let core: palisade_core::Error = err.into();
/// assert_eq!(core.http_status(), 500);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The L2 store failed.
    #[error("cache store failed: {0}")]
    Store(#[from] palisade_store::StoreError),
    /// A configuration value or argument is invalid.
    #[error("invalid cache setting: {0}")]
    Invalid(String),
    /// The cache's key extractor refused the request
    /// ([`KeyExtractor::refusal`](palisade_core::key::KeyExtractor::refusal):
    /// a [`PeerIp`](palisade_core::key::PeerIp) with
    /// [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse) and
    /// no peer address); the inner service was not called and nothing was
    /// cached. Returned by [`CacheService`](crate::CacheService) when its
    /// error type can carry it (see there). The extractor's error (HTTP
    /// 500, gRPC `INTERNAL`), boxed to keep the `Result` small; converting
    /// into [`palisade_core::Error`] gives it back.
    ///
    /// ```
    /// use palisade_cache::CacheError;
    /// use palisade_core::{Error, ErrorKind};
    ///
    /// let err = CacheError::KeyRefused(Box::new(Error::new(ErrorKind::Internal, "no peer")));
    /// assert!(err.is_key_refused());
    /// assert_eq!(Error::from(err).http_status(), 500);
    /// ```
    #[error("cache key refused: {0}")]
    KeyRefused(Box<Error>),
}

impl CacheError {
    /// Whether the store was unreachable.
    pub fn is_store(&self) -> bool {
        matches!(self, Self::Store(_))
    }

    /// Whether the key extractor refused the request
    /// ([`CacheError::KeyRefused`]).
    ///
    /// ```
    /// let err = palisade_cache::CacheError::Invalid("l1_max_entries must be > 0".into());
    /// assert!(!err.is_key_refused());
    /// ```
    pub fn is_key_refused(&self) -> bool {
        matches!(self, Self::KeyRefused(_))
    }
}

impl From<CacheError> for Error {
    fn from(err: CacheError) -> Self {
        match err {
            CacheError::Store(e) => e.into(),
            CacheError::Invalid(msg) => Error::new(ErrorKind::Internal, msg),
            CacheError::KeyRefused(err) => *err,
        }
    }
}
