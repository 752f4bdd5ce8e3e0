//! The whole palisade stack in front of the proxy, built from one
//! configuration, plus the handles the admin listener needs.

use crate::proxy::Proxy;
use axum::body::Body;
use http::{Request, Response};
use palisade::StackBuilder;
use palisade::breaker::{BreakerRegistry, CircuitBreakerLayer};
use palisade::cache::{CacheBuilder, CacheHandle, CacheLayer, CacheMetrics};
use palisade::config::PalisadeConfig;
use palisade::core::{BoxError, Error, ErrorKind, PalisadeBody};
use palisade::dlq::{DeadLetter, DeadLetterQueue};
use palisade::pii::{PiiMaskLayer, PiiMetrics};
use palisade::ratelimit::{RateLimitLayer, RateLimitMetrics, RateLimiter};
use palisade::retry::timeout::TimeoutLayer;
use palisade::retry::{RetryError, RetryLayerBuilder, RetryMetrics};
use palisade::shape::ShapeResponseLayerBuilder;
use palisade::store::{Backend, Store};
use prometheus::Registry;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tower::{Service, ServiceBuilder, util::BoxCloneSyncService};

/// The stack as the router sees it.
pub type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The stack and the handles the admin listener serves.
pub struct Built {
    pub stack: Stack,
    pub breakers: BreakerRegistry,
    pub cache: CacheHandle,
    pub limiter: RateLimiter,
    pub dlq: DeadLetterQueue,
}

fn to_axum<B>(res: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(Body::new)
}

/// The proxy alone, for a baseline without layers.
pub fn bare(proxy: Proxy) -> Stack {
    BoxCloneSyncService::new(ServiceBuilder::new().map_response(to_axum).service(proxy))
}

/// Builds every layer from `cfg` on `store`, registering metrics on `registry`.
pub fn full(
    cfg: &PalisadeConfig,
    store: &Store,
    registry: &Registry,
    proxy: Proxy,
) -> Result<Built, Box<dyn std::error::Error>> {
    let shared = (store.backend() != Backend::Memory).then(|| store.clone());

    let limiter = cfg
        .rate_limit
        .limiter(shared.clone(), Some(&RateLimitMetrics::register(registry)?))
        .map_err(|e| format!("rate_limit: {e}"))?;
    let rate_limit = RateLimitLayer::new(limiter.clone()).headers(cfg.rate_limit.headers);

    let shape = ShapeResponseLayerBuilder::from_config(cfg.shape.clone())
        .metrics(registry)
        .build()
        .map_err(|e| format!("shape: {e}"))?;

    let mut cache =
        CacheBuilder::from_config(&cfg.cache).metrics(CacheMetrics::register(registry)?);
    if let Some(store) = &shared {
        cache = cache.store(store.clone());
    }
    let cache: CacheLayer = cache.build();
    let cache_handle = cache.handle();

    // Decoded bodies are answered as identity here: the gateway's
    // compression layer encodes answers for the client (once, outermost).
    let pii = PiiMaskLayer::from_config(&cfg.pii)
        .map_err(|e| format!("pii: {e}"))?
        .reencode(false)
        .metrics(PiiMetrics::register(registry)?);
    let masker = pii.masker().clone();

    let retry = RetryLayerBuilder::from_config(cfg.retry.clone())
        .metrics(&RetryMetrics::register(registry)?, "upstream")
        .try_build()
        .map_err(|e| format!("retry: {e}"))?;

    let breakers = BreakerRegistry::new();
    breakers.register_metrics(registry)?;
    let mut breaker = CircuitBreakerLayer::builder("upstream").config(cfg.circuit_breaker.clone());
    if let Some(store) = &shared {
        // A trip on one replica opens the circuit on all of them.
        breaker = breaker.shared(store);
    }
    let breaker = breaker
        .http()
        .registry(&breakers)
        .build()
        .map_err(|e| format!("circuit_breaker: {e}"))?;

    let masking = masker.clone();
    let dlq = DeadLetterQueue::new(store.clone())
        .mask_with(move |text| masking.mask_str(text).into_owned())
        .register_metrics(registry)?;

    let service = StackBuilder::new()
        .layer(tower::util::MapResponseLayer::new(to_axum))
        .rate_limit(rate_limit)
        .shape_response(shape)
        .cache(cache)
        .mask_pii(pii)
        .layer(tower::layer::layer_fn({
            let dlq = dlq.clone();
            move |inner| DeadLetters {
                inner,
                dlq: dlq.clone(),
                not_ready: None,
            }
        }))
        // The response-head limit covers every attempt; a timed-out attempt
        // is a failure for the breaker.
        .layer(response_timeout(cfg))
        .retry(retry)
        .circuit_breaker(breaker)
        .service(proxy);
    Ok(Built {
        stack: BoxCloneSyncService::new(service),
        breakers,
        cache: cache_handle,
        limiter,
        dlq,
    })
}

/// The response-head limit (`upstream.response_timeout`; zero: none, as a
/// limit that never comes).
fn response_timeout(cfg: &PalisadeConfig) -> TimeoutLayer {
    let limit = cfg.upstream.response_timeout;
    TimeoutLayer::new(if limit.is_zero() {
        std::time::Duration::from_secs(365 * 24 * 3600)
    } else {
        limit
    })
}

/// Turns what retry gives up on into an answer, and records every call
/// that failed for good (5xx after retries, or refused by the breaker) in
/// the dead-letter queue.
struct DeadLetters<S> {
    inner: S,
    dlq: DeadLetterQueue,
    /// A readiness failure, answered by the next call.
    not_ready: Option<Error>,
}

impl<S: Clone> Clone for DeadLetters<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            dlq: self.dlq.clone(),
            not_ready: None,
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for DeadLetters<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>, Error = RetryError<Infallible>>,
    S::Future: Send + 'static,
    ResB: Send + 'static,
{
    type Response = Response<PalisadeBody<ResB>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => {
                self.not_ready = Some(Error::from(err));
                Poll::Ready(Ok(()))
            }
            other => other.map(|_| Ok(())),
        }
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Cheap clones (no allocation); formatted only when a call failed.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let dlq = self.dlq.clone();
        let future = match self.not_ready.take() {
            Some(err) => Err(err),
            None => Ok(self.inner.call(req)),
        };
        Box::pin(async move {
            let outcome = match future {
                Ok(future) => future.await.map_err(Error::from),
                Err(err) => Err(err),
            };
            let res = match outcome {
                Ok(res) => res.map(PalisadeBody::inner),
                Err(err) => err.into_http_response(false),
            };
            if res.status().is_server_error() {
                let class = res
                    .extensions()
                    .get::<ErrorKind>()
                    .map_or("upstream_5xx", |k| k.as_str());
                let letter = DeadLetter::new(method.as_str(), uri.path(), class)
                    .status(res.status().as_u16());
                // Recording must never delay or fail the answer.
                tokio::spawn(async move {
                    if let Err(err) = dlq.record(letter).await {
                        tracing::warn!(error = %err, "dead letter not recorded");
                    }
                });
            }
            Ok(res)
        })
    }
}
