//! Token estimators.

use std::fmt;

/// Estimates how many tokens a model reads for a JSON text.
///
/// The default is [`CharsPerToken`] (about 4 characters per token). Implement
/// this trait to plug in an exact tokenizer.
///
/// # Example
///
/// ```
/// use palisade_shape::TokenEstimator;
///
/// /// One token per byte: a pessimistic bound.
/// #[derive(Debug)]
/// struct PerByte;
///
/// impl TokenEstimator for PerByte {
///     fn estimate(&self, json: &[u8]) -> u64 {
///         json.len() as u64
///     }
/// }
///
/// assert_eq!(PerByte.estimate(br#"{"a":1}"#), 7);
/// ```
pub trait TokenEstimator: fmt::Debug + Send + Sync + 'static {
    /// Tokens for `json` (UTF-8 text).
    fn estimate(&self, json: &[u8]) -> u64;
}

/// Estimates tokens as characters divided by a ratio (default 4), rounded up.
///
/// Characters are Unicode scalar values, counted straight from UTF-8 bytes.
///
/// # Example
///
/// ```
/// use palisade_shape::{CharsPerToken, TokenEstimator};
///
/// let est = CharsPerToken::default();
/// assert_eq!(est.estimate(b"12345678"), 2);
/// assert_eq!(est.estimate(b"123456789"), 3);
/// assert_eq!(est.estimate("ééé".as_bytes()), 1); // 3 characters, 6 bytes
/// assert_eq!(CharsPerToken::new(2.0).estimate(b"1234"), 2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CharsPerToken {
    ratio: f64,
}

impl CharsPerToken {
    /// A ratio of `chars_per_token` characters per token. Values that are not
    /// finite and positive fall back to the default 4.
    pub fn new(chars_per_token: f64) -> Self {
        let ratio = if chars_per_token.is_finite() && chars_per_token > 0.0 {
            chars_per_token
        } else {
            4.0
        };
        Self { ratio }
    }

    /// The ratio in use.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }
}

impl Default for CharsPerToken {
    fn default() -> Self {
        Self { ratio: 4.0 }
    }
}

impl TokenEstimator for CharsPerToken {
    fn estimate(&self, json: &[u8]) -> u64 {
        // Every byte that is not a UTF-8 continuation byte starts a character.
        let chars = json.iter().filter(|&&b| (b as i8) >= -0x40).count();
        (chars as f64 / self.ratio).ceil() as u64
    }
}

/// An exact token count with an OpenAI BPE vocabulary (feature `tiktoken`).
///
/// The vocabularies ship inside the `tiktoken-rs` crate, so nothing is
/// fetched at run time. Building one takes a moment (a few hundred
/// milliseconds): build it once and share it. Counting is much slower than
/// shaping (BPE over the whole text), so prefer [`CharsPerToken`] on hot paths.
///
/// # Example
///
/// ```
/// use palisade_shape::{TiktokenEstimator, TokenEstimator};
///
/// let est = TiktokenEstimator::o200k_base().unwrap();
/// assert_eq!(est.estimate(br#"{"name":"Acme"}"#), 6);
/// ```
#[cfg(feature = "tiktoken")]
#[cfg_attr(docsrs, doc(cfg(feature = "tiktoken")))]
pub struct TiktokenEstimator {
    bpe: tiktoken_rs::CoreBPE,
    name: &'static str,
}

#[cfg(feature = "tiktoken")]
impl TiktokenEstimator {
    /// The `o200k_base` vocabulary (GPT-4o and later).
    pub fn o200k_base() -> Result<Self, crate::ShapeError> {
        Self::build(tiktoken_rs::o200k_base(), "o200k_base")
    }

    /// The `cl100k_base` vocabulary (GPT-4, GPT-3.5).
    pub fn cl100k_base() -> Result<Self, crate::ShapeError> {
        Self::build(tiktoken_rs::cl100k_base(), "cl100k_base")
    }

    fn build(
        bpe: Result<tiktoken_rs::CoreBPE, impl fmt::Display>,
        name: &'static str,
    ) -> Result<Self, crate::ShapeError> {
        bpe.map(|bpe| Self { bpe, name })
            .map_err(|e| crate::ShapeError::Estimator(format!("{name}: {e}")))
    }
}

#[cfg(feature = "tiktoken")]
impl fmt::Debug for TiktokenEstimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TiktokenEstimator")
            .field("vocabulary", &self.name)
            .finish()
    }
}

#[cfg(feature = "tiktoken")]
impl TokenEstimator for TiktokenEstimator {
    fn estimate(&self, json: &[u8]) -> u64 {
        let text = String::from_utf8_lossy(json);
        self.bpe.encode_ordinary(&text).len() as u64
    }
}
