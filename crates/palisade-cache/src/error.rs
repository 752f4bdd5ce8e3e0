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
}

impl CacheError {
    /// Whether the store was unreachable.
    pub fn is_store(&self) -> bool {
        matches!(self, Self::Store(_))
    }
}

impl From<CacheError> for Error {
    fn from(err: CacheError) -> Self {
        match err {
            CacheError::Store(e) => e.into(),
            CacheError::Invalid(msg) => Error::new(ErrorKind::Internal, msg),
        }
    }
}
