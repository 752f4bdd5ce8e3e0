//! Safe retries for real HTTP and gRPC requests, and for any Tower service:
//! exponential backoff with jitter, `Retry-After`, a retry budget,
//! per-attempt timeouts, an overall deadline and opt-in hedging.
//!
//! # What is retried
//!
//! [`RetryLayer`] wraps a `Service<http::Request<ReplayBody<B>>>` (a
//! hyper-util client, a tonic channel, an axum router…) and retries only what
//! is safe:
//!
//! - responses with a retryable status (429, 502, 503, 504 by default; other
//!   4xx never), and gRPC responses whose `grpc-status` header is retryable
//!   (`UNAVAILABLE` by default). That is the status of a trailers-only
//!   answer, the form in which gRPC servers (grpc-go, grpcio, tonic) send an
//!   error before any message. A status that comes in the trailers, after a
//!   response head the client already has, is not retried: as in gRPC's own
//!   retry design (gRFC A6), a call is committed once its response head has
//!   arrived. The circuit breaker and the gateway's metrics do count such a
//!   status, judged when the body ends;
//! - connect errors, timeouts and dropped connections (found by walking the
//!   error's source chain, see [`classify_error`]);
//! - by default only idempotent requests (`GET`, `HEAD`, `OPTIONS`, `PUT`,
//!   `DELETE`, `TRACE`, or any request with an `Idempotency-Key` header).
//!   Others are retried only on connect errors, when the request never
//!   left; [`RetryLayerBuilder::retry_non_idempotent`] opts in to more. A
//!   [`palisade_core::Idempotency`] request extension (set by a gateway
//!   from an MCP tool's annotations) decides instead of the method:
//!   `Idempotent` is retried like a `GET`, `NotIdempotent` only on connect
//!   errors, whatever `retry_non_idempotent` and `Idempotency-Key` say.
//!
//! The request body is buffered up to [`Config::max_replay_body`] (64 KiB)
//! so it can be sent again byte for byte. A larger body is streamed through
//! once, whole, and not retried (`palisade_retry_not_replayable_total`).
//! Buffering means the first attempt starts once the body has been read (or
//! has passed the limit); streaming calls that wait for the response before
//! finishing their body should set the limit to 0.
//!
//! When the upstream says when to come back (`Retry-After` as seconds or an
//! HTTP date, `X-RateLimit-Reset` on 429, gRPC's `grpc-retry-pushback-ms`),
//! that delay replaces the backoff; if it is longer than the delay cap the
//! response is returned at once instead of waited for. When retries stop,
//! the last response is returned; when the last attempt failed with an
//! error or timed out, [`RetryError::Exhausted`] holds it with the attempt
//! count.
//!
//! # Retry storms
//!
//! A [`RetryBudget`] (on by default: 20 % of requests plus 10 retries a
//! second over 10 s) caps retries, and hedges, so that an outage does not
//! triple the load on the upstream.
//!
//! # Time limits and hedging
//!
//! [`RetryLayerBuilder::attempt_timeout`] bounds each attempt and
//! [`RetryLayerBuilder::deadline`] the whole call (waits included; the
//! deadline starts when the call is made, but reading the request body into
//! the replay buffer is not cut short by it). With
//! [`RetryLayerBuilder::hedge`], an idempotent request that has not been
//! answered after the hedge delay is sent a second time and the first good
//! answer wins; a hedge counts as an attempt and is paid from the budget.
//!
//! # Also here
//!
//! [`timeout::TimeoutLayer`] (504 / `DEADLINE_EXCEEDED`, honouring
//! `grpc-timeout`) and [`bulkhead::BulkheadLayer`] (a per-key concurrency
//! limit answering 503 at once) for servers, where tower's own layers would
//! return errors or queue.
//!
//! # Order with a circuit breaker
//!
//! Put the retry layer **outside** the breaker:
//! `ServiceBuilder::new().layer(retry).layer(breaker).service(client)`. Each
//! attempt then passes the breaker; while the circuit is open the breaker
//! answers `503` with a `Retry-After` of the time left, which the retry
//! honours — waiting if it is within the delay cap, returning the `503` at
//! once if not — so an open circuit is never hammered. (Inside the breaker,
//! one failing call would count once however many attempts it made.)
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use palisade_retry::{ReplayBody, RetryLayer};
//! use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().backoff(Duration::from_millis(100), 2.0, Duration::from_secs(1)).build().unwrap())
//!     .service_fn(move |req: http::Request<ReplayBody<Full<Bytes>>>| {
//!         let n = seen.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             let body = req.into_body().collect().await.unwrap().to_bytes();
//!             let status = if n == 0 { 503 } else { 200 };
//!             Ok::<_, std::io::Error>(http::Response::builder().status(status).body(body).unwrap())
//!         }
//!     });
//! let req = http::Request::put("http://tools/run").body(Full::new(Bytes::from("payload"))).unwrap();
//! let res = client.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.into_body(), "payload", "the body was replayed");
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backoff;
mod body;
mod budget;
pub mod bulkhead;
mod classify;
mod config;
mod engine;
mod error;
mod generic;
mod http_service;
mod metrics;
pub mod timeout;

pub use backoff::{Backoff, Jitter};
pub use body::ReplayBody;
pub use budget::RetryBudget;
pub use classify::{RetryReason, Verdict, classify_error, retry_after};
pub use config::{BudgetConfig, Config, ConfigError, DelayContext, HedgeConfig, RetryLayerBuilder};
pub use error::{LastFailure, RetriesExhausted, RetryError, StopReason};
pub use generic::{
    FromClassify, RetryClassify, RetryFn, RetryOnBoxErrors, RetryOnErrors, ServiceResponseFuture,
    ServiceRetry, ServiceRetryLayer, retry_fn,
};
pub use http_service::{ResponseFuture, Retry};
pub use metrics::RetryMetrics;

use config::Policy;
use std::sync::Arc;
use tower_layer::Layer;

/// Adds retries to an HTTP / gRPC service; see the [crate docs](crate).
///
/// Build it with [`RetryLayer::builder`] or [`RetryLayer::from_config`];
/// [`RetryLayer::new`] uses the defaults. Turn it into a layer for any
/// service with `Clone` requests with [`RetryLayer::for_services`].
///
/// ```
/// use palisade_retry::{Config, RetryLayer};
///
/// let gateway = RetryLayer::new();
/// let in_cluster = RetryLayer::from_config(&Config::in_cluster()).unwrap();
/// assert!(gateway.budget().is_some());
/// # let _ = in_cluster;
/// ```
#[derive(Clone, Debug)]
pub struct RetryLayer {
    policy: Arc<Policy>,
}

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// A layer with the default settings ([`Config::default`]).
    pub fn new() -> Self {
        RetryLayerBuilder::default()
            .build()
            .expect("the default retry settings are valid")
    }

    /// A builder starting from the defaults.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder::default()
    }

    /// A layer from a (validated) configuration.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        RetryLayerBuilder::from_config(config.clone()).build()
    }

    pub(crate) fn from_policy(policy: Arc<Policy>) -> Self {
        Self { policy }
    }

    #[cfg(test)]
    pub(crate) fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The retry budget, if any (shared by every service of this layer).
    pub fn budget(&self) -> Option<&Arc<RetryBudget>> {
        self.policy.budget.as_ref()
    }

    /// The same settings for any service whose request is `Clone`, judged
    /// by `classifier`.
    pub fn for_services<C>(&self, classifier: C) -> ServiceRetryLayer<C> {
        ServiceRetryLayer::new(self.policy.clone(), classifier)
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, self.policy.clone())
    }
}
