//! Response shaping for JSON: field selection, compaction and token savings,
//! so a model reading LLM tool output reads fewer tokens.
//!
//! - [`ShapeResponseLayer`]: Tower middleware shaping `application/json` and
//!   `+json` responses by route ([`RouteConfig`]) and per request (a `fields=`
//!   query parameter in the partial-response syntax: `a,b` several fields,
//!   `a/b` nested, `a(b,c)` sub-selection, `*` any field). A malformed
//!   selector is a 400 naming the error and its offset. Shaped responses carry
//!   `x-tokens-original`, `x-tokens-shaped`, `x-tokens-saved` and
//!   `x-tokens-saved-percent`; everything else passes through untouched.
//! - [`Shaper`]: the programmatic API — `shape(&Value)` / `shape_bytes(&[u8])`
//!   return the shaped document with [`ShapeStats`] (bytes and estimated tokens
//!   before and after).
//! - [`ShapeRules`]: include / exclude lists (dot paths such as
//!   `address.city`, `*` wildcards, arrays transparent; exclude wins over
//!   include), array and string cuts, compaction (on by default).
//! - [`TokenEstimator`]: about 4 characters per token by default
//!   ([`CharsPerToken`]); an exact BPE count with the `tiktoken` feature.
//! - [`budget::ToolBudgetLayer`]: MCP tool results cut to their tool's
//!   token budget, structure kept, with a marker in `_meta`.
//! - [`ShapeConfig`]: serde configuration, loaded with
//!   [`ShapeResponseLayer::from_config`].
//!
//! Shaping streams: a `serde` visitor driven by the compiled selection skips
//! unselected values while parsing and writes kept values straight to the
//! output, without building a tree (see BENCHMARKS.md for figures).
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use palisade_shape::{RouteConfig, ShapeResponseLayer, ShapeRules};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = ShapeResponseLayer::builder()
//!     .route(RouteConfig::new("/dealers", ShapeRules::new().include(["dealers"]).max_array_size(1)))
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
//!     let body = r#"{"dealers": [{"name": "A", "fax": null}, {"name": "B"}], "page": 1}"#;
//!     Ok::<_, std::convert::Infallible>(
//!         http::Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from(body)))
//!             .unwrap(),
//!     )
//! });
//!
//! // Route rules.
//! let req = http::Request::get("/dealers").body(()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-tokens-saved-percent"], "58.8");
//! assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), r#"{"dealers":[{"name":"A"}]}"#);
//!
//! // A per-request selection replaces the include list.
//! let req = http::Request::get("/dealers?fields=page").body(()).unwrap();
//! let res = svc.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), r#"{"page":1}"#);
//!
//! // A malformed one is a 400.
//! let req = http::Request::get("/dealers?fields=dealers(name").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 400);
//!
//! // The same rules, programmatically.
//! let shaper = palisade_shape::Shaper::new(&ShapeRules::new().include(["dealers.name"])).unwrap();
//! let shaped = shaper.shape(&serde_json::json!({"dealers": [{"name": "A", "id": 1}]})).unwrap();
//! assert_eq!(shaped.output, serde_json::json!({"dealers": [{"name": "A"}]}));
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod budget;
mod config;
mod engine;
mod estimate;
mod layer;
mod selector;
mod service;
mod shaper;

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
