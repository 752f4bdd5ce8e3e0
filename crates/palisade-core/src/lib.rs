//! What every palisade layer shares, written once.
//!
//! - [`classify`]: is a call's outcome a success, a failure or neither? Built on
//!   tower-http's classifiers; the breaker, retry and metrics all consume it.
//! - [`error_class`]: what a failed call's error says (the request never left,
//!   timed out, failed on the way, or a layer refused it), by type.
//! - [`jsonrpc`]: the JSON-RPC call (MCP method, tool) in a request body,
//!   learned without consuming it.
//! - [`mcp`]: MCP tools' annotations (read-only, idempotent, destructive),
//!   the facts a gateway attaches to a tool call, canonical arguments.
//! - [`Idempotency`]: a request extension telling the retry layer whether a
//!   request may be sent again, whatever its method.
//! - [`key`]: which bucket a request belongs to (peer IP behind trusted proxies,
//!   a header, an extension set by an auth layer, the path, a constant, tuples).
//! - [`Error`]: the error every layer's own error converts into; it knows its
//!   HTTP status and headers, its gRPC code and whether a retry may help.
//! - [`PalisadeBody`]: the one body type a layer returns when it answers itself
//!   (429, 503, a cache hit) or rewrites a body (masked, shaped).
//! - [`metrics`] and [`config`]: helpers for Prometheus and serde.
//! - [`inner_accessors!`]: the `get_ref` / `get_mut` / `into_inner` methods
//!   of every layer's service type.
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
pub mod mcp;
pub mod metrics;
pub mod tier;

pub use body::PalisadeBody;
pub use error::{Error, ErrorKind, is_grpc_request};
pub use tower_http::classify::GrpcCode;

/// Whether a request may be sent again, whatever its method says: a request
/// extension set by whoever knows (a gateway from an MCP tool's
/// annotations, see [`mcp::ToolFacts::idempotency`]) and honoured by the
/// retry layer. `NotIdempotent` is retried only when the request surely
/// never left (a refused connection), even where non-idempotent requests
/// are retried by configuration.
///
/// ```
/// use palisade_core::Idempotency;
///
/// let mut req = http::Request::post("/mcp").body(()).unwrap();
/// req.extensions_mut().insert(Idempotency::Idempotent);
/// assert_eq!(req.extensions().get::<Idempotency>(), Some(&Idempotency::Idempotent));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Idempotency {
    /// Sending it twice has the effect of sending it once.
    Idempotent,
    /// It must not be sent twice.
    NotIdempotent,
}

/// A boxed error, as tower and hyper use it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Writes the inner-service accessors of a middleware service type:
/// `get_ref`, `get_mut` and `into_inner`, over the field that holds the
/// wrapped service.
///
/// Use it inside the type's inherent `impl` block as
/// `inner_accessors!(field: Type)`; name the methods after a `;` to write
/// only some of them (`inner_accessors!(field: Type; get_ref, into_inner)`).
///
/// ```
/// /// A middleware wrapping a service.
/// pub struct Wrap<S> {
///     inner: S,
///     label: &'static str,
/// }
///
/// impl<S> Wrap<S> {
///     palisade_core::inner_accessors!(inner: S);
///
///     /// The label.
///     pub fn label(&self) -> &str {
///         self.label
///     }
/// }
///
/// let mut w = Wrap { inner: 1u8, label: "w" };
/// *w.get_mut() += 1;
/// assert_eq!((*w.get_ref(), w.label()), (2, "w"));
/// assert_eq!(w.into_inner(), 2);
///
/// /// A middleware whose inner service is never handed out mutably.
/// pub struct ReadOnly<S> {
///     inner: S,
/// }
///
/// impl<S> ReadOnly<S> {
///     palisade_core::inner_accessors!(inner: S; get_ref, into_inner);
/// }
///
/// let r = ReadOnly { inner: "svc" };
/// assert_eq!(*r.get_ref(), "svc");
/// assert_eq!(r.into_inner(), "svc");
/// ```
#[macro_export]
macro_rules! inner_accessors {
    ($field:ident : $inner:ty) => {
        $crate::inner_accessors!($field: $inner; get_ref, get_mut, into_inner);
    };
    ($field:ident : $inner:ty; $($method:ident),+ $(,)?) => {
        $($crate::inner_accessors!(@$method $field $inner);)+
    };
    (@get_ref $field:ident $inner:ty) => {
        /// The inner service.
        pub fn get_ref(&self) -> &$inner {
            &self.$field
        }
    };
    (@get_mut $field:ident $inner:ty) => {
        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut $inner {
            &mut self.$field
        }
    };
    (@into_inner $field:ident $inner:ty) => {
        /// Unwraps the inner service.
        pub fn into_inner(self) -> $inner {
            self.$field
        }
    };
}
