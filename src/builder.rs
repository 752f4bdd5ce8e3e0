//! `ServiceBuilder` methods for every palisade layer, so a stack reads in
//! the order it runs.
//!
//! # Recommended order
//!
//! Outermost first, as the methods are called:
//!
//! 1. `rate_limit` — refuse floods before they cost anything;
//! 2. `shape_response` — shapes per request (`fields=`), so it sits outside
//!    the cache, which keeps the whole response;
//! 3. `cache` — a hit skips everything below;
//! 4. `mask_pii` — below the cache, so cached (and shared, on Redis)
//!    responses are already masked;
//! 5. `bulkhead` or `adaptive_concurrency` — calls in flight to the
//!    upstream, counted once per call (however many attempts it makes), the
//!    rest refused at once (or queued); the adaptive limit sees the timeout's
//!    504s as congestion;
//! 6. `timeout` — the whole call's limit (per attempt: put it below
//!    `retry`, or use the retry layer's `attempt_timeout`);
//! 7. `retry` — outside the breaker, so every attempt passes the breaker
//!    and an open circuit's `Retry-After` is honoured, never hammered;
//! 8. `circuit_breaker` — counts each attempt against the upstream (a call
//!    the timeout cuts short counts as a failure);
//! 9. `fault` — innermost, so every layer above reacts to an injected
//!    fault as to the upstream's own;
//! 10. the client or handler.
//!
//! # Example
//!
//! ```
//! use palisade::StackBuilder;
//! use palisade::{breaker::CircuitBreakerLayer, retry::RetryLayer};
//!
//! let stack = StackBuilder::new()
//!     .retry(RetryLayer::new())
//!     .circuit_breaker(CircuitBreakerLayer::http("upstream"))
//!     .service_fn(|_req: http::Request<palisade::retry::ReplayBody<String>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//!     });
//! # let _ = stack;
//! ```
//!
//! A `StackBuilder` is a [`Layer`](tower::Layer) too, so a whole stack can
//! go on an axum route:
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade::{StackBuilder, breaker::CircuitBreakerLayer};
//!
//! let guarded = StackBuilder::new().circuit_breaker(CircuitBreakerLayer::http("reports"));
//! let app: Router = Router::new().route("/reports", get(|| async { "[]" }).layer(guarded));
//! # let _ = app;
//! ```
//!
//! The same with tower's `ServiceBuilder` and [`ServiceBuilderExt`]:
//!
//! ```
//! use palisade::ServiceBuilderExt;
//! use palisade::{breaker::CircuitBreakerLayer, retry::RetryLayer};
//! use tower::ServiceBuilder;
//!
//! let stack = ServiceBuilder::new()
//!     .retry_with(RetryLayer::new())
//!     .circuit_breaker(CircuitBreakerLayer::http("upstream"))
//!     .service_fn(|_req: http::Request<palisade::retry::ReplayBody<String>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//!     });
//! # let _ = stack;
//! ```

use tower::{ServiceBuilder, layer::util::Stack};

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// palisade's layers as `ServiceBuilder` methods (see the [module docs](self)).
///
/// tower's own `ServiceBuilder::rate_limit` and `ServiceBuilder::retry`
/// (present whenever tower's `limit` / `retry` features are on, as with
/// tonic) would shadow methods of the same name, so those two are
/// `rate_limit_with` and `retry_with` here; [`StackBuilder`] has the plain
/// names.
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`RateLimitLayer`](palisade_ratelimit::RateLimitLayer).
    #[cfg(feature = "ratelimit")]
    fn rate_limit_with(
        self,
        layer: palisade_ratelimit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<palisade_ratelimit::RateLimitLayer, L>>;

    /// Adds a [`ShapeResponseLayer`](palisade_shape::ShapeResponseLayer).
    #[cfg(feature = "shape")]
    fn shape_response(
        self,
        layer: palisade_shape::ShapeResponseLayer,
    ) -> ServiceBuilder<Stack<palisade_shape::ShapeResponseLayer, L>>;

    /// Adds a [`CacheLayer`](palisade_cache::CacheLayer).
    #[cfg(feature = "cache")]
    fn cache<K>(
        self,
        layer: palisade_cache::CacheLayer<K>,
    ) -> ServiceBuilder<Stack<palisade_cache::CacheLayer<K>, L>>;

    /// Adds a [`PiiMaskLayer`](palisade_pii::PiiMaskLayer).
    #[cfg(feature = "pii")]
    fn mask_pii(
        self,
        layer: palisade_pii::PiiMaskLayer,
    ) -> ServiceBuilder<Stack<palisade_pii::PiiMaskLayer, L>>;

    /// Adds a [`RetryLayer`](palisade_retry::RetryLayer).
    #[cfg(feature = "retry")]
    fn retry_with(
        self,
        layer: palisade_retry::RetryLayer,
    ) -> ServiceBuilder<Stack<palisade_retry::RetryLayer, L>>;

    /// Adds a [`TimeoutLayer`](palisade_retry::timeout::TimeoutLayer)
    /// (`timeout_with`: tower's `ServiceBuilder::timeout` has the plain name).
    #[cfg(feature = "retry")]
    fn timeout_with(
        self,
        layer: palisade_retry::timeout::TimeoutLayer,
    ) -> ServiceBuilder<Stack<palisade_retry::timeout::TimeoutLayer, L>>;

    /// Adds a [`BulkheadLayer`](palisade_retry::bulkhead::BulkheadLayer).
    #[cfg(feature = "retry")]
    fn bulkhead<K, R>(
        self,
        layer: palisade_retry::bulkhead::BulkheadLayer<K, R>,
    ) -> ServiceBuilder<Stack<palisade_retry::bulkhead::BulkheadLayer<K, R>, L>>
    where
        K: palisade_core::key::KeyExtractor<R>;

    /// Adds a [`CircuitBreakerLayer`](palisade_breaker::CircuitBreakerLayer).
    #[cfg(feature = "breaker")]
    fn circuit_breaker<C, K, O>(
        self,
        layer: palisade_breaker::CircuitBreakerLayer<C, K, O>,
    ) -> ServiceBuilder<Stack<palisade_breaker::CircuitBreakerLayer<C, K, O>, L>>;

    /// Adds an [`AdaptiveLayer`](palisade_adaptive::AdaptiveLayer).
    #[cfg(feature = "adaptive")]
    fn adaptive_concurrency<K>(
        self,
        layer: palisade_adaptive::AdaptiveLayer<K>,
    ) -> ServiceBuilder<Stack<palisade_adaptive::AdaptiveLayer<K>, L>>;

    /// Adds a [`FaultLayer`](palisade_fault::FaultLayer).
    #[cfg(feature = "fault")]
    fn fault<K>(
        self,
        layer: palisade_fault::FaultLayer<K>,
    ) -> ServiceBuilder<Stack<palisade_fault::FaultLayer<K>, L>>;

    /// Adds a [`MicroBatchLayer`](palisade_microbatch::MicroBatchLayer).
    #[cfg(feature = "microbatch")]
    fn micro_batch<B, Req>(
        self,
        layer: palisade_microbatch::MicroBatchLayer<B, Req>,
    ) -> ServiceBuilder<Stack<palisade_microbatch::MicroBatchLayer<B, Req>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "ratelimit")]
    fn rate_limit_with(
        self,
        layer: palisade_ratelimit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<palisade_ratelimit::RateLimitLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "shape")]
    fn shape_response(
        self,
        layer: palisade_shape::ShapeResponseLayer,
    ) -> ServiceBuilder<Stack<palisade_shape::ShapeResponseLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "cache")]
    fn cache<K>(
        self,
        layer: palisade_cache::CacheLayer<K>,
    ) -> ServiceBuilder<Stack<palisade_cache::CacheLayer<K>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "pii")]
    fn mask_pii(
        self,
        layer: palisade_pii::PiiMaskLayer,
    ) -> ServiceBuilder<Stack<palisade_pii::PiiMaskLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn retry_with(
        self,
        layer: palisade_retry::RetryLayer,
    ) -> ServiceBuilder<Stack<palisade_retry::RetryLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn timeout_with(
        self,
        layer: palisade_retry::timeout::TimeoutLayer,
    ) -> ServiceBuilder<Stack<palisade_retry::timeout::TimeoutLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "retry")]
    fn bulkhead<K, R>(
        self,
        layer: palisade_retry::bulkhead::BulkheadLayer<K, R>,
    ) -> ServiceBuilder<Stack<palisade_retry::bulkhead::BulkheadLayer<K, R>, L>>
    where
        K: palisade_core::key::KeyExtractor<R>,
    {
        self.layer(layer)
    }

    #[cfg(feature = "breaker")]
    fn circuit_breaker<C, K, O>(
        self,
        layer: palisade_breaker::CircuitBreakerLayer<C, K, O>,
    ) -> ServiceBuilder<Stack<palisade_breaker::CircuitBreakerLayer<C, K, O>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "adaptive")]
    fn adaptive_concurrency<K>(
        self,
        layer: palisade_adaptive::AdaptiveLayer<K>,
    ) -> ServiceBuilder<Stack<palisade_adaptive::AdaptiveLayer<K>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "fault")]
    fn fault<K>(
        self,
        layer: palisade_fault::FaultLayer<K>,
    ) -> ServiceBuilder<Stack<palisade_fault::FaultLayer<K>, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "microbatch")]
    fn micro_batch<B, Req>(
        self,
        layer: palisade_microbatch::MicroBatchLayer<B, Req>,
    ) -> ServiceBuilder<Stack<palisade_microbatch::MicroBatchLayer<B, Req>, L>> {
        self.layer(layer)
    }
}

/// A `ServiceBuilder` whose methods are palisade's layers, by their plain
/// names (see the [module docs](self) for the recommended order). Any other
/// layer goes through [`layer`](Self::layer).
#[derive(Clone, Debug)]
pub struct StackBuilder<L = tower::layer::util::Identity> {
    inner: ServiceBuilder<L>,
}

impl StackBuilder {
    /// An empty stack.
    pub fn new() -> Self {
        Self {
            inner: ServiceBuilder::new(),
        }
    }
}

impl Default for StackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl<L> StackBuilder<L> {
    /// Adds any layer.
    pub fn layer<T>(self, layer: T) -> StackBuilder<Stack<T, L>> {
        StackBuilder {
            inner: self.inner.layer(layer),
        }
    }

    /// Adds a [`RateLimitLayer`](palisade_ratelimit::RateLimitLayer).
    #[cfg(feature = "ratelimit")]
    pub fn rate_limit(
        self,
        layer: palisade_ratelimit::RateLimitLayer,
    ) -> StackBuilder<Stack<palisade_ratelimit::RateLimitLayer, L>> {
        self.layer(layer)
    }

    /// Adds a [`ShapeResponseLayer`](palisade_shape::ShapeResponseLayer).
    #[cfg(feature = "shape")]
    pub fn shape_response(
        self,
        layer: palisade_shape::ShapeResponseLayer,
    ) -> StackBuilder<Stack<palisade_shape::ShapeResponseLayer, L>> {
        self.layer(layer)
    }

    /// Adds a [`CacheLayer`](palisade_cache::CacheLayer).
    #[cfg(feature = "cache")]
    pub fn cache<K>(
        self,
        layer: palisade_cache::CacheLayer<K>,
    ) -> StackBuilder<Stack<palisade_cache::CacheLayer<K>, L>> {
        self.layer(layer)
    }

    /// Adds a [`PiiMaskLayer`](palisade_pii::PiiMaskLayer).
    #[cfg(feature = "pii")]
    pub fn mask_pii(
        self,
        layer: palisade_pii::PiiMaskLayer,
    ) -> StackBuilder<Stack<palisade_pii::PiiMaskLayer, L>> {
        self.layer(layer)
    }

    /// Adds a [`RetryLayer`](palisade_retry::RetryLayer).
    #[cfg(feature = "retry")]
    pub fn retry(
        self,
        layer: palisade_retry::RetryLayer,
    ) -> StackBuilder<Stack<palisade_retry::RetryLayer, L>> {
        self.layer(layer)
    }

    /// Adds a [`TimeoutLayer`](palisade_retry::timeout::TimeoutLayer): 504
    /// (gRPC `DEADLINE_EXCEEDED`) when the response head takes longer.
    /// Outside the retry layer it bounds the whole call, waits included;
    /// inside it, each attempt (as [`RetryLayerBuilder::attempt_timeout`](palisade_retry::RetryLayerBuilder::attempt_timeout) does).
    #[cfg(feature = "retry")]
    pub fn timeout(
        self,
        layer: palisade_retry::timeout::TimeoutLayer,
    ) -> StackBuilder<Stack<palisade_retry::timeout::TimeoutLayer, L>> {
        self.layer(layer)
    }

    /// Adds a [`BulkheadLayer`](palisade_retry::bulkhead::BulkheadLayer): at
    /// most so many calls in flight (per key), the rest answered 503 at once.
    #[cfg(feature = "retry")]
    pub fn bulkhead<K, R>(
        self,
        layer: palisade_retry::bulkhead::BulkheadLayer<K, R>,
    ) -> StackBuilder<Stack<palisade_retry::bulkhead::BulkheadLayer<K, R>, L>>
    where
        K: palisade_core::key::KeyExtractor<R>,
    {
        self.layer(layer)
    }

    /// Adds a [`CircuitBreakerLayer`](palisade_breaker::CircuitBreakerLayer).
    #[cfg(feature = "breaker")]
    pub fn circuit_breaker<C, K, O>(
        self,
        layer: palisade_breaker::CircuitBreakerLayer<C, K, O>,
    ) -> StackBuilder<Stack<palisade_breaker::CircuitBreakerLayer<C, K, O>, L>> {
        self.layer(layer)
    }

    /// Adds an [`AdaptiveLayer`](palisade_adaptive::AdaptiveLayer): a
    /// concurrency limit learnt from the upstream's refusals and latency,
    /// the rest answered 503 at once (or queued).
    ///
    /// ```
    /// use palisade::{StackBuilder, adaptive::AdaptiveLayer};
    ///
    /// let stack = StackBuilder::new()
    ///     .adaptive_concurrency(AdaptiveLayer::builder().limits(1, 10, 100).build().unwrap())
    ///     .service_fn(|_req: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
    ///     });
    /// # let _ = stack;
    /// ```
    #[cfg(feature = "adaptive")]
    pub fn adaptive_concurrency<K>(
        self,
        layer: palisade_adaptive::AdaptiveLayer<K>,
    ) -> StackBuilder<Stack<palisade_adaptive::AdaptiveLayer<K>, L>> {
        self.layer(layer)
    }

    /// Adds a [`FaultLayer`](palisade_fault::FaultLayer), innermost so the
    /// layers above react to its faults as to real ones.
    ///
    /// ```
    /// use palisade::{StackBuilder, fault::{Fault, FaultLayer, Rule}};
    ///
    /// let chaos = FaultLayer::builder()
    ///     .rule(Rule::path_prefix("/v1/chat").fault(Fault::new().error(503, 5.0)))
    ///     .build()
    ///     .unwrap();
    /// let stack = StackBuilder::new().fault(chaos).service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// });
    /// # let _ = stack;
    /// ```
    #[cfg(feature = "fault")]
    pub fn fault<K>(
        self,
        layer: palisade_fault::FaultLayer<K>,
    ) -> StackBuilder<Stack<palisade_fault::FaultLayer<K>, L>> {
        self.layer(layer)
    }

    /// Adds a [`MicroBatchLayer`](palisade_microbatch::MicroBatchLayer):
    /// single calls gathered into one call of the service below.
    ///
    /// ```
    /// use palisade::{StackBuilder, microbatch::{MicroBatchLayer, batch_fn}};
    /// use tower::ServiceExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let lengths = batch_fn(
    ///     |texts: Vec<String>| texts,
    ///     |lens: Vec<usize>, _n| lens.into_iter().map(Ok::<_, std::convert::Infallible>).collect(),
    /// );
    /// let svc = StackBuilder::new()
    ///     .micro_batch(MicroBatchLayer::new(lengths).max_batch_size(2))
    ///     .service_fn(|texts: Vec<String>| async move {
    ///         Ok::<_, std::io::Error>(texts.iter().map(String::len).collect::<Vec<_>>())
    ///     });
    /// let (a, b) = tokio::join!(svc.clone().oneshot("ab".into()), svc.clone().oneshot("xyz".into()));
    /// assert_eq!((a.unwrap(), b.unwrap()), (2, 3));
    /// # }
    /// ```
    #[cfg(feature = "microbatch")]
    pub fn micro_batch<B, Req>(
        self,
        layer: palisade_microbatch::MicroBatchLayer<B, Req>,
    ) -> StackBuilder<Stack<palisade_microbatch::MicroBatchLayer<B, Req>, L>> {
        self.layer(layer)
    }

    /// Wraps `service` in the stack.
    pub fn service<S>(&self, service: S) -> L::Service
    where
        L: tower::Layer<S>,
    {
        self.inner.service(service)
    }

    /// Wraps a closure in the stack.
    pub fn service_fn<F>(self, f: F) -> L::Service
    where
        L: tower::Layer<tower::util::ServiceFn<F>>,
    {
        self.inner.service_fn(f)
    }

    /// The tower `ServiceBuilder` underneath.
    pub fn into_inner(self) -> ServiceBuilder<L> {
        self.inner
    }
}

/// A `StackBuilder` is itself a layer, so the whole stack goes where one
/// layer goes: `Router::layer`, `MethodRouter::layer`, tonic's
/// `Server::builder().layer(..)`.
impl<S, L> tower::Layer<S> for StackBuilder<L>
where
    L: tower::Layer<S>,
{
    type Service = L::Service;

    fn layer(&self, inner: S) -> Self::Service {
        self.inner.service(inner)
    }
}
