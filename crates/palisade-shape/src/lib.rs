//! Response shaping for JSON: field selection, compaction and token savings,
//! so a model reading LLM tool output reads fewer tokens.
//!
//! - [`Shaper`]: the programmatic API — `shape(&Value)` / `shape_bytes(&[u8])`
//!   return the shaped document with [`ShapeStats`] (bytes and estimated tokens
//!   before and after).
//! - [`ShapeRules`]: include / exclude lists (dot paths, `*` wildcards, arrays
//!   transparent), array and string cuts, compaction (on by default).
//! - [`FieldSelector`]: the `fields=` partial-response syntax (`a,b/c,d(e,f)`).
//!
//! # Example
//!
//! ```
//! use palisade_shape::{ShapeRules, Shaper};
//!
//! let shaper = Shaper::new(&ShapeRules::new().include(["dealers"]).max_array_size(1)).unwrap();
//! let shaped = shaper
//!     .shape_bytes(br#"{"dealers": [{"name": "A", "fax": null}, {"name": "B"}], "page": 1}"#)
//!     .unwrap();
//! assert_eq!(shaped.output, br#"{"dealers":[{"name":"A"}]}"#);
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
mod config;
mod engine;
mod estimate;
mod layer;
mod selector;
mod service;
mod shaper;

pub use body::ShapeBody;
pub use config::{RouteConfig, ShapeConfig};
#[cfg(feature = "tiktoken")]
pub use estimate::TiktokenEstimator;
pub use estimate::{CharsPerToken, TokenEstimator};
pub use layer::{ShapeResponseLayer, ShapeResponseLayerBuilder};
pub use selector::{FieldSelector, SelectorError, SelectorErrorKind, SelectorLimits};
pub use service::{
    ResponseFuture, ShapeResponse, ShapedResponse, X_TOKENS_ORIGINAL, X_TOKENS_SAVED,
    X_TOKENS_SAVED_PERCENT, X_TOKENS_SHAPED,
};
pub use shaper::{ShapeError, ShapeRules, ShapeStats, Shaped, Shaper};
