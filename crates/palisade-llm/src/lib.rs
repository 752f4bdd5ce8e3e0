//! Token budgets for LLM traffic: reserve before the call, true up from the
//! response, exact across replicas.
//!
//! What an LLM upstream costs is tokens, not requests, and the cost is only
//! known when the response ends. [`TokenBudgetLayer`] reserves an estimate
//! (prompt characters / ratio plus the requested output cap, see
//! [`usage::Estimator`]) **before** the request goes upstream — a request
//! that does not fit is answered 429 with `Retry-After` and the IETF
//! `RateLimit` / `RateLimit-Policy` fields, never cut mid-stream — and
//! settles the true usage read from the response (OpenAI Chat Completions,
//! OpenAI Responses, Anthropic Messages; whole or streamed, see [`usage`]).
//!
//! The ledger lives on the shared [`Store`](palisade_store::Store): on
//! Redis and Redis Cluster reserve and settle are each one atomic script,
//! and reservations are leases that expire, so a crashed replica's tokens
//! come back. How far a budget can be overshot is stated exactly in
//! [`palisade_store::tokens`]: by the true-up differences of the requests
//! in flight when it filled, however many replicas share it.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use palisade_core::key::HeaderKey;
//! use palisade_llm::{TokenBudgetLayer, TokenMetrics};
//! use palisade_store::{Store, TokenRule};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = prometheus::Registry::new();
//! let budget = TokenBudgetLayer::builder(Store::in_memory(), HeaderKey::new("x-user"), TokenRule::per_minute(1_000))
//!     .name("per-user")
//!     .metrics(&TokenMetrics::register(&registry).unwrap())
//!     .build()
//!     .unwrap();
//! let llm = ServiceBuilder::new().layer(budget).service_fn(|_req: http::Request<_>| async {
//!     let reply = r#"{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30}}"#;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(reply))))
//! });
//! let req = http::Request::post("/v1/chat/completions")
//!     .header("x-user", "alice")
//!     .body(Full::new(Bytes::from(r#"{"model":"m","max_tokens":900,"messages":[]}"#)))
//!     .unwrap();
//! let res = llm.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["ratelimit-policy"], r#""per-user";q=1000;qu="tokens";w=60"#);
//! res.into_body().collect().await.unwrap();
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod budget;
mod config;
mod future;
mod metrics;
mod pacing;
pub mod quota;
pub mod usage;

pub use budget::{
    FailPolicy, Mode, OnMissingUsage, ResponseFuture, TokenBody, TokenBudget, TokenBudgetBuilder,
    TokenBudgetError, TokenBudgetLayer,
};
pub use config::{LimitKey, PacingConfig, TokenKeyKind, TokenKind, TokenLimitConfig};
pub use future::BoxedResponse;
pub use metrics::TokenMetrics;
pub use pacing::{
    PacingError, PacingMetrics, ProviderPacing, ProviderPacingBuilder, ProviderPacingLayer,
    ResponseFuture as PacingResponseFuture,
};
