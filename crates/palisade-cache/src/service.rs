//! The generic cache for any request type: [`CacheServiceLayer`] and
//! [`CacheService`].

use crate::{
    CacheBuilder, CacheHandle,
    core::{Core, Join, Lock, Value},
    key::with_buf,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use palisade_core::key::KeyExtractor;
use pin_project_lite::pin_project;
use serde::{Serialize, de::DeserializeOwned};
use std::{
    fmt::{self, Write as _},
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};
use tower_layer::Layer;
use tower_service::Service;

/// A cached value of the generic cache.
pub(crate) struct Entry<R> {
    value: R,
    stored_at: u64,
    weight: usize,
}

pub(crate) struct SvcValue<R>(Arc<Entry<R>>);

impl<R> Clone for SvcValue<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

struct Counter(usize);
impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SvcValue<R> {
    fn new(value: R, stored_at: u64) -> Self {
        let mut c = Counter(0);
        let _ = serde_json::to_writer(&mut c, &value);
        Self(Arc::new(Entry {
            value,
            stored_at,
            weight: c.0 + 32,
        }))
    }
}

impl<R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Value for SvcValue<R> {
    fn weight(&self) -> usize {
        self.0.weight
    }

    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.0.weight + 8).writer();
        let _ = std::io::Write::write_all(&mut out, &self.0.stored_at.to_be_bytes());
        if let Err(e) = serde_json::to_writer(&mut out, &self.0.value) {
            tracing::warn!(error = %e, "cached value does not serialize");
        }
        out.into_inner().freeze()
    }

    fn decode(mut bytes: Bytes) -> Option<Self> {
        if bytes.len() < 8 {
            return None;
        }
        let stored_at = bytes.get_u64();
        let value = serde_json::from_slice(&bytes).ok()?;
        Some(Self(Arc::new(Entry {
            value,
            stored_at,
            weight: bytes.len() + 32,
        })))
    }
}

struct SvcShared<R> {
    /// `false`: every call passes straight through.
    enabled: bool,
    core: Arc<Core<SvcValue<R>>>,
    ttl: u64,
}

impl<R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> SvcShared<R> {
    #[inline]
    fn fresh(&self, v: &SvcValue<R>) -> bool {
        self.core.clock.now_ms().saturating_sub(v.0.stored_at) < self.ttl
    }

    fn hit(&self) {
        self.core.counters.hits.fetch_add(1, Relaxed);
        if let Some(m) = &self.core.metrics {
            m.hit.inc();
        }
    }

    fn miss(&self) {
        self.core.counters.misses.fetch_add(1, Relaxed);
        if let Some(m) = &self.core.metrics {
            m.miss.inc();
        }
    }

    fn bypass(&self) {
        self.core.counters.bypassed.fetch_add(1, Relaxed);
        if let Some(m) = &self.core.metrics {
            m.bypass.inc();
        }
    }

    fn coalesced(&self) {
        self.core.counters.coalesced.fetch_add(1, Relaxed);
        if let Some(m) = &self.core.metrics {
            m.coalesced.inc();
        }
    }

    fn l1_fresh(&self, key: &str) -> Option<R> {
        self.core
            .l1_get(key)
            .filter(|v| self.fresh(v))
            .map(|v| v.0.value.clone())
    }
}

/// Tower layer caching the responses of any service (gRPC methods, tool
/// calls, LLM calls): `K` names the key of a request, and responses are
/// kept as they are in L1 and as JSON in L2. Errors are never cached.
///
/// Entries live for [`Config::default_ttl`](crate::Config::default_ttl)
/// (default: `l2_ttl`, 300 s), and at most `l1_ttl` in L1.
///
/// A request that `K` refuses
/// ([`KeyExtractor::refusal`]: a [`PeerIp`](palisade_core::key::PeerIp)
/// with [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse)
/// and no peer address) is never looked up or stored. When the service's
/// error type can carry the refusal — [`CacheError`](crate::CacheError),
/// [`BoxError`](palisade_core::BoxError) or [`palisade_core::Error`] — the
/// call fails with [`CacheError::KeyRefused`](crate::CacheError::KeyRefused)
/// (for `palisade_core::Error`, the extractor's error itself) and the inner
/// service is not called. Any other error type (`Infallible`, your own)
/// cannot carry it: the request then goes to the inner service uncached,
/// and is counted as bypassed (`stats().bypassed`). Either way the request
/// is counted once in `palisade_missing_peer_total`.
///
/// ```
/// use palisade_cache::{CacheBuilder, CacheError, CacheServiceLayer};
/// use palisade_core::key::{MissingPeer, PeerIp};
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer: CacheServiceLayer<String, _> = CacheServiceLayer::new(
///     CacheBuilder::default().name("per-client"),
///     PeerIp::new().when_missing(MissingPeer::Refuse),
/// ).unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(layer)
///     .service_fn(|_req: http::Request<()>| async { Ok::<_, BoxError>("fresh".to_owned()) });
/// let err = svc.oneshot(http::Request::new(())).await.unwrap_err(); // no peer address
/// assert!(err.downcast_ref::<CacheError>().unwrap().is_key_refused());
/// # }
/// ```
///
/// Caching by a request's own content:
///
/// ```
/// use palisade_cache::{CacheBuilder, CacheServiceLayer};
/// use palisade_core::key::key_fn;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
/// let c = calls.clone();
/// let layer: CacheServiceLayer<String, _> = CacheServiceLayer::new(
///     CacheBuilder::default().name("tools"),
///     key_fn(|q: &String| Some(q.clone())),
/// ).unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(move |q: String| {
///     c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
///     async move { Ok::<_, std::convert::Infallible>(format!("answer to {q}")) }
/// });
/// assert_eq!(svc.clone().oneshot("q1".to_string()).await.unwrap(), "answer to q1");
/// assert_eq!(svc.oneshot("q1".to_string()).await.unwrap(), "answer to q1");
/// assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
/// # }
/// ```
pub struct CacheServiceLayer<R, K> {
    shared: Arc<SvcShared<R>>,
    key: K,
}

impl<R, K: Clone> Clone for CacheServiceLayer<R, K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<R, K: fmt::Debug> fmt::Debug for CacheServiceLayer<R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheServiceLayer")
            .field("name", &self.shared.core.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<R, K> CacheServiceLayer<R, K>
where
    R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A cache with the settings of `builder`, keyed by `key`.
    ///
    /// # Errors
    ///
    /// [`CacheError::Invalid`](crate::CacheError::Invalid) naming the first
    /// invalid setting.
    pub fn new(builder: CacheBuilder, key: K) -> Result<Self, crate::CacheError> {
        let cfg = builder.validated()?;
        let ttl = cfg.default_ttl.unwrap_or(cfg.l2_ttl);
        let core = Core::new(builder.tier_settings(&cfg, "svc"));
        Ok(Self {
            shared: Arc::new(SvcShared {
                enabled: cfg.enabled,
                core,
                ttl: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            }),
            key,
        })
    }

    /// A cache from a validated [`Config`](crate::Config) (L1 only; add a
    /// store through [`CacheBuilder::from_config`] + [`CacheBuilder::store`]).
    ///
    /// ```
    /// use palisade_cache::{CacheServiceLayer, Config};
    /// use palisade_core::key::key_fn;
    ///
    /// let mut cfg = Config::default();
    /// cfg.name = "tools".into();
    /// let layer: CacheServiceLayer<String, _> =
    ///     CacheServiceLayer::from_config(&cfg, key_fn(|q: &String| Some(q.clone()))).unwrap();
    /// assert_eq!(layer.ttl(), std::time::Duration::from_secs(300));
    /// ```
    pub fn from_config(cfg: &crate::Config, key: K) -> Result<Self, crate::CacheError> {
        Self::new(CacheBuilder::from_config(cfg), key)
    }

    /// Stats and invalidation for this cache.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.core.clone())
    }

    /// The freshness TTL of entries.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.shared.ttl)
    }
}

impl<S, R, K: Clone> Layer<S> for CacheServiceLayer<R, K> {
    type Service = CacheService<S, R, K>;
    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// The generic cache service. See [`CacheServiceLayer`].
///
/// ```
/// use palisade_cache::{CacheBuilder, CacheServiceLayer};
/// use palisade_core::key::key_fn;
/// use tower::Layer;
///
/// let layer: CacheServiceLayer<u64, _> =
///     CacheServiceLayer::new(CacheBuilder::default(), key_fn(|n: &u64| Some(*n))).unwrap();
/// let svc = layer.layer(tower::service_fn(|n: u64| async move { Ok::<_, std::convert::Infallible>(n * 2) }));
/// assert_eq!(svc.handle().stats().hits, 0);
/// ```
pub struct CacheService<S, R, K> {
    inner: S,
    shared: Arc<SvcShared<R>>,
    key: K,
}

impl<S: Clone, R, K: Clone> Clone for CacheService<S, R, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, R, K: fmt::Debug> fmt::Debug for CacheService<S, R, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("name", &self.shared.core.name)
            .field("key", &self.key)
            .finish()
    }
}

impl<S, R, K> CacheService<S, R, K> {
    /// Stats and invalidation for this cache.
    pub fn handle(&self) -> CacheHandle
    where
        R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    {
        CacheHandle::new(self.shared.core.clone())
    }

    palisade_core::inner_accessors!(inner: S);
}

type BoxSvcFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

pin_project! {
    /// Response future of [`CacheService`]: ready at once for hits.
    ///
    /// ```
    /// use palisade_cache::{CacheBuilder, CacheServiceLayer};
    /// use palisade_core::key::key_fn;
    /// use tower::{Layer, Service};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer: CacheServiceLayer<u32, _> =
    ///     CacheServiceLayer::new(CacheBuilder::default(), key_fn(|n: &u32| Some(*n))).unwrap();
    /// let mut svc = layer.layer(tower::service_fn(|n: u32| async move { Ok::<_, std::convert::Infallible>(n + 1) }));
    /// let fut: palisade_cache::SvcFuture<_, _, _> = svc.call(1);
    /// assert_eq!(fut.await.unwrap(), 2);
    /// # }
    /// ```
    pub struct SvcFuture<F, R, E> {
        #[pin]
        kind: SvcKind<F, R, E>,
    }
}

pin_project! {
    #[project = SvcProj]
    enum SvcKind<F, R, E> {
        Ready { value: Option<R>, _e: PhantomData<fn() -> E> },
        Failed { err: Option<E> },
        Pass { #[pin] fut: F },
        Boxed { fut: BoxSvcFuture<R, E> },
    }
}

impl<F, R, E> fmt::Debug for SvcFuture<F, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvcFuture")
    }
}

impl<F, R, E> Future for SvcFuture<F, R, E>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            SvcProj::Ready { value, .. } => {
                Poll::Ready(Ok(value.take().expect("polled after completion")))
            }
            SvcProj::Failed { err } => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
            SvcProj::Pass { fut } => fut.poll(cx),
            SvcProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, R, K, Req> Service<Req> for CacheService<S, R, K>
where
    S: Service<Req, Response = R> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: KeyExtractor<Req>,
    Req: Send + 'static,
    R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    type Response = R;
    type Error = S::Error;
    type Future = SvcFuture<S::Future, R, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if !self.shared.enabled {
            return SvcFuture {
                kind: SvcKind::Pass {
                    fut: self.inner.call(req),
                },
            };
        }
        // A key extractor that must refuse the request (`MissingPeer::Refuse`
        // and no peer address): no lookup, nothing stored, counted once (no
        // `extract` after it).
        if let Some(err) = self.key.refusal(&req) {
            return match carry::<S::Error>(err) {
                Some(err) => SvcFuture {
                    kind: SvcKind::Failed { err: Some(err) },
                },
                None => {
                    // The error type cannot carry it: served uncached.
                    self.shared.bypass();
                    SvcFuture {
                        kind: SvcKind::Pass {
                            fut: self.inner.call(req),
                        },
                    }
                }
            };
        }
        let Some(key) = self.key.extract(&req) else {
            self.shared.core.counters.bypassed.fetch_add(1, Relaxed);
            return SvcFuture {
                kind: SvcKind::Pass {
                    fut: self.inner.call(req),
                },
            };
        };
        let shared = &self.shared;
        let found = with_buf(|buf| {
            let _ = write!(buf, "{key}");
            match shared.l1_fresh(buf) {
                Some(v) => Ok(v),
                None => Err(Arc::<str>::from(buf.as_str())),
            }
        });
        match found {
            Ok(value) => {
                shared.hit();
                SvcFuture {
                    kind: SvcKind::Ready {
                        value: Some(value),
                        _e: PhantomData,
                    },
                }
            }
            Err(key) => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                SvcFuture {
                    kind: SvcKind::Boxed {
                        fut: Box::pin(svc_slow(shared.clone(), inner, req, key)),
                    },
                }
            }
        }
    }
}

/// A key extractor's refusal as the service's error `E`, when `E` can
/// carry it: [`CacheError`](crate::CacheError) (as
/// [`KeyRefused`](crate::CacheError::KeyRefused)),
/// [`BoxError`](palisade_core::BoxError) (a boxed `KeyRefused`), or
/// [`palisade_core::Error`] (the extractor's error itself). `None` for any
/// other type.
#[cold]
#[inline(never)]
fn carry<E: 'static>(err: palisade_core::Error) -> Option<E> {
    tracing::debug!(kind = %err.kind(), "cache refused a request without a key");
    let refused = crate::CacheError::KeyRefused(Box::new(err));
    let mut slot: Option<E> = None;
    let any: &mut dyn std::any::Any = &mut slot;
    if let Some(slot) = any.downcast_mut::<Option<crate::CacheError>>() {
        *slot = Some(refused);
    } else if let Some(slot) = any.downcast_mut::<Option<palisade_core::BoxError>>() {
        *slot = Some(Box::new(refused));
    } else if let Some(slot) = any.downcast_mut::<Option<palisade_core::Error>>() {
        *slot = Some(refused.into());
    }
    slot
}

async fn svc_slow<S, R, Req>(
    shared: Arc<SvcShared<R>>,
    mut inner: S,
    req: Req,
    key: Arc<str>,
) -> Result<R, S::Error>
where
    S: Service<Req, Response = R>,
    R: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let core = &shared.core;
    if let Some(v) = core.l2_get(&key).await.filter(|v| shared.fresh(v)) {
        shared.hit();
        return Ok(v.0.value.clone());
    }
    let mut store = true;
    let mut flight = None;
    let mut lock = None;
    if core.coalesce {
        match core.join(&key) {
            Join::Leader(f) => flight = Some(f),
            Join::Follower(rx) => {
                if core.wait(rx).await {
                    if let Some(v) = shared.l1_fresh(&key) {
                        shared.coalesced();
                        shared.hit();
                        return Ok(v);
                    }
                } else {
                    store = false;
                }
            }
        }
        if flight.is_some() && core.l2.is_some() {
            match core.lock(&key).await {
                Lock::Acquired(k) => lock = Some(k),
                Lock::Unavailable => {}
                Lock::Held => {
                    let deadline = tokio::time::Instant::now() + core.coalesce_timeout;
                    loop {
                        tokio::time::sleep(core.poll_interval).await;
                        if let Some(v) = core.l2_get(&key).await.filter(|v| shared.fresh(v)) {
                            shared.coalesced();
                            shared.hit();
                            return Ok(v.0.value.clone());
                        }
                        if core.lock_released(&key).await {
                            break;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            store = false;
                            break;
                        }
                    }
                }
            }
        }
    }
    shared.miss();
    let started = tokio::time::Instant::now();
    let result = inner.call(req).await;
    if let Some(m) = &core.metrics {
        m.upstream.observe(started.elapsed().as_secs_f64());
    }
    if let (Ok(value), true) = (&result, store) {
        let v = SvcValue::new(value.clone(), core.clock.now_ms());
        core.put(key.clone(), v).await;
    }
    if let Some(k) = lock {
        core.unlock(&k).await;
    }
    drop(flight);
    result
}
