//! What every palisade layer shares, written once.
//!
//! - [`classify`]: is a call's outcome a success, a failure or neither? Built on
//!   tower-http's classifiers; the breaker, retry and metrics all consume it.
//! - [`error_class`]: what a failed call's error says (the request never left,
//!   timed out, failed on the way, or a layer refused it), by type.
//! - [`jsonrpc`]: the JSON-RPC call (MCP method, tool) in a request body,
//!   learned without consuming it.
//! - [`key`]: which bucket a request belongs to (peer IP behind trusted proxies,
//!   a header, an extension set by an auth layer, the path, a constant, tuples).
//! - [`Error`]: the error every layer's own error converts into; it knows its
//!   HTTP status and headers, its gRPC code and whether a retry may help.
//! - [`PalisadeBody`]: the one body type a layer returns when it answers itself
//!   (429, 503, a cache hit) or rewrites a body (masked, shaped).
//! - [`metrics`] and [`config`]: helpers for Prometheus and serde.
//!
//! # Example
//!
//! ```
//! use palisade_core::{Error, ErrorKind};
//! use std::time::Duration;
//!
//! let err = Error::new(ErrorKind::RateLimited, "too many requests")
//!     .with_retry_after(Duration::from_secs(7));
//! assert_eq!(err.http_status(), http::StatusCode::TOO_MANY_REQUESTS);
//! assert!(err.is_retryable());
//!
//! let res = err.into_http_response::<http_body_util::Empty<bytes::Bytes>>(false);
//! assert_eq!(res.headers()["retry-after"], "7");
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod classify;
pub mod config;
mod error;
pub mod error_class;
pub mod jsonrpc;
pub mod key;
pub mod metrics;

pub use body::PalisadeBody;
pub use error::{Error, ErrorKind, is_grpc_request};
pub use tower_http::classify::GrpcCode;

/// A boxed error, as tower and hyper use it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
