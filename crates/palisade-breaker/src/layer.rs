//! [`CircuitBreakerLayer`], its [`Builder`], the [`CircuitBreaker`] service
//! and its [`ResponseFuture`].

use crate::{
    breaker::{BreakFn, Breaker, Permit, Settings},
    config::{Config, ConfigError, IdleTarget, InitialMode, RecoveryBackoff, SlidingWindow},
    keyed::{Group, KeyedBreakers, Select, SingleBreaker},
    registry::{BreakerRegistry, Entry},
    respond::{HttpAnswer, OnOpen, TypedError, WithFallback, Wrap},
    shared,
};
use palisade_core::classify::{Classify, ErrorsAsFailures, Outcome, ServerErrorsAsFailures};
use palisade_store::Store;
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tower_layer::Layer;
use tower_service::Service;

/// A classifier behind an `Arc`, so each call clones a pointer rather than
/// the classifier (the HTTP flavour's default wraps
/// [`ServerErrorsAsFailures`], which owns a list of gRPC codes).
///
/// ```
/// use palisade_breaker::SharedClassifier;
/// use palisade_core::classify::{Classify, Outcome, ServerErrorsAsFailures};
///
/// let c = SharedClassifier::new(ServerErrorsAsFailures::default());
/// let res = http::Response::builder().status(502).body(()).unwrap();
/// assert_eq!(c.classify(Ok::<_, &()>(&res)), Outcome::Failure);
/// ```
#[derive(Debug, Default)]
pub struct SharedClassifier<C>(Arc<C>);

impl<C> SharedClassifier<C> {
    /// Shares `classifier`.
    pub fn new(classifier: C) -> Self {
        Self(Arc::new(classifier))
    }
}

impl<C> Clone for SharedClassifier<C> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<C, Res, E> Classify<Res, E> for SharedClassifier<C>
where
    C: Classify<Res, E>,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        self.0.classify(result)
    }

    #[inline]
    fn at_end(&self, res: &Res) -> Option<palisade_core::classify::AtEnd> {
        self.0.at_end(res)
    }
}

/// The classifier of the HTTP flavour: errors, 5xx and server-fault gRPC
/// codes fail; 4xx do not.
pub type HttpClassifier = SharedClassifier<ServerErrorsAsFailures>;

/// Builder marker: one breaker for the layer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

/// Builder marker: one breaker per key of this extractor.
#[derive(Clone, Debug)]
pub struct PerKey<X>(X);

/// Builds a [`CircuitBreakerLayer`]; the same settings as [`Config`], plus
/// what only code can say (classifier, keys, fallback, registry, store).
///
/// Setters that change what the service is change the builder's type:
/// [`http`](Self::http), [`classifier`](Self::classifier),
/// [`per_key`](Self::per_key), [`fallback`](Self::fallback).
///
/// ```
/// use palisade_breaker::{CircuitBreakerLayer, State};
/// use std::time::Duration;
///
/// let layer = CircuitBreakerLayer::builder("search")
///     .failure_threshold(3)
///     .time_window(Duration::from_secs(30))
///     .minimum_calls(10)
///     .recovery_timeout(Duration::from_secs(20))
///     .build()
///     .unwrap();
/// assert_eq!(layer.breaker().unwrap().state(), State::Closed);
/// ```
pub struct Builder<C = ErrorsAsFailures, K = Single, O = TypedError> {
    name: Arc<str>,
    config: Config,
    break_fn: Option<BreakFn>,
    classifier: C,
    keys: K,
    on_open: O,
    registry: Option<BreakerRegistry>,
    store: Option<Store>,
}

impl<C: fmt::Debug, K: fmt::Debug, O: fmt::Debug> fmt::Debug for Builder<C, K, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("classifier", &self.classifier)
            .field("keys", &self.keys)
            .field("on_open", &self.on_open)
            .field("shared", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Builder {
    fn new(name: Arc<str>) -> Self {
        Self {
            name,
            config: Config::default(),
            break_fn: None,
            classifier: ErrorsAsFailures,
            keys: Single,
            on_open: TypedError,
            registry: None,
            store: None,
        }
    }
}

impl<C, K, O> Builder<C, K, O> {
    /// Replaces every setting by `config`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// A call dropped before it completes (timed out outside, or given up
    /// by its caller) after running this long is a failure (default 1 s;
    /// `None`: never).
    pub fn cancelled_failure_after(mut self, after: Option<Duration>) -> Self {
        self.config.cancelled_failure_after = after;
        self
    }

    /// Consecutive failures that trip the breaker (0: rule off).
    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.config.failure_threshold = n;
        self
    }

    /// Failure rate over the window that trips the breaker (`None`: rule off).
    pub fn failure_rate_threshold(mut self, rate: Option<f64>) -> Self {
        self.config.failure_rate_threshold = rate;
        self
    }

    /// The sliding window rates are computed over.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.config.sliding_window = window;
        self
    }

    /// A count-based window: the last `size` calls.
    pub fn count_window(self, size: u32) -> Self {
        self.sliding_window(SlidingWindow::Count { size })
    }

    /// A time-based window: the calls of the last `duration` (whole seconds).
    pub fn time_window(self, duration: Duration) -> Self {
        self.sliding_window(SlidingWindow::Time { duration })
    }

    /// Calls the window must hold before a rate can trip the breaker.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// Calls slower than `threshold` are slow; a slow-call rate of `rate`
    /// over the window trips the breaker.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.config.slow_call_threshold = Some(threshold);
        self.config.slow_call_rate_threshold = rate;
        self
    }

    /// How long the breaker stays open.
    pub fn recovery_timeout(mut self, timeout: Duration) -> Self {
        self.config.recovery_timeout = timeout;
        self
    }

    /// Open time growing on repeated trips.
    pub fn recovery_backoff(mut self, backoff: RecoveryBackoff) -> Self {
        self.config.recovery_backoff = Some(backoff);
        self
    }

    /// Open time as any function of the number of trips in a row (1, 2, …);
    /// overrides the timeout and backoff settings.
    pub fn break_duration_fn(
        mut self,
        f: impl Fn(u32) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.break_fn = Some(Arc::new(f));
        self
    }

    /// Trial calls admitted in half-open, and successes among them that
    /// close the breaker.
    pub fn half_open(mut self, max_calls: u32, success_threshold: u32) -> Self {
        self.config.half_open_max_calls = max_calls;
        self.config.success_threshold = success_threshold;
        self
    }

    /// A half-open breaker without calls for `timeout` goes to `target`.
    pub fn half_open_idle_timeout(mut self, timeout: Duration, target: IdleTarget) -> Self {
        self.config.half_open_idle_timeout = Some(timeout);
        self.config.half_open_idle_state = target;
        self
    }

    /// The state the breaker starts in.
    pub fn initial_mode(mut self, mode: InitialMode) -> Self {
        self.config.initial_mode = mode;
        self
    }

    /// Per-key breakers: most keys kept, and how long an unused key lives.
    pub fn key_limits(mut self, max_keys: u64, idle: Duration) -> Self {
        self.config.max_keys = max_keys;
        self.config.key_idle_timeout = idle;
        self
    }

    /// Names the breaker(s) in `registry` (events, snapshots, metrics).
    pub fn registry(mut self, registry: &BreakerRegistry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Judges outcomes with `classifier` (errors, HTTP statuses, gRPC codes,
    /// a predicate through [`classify_fn`](palisade_core::classify::classify_fn)).
    pub fn classifier<C2>(self, classifier: C2) -> Builder<C2, K, O> {
        Builder {
            name: self.name,
            config: self.config,
            break_fn: self.break_fn,
            classifier,
            keys: self.keys,
            on_open: self.on_open,
            registry: self.registry,
            store: self.store,
        }
    }

    /// One breaker per key (upstream host, route, tool name, …): any
    /// [`KeyExtractor`](palisade_core::key::KeyExtractor).
    pub fn per_key<X>(self, extractor: X) -> Builder<C, PerKey<X>, O> {
        Builder {
            name: self.name,
            config: self.config,
            break_fn: self.break_fn,
            classifier: self.classifier,
            keys: PerKey(extractor),
            on_open: self.on_open,
            registry: self.registry,
            store: self.store,
        }
    }

    /// Answers an open circuit with `fallback` (a service; for a closure,
    /// [`tower::service_fn`]) instead of an error or a 503.
    pub fn fallback<F>(self, fallback: F) -> Builder<C, K, O::Output>
    where
        O: WithFallback<F>,
    {
        Builder {
            name: self.name,
            config: self.config,
            break_fn: self.break_fn,
            classifier: self.classifier,
            keys: self.keys,
            on_open: self.on_open.with_fallback(fallback),
            registry: self.registry,
            store: self.store,
        }
    }

    /// Shares the circuit state with every replica using the same `store`
    /// (Redis or Redis Cluster; in-process for tests): when one replica
    /// trips, the others reject within
    /// [`shared_poll_interval`](Config::shared_poll_interval), and closes,
    /// resets, force-opens and disables spread the same way. Calls are
    /// still counted locally, so the hot path never touches the store; a
    /// background task writes local changes and polls the others'. A store
    /// that fails never fails a call: the error is logged and counted
    /// (`palisade_breaker_store_errors_total`), the local state stands and
    /// the task tries again on its next poll. The task ends when the
    /// layer, its services and its registry entry are dropped.
    ///
    /// The state of breaker `name` (key `k`) lives at
    /// `Store::key("breaker", name, "_" or "k_" + k, "v1")`, so replicas
    /// share a circuit by building it with the same name. Must be built
    /// inside a Tokio runtime ([`ConfigError::NoRuntime`]).
    ///
    /// ```
    /// use palisade_breaker::{CircuitBreakerLayer, State};
    /// use palisade_store::Store;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let store = Store::in_memory(); // Store::connect("redis://…") in production
    /// let replica = |store: &Store| {
    ///     CircuitBreakerLayer::builder("payments").shared(store).build().unwrap()
    /// };
    /// let (a, b) = (replica(&store), replica(&store));
    /// a.breaker().unwrap().trip(None);
    /// tokio::time::sleep(Duration::from_secs(1)).await; // one poll interval
    /// assert_eq!(b.breaker().unwrap().state(), State::Open);
    /// # }
    /// ```
    pub fn shared(mut self, store: &Store) -> Self {
        self.store = Some(store.clone());
        self
    }

    /// How often a shared breaker polls the store (default 1 s).
    pub fn shared_poll_interval(mut self, interval: Duration) -> Self {
        self.config.shared_poll_interval = interval;
        self
    }

    fn settings(&mut self) -> Result<Arc<Settings>, ConfigError> {
        let events = self.registry.as_ref().map(BreakerRegistry::events);
        let mut settings = Settings::new(self.config.clone(), self.break_fn.take(), events)?;
        settings.shared = self.store.is_some();
        Ok(Arc::new(settings))
    }
}

impl<C, K> Builder<C, K, TypedError> {
    /// The HTTP flavour: an open circuit answers 503 + `Retry-After` (gRPC:
    /// `UNAVAILABLE`) itself, and outcomes are judged by status (5xx and
    /// server-fault gRPC codes fail, 4xx do not).
    pub fn http(self) -> Builder<HttpClassifier, K, HttpAnswer> {
        Builder {
            name: self.name,
            config: self.config,
            break_fn: self.break_fn,
            classifier: SharedClassifier::new(ServerErrorsAsFailures::default()),
            keys: self.keys,
            on_open: HttpAnswer::default(),
            registry: self.registry,
            store: self.store,
        }
    }
}

impl<C, K> Builder<C, K, HttpAnswer> {
    /// Answers an open circuit to a JSON-RPC call (MCP's `tools/call` …)
    /// with a JSON-RPC error reply carrying the call's id, with HTTP
    /// `status` (200 for clients that read only the body, or 503), instead
    /// of a problem+json 503. The call is known from the request's
    /// [`JsonRpcCall`](palisade_core::jsonrpc::JsonRpcCall) extension
    /// (set by [`palisade_core::jsonrpc::peek`]); other requests get the
    /// HTTP answer.
    ///
    /// ```
    /// use palisade_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder("tools")
    ///     .http()
    ///     .json_rpc_answers(http::StatusCode::OK)
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn json_rpc_answers(mut self, status: http::StatusCode) -> Self {
        self.on_open = HttpAnswer::json_rpc(status);
        self
    }
}

impl<C, O> Builder<C, Single, O> {
    /// Checks the settings, creates the breaker and registers it.
    pub fn build(mut self) -> Result<CircuitBreakerLayer<C, SingleBreaker, O>, ConfigError> {
        let settings = self.settings()?;
        let breaker = Breaker::with_settings(self.name.clone(), None, settings);
        if let Some(store) = self.store.take() {
            shared::attach_single(&breaker, store)?;
        }
        if let Some(r) = &self.registry {
            r.insert(&self.name, Entry::Single(breaker.clone()))?;
        }
        Ok(CircuitBreakerLayer {
            select: SingleBreaker(breaker),
            classifier: self.classifier,
            on_open: self.on_open,
        })
    }
}

impl<C, X, O> Builder<C, PerKey<X>, O> {
    /// Checks the settings, creates the (empty) key group and registers it.
    pub fn build(mut self) -> Result<CircuitBreakerLayer<C, KeyedBreakers<X>, O>, ConfigError> {
        let settings = self.settings()?;
        let group = Arc::new(Group::new(self.name.clone(), settings));
        if let Some(store) = self.store.take() {
            shared::attach_group(&group, store)?;
        }
        if let Some(r) = &self.registry {
            r.insert(&self.name, Entry::Group(group.clone()))?;
        }
        Ok(CircuitBreakerLayer {
            select: KeyedBreakers {
                extractor: self.keys.0,
                group,
            },
            classifier: self.classifier,
            on_open: self.on_open,
        })
    }
}

/// Wraps services in a circuit breaker. See the [crate docs](crate).
///
/// Every service the layer wraps shares its breaker(s). Flavours (chosen by
/// type, see [`respond`](crate::respond)): a generic service gets
/// [`BreakerError`](crate::BreakerError) (`CircuitBreakerLayer::new`); an
/// HTTP service answers 503 itself (`CircuitBreakerLayer::http`); either
/// can answer with a fallback instead.
///
/// ```
/// use palisade_breaker::CircuitBreakerLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new("echo"))
///     .service_fn(|s: String| async move { Ok::<_, std::io::Error>(s) });
/// assert_eq!(svc.oneshot("hi".to_owned()).await.unwrap(), "hi");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures, K = SingleBreaker, O = TypedError> {
    select: K,
    classifier: C,
    on_open: O,
}

impl CircuitBreakerLayer {
    /// A breaker named `name` with the default settings, for a generic
    /// service (typed errors; `Err` is a failure).
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self::builder(name)
            .build()
            .expect("the default settings are valid")
    }

    /// A builder for a breaker named `name`.
    pub fn builder(name: impl Into<Arc<str>>) -> Builder {
        Builder::new(name.into())
    }

    /// A breaker named `name` with `config`, for a generic service.
    pub fn from_config(name: impl Into<Arc<str>>, config: &Config) -> Result<Self, ConfigError> {
        Self::builder(name).config(config.clone()).build()
    }
}

impl CircuitBreakerLayer<HttpClassifier, SingleBreaker, HttpAnswer> {
    /// A breaker named `name` with the default settings, for an HTTP
    /// service (answers 503 / gRPC `UNAVAILABLE` itself).
    ///
    /// ```
    /// use palisade_breaker::CircuitBreakerLayer;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = CircuitBreakerLayer::http("upstream");
    /// layer.breaker().unwrap().force_open();
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// });
    /// let res = svc.oneshot(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.status(), 503);
    /// # }
    /// ```
    pub fn http(name: impl Into<Arc<str>>) -> Self {
        CircuitBreakerLayer::builder(name)
            .http()
            .build()
            .expect("the default settings are valid")
    }

    /// A breaker named `name` with `config`, for an HTTP service.
    pub fn http_from_config(
        name: impl Into<Arc<str>>,
        config: &Config,
    ) -> Result<Self, ConfigError> {
        CircuitBreakerLayer::builder(name)
            .config(config.clone())
            .http()
            .build()
    }
}

impl<C, O> CircuitBreakerLayer<C, SingleBreaker, O> {
    /// The layer's breaker (a handle: snapshots, reset, force-open …).
    pub fn breaker(&self) -> Option<Breaker> {
        Some(self.select.0.clone())
    }
}

impl<C, X, O> CircuitBreakerLayer<C, KeyedBreakers<X>, O> {
    /// The layer's per-key breakers.
    pub fn breakers(&self) -> &KeyedBreakers<X> {
        &self.select
    }
}

impl<S, C: Clone, K: Clone, O: Clone> Layer<S> for CircuitBreakerLayer<C, K, O> {
    type Service = CircuitBreaker<S, C, K, O>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            select: self.select.clone(),
            classifier: self.classifier.clone(),
            on_open: self.on_open.clone(),
        }
    }
}

/// The circuit breaker service. See [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S, C = ErrorsAsFailures, K = SingleBreaker, O = TypedError> {
    inner: S,
    select: K,
    classifier: C,
    on_open: O,
}

impl<S, C, K, O> CircuitBreaker<S, C, K, O> {
    palisade_core::inner_accessors!(inner: S);
}

impl<S, C, K, O, Req> Service<Req> for CircuitBreaker<S, C, K, O>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    K: Select<Req>,
    O: OnOpen<Req, S::Response, S::Error>,
{
    type Response = O::Response;
    type Error = O::Error;
    type Future = ResponseFuture<S::Future, O::Future, C, O>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(O::error)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        // A key extractor that must refuse the request (`MissingPeer::Refuse`
        // and no peer address): answered before a key is extracted, so the
        // request is counted once and the inner service never sees it.
        if let Some(err) = self.select.refusal(&req) {
            return refused(&self.on_open, req, err);
        }
        match self.select.select(&req).into_permit() {
            Ok(permit) => {
                let permit = permit.sending(self.on_open.sending(&req));
                ResponseFuture::called(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(open) => ResponseFuture::open(self.on_open.open(req, open)),
        }
    }
}

/// The answer to a refused request (cold: a setup mistake).
#[cold]
#[inline(never)]
fn refused<F, R, C, O, Req, Res, E>(
    on_open: &O,
    req: Req,
    err: palisade_core::Error,
) -> ResponseFuture<F, R, C, O>
where
    O: OnOpen<Req, Res, E, Future = R>,
{
    tracing::debug!(kind = %err.kind(), "circuit breaker refused a request without a key");
    ResponseFuture::open(on_open.refused(req, err))
}

pin_project! {
    /// Response future of [`CircuitBreaker`]: the inner call, whose outcome
    /// is recorded when it completes (and as a failure if the future is
    /// dropped after running `cancelled_failure_after`), or the answer to an
    /// open circuit or to a request its key extractor refused.
    pub struct ResponseFuture<F, R, C, O> {
        #[pin]
        kind: Kind<F, R, C>,
        _flavour: PhantomData<fn() -> O>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R, C> {
        Called { #[pin] future: F, permit: Option<Permit>, classifier: C },
        Open { #[pin] future: R },
    }
}

impl<F, R, C, O> ResponseFuture<F, R, C, O> {
    #[inline]
    fn called(future: F, permit: Permit, classifier: C) -> Self {
        Self {
            kind: Kind::Called {
                future,
                permit: Some(permit),
                classifier,
            },
            _flavour: PhantomData,
        }
    }

    fn open(future: R) -> Self {
        Self {
            kind: Kind::Open { future },
            _flavour: PhantomData,
        }
    }
}

impl<F, R, C, O, Res, E> Future for ResponseFuture<F, R, C, O>
where
    F: Future<Output = Result<Res, E>>,
    C: Classify<Res, E>,
    O: Wrap<Res, E>,
    R: Future<Output = Result<O::Response, O::Error>>,
{
    type Output = Result<O::Response, O::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                permit,
                classifier,
            } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take() {
                    // A gRPC status still to come in the trailers: judged
                    // when the body ends.
                    if let Ok(res) = &result
                        && let Some(at_end) = classifier.at_end(res)
                    {
                        return Poll::Ready(match result {
                            Ok(res) => Ok(O::watch(res, permit, at_end)),
                            Err(err) => Err(O::error(err)),
                        });
                    }
                    permit.record(classifier.classify(result.as_ref()));
                }
                Poll::Ready(match result {
                    Ok(res) => Ok(O::response(res)),
                    Err(err) => Err(O::error(err)),
                })
            }
            KindProj::Open { future } => future.poll(cx),
        }
    }
}

impl<F, R, C, O> fmt::Debug for ResponseFuture<F, R, C, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}
