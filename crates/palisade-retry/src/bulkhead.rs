//! A per-resource concurrency limit (bulkhead) that answers `503 Service
//! Unavailable` (gRPC `UNAVAILABLE`) at once when a resource is full, instead
//! of making callers wait.
//!
//! tower's `ConcurrencyLimit` waits in `poll_ready` for a permit, which
//! behind axum (whose services are always "ready") or a busy gateway means
//! an unbounded queue. Here each resource (a key: a route, a tool name, an
//! upstream host, from any [`KeyExtractor`]) has its own limit, a full
//! resource answers 503 with `Retry-After: 1`, and the other resources are
//! not affected. The permit is held until the inner service answers (the
//! response head), not while its body streams. A key's limiter is dropped
//! when the key is idle, so many short-lived keys do not pile up.
//!
//! For any other service, [`BulkheadLayer::for_services`] gives the same
//! limits with a typed error, [`BulkheadError`], instead of an answer.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade_core::key::HeaderKey;
//! use palisade_retry::bulkhead::BulkheadLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // At most 8 concurrent calls per tool.
//! let svc = ServiceBuilder::new()
//!     .layer(BulkheadLayer::per_key(8, HeaderKey::new("x-tool")))
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//!     });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```

use crate::RetryMetrics;
use dashmap::DashMap;
use http::{Request, Response};
use palisade_core::{
    Error, ErrorKind, PalisadeBody, is_grpc_request,
    key::{ConstKey, KeyExtractor},
};
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use std::{
    fmt,
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

struct Limits<Key> {
    max: usize,
    by_key: DashMap<Key, Arc<Semaphore>>,
    /// Requests without a key share this one.
    keyless: Arc<Semaphore>,
}

impl<Key: Hash + Eq + Clone> Limits<Key> {
    fn try_acquire(&self, key: &Option<Key>) -> Option<OwnedSemaphorePermit> {
        let sem = match key {
            None => self.keyless.clone(),
            Some(key) => {
                if let Some(sem) = self.by_key.get(key) {
                    sem.clone()
                } else {
                    self.by_key
                        .entry(key.clone())
                        .or_insert_with(|| Arc::new(Semaphore::new(self.max)))
                        .clone()
                }
            }
        };
        sem.try_acquire_owned().ok()
    }
}

/// A held permit; when the last one of a key goes, the key's limiter goes.
struct Guard<Key: Hash + Eq> {
    permit: Option<OwnedSemaphorePermit>,
    key: Option<Key>,
    limits: Arc<Limits<Key>>,
}

impl<Key: Hash + Eq> Drop for Guard<Key> {
    fn drop(&mut self) {
        drop(self.permit.take());
        if let Some(key) = &self.key {
            let max = self.limits.max;
            // Under the shard lock: nobody holds a clone, all permits are back.
            self.limits.by_key.remove_if(key, |_, sem| {
                Arc::strong_count(sem) == 1 && sem.available_permits() == max
            });
        }
    }
}

/// Applies [`Bulkhead`] to a service; see the [module docs](self).
pub struct BulkheadLayer<K: KeyExtractor<R>, R = ()> {
    extractor: K,
    limits: Arc<Limits<K::Key>>,
    rejected: Option<IntCounter>,
}

impl<K: KeyExtractor<R>, R> Clone for BulkheadLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            extractor: self.extractor.clone(),
            limits: self.limits.clone(),
            rejected: self.rejected.clone(),
        }
    }
}

impl<K: KeyExtractor<R> + fmt::Debug, R> fmt::Debug for BulkheadLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadLayer")
            .field("max", &self.limits.max)
            .field("extractor", &self.extractor)
            .field("keys", &self.limits.by_key.len())
            .finish()
    }
}

impl<R> BulkheadLayer<ConstKey, R> {
    /// One limit of `max` concurrent calls for every request through the
    /// layer (share the layer to share the limit).
    pub fn new(max: usize) -> Self {
        Self::per_key(max, ConstKey("all"))
    }
}

impl<K: KeyExtractor<R>, R> BulkheadLayer<K, R> {
    /// A limit of `max` concurrent calls for each key.
    pub fn per_key(max: usize, extractor: K) -> Self {
        Self {
            extractor,
            limits: Arc::new(Limits {
                max,
                by_key: DashMap::new(),
                keyless: Arc::new(Semaphore::new(max)),
            }),
            rejected: None,
        }
    }

    /// Counts rejections in `palisade_bulkhead_rejected_total{name}`.
    ///
    /// ```
    /// use palisade_retry::{RetryMetrics, bulkhead::BulkheadLayer};
    ///
    /// let metrics = RetryMetrics::register(&prometheus::Registry::new()).unwrap();
    /// let layer: BulkheadLayer<_, http::Request<()>> = BulkheadLayer::new(16).metrics(&metrics, "tools");
    /// # let _ = layer;
    /// ```
    pub fn metrics(mut self, metrics: &RetryMetrics, name: &str) -> Self {
        self.rejected = Some(metrics.bulkhead_counter(name));
        self
    }

    /// The same limits for any service whose requests are `R`: a call over
    /// its key's limit fails at once with [`BulkheadError::Full`].
    ///
    /// ```
    /// use palisade_core::key::key_fn;
    /// use palisade_retry::bulkhead::{BulkheadError, BulkheadLayer};
    /// use tower::{Service, ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // One call at a time per tenant; a request is (tenant, slow?).
    /// let layer = BulkheadLayer::per_key(1, key_fn(|(tenant, _): &(u32, bool)| Some(*tenant)));
    /// let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    /// let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    /// let entered = std::sync::Arc::new(tokio::sync::Notify::new());
    /// let signal = entered.clone();
    /// let svc = ServiceBuilder::new().layer(layer.for_services()).service_fn(move |(t, slow): (u32, bool)| {
    ///     let (rx, signal) = (rx.clone(), signal.clone());
    ///     async move {
    ///         if slow {
    ///             signal.notify_one(); // holding tenant 1's slot
    ///             let rx = rx.lock().await.take().unwrap();
    ///             let _ = rx.await;
    ///         }
    ///         Ok::<_, std::io::Error>(t)
    ///     }
    /// });
    /// let slow = tokio::spawn(svc.clone().oneshot((1, true)));
    /// tokio::time::timeout(std::time::Duration::from_secs(10), entered.notified()).await.unwrap();
    /// let err = svc.clone().oneshot((1, false)).await.unwrap_err();
    /// assert!(matches!(err, BulkheadError::Full { max: 1 }));
    /// assert_eq!(svc.clone().oneshot((2, false)).await.unwrap(), 2); // another tenant
    /// tx.send(()).unwrap();
    /// assert_eq!(slow.await.unwrap().unwrap(), 1);
    /// let err: palisade_core::Error = BulkheadError::<std::io::Error>::Full { max: 1 }.into();
    /// assert_eq!(err.http_status(), 503);
    /// # }
    /// ```
    pub fn for_services(self) -> ServiceBulkheadLayer<K, R> {
        ServiceBulkheadLayer { layer: self }
    }
}

/// Per-key concurrency limits for any service, with a typed error: built by
/// [`BulkheadLayer::for_services`].
pub struct ServiceBulkheadLayer<K: KeyExtractor<R>, R> {
    layer: BulkheadLayer<K, R>,
}

impl<K: KeyExtractor<R>, R> Clone for ServiceBulkheadLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            layer: self.layer.clone(),
        }
    }
}

impl<K: KeyExtractor<R> + fmt::Debug, R> fmt::Debug for ServiceBulkheadLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServiceBulkheadLayer")
            .field(&self.layer)
            .finish()
    }
}

impl<S, K: KeyExtractor<R>, R> Layer<S> for ServiceBulkheadLayer<K, R> {
    type Service = ServiceBulkhead<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceBulkhead {
            inner,
            layer: self.layer.clone(),
        }
    }
}

/// Why a [`ServiceBulkhead`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum BulkheadError<E> {
    /// The call's key already had `max` calls in flight; nothing was called.
    #[error("too many concurrent calls (limit {max})")]
    Full {
        /// The key's limit.
        max: usize,
    },
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<E: Into<palisade_core::BoxError>> From<BulkheadError<E>> for Error {
    fn from(err: BulkheadError<E>) -> Self {
        match err {
            BulkheadError::Full { max } => full(max),
            BulkheadError::Inner(e) => crate::timeout::inner_error(e.into()),
        }
    }
}

/// The refusal of a full resource.
fn full(max: usize) -> Error {
    Error::new(
        ErrorKind::Overloaded,
        format!("too many concurrent requests (limit {max})"),
    )
    .with_retry_after(Duration::from_secs(1))
}

/// A service with per-key concurrency limits and a typed error; see
/// [`BulkheadLayer::for_services`].
pub struct ServiceBulkhead<S, K: KeyExtractor<R>, R> {
    inner: S,
    layer: BulkheadLayer<K, R>,
}

impl<S: Clone, K: KeyExtractor<R>, R> Clone for ServiceBulkhead<S, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K: KeyExtractor<R> + fmt::Debug, R> fmt::Debug for ServiceBulkhead<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBulkhead")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, K, R> Service<R> for ServiceBulkhead<S, K, R>
where
    S: Service<R>,
    K: KeyExtractor<R>,
{
    type Response = S::Response;
    type Error = BulkheadError<S::Error>;
    type Future = ServiceResponseFuture<S::Future, K::Key>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BulkheadError::Inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let key = self.layer.extractor.extract(&req);
        let max = self.layer.limits.max;
        match self.layer.limits.try_acquire(&key) {
            Some(permit) => ServiceResponseFuture {
                inner: Some(self.inner.call(req)),
                guard: Some(Guard {
                    permit: Some(permit),
                    key,
                    limits: self.layer.limits.clone(),
                }),
                max,
            },
            None => {
                tracing::debug!(max, "bulkhead full; rejecting");
                if let Some(c) = &self.layer.rejected {
                    c.inc();
                }
                ServiceResponseFuture {
                    inner: None,
                    guard: None,
                    max,
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`ServiceBulkhead`].
    pub struct ServiceResponseFuture<F, Key>
    where
        Key: Hash,
        Key: Eq,
    {
        #[pin]
        inner: Option<F>,
        guard: Option<Guard<Key>>,
        max: usize,
    }
}

impl<F, Key: Hash + Eq> fmt::Debug for ServiceResponseFuture<F, Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceResponseFuture")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl<F, Key, T, E> Future for ServiceResponseFuture<F, Key>
where
    F: Future<Output = Result<T, E>>,
    Key: Hash + Eq,
{
    type Output = Result<T, BulkheadError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(fut) => {
                let out = std::task::ready!(fut.poll(cx));
                this.guard.take();
                Poll::Ready(out.map_err(BulkheadError::Inner))
            }
            None => Poll::Ready(Err(BulkheadError::Full { max: *this.max })),
        }
    }
}

impl<S, K, B> Layer<S> for BulkheadLayer<K, Request<B>>
where
    K: KeyExtractor<Request<B>>,
{
    type Service = Bulkhead<S, K, Request<B>>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service whose concurrency is limited per resource; see the
/// [module docs](self).
pub struct Bulkhead<S, K: KeyExtractor<R>, R> {
    inner: S,
    layer: BulkheadLayer<K, R>,
}

impl<S: Clone, K: KeyExtractor<R>, R> Clone for Bulkhead<S, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, K: KeyExtractor<R> + fmt::Debug, R> fmt::Debug for Bulkhead<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, K, B, ResBody> Service<Request<B>> for Bulkhead<S, K, Request<B>>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    K: KeyExtractor<Request<B>>,
{
    type Response = Response<PalisadeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, K::Key>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let key = self.layer.extractor.extract(&req);
        match self.layer.limits.try_acquire(&key) {
            Some(permit) => ResponseFuture {
                state: State::Called {
                    fut: self.inner.call(req),
                    guard: Some(Guard {
                        permit: Some(permit),
                        key,
                        limits: self.layer.limits.clone(),
                    }),
                },
            },
            None => {
                tracing::debug!(max = self.layer.limits.max, "bulkhead full; rejecting");
                if let Some(c) = &self.layer.rejected {
                    c.inc();
                }
                let grpc = is_grpc_request(req.headers());
                ResponseFuture {
                    state: State::Full {
                        grpc,
                        max: self.layer.limits.max,
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`Bulkhead`].
    pub struct ResponseFuture<F, Key>
    where
        Key: Hash,
        Key: Eq,
    {
        #[pin]
        state: State<F, Key>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Key>
    where
        Key: Hash,
        Key: Eq,
    {
        Called { #[pin] fut: F, guard: Option<Guard<Key>> },
        Full { grpc: bool, max: usize },
    }
}

impl<F, Key: Hash + Eq> fmt::Debug for ResponseFuture<F, Key> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, Key, ResBody, E> Future for ResponseFuture<F, Key>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    Key: Hash + Eq,
{
    type Output = Result<Response<PalisadeBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, guard } => {
                let out = std::task::ready!(fut.poll(cx));
                guard.take();
                Poll::Ready(out.map(|r| r.map(PalisadeBody::inner)))
            }
            StateProj::Full { grpc, max } => {
                let err = full(*max);
                Poll::Ready(Ok(err.into_http_response(*grpc)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use palisade_core::key::HeaderKey;
    use tower::ServiceExt;

    fn req(tool: &str) -> Request<()> {
        Request::builder().header("x-tool", tool).body(()).unwrap()
    }

    #[tokio::test]
    async fn full_resource_answers_503_others_are_unaffected() {
        use std::time::Duration;
        use tokio::sync::watch;
        // Calls the inner service has received (each holds a permit), and
        // the gate they wait behind: events, so nothing depends on how
        // many polls a spawned call takes to get in.
        let (entered, mut seen) = watch::channel(0usize);
        let (gate, open) = watch::channel(false);
        let inner = tower::service_fn(move |_req: Request<()>| {
            entered.send_modify(|n| *n += 1);
            let mut open = open.clone();
            async move {
                let _ = open.wait_for(|open| *open).await;
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::new())))
            }
        });
        let mut until = async |n: usize| {
            tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|got| *got >= n))
                .await
                .expect("bounded wait")
                .unwrap();
        };
        let registry = prometheus::Registry::new();
        let metrics = RetryMetrics::register(&registry).unwrap();
        let layer = BulkheadLayer::per_key(2, HeaderKey::new("x-tool")).metrics(&metrics, "tools");
        let svc = layer.layer(inner);
        // Two calls to "search" hold its two permits.
        let a = tokio::spawn(svc.clone().oneshot(req("search")));
        let b = tokio::spawn(svc.clone().oneshot(req("search")));
        until(2).await;
        let res = svc.clone().oneshot(req("search")).await.unwrap();
        assert_eq!(res.status(), 503);
        assert_eq!(res.headers()["retry-after"], "1");
        let grpc = Request::builder()
            .header("x-tool", "search")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(grpc).await.unwrap();
        assert_eq!(res.headers()["grpc-status"], "14");
        // Another tool still has room: its call gets in while search is full.
        let other = tokio::spawn(svc.clone().oneshot(req("fetch")));
        until(3).await;
        gate.send_replace(true);
        for h in [a, b, other] {
            assert_eq!(h.await.unwrap().unwrap().status(), 200);
        }
        // Permits are back.
        let res = svc.clone().oneshot(req("search")).await.unwrap();
        assert_eq!(res.status(), 200);
        drop(svc);
        assert_eq!(layer.limits.by_key.len(), 0, "idle keys are dropped");
        let rejected = registry
            .gather()
            .iter()
            .find(|f| f.name() == "palisade_bulkhead_rejected_total")
            .map(|f| f.get_metric()[0].get_counter().get_value());
        assert_eq!(rejected, Some(2.0));
    }
}
