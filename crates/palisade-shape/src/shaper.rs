//! Rules, the programmatic [`Shaper`] and its figures.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{self, Compiled};
use crate::estimate::{CharsPerToken, TokenEstimator};
use crate::selector::{FieldSelector, SelectorError};

/// What to do to a JSON response: which fields to keep or drop, how far to
/// cut arrays and strings, whether to compact.
///
/// **Precedence:** `include` is applied first (when non-empty, only the
/// listed fields are kept), then `exclude` removes fields from what is left,
/// so a field matched by both is dropped. Array cuts and compaction then apply
/// to what remains.
///
/// Paths are dot paths: `address.city`, `dealers.name` (into every element of
/// the `dealers` array), `*.id` (the `id` of any field). An include path that
/// reaches a scalar where it expected an object drops that scalar.
///
/// Compaction (on by default) removes `null`s, empty objects and empty arrays,
/// recursively — also inside arrays, so `[1, null, 3]` becomes `[1, 3]`. The
/// top-level value is never removed.
///
/// # Example
///
/// ```
/// use palisade_shape::ShapeRules;
///
/// let rules = ShapeRules::new()
///     .include(["dealers"])
///     .exclude(["dealers.internal_id"])
///     .max_array_size(1);
/// assert!(rules.compact);
///
/// let toml_like: ShapeRules =
///     serde_json::from_str(r#"{"include": ["dealers"], "max_array_size": 1}"#).unwrap();
/// assert_eq!(toml_like.max_array_size, Some(1));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ShapeRules {
    /// Whether to shape at all (default true).
    pub enabled: bool,
    /// Fields to keep (dot paths); empty keeps all.
    pub include: Vec<String>,
    /// Fields to drop (dot paths), applied after `include`.
    pub exclude: Vec<String>,
    /// Cut arrays to this many elements (default: no cut).
    pub max_array_size: Option<usize>,
    /// After a cut array, add a string element `"... N more"` (default false).
    pub array_marker: bool,
    /// Cut strings to this many characters, ending them with `…` (default: no cut).
    pub max_string_length: Option<usize>,
    /// Drop nulls, empty objects and empty arrays, recursively (default true).
    pub compact: bool,
}

impl Default for ShapeRules {
    fn default() -> Self {
        Self {
            enabled: true,
            include: Vec::new(),
            exclude: Vec::new(),
            max_array_size: None,
            array_marker: false,
            max_string_length: None,
            compact: true,
        }
    }
}

impl ShapeRules {
    /// The defaults: keep all fields, no cuts, compaction on.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rules that change nothing but whitespace (compaction off).
    pub fn identity() -> Self {
        Self {
            compact: false,
            ..Self::default()
        }
    }

    /// Sets the fields to keep.
    pub fn include<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.include = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the fields to drop.
    pub fn exclude<I: IntoIterator<Item = S>, S: Into<String>>(mut self, paths: I) -> Self {
        self.exclude = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Cuts arrays to `n` elements.
    pub fn max_array_size(mut self, n: usize) -> Self {
        self.max_array_size = Some(n);
        self
    }

    /// Adds a `"... N more"` element after a cut array.
    pub fn array_marker(mut self, on: bool) -> Self {
        self.array_marker = on;
        self
    }

    /// Cuts strings to `n` characters.
    pub fn max_string_length(mut self, n: usize) -> Self {
        self.max_string_length = Some(n);
        self
    }

    /// Turns compaction on or off.
    pub fn compact(mut self, on: bool) -> Self {
        self.compact = on;
        self
    }

    /// Turns shaping on or off.
    pub fn enabled(mut self, on: bool) -> Self {
        self.enabled = on;
        self
    }

    pub(crate) fn compile(&self) -> Result<Compiled, SelectorError> {
        let include = if self.include.is_empty() {
            None
        } else {
            Some(FieldSelector::from_paths(&self.include)?.root)
        };
        let exclude = if self.exclude.is_empty() {
            None
        } else {
            Some(FieldSelector::from_paths(&self.exclude)?.root)
        };
        Ok(Compiled {
            include,
            exclude,
            max_array: self.max_array_size.unwrap_or(usize::MAX),
            marker: self.array_marker,
            max_str: self.max_string_length.unwrap_or(usize::MAX),
            compact: self.compact,
        })
    }
}

/// Errors of this crate.
///
/// # Example
///
/// ```
/// use palisade_shape::{ShapeRules, Shaper};
///
/// let shaper = Shaper::new(&ShapeRules::new()).unwrap();
/// let err = shaper.shape_bytes(b"{not json").unwrap_err();
/// assert!(err.is_invalid_json());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// A malformed field selector or path.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The body is not valid JSON (or nests deeper than 127 levels).
    #[error("invalid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// A route pattern is invalid.
    #[error("invalid route {pattern:?}: {reason}")]
    InvalidRoute {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid shaping configuration: {key}: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with its value.
        reason: &'static str,
    },
    /// A token estimator could not be built.
    #[error("failed to build the token estimator: {0}")]
    Estimator(String),
    /// Registering the metrics failed.
    #[error("failed to register shaping metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl ShapeError {
    /// Whether this is a malformed selector (a client error).
    pub fn is_selector(&self) -> bool {
        matches!(self, Self::Selector(_))
    }

    /// Whether the input was not valid JSON.
    pub fn is_invalid_json(&self) -> bool {
        matches!(self, Self::InvalidJson(_))
    }
}

/// Sizes and token estimates before and after shaping.
///
/// # Example
///
/// ```
/// use palisade_shape::ShapeStats;
///
/// let stats = ShapeStats { original_bytes: 400, shaped_bytes: 100, original_tokens: 100, shaped_tokens: 25 };
/// assert_eq!(stats.tokens_saved(), 75);
/// assert_eq!(stats.saved_percent(), 75.0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShapeStats {
    /// Bytes in.
    pub original_bytes: u64,
    /// Bytes out.
    pub shaped_bytes: u64,
    /// Estimated tokens in.
    pub original_tokens: u64,
    /// Estimated tokens out.
    pub shaped_tokens: u64,
}

impl ShapeStats {
    /// Bytes saved (negative if shaping grew the body, e.g. with markers).
    pub fn bytes_saved(&self) -> i64 {
        self.original_bytes as i64 - self.shaped_bytes as i64
    }

    /// Tokens saved (negative if shaping grew the body).
    pub fn tokens_saved(&self) -> i64 {
        self.original_tokens as i64 - self.shaped_tokens as i64
    }

    /// Tokens saved as a percentage of the original (0 for an empty original).
    pub fn saved_percent(&self) -> f64 {
        if self.original_tokens == 0 {
            0.0
        } else {
            self.tokens_saved() as f64 * 100.0 / self.original_tokens as f64
        }
    }
}

/// A shaped document with its figures.
///
/// # Example
///
/// ```
/// use palisade_shape::{ShapeRules, Shaper};
///
/// let shaped = Shaper::new(&ShapeRules::new()).unwrap().shape_bytes(br#"{"a": null}"#).unwrap();
/// assert_eq!(shaped.output, b"{}");
/// assert_eq!(shaped.stats.original_bytes, 11);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Shaped<T> {
    /// The shaped document.
    pub output: T,
    /// Sizes and token estimates.
    pub stats: ShapeStats,
}

/// Shapes JSON documents by a set of [`ShapeRules`]; cheap to clone.
///
/// Shaping is streaming: unselected values are skipped while parsing and kept
/// values are written straight to the output, without building a tree.
///
/// # Example
///
/// ```
/// use palisade_shape::{FieldSelector, ShapeRules, Shaper};
/// use serde_json::json;
///
/// let shaper = Shaper::new(&ShapeRules::new().include(["dealers.name"]).max_array_size(2)).unwrap();
/// let doc = json!({"total": 3, "dealers": [{"name": "A", "id": 1}, {"name": "B"}, {"name": "C"}]});
/// let shaped = shaper.shape(&doc).unwrap();
/// assert_eq!(shaped.output, json!({"dealers": [{"name": "A"}, {"name": "B"}]}));
/// assert!(shaped.stats.tokens_saved() > 0);
///
/// // A per-request selection replaces the include list.
/// let fields = FieldSelector::parse("total").unwrap();
/// let shaped = shaper.shape_bytes_with(Some(&fields), doc.to_string().as_bytes()).unwrap();
/// assert_eq!(shaped.output, br#"{"total":3}"#);
/// ```
#[derive(Debug, Clone)]
pub struct Shaper {
    rules: Arc<Compiled>,
    estimator: Arc<dyn TokenEstimator>,
}

impl Shaper {
    /// Compiles `rules`, with the default estimator (4 characters per token).
    pub fn new(rules: &ShapeRules) -> Result<Self, ShapeError> {
        Ok(Self {
            rules: Arc::new(rules.compile()?),
            estimator: Arc::new(CharsPerToken::default()),
        })
    }

    /// Replaces the token estimator.
    pub fn with_estimator<E: TokenEstimator>(mut self, estimator: E) -> Self {
        self.estimator = Arc::new(estimator);
        self
    }

    pub(crate) fn from_parts(rules: Arc<Compiled>, estimator: Arc<dyn TokenEstimator>) -> Self {
        Self { rules, estimator }
    }

    /// Shapes a JSON text.
    pub fn shape_bytes(&self, json: &[u8]) -> Result<Shaped<Vec<u8>>, ShapeError> {
        self.shape_bytes_with(None, json)
    }

    /// Shapes a JSON text, with `fields` (when given) replacing the include list.
    ///
    /// The output is compact JSON. Invalid JSON, or JSON nested deeper than
    /// 127 levels, is an error (the input is left alone).
    pub fn shape_bytes_with(
        &self,
        fields: Option<&FieldSelector>,
        json: &[u8],
    ) -> Result<Shaped<Vec<u8>>, ShapeError> {
        let mut out = Vec::with_capacity(json.len().min(64 * 1024));
        let mut de = serde_json::Deserializer::from_slice(json);
        engine::shape_into(&self.rules, fields.map(|f| &f.root), &mut de, &mut out)
            .and_then(|()| de.end())
            .map_err(ShapeError::InvalidJson)?;
        let stats = self.stats(json, &out);
        Ok(Shaped { output: out, stats })
    }

    /// Shapes a JSON value.
    ///
    /// The figures are those of the compact serialisation of `value`.
    pub fn shape(&self, value: &Value) -> Result<Shaped<Value>, ShapeError> {
        self.shape_with(None, value)
    }

    /// Shapes a JSON value, with `fields` (when given) replacing the include list.
    pub fn shape_with(
        &self,
        fields: Option<&FieldSelector>,
        value: &Value,
    ) -> Result<Shaped<Value>, ShapeError> {
        let original = serde_json::to_vec(value).map_err(ShapeError::InvalidJson)?;
        let mut out = Vec::with_capacity(original.len());
        engine::shape_into(&self.rules, fields.map(|f| &f.root), value, &mut out)
            .map_err(ShapeError::InvalidJson)?;
        let stats = self.stats(&original, &out);
        // The output nests no deeper than the parser's limit, so this parses.
        let shaped = serde_json::from_slice(&out).map_err(ShapeError::InvalidJson)?;
        Ok(Shaped {
            output: shaped,
            stats,
        })
    }

    fn stats(&self, original: &[u8], shaped: &[u8]) -> ShapeStats {
        ShapeStats {
            original_bytes: original.len() as u64,
            shaped_bytes: shaped.len() as u64,
            original_tokens: self.estimator.estimate(original),
            shaped_tokens: self.estimator.estimate(shaped),
        }
    }

    /// Estimates the tokens of `json` with this shaper's estimator.
    pub fn estimate_tokens(&self, json: &[u8]) -> u64 {
        self.estimator.estimate(json)
    }
}
