//! Keyed, tiered, header-complete rate limiting for Tower services,
//! in-process (lock-free) or exact across replicas on Redis.
//!
//! - [`RateLimitLayer`] / [`RateLimit`]: HTTP and gRPC services. Refusals are
//!   answered at once (429 + `Retry-After`, gRPC `RESOURCE_EXHAUSTED`) and
//!   every response carries `X-RateLimit-*` and the IETF `RateLimit` /
//!   `RateLimit-Policy` fields.
//! - [`RateLimiter`]: the decisions — several [`Limit`]s per request (per
//!   user **and** per tool **and** per IP; the strictest wins, nothing is
//!   counted when one refuses), weighted costs, [`Tiers`], shadow limits,
//!   [`Mode`]s, fail-open / fail-closed; and a programmatic
//!   [`check_key`](RateLimiter::check_key) for code that is not a request.
//! - [`RateLimitCallLayer`]: any other service (tool calls, LLM calls):
//!   refusals are a typed [`RateLimitError`] in the service's error type.
//! - [`LocalLimiter`]: the in-process engine on its own — one atomic word
//!   per key in a sharded map, bounded key space, idle eviction.
//! - On a [`palisade_store::Store`] (Redis / Redis Cluster): one round trip
//!   per decision (`rate_limit_many`; on a Redis Cluster, limits whose keys
//!   sit in different slots use the store's two-phase peek-then-count, which
//!   never over-admits), and a memo of keys already over their limit so a
//!   refused flood never reaches Redis. Store down: fail open (default,
//!   logged and counted) or closed, never hanging (per-operation timeout).
//!
//! Time is [`tokio::time::Instant`] by default, so tests run on a paused
//! clock; [`Clock::Tsc`] is the cheaper production choice.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::Empty;
//! use palisade_core::key::PeerAddr;
//! use palisade_ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter, Tier, UserId};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = RateLimiter::builder()
//!     .limit(Limit::per_ip())                                       // 60/min per client IP
//!     .limit(Limit::tiered("user", palisade_core::key::ExtensionKey::<UserId>::new()))
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter))
//!     .service_fn(|_req: Request<Empty<Bytes>>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
//!     });
//!
//! let request = || {
//!     let mut req = Request::new(Empty::new());
//!     req.extensions_mut().insert(PeerAddr("203.0.113.7:4000".parse().unwrap()));
//!     req.extensions_mut().insert(UserId::new("alice"));
//!     req.extensions_mut().insert(Tier::FREE); // set by your auth layer
//!     req
//! };
//! let res = svc.clone().oneshot(request()).await.unwrap();
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["ratelimit-policy"], "\"ip\";q=60;w=60");
//! assert_eq!(res.headers()["x-ratelimit-remaining"], "59");
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod call;
mod config;
mod error;
mod keyref;
mod layer;
mod limit;
mod limiter;
mod local;
mod metrics;
mod quota;

pub use call::{RateLimitCall, RateLimitCallLayer};
pub use config::{Config, KeyKind, LimitConfig, TierLimit, TiersConfig};
pub use error::{QUOTA_EXCEEDED, RateLimitError};
pub use layer::{HeaderStyle, RateLimit, RateLimitLayer, ResponseFuture};
pub use limit::{Limit, Tier, Tiers, ToolName, UserId};
pub use limiter::{
    FailPolicy, MAX_LIMITS, Mode, Outcome, RateLimiter, RateLimiterBuilder, Verdict,
};
pub use local::{Clock, DEFAULT_MAX_KEYS, LocalLimiter};
pub use metrics::RateLimitMetrics;
pub use quota::{Algorithm, Decision, Quota};
