//! What happens to a matched value.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// A function that produces the replacement of a matched value.
pub type CustomFn = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// How a matched value is replaced.
///
/// In configuration files the operator is a string: `"partial"`, `"redact"`
/// or `"hash"`. [`Operator::Custom`] can only be set from code.
///
/// ```
/// use palisade_pii::{Operator, PatternKind, PiiMasker};
/// use std::sync::Arc;
///
/// let masker = PiiMasker::builder()
///     .operator(PatternKind::Email, Operator::Redact)
///     .operator(PatternKind::Phone, Operator::Custom(Arc::new(|v: &str| format!("<phone:{}>", v.len()))))
///     .build()
///     .unwrap();
/// assert_eq!(masker.mask_str("mail user@example.com"), "mail ***REDACTED***");
/// assert_eq!(masker.mask_str("call 9876543210"), "call <phone:10>");
/// ```
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Operator {
    /// The partial mask users expect (`98******10`, `us***@example.com`,
    /// `4111********1111`…). The default.
    #[default]
    Partial,
    /// The whole value becomes the redaction text (`***REDACTED***` unless
    /// configured otherwise).
    Redact,
    /// A keyed hash: `[<pattern>:<16 hex digits of HMAC-SHA256>]`. Equal
    /// values give equal hashes, so they stay correlatable without being
    /// readable. Needs a hash key.
    Hash,
    /// A function of the matched text.
    #[serde(skip)]
    Custom(CustomFn),
}

impl fmt::Debug for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operator::Partial => f.write_str("Partial"),
            Operator::Redact => f.write_str("Redact"),
            Operator::Hash => f.write_str("Hash"),
            Operator::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}
