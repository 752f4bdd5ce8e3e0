//! The layer's error.

use palisade_core::{Error as CoreError, ErrorKind};

/// Why a body was refused instead of being masked.
///
/// ```
/// use palisade_pii::PiiError;
/// let core: palisade_core::Error = PiiError::too_large(2_000_000, 1 << 20).into();
/// assert_eq!(core.http_status(), http::StatusCode::PAYLOAD_TOO_LARGE);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PiiError {
    /// The body is over the buffering limit and the policy is to refuse.
    #[error("body of {size}+ bytes is over the {limit}-byte PII masking limit")]
    TooLarge {
        /// Bytes seen (at least).
        size: u64,
        /// The configured limit.
        limit: usize,
    },
    /// The body has a `Content-Encoding` palisade cannot decode (not gzip,
    /// deflate, br or zstd, or several stacked), so it cannot be scanned.
    #[error("body with content-encoding `{0}` cannot be scanned for PII")]
    Encoded(String),
    /// A compressed body that does not decode (corrupt, or truncated).
    #[error("compressed body cannot be decoded for PII masking")]
    Undecodable(#[source] palisade_core::BoxError),
    /// The request body failed while being read (the client's side).
    #[error("body failed while being read for PII masking")]
    Body(#[source] palisade_core::BoxError),
    /// The upstream's response body failed while being read (for example it
    /// broke off before its `Content-Length`): the upstream's fault, 502.
    #[error("upstream body failed while being read for PII masking")]
    UpstreamBody(#[source] palisade_core::BoxError),
}

impl PiiError {
    /// A [`PiiError::TooLarge`].
    #[must_use]
    pub fn too_large(size: u64, limit: usize) -> Self {
        Self::TooLarge { size, limit }
    }

    /// Whether this is a [`PiiError::TooLarge`].
    #[must_use]
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::TooLarge { .. })
    }
}

impl From<PiiError> for CoreError {
    fn from(e: PiiError) -> Self {
        let (kind, msg) = match &e {
            PiiError::TooLarge { .. } => (ErrorKind::PayloadTooLarge, "body too large to mask"),
            PiiError::Encoded(_) => (
                ErrorKind::UnsupportedMediaType,
                "body with an unsupported content-encoding cannot be masked",
            ),
            PiiError::Undecodable(_) => {
                (ErrorKind::Upstream, "compressed body could not be decoded")
            }
            PiiError::Body(_) => (ErrorKind::BadRequest, "body could not be read"),
            PiiError::UpstreamBody(_) => (ErrorKind::Upstream, "upstream body could not be read"),
        };
        CoreError::new(kind, msg)
            .with_problem_type("palisade:pii")
            .with_source(e)
    }
}
