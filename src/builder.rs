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
//! 5. `retry` — outside the breaker, so every attempt passes the breaker
//!    and an open circuit's `Retry-After` is honoured, never hammered;
//! 6. `circuit_breaker` — counts each attempt against the upstream;
//! 7. the client or handler.
//!
//! # Example
//!
//! ```
//! use palisade::ServiceBuilderExt;
//! use palisade::{breaker::CircuitBreakerLayer, retry::RetryLayer};
//! use tower::ServiceBuilder;
//!
//! let stack = ServiceBuilder::new()
//!     .retry(RetryLayer::builder().build())
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
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Adds a [`RateLimitLayer`](palisade_ratelimit::RateLimitLayer).
    #[cfg(feature = "ratelimit")]
    fn rate_limit(
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
    fn retry(
        self,
        layer: palisade_retry::RetryLayer,
    ) -> ServiceBuilder<Stack<palisade_retry::RetryLayer, L>>;

    /// Adds a [`CircuitBreakerLayer`](palisade_breaker::CircuitBreakerLayer).
    #[cfg(feature = "breaker")]
    fn circuit_breaker<C, K, O>(
        self,
        layer: palisade_breaker::CircuitBreakerLayer<C, K, O>,
    ) -> ServiceBuilder<Stack<palisade_breaker::CircuitBreakerLayer<C, K, O>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "ratelimit")]
    fn rate_limit(
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
    fn retry(
        self,
        layer: palisade_retry::RetryLayer,
    ) -> ServiceBuilder<Stack<palisade_retry::RetryLayer, L>> {
        self.layer(layer)
    }

    #[cfg(feature = "breaker")]
    fn circuit_breaker<C, K, O>(
        self,
        layer: palisade_breaker::CircuitBreakerLayer<C, K, O>,
    ) -> ServiceBuilder<Stack<palisade_breaker::CircuitBreakerLayer<C, K, O>, L>> {
        self.layer(layer)
    }
}
