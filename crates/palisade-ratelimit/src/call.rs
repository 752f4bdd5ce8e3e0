//! Rate limiting for services that do not speak HTTP (tool calls, jobs,
//! LLM calls): refusals are typed errors.

use crate::{RateLimitError, RateLimiter};
use palisade_core::key::KeyExtractor;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tower_layer::Layer;
use tower_service::Service;

/// Applies one limit of a [`RateLimiter`] to any service, keyed by a
/// [`KeyExtractor`] of its request type. See [`RateLimitCall`].
///
/// ```
/// use palisade_core::key::key_fn;
/// use palisade_ratelimit::{Limit, Quota, RateLimitCallLayer, RateLimitError, RateLimiter};
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// struct ToolCall { tool: String }
/// let limiter = RateLimiter::builder()
///     .limit(Limit::per_tool().with_quota(Quota::per_minute(1)))
///     .build()
///     .unwrap();
/// let tool = key_fn(|call: &ToolCall| Some(call.tool.clone()));
/// let svc = ServiceBuilder::new()
///     .layer(RateLimitCallLayer::new(limiter, "tool", tool))
///     .service_fn(|call: ToolCall| async move { Ok::<_, BoxError>(call.tool) });
///
/// let ok = svc.clone().oneshot(ToolCall { tool: "search".into() }).await.unwrap();
/// assert_eq!(ok, "search");
/// let err = svc.oneshot(ToolCall { tool: "search".into() }).await.unwrap_err();
/// let err = err.downcast::<RateLimitError>().unwrap();
/// assert!(err.is_exceeded());
/// assert!(err.retry_after().is_some());
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimitCallLayer<K> {
    limiter: RateLimiter,
    limit: Arc<str>,
    key: K,
}

impl<K> fmt::Debug for RateLimitCallLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitCallLayer")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<K> RateLimitCallLayer<K> {
    /// Checks the limit named `limit` of `limiter`, keyed by `key`; calls
    /// without a key pass unchecked.
    pub fn new(limiter: RateLimiter, limit: impl Into<Arc<str>>, key: K) -> Self {
        Self {
            limiter,
            limit: limit.into(),
            key,
        }
    }
}

impl<S, K: Clone> Layer<S> for RateLimitCallLayer<K> {
    type Service = RateLimitCall<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitCall {
            inner,
            limiter: self.limiter.clone(),
            limit: self.limit.clone(),
            key: self.key.clone(),
        }
    }
}

/// Rate-limits any service: a refused call fails with
/// [`RateLimitError::Exceeded`] (or `StoreUnavailable` when failing closed)
/// converted into the service's error type.
#[derive(Clone)]
pub struct RateLimitCall<S, K> {
    inner: S,
    limiter: RateLimiter,
    limit: Arc<str>,
    key: K,
}

impl<S: fmt::Debug, K> fmt::Debug for RateLimitCall<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitCall")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<S, K, Req> Service<Req> for RateLimitCall<S, K>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: From<RateLimitError>,
    K: KeyExtractor<Req>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let refused = self.key.refusal(&req);
        let key = match refused {
            None => self.key.extract(&req),
            Some(_) => None,
        };
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let limit = self.limit.clone();
        Box::pin(async move {
            if let Some(err) = refused {
                return Err(RateLimitError::KeyRefused(Box::new(err)).into());
            }
            if let Some(key) = key {
                let verdict = limiter.check_key(&limit, &key, 1).await?;
                if let Some(err) = verdict.into_error() {
                    return Err(err.into());
                }
            }
            inner.call(req).await
        })
    }
}
