//! palisade: Tower middleware for production services — circuit breaker,
//! retry, rate limit, cache, PII masking and JSON response shaping — on a
//! store that is in-process by default and Redis (or Redis Cluster) when a
//! service runs as many replicas.
//!
//! This facade re-exports every layer crate behind a cargo feature and adds
//! what sits around the layers: the [`batch`] executor and the
//! [`dlq`] dead-letter queue.

pub mod admin;
pub mod batch;
pub mod config;
pub mod dlq;

#[doc(inline)]
pub use palisade_core as core;
#[doc(inline)]
pub use palisade_store as store;
