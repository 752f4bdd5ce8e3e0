//! palisade: Tower middleware for production services — circuit breaker,
//! retry, rate limit, cache, PII masking and JSON response shaping, plus an
//! adaptive concurrency limit, micro-batching and fault injection — on a
//! store that is in-process by default and Redis (or Redis Cluster) when a
//! service runs as many replicas.
//!
//! This facade re-exports every layer crate behind a cargo feature and adds
//! what sits around the layers: the [`batch`] executor and the
//! [`dlq`] dead-letter queue.

pub mod admin;
pub mod batch;
pub mod builder;
pub mod config;
pub mod dlq;
pub mod mcp;
pub mod routes;

pub use builder::{ServiceBuilderExt, StackBuilder};

#[cfg(feature = "adaptive")]
#[doc(inline)]
pub use palisade_adaptive as adaptive;
#[cfg(feature = "breaker")]
#[doc(inline)]
pub use palisade_breaker as breaker;
#[cfg(feature = "cache")]
#[doc(inline)]
pub use palisade_cache as cache;
#[doc(inline)]
pub use palisade_core as core;
#[cfg(feature = "fault")]
#[doc(inline)]
pub use palisade_fault as fault;
#[cfg(feature = "llm")]
#[doc(inline)]
pub use palisade_llm as llm;
#[cfg(feature = "microbatch")]
#[doc(inline)]
pub use palisade_microbatch as microbatch;
#[cfg(feature = "pii")]
#[doc(inline)]
pub use palisade_pii as pii;
#[cfg(feature = "ratelimit")]
#[doc(inline)]
pub use palisade_ratelimit as ratelimit;
#[cfg(feature = "retry")]
#[doc(inline)]
pub use palisade_retry as retry;
#[cfg(feature = "shape")]
#[doc(inline)]
pub use palisade_shape as shape;
#[doc(inline)]
pub use palisade_store as store;
