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
