//! The layer, its builder and its services.

use crate::{
    AdaptiveError, AdaptiveMetrics, Algorithm, BuildError, Measure,
    limiter::{Gauges, Limiter, Sample, Settings},
};
use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body, Frame};
use palisade_core::{
    BoxError, Error, ErrorKind, GrpcCode, PalisadeBody, is_grpc_request, key::KeyExtractor,
};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    hash::{BuildHasher, Hash, RandomState},
    pin::Pin,
    sync::{
        Arc,
        atomic::Ordering::{AcqRel, Acquire},
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// The key extractor of a layer with one limit for every call.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<R> KeyExtractor<R> for NoKey {
    type Key = String;

    fn extract(&self, _req: &R) -> Option<String> {
        None
    }
}

/// Keys HTTP requests by the first of some path prefixes their path starts
/// with (none: no key), so each route learns its own limit and the keys
/// stay few.
///
/// ```
/// use palisade_adaptive::PathPrefixKey;
/// use palisade_core::key::KeyExtractor;
///
/// let key = PathPrefixKey::new(["/v1/chat", "/v1/embeddings"]);
/// let req = http::Request::builder().uri("/v1/chat/completions").body(()).unwrap();
/// assert_eq!(key.extract(&req).unwrap().as_ref(), "/v1/chat");
/// assert!(key.extract(&http::Request::new(())).is_none());
/// ```
#[derive(Clone, Debug, Default)]
pub struct PathPrefixKey {
    prefixes: Arc<[Arc<str>]>,
}

impl PathPrefixKey {
    /// Keys by these prefixes (first match wins).
    pub fn new<I, P>(prefixes: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        Self {
            prefixes: prefixes
                .into_iter()
                .map(|p| Arc::from(p.as_ref()))
                .collect(),
        }
    }
}

impl<B> KeyExtractor<Request<B>> for PathPrefixKey {
    type Key = Arc<str>;

    fn extract(&self, req: &Request<B>) -> Option<Arc<str>> {
        let path = req.uri().path();
        self.prefixes
            .iter()
            .find(|p| path.starts_with(p.as_ref()))
            .cloned()
    }
}

struct Shared {
    settings: Settings,
    measure: Measure,
    /// Calls without a key (and every call of an unkeyed layer).
    keyless: Arc<Limiter>,
    by_key: DashMap<u64, Arc<Limiter>>,
    hasher: RandomState,
}

impl Shared {
    fn limiter<Q: Hash + fmt::Display>(&self, key: Option<&Q>) -> Option<Arc<Limiter>> {
        let key = key?;
        let h = self.hasher.hash_one(key);
        if let Some(l) = self.by_key.get(&h) {
            return Some(l.clone());
        }
        Some(
            self.by_key
                .entry(h)
                .or_insert_with(|| Arc::new(Limiter::new(self.settings.initial, key.to_string())))
                .clone(),
        )
    }
}

/// An adaptive concurrency limit; see the [crate docs](crate). Clones share
/// the limits.
pub struct AdaptiveLayer<K = NoKey> {
    shared: Arc<Shared>,
    extractor: K,
}

impl<K: Clone> Clone for AdaptiveLayer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for AdaptiveLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLayer")
            .field("algorithm", &self.shared.settings.algorithm)
            .field("limit", &self.limit())
            .field("keys", &self.shared.by_key.len())
            .field("extractor", &self.extractor)
            .finish()
    }
}

impl AdaptiveLayer {
    /// A builder: AIMD, limits 1 / 20 / 1000, measured to the response
    /// head, refusing at once past the limit.
    pub fn builder() -> AdaptiveLayerBuilder {
        AdaptiveLayerBuilder {
            algorithm: Algorithm::default(),
            limits: (1, 20, 1000),
            measure: Measure::Head,
            queue: (0, Duration::from_secs(1)),
            extractor: NoKey,
            metrics: None,
        }
    }
}

impl<K> AdaptiveLayer<K> {
    /// The current limit of calls without a key (of every call, for an
    /// unkeyed layer).
    pub fn limit(&self) -> usize {
        self.shared.keyless.limit()
    }

    /// Calls in flight without a key (every call, for an unkeyed layer).
    pub fn in_flight(&self) -> usize {
        self.shared.keyless.in_flight()
    }

    /// The current limit of `key` (its initial limit if unseen so far).
    pub fn limit_of<Q: Hash>(&self, key: &Q) -> usize {
        let h = self.shared.hasher.hash_one(key);
        self.shared
            .by_key
            .get(&h)
            .map_or(self.shared.settings.initial as usize, |l| l.limit())
    }

    /// The same limit for any service whose requests are `R`: a call past
    /// it fails with [`AdaptiveError::Refused`] (or waits, with a queue);
    /// an error of the inner service counts as a refusal by the upstream.
    ///
    /// ```
    /// use palisade_adaptive::{AdaptiveError, AdaptiveLayer};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = AdaptiveLayer::builder().limits(1, 4, 64).build().unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer.for_services())
    ///     .service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n * 2) });
    /// assert_eq!(svc.oneshot(21).await.unwrap(), 42);
    /// let err: palisade_core::Error = AdaptiveError::<std::io::Error>::Refused { limit: 4 }.into();
    /// assert_eq!(err.http_status(), 503);
    /// # }
    /// ```
    pub fn for_services(self) -> ServiceAdaptiveLayer<K> {
        ServiceAdaptiveLayer { layer: self }
    }

    fn limiter_for<R>(&self, req: &R) -> Slot
    where
        K: KeyExtractor<R>,
    {
        self.shared.limiter(self.extractor.extract(req).as_ref())
    }
}

/// Builds an [`AdaptiveLayer`].
#[derive(Debug)]
pub struct AdaptiveLayerBuilder<K = NoKey> {
    algorithm: Algorithm,
    limits: (usize, usize, usize),
    measure: Measure,
    queue: (usize, Duration),
    extractor: K,
    metrics: Option<(AdaptiveMetrics, String)>,
}

impl<K> AdaptiveLayerBuilder<K> {
    /// The algorithm (default [`Algorithm::aimd`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The lowest, first and highest limit (default 1, 20, 1000).
    pub fn limits(mut self, min: usize, initial: usize, max: usize) -> Self {
        self.limits = (min, initial, max);
        self
    }

    /// Where a call's latency ends (default [`Measure::Head`]).
    pub fn measure(mut self, measure: Measure) -> Self {
        self.measure = measure;
        self
    }

    /// Past the limit, up to `max` calls wait for a slot, each at most
    /// `timeout`; then they are refused (default: no queue, refused at once).
    ///
    /// ```
    /// use palisade_adaptive::AdaptiveLayer;
    /// use std::time::Duration;
    ///
    /// let layer = AdaptiveLayer::builder().queue(100, Duration::from_millis(500)).build().unwrap();
    /// # let _ = layer;
    /// ```
    pub fn queue(mut self, max: usize, timeout: Duration) -> Self {
        self.queue = (max, timeout);
        self
    }

    /// A limit per key (an upstream host, a tool, a model).
    ///
    /// ```
    /// use palisade_adaptive::AdaptiveLayer;
    /// use palisade_core::key::HeaderKey;
    ///
    /// let layer = AdaptiveLayer::builder().key(HeaderKey::new("x-model")).build().unwrap();
    /// assert_eq!(layer.limit_of(&"gpt-large"), 20);
    /// ```
    pub fn key<K2>(self, extractor: K2) -> AdaptiveLayerBuilder<K2> {
        AdaptiveLayerBuilder {
            algorithm: self.algorithm,
            limits: self.limits,
            measure: self.measure,
            queue: self.queue,
            extractor,
            metrics: self.metrics,
        }
    }

    /// Reports on `metrics`, labelled `name`.
    pub fn metrics(mut self, metrics: &AdaptiveMetrics, name: &str) -> Self {
        self.metrics = Some((metrics.clone(), name.to_owned()));
        self
    }

    /// The layer.
    ///
    /// # Errors
    /// Limits out of order, or an algorithm parameter out of range.
    pub fn build(self) -> Result<AdaptiveLayer<K>, BuildError> {
        let (min, initial, max) = self.limits;
        if !(1 <= min && min <= initial && initial <= max) {
            return Err(BuildError::Limits { min, initial, max });
        }
        match self.algorithm {
            Algorithm::Aimd { backoff_ratio } if !(0.5..1.0).contains(&backoff_ratio) => {
                return Err(BuildError::Parameter {
                    field: "backoff_ratio",
                    reason: "must be at least 0.5 and below 1",
                });
            }
            Algorithm::Gradient { tolerance, .. }
                if !(tolerance >= 1.0 && tolerance.is_finite()) =>
            {
                return Err(BuildError::Parameter {
                    field: "tolerance",
                    reason: "must be at least 1",
                });
            }
            Algorithm::Gradient { smoothing, .. } if !(smoothing > 0.0 && smoothing <= 1.0) => {
                return Err(BuildError::Parameter {
                    field: "smoothing",
                    reason: "must be more than 0 and at most 1",
                });
            }
            _ => {}
        }
        let gauges = self.metrics.map(|(m, name)| {
            let g = Gauges {
                limit: m.limit.with_label_values(&[name.as_str()]),
                in_flight: m.in_flight.with_label_values(&[name.as_str()]),
                queued: m.queued.with_label_values(&[name.as_str()]),
                refused: m.refused.with_label_values(&[name.as_str()]),
            };
            g.limit.set(initial as i64);
            g
        });
        Ok(AdaptiveLayer {
            shared: Arc::new(Shared {
                settings: Settings {
                    algorithm: self.algorithm,
                    min: min as f64,
                    max: max as f64,
                    initial: initial as f64,
                    max_queue: self.queue.0,
                    queue_timeout: self.queue.1,
                    gauges,
                },
                measure: self.measure,
                keyless: Arc::new(Limiter::new(initial as f64, String::new())),
                by_key: DashMap::new(),
                hasher: RandomState::new(),
            }),
            extractor: self.extractor,
        })
    }
}

/// A slot held by a call; freed (and learnt from) once.
struct Guard {
    shared: Arc<Shared>,
    /// `None`: the keyless limiter (no second `Arc` to clone per call).
    limiter: Option<Arc<Limiter>>,
    /// When the call was admitted (read only for the gradient).
    started: Option<Instant>,
    in_flight: usize,
    cuts: u64,
    done: bool,
}

impl Guard {
    fn release(&self, sample: Sample) {
        let limiter = self.limiter.as_deref().unwrap_or(&self.shared.keyless);
        limiter.release(
            &self.shared.settings,
            self.started,
            self.in_flight,
            self.cuts,
            sample,
        );
    }

    fn finish(mut self, sample: Sample) {
        self.done = true;
        self.release(sample);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.release(Sample::Ignore);
        }
    }
}

/// Which limiter a call goes to: `None` for the keyless one.
type Slot = Option<Arc<Limiter>>;

fn limiter_of<'a>(shared: &'a Shared, slot: &'a Slot) -> &'a Limiter {
    slot.as_deref().unwrap_or(&shared.keyless)
}

fn admit(shared: &Arc<Shared>, slot: Slot) -> Result<Guard, Slot> {
    match limiter_of(shared, &slot).try_acquire(&shared.settings) {
        Some((in_flight, cuts)) => Ok(Guard {
            shared: shared.clone(),
            limiter: slot,
            started: matches!(shared.settings.algorithm, Algorithm::Gradient { .. })
                .then(Instant::now),
            in_flight,
            cuts,
            done: false,
        }),
        None => Err(slot),
    }
}

/// Counts a queued call while it waits (dropped with it if cancelled).
struct Waiting<'a>(&'a Limiter, &'a Settings);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, AcqRel);
        if let Some(g) = &self.1.gauges {
            g.queued.dec();
        }
    }
}

type Wait = Pin<Box<dyn Future<Output = Option<Guard>> + Send>>;

/// Waits in `limiter`'s queue, if it has room.
fn enqueue(shared: &Arc<Shared>, slot: Slot) -> Option<Wait> {
    let s = &shared.settings;
    limiter_of(shared, &slot)
        .queued
        .fetch_update(AcqRel, Acquire, |n| (n < s.max_queue).then_some(n + 1))
        .ok()?;
    if let Some(g) = &s.gauges {
        g.queued.inc();
    }
    let shared = shared.clone();
    Some(Box::pin(async move {
        let limiter = limiter_of(&shared, &slot);
        let _waiting = Waiting(limiter, &shared.settings);
        let deadline = shared.settings.queue_timeout;
        let wait = async {
            loop {
                let notified = limiter.freed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Ok(guard) = admit(&shared, slot.clone()) {
                    return guard;
                }
                notified.await;
            }
        };
        let got = tokio::time::timeout(deadline, wait).await.ok();
        if got.is_none() {
            tracing::debug!("adaptive concurrency queue wait ran out; refusing");
            shared.settings.refused();
        } else if limiter.queued.load(Acquire) > 1 {
            // Pass the wake-up on: there may be room for more.
            limiter.freed.notify_one();
        }
        got
    }))
}

/// The refusal answer's error (HTTP 503 with `Retry-After: 1`).
pub(crate) fn refusal(limit: usize) -> Error {
    Error::new(
        ErrorKind::Overloaded,
        format!("concurrency limit reached (limit {limit})"),
    )
    .with_retry_after(Duration::from_secs(1))
}

fn refused_response<B>(limit: usize, grpc: bool) -> Response<PalisadeBody<B>> {
    let err = refusal(limit);
    if !grpc {
        return err.into_http_response(false);
    }
    // gRPC: RESOURCE_EXHAUSTED, the code clients back off on.
    let mut res = Response::new(PalisadeBody::empty());
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        HeaderValue::from(GrpcCode::ResourceExhausted as i32),
    );
    h.insert(
        "grpc-message",
        HeaderValue::from_static("concurrency%20limit%20reached"),
    );
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res.extensions_mut().insert(ErrorKind::Overloaded);
    res
}

/// Whether a response says the upstream is overloaded (gRPC: in a
/// trailers-only answer's head).
fn dropped<B>(res: &Response<B>, grpc: bool) -> bool {
    if matches!(res.status().as_u16(), 429 | 503 | 504) {
        return true;
    }
    grpc && matches!(
        res.headers().get("grpc-status").map(HeaderValue::as_bytes),
        Some(b"4" | b"8" | b"14")
    )
}

impl<S, K: Clone> Layer<S> for AdaptiveLayer<K> {
    type Service = AdaptiveConcurrency<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveConcurrency {
            inner,
            layer: self.clone(),
        }
    }
}

/// An HTTP service under an adaptive concurrency limit; see the
/// [crate docs](crate).
#[derive(Clone, Debug)]
pub struct AdaptiveConcurrency<S, K = NoKey> {
    inner: S,
    layer: AdaptiveLayer<K>,
}

impl<S, K> AdaptiveConcurrency<S, K> {
    palisade_core::inner_accessors!(inner: S);
}

impl<S, K, B, ResBody> Service<Request<B>> for AdaptiveConcurrency<S, K>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    K: KeyExtractor<Request<B>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<PalisadeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<B>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let grpc = is_grpc_request(req.headers());
        let shared = &self.layer.shared;
        let limiter = self.layer.limiter_for(&req);
        let state = match admit(shared, limiter) {
            Ok(guard) => State::Called {
                fut: self.inner.call(req),
                guard: Some(guard),
            },
            Err(slot) => {
                let limit = limiter_of(shared, &slot).limit();
                match enqueue(shared, slot) {
                    Some(wait) => {
                        let clone = self.inner.clone();
                        State::Queued {
                            wait,
                            pending: Some(Box::new((
                                std::mem::replace(&mut self.inner, clone),
                                req,
                            ))),
                            limit,
                        }
                    }
                    None => {
                        shared.settings.refused();
                        tracing::debug!(limit, "adaptive concurrency limit reached; refusing");
                        State::Refused { limit }
                    }
                }
            }
        };
        ResponseFuture {
            state,
            grpc,
            body: shared.measure == Measure::Body,
        }
    }
}

pin_project! {
    /// Response future of [`AdaptiveConcurrency`].
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
        grpc: bool,
        body: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R>
    where
        S: Service<R>,
    {
        Called { #[pin] fut: S::Future, guard: Option<Guard> },
        Queued { wait: Wait, pending: Option<Box<(S, R)>>, limit: usize },
        Refused { limit: usize },
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S, R, ResBody> Future for ResponseFuture<S, R>
where
    S: Service<R, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Output = Result<Response<PalisadeBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut, guard } => {
                    let out = std::task::ready!(fut.poll(cx));
                    let guard = guard.take().expect("polled after completion");
                    return Poll::Ready(match out {
                        Ok(res) => {
                            let drop_ = dropped(&res, *this.grpc);
                            if *this.body {
                                Ok(res.map(|b| {
                                    PalisadeBody::stream(AdaptiveBody {
                                        inner: b,
                                        guard: Some(guard),
                                        dropped: drop_,
                                    })
                                }))
                            } else {
                                guard.finish(if drop_ {
                                    Sample::Dropped
                                } else {
                                    Sample::Success
                                });
                                Ok(res.map(PalisadeBody::inner))
                            }
                        }
                        Err(e) => {
                            guard.finish(Sample::Dropped);
                            Err(e)
                        }
                    });
                }
                StateProj::Queued {
                    wait,
                    pending,
                    limit,
                } => {
                    let next = match std::task::ready!(wait.as_mut().poll(cx)) {
                        Some(guard) => {
                            let (mut svc, req) = *pending.take().expect("polled after completion");
                            State::Called {
                                fut: svc.call(req),
                                guard: Some(guard),
                            }
                        }
                        None => State::Refused { limit: *limit },
                    };
                    this.state.set(next);
                }
                StateProj::Refused { limit } => {
                    return Poll::Ready(Ok(refused_response(*limit, *this.grpc)));
                }
            }
        }
    }
}

pin_project! {
    /// A response body whose call holds its slot until the body ends
    /// ([`Measure::Body`]).
    pub struct AdaptiveBody<B> {
        #[pin]
        inner: B,
        guard: Option<Guard>,
        dropped: bool,
    }
}

impl<B> fmt::Debug for AdaptiveBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdaptiveBody")
    }
}

impl<B: Body> Body for AdaptiveBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll_frame(cx));
        let end = match &out {
            None => Some(if *this.dropped {
                Sample::Dropped
            } else {
                Sample::Success
            }),
            Some(Err(_)) => Some(Sample::Dropped),
            Some(Ok(frame)) if frame.is_trailers() => {
                let grpc_drop = frame.trailers_ref().is_some_and(|t| {
                    matches!(
                        t.get("grpc-status").map(HeaderValue::as_bytes),
                        Some(b"4" | b"8" | b"14")
                    )
                });
                *this.dropped |= grpc_drop;
                None
            }
            Some(Ok(_)) => None,
        };
        if let Some(sample) = end
            && let Some(guard) = this.guard.take()
        {
            guard.finish(sample);
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// An adaptive limit for any service, with a typed error: built by
/// [`AdaptiveLayer::for_services`].
#[derive(Clone, Debug)]
pub struct ServiceAdaptiveLayer<K = NoKey> {
    layer: AdaptiveLayer<K>,
}

impl<S, K: Clone> Layer<S> for ServiceAdaptiveLayer<K> {
    type Service = ServiceAdaptiveConcurrency<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceAdaptiveConcurrency {
            inner,
            layer: self.layer.clone(),
        }
    }
}

/// A service under an adaptive limit, with a typed error; see
/// [`AdaptiveLayer::for_services`].
#[derive(Clone, Debug)]
pub struct ServiceAdaptiveConcurrency<S, K = NoKey> {
    inner: S,
    layer: AdaptiveLayer<K>,
}

impl<S, K> ServiceAdaptiveConcurrency<S, K> {
    palisade_core::inner_accessors!(inner: S);
}

impl<S, K, R> Service<R> for ServiceAdaptiveConcurrency<S, K>
where
    S: Service<R> + Clone,
    K: KeyExtractor<R>,
{
    type Response = S::Response;
    type Error = AdaptiveError<S::Error>;
    type Future = ServiceResponseFuture<S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(AdaptiveError::Inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let shared = &self.layer.shared;
        let limiter = self.layer.limiter_for(&req);
        let state = match admit(shared, limiter) {
            Ok(guard) => State::Called {
                fut: self.inner.call(req),
                guard: Some(guard),
            },
            Err(slot) => {
                let limit = limiter_of(shared, &slot).limit();
                match enqueue(shared, slot) {
                    Some(wait) => {
                        let clone = self.inner.clone();
                        State::Queued {
                            wait,
                            pending: Some(Box::new((
                                std::mem::replace(&mut self.inner, clone),
                                req,
                            ))),
                            limit,
                        }
                    }
                    None => {
                        shared.settings.refused();
                        State::Refused { limit }
                    }
                }
            }
        };
        ServiceResponseFuture { state }
    }
}

pin_project! {
    /// Response future of [`ServiceAdaptiveConcurrency`].
    pub struct ServiceResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
    }
}

impl<S: Service<R>, R> fmt::Debug for ServiceResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceResponseFuture")
    }
}

impl<S: Service<R>, R> Future for ServiceResponseFuture<S, R> {
    type Output = Result<S::Response, AdaptiveError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut, guard } => {
                    let out = std::task::ready!(fut.poll(cx));
                    let guard = guard.take().expect("polled after completion");
                    guard.finish(if out.is_ok() {
                        Sample::Success
                    } else {
                        Sample::Dropped
                    });
                    return Poll::Ready(out.map_err(AdaptiveError::Inner));
                }
                StateProj::Queued { wait, pending, .. } => {
                    match std::task::ready!(wait.as_mut().poll(cx)) {
                        Some(guard) => {
                            let (mut svc, req) = *pending.take().expect("polled after completion");
                            this.state.set(State::Called {
                                fut: svc.call(req),
                                guard: Some(guard),
                            });
                        }
                        None => return Poll::Ready(Err(AdaptiveError::QueueTimeout)),
                    }
                }
                StateProj::Refused { limit } => {
                    return Poll::Ready(Err(AdaptiveError::Refused { limit: *limit }));
                }
            }
        }
    }
}
