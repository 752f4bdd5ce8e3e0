//! The layer, its builder and its services.

use crate::{
    Aborted, BuildError, Compiled, Decision, FAULT_HEADER, FAULT_TOKEN_HEADER, Fault, FaultAnswer,
    FaultError, FaultMetrics, Outcome, Rule, rng::Rng,
};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use ipnet::IpNet;
use palisade_core::{
    GrpcCode, PalisadeBody, is_grpc_request,
    key::{KeyExtractor, MissingPeer, PeerIp},
};
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

/// The key extractor of a layer without one: no call has a key, so rules
/// with [`Rule::key`] never match.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<R> KeyExtractor<R> for NoKey {
    type Key = String;

    fn extract(&self, _req: &R) -> Option<String> {
        None
    }
}

struct CompiledRule {
    path_prefix: Option<String>,
    key: Option<String>,
    fault: Compiled,
}

struct Trust {
    nets: Vec<IpNet>,
    peer: PeerIp,
    token: Option<String>,
}

struct Counters {
    delay: IntCounter,
    error: IntCounter,
    abort: IntCounter,
}

struct Shared {
    rules: Vec<CompiledRule>,
    keyed: bool,
    trust: Option<Trust>,
    rng: Rng,
    counters: Option<Counters>,
}

/// Injects faults into calls; see the [crate docs](crate). Built by
/// [`FaultLayer::builder`] or [`FaultLayer::from_config`].
pub struct FaultLayer<K = NoKey> {
    shared: Arc<Shared>,
    extractor: K,
}

impl<K: Clone> Clone for FaultLayer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            extractor: self.extractor.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for FaultLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayer")
            .field("rules", &self.shared.rules.len())
            .field("header_trusted", &self.shared.trust.is_some())
            .field("extractor", &self.extractor)
            .finish()
    }
}

impl FaultLayer {
    /// A builder: no rule, the header not honoured from anyone (a layer
    /// that injects nothing).
    pub fn builder() -> FaultLayerBuilder {
        FaultLayerBuilder {
            rules: Vec::new(),
            extractor: NoKey,
            peers: None,
            token: None,
            seed: None,
            metrics: None,
        }
    }

    /// A layer that injects nothing (what an unconfigured stack gets).
    pub fn off() -> Self {
        Self::builder().build().expect("an empty layer is valid")
    }
}

impl<K> FaultLayer<K> {
    /// Whether this layer can ever inject a fault (a rule, or a trusted
    /// header source).
    pub fn is_active(&self) -> bool {
        !self.shared.rules.is_empty() || self.shared.trust.is_some()
    }

    /// The same faults for any service whose requests are `R`: an error
    /// answer or an abort is a [`FaultError`] (path rules never match).
    ///
    /// ```
    /// use palisade_fault::{Fault, FaultError, FaultLayer, Rule};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FaultLayer::builder()
    ///     .rule(Rule::all().fault(Fault::new().abort(100.0)))
    ///     .build()
    ///     .unwrap();
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer.for_services())
    ///     .service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
    /// let err = svc.oneshot(1).await.unwrap_err();
    /// assert!(matches!(err, FaultError::Aborted));
    /// # }
    /// ```
    pub fn for_services(self) -> ServiceFaultLayer<K> {
        ServiceFaultLayer { layer: self }
    }

    fn count(&self, decision: &Decision) {
        if let Some(c) = &self.shared.counters {
            if decision.delay.is_some() {
                c.delay.inc();
            }
            match decision.outcome {
                Outcome::Call => {}
                Outcome::Answer(_) => c.error.inc(),
                Outcome::Abort => c.abort.inc(),
            }
        }
        if decision != &Decision::default() {
            tracing::debug!(delay = ?decision.delay, outcome = ?decision.outcome, "fault injected");
        }
    }

    /// The rules' decision for a call with this path and key.
    fn by_rules<R>(&self, path: Option<&str>, req: &R) -> Decision
    where
        K: KeyExtractor<R>,
    {
        let shared = &self.shared;
        if shared.rules.is_empty() {
            return Decision::default();
        }
        let key = shared
            .keyed
            .then(|| self.extractor.extract(req).map(|k| k.to_string()))
            .flatten();
        for rule in &shared.rules {
            if let Some(prefix) = &rule.path_prefix
                && !path.is_some_and(|p| p.starts_with(prefix.as_str()))
            {
                continue;
            }
            if let Some(want) = &rule.key
                && key.as_deref() != Some(want.as_str())
            {
                continue;
            }
            return rule.fault.decide(&shared.rng);
        }
        Decision::default()
    }

    /// The decision for an HTTP request; strips the fault headers.
    fn decide_http<B>(&self, req: &mut Request<B>) -> Decision
    where
        K: KeyExtractor<Request<B>>,
    {
        let asked = req.headers_mut().remove(FAULT_HEADER);
        let token = req.headers_mut().remove(FAULT_TOKEN_HEADER);
        let decision = match asked {
            Some(asked) => match &self.shared.trust {
                Some(trust) if trust.trusts(req, token.as_ref()) => {
                    match parse_header(&asked).and_then(|f| f.compile()) {
                        Ok(fault) => fault.decide(&self.shared.rng),
                        Err(err) => {
                            tracing::warn!(error = %err, "ignoring an invalid x-palisade-fault header");
                            self.by_rules(Some(req.uri().path()), req)
                        }
                    }
                }
                _ => {
                    tracing::debug!("ignoring x-palisade-fault from an untrusted caller");
                    self.by_rules(Some(req.uri().path()), req)
                }
            },
            None => self.by_rules(Some(req.uri().path()), req),
        };
        self.count(&decision);
        decision
    }
}

impl Trust {
    fn trusts<B>(&self, req: &Request<B>, token: Option<&HeaderValue>) -> bool {
        if let (Some(want), Some(got)) = (&self.token, token)
            && constant_time_eq(want.as_bytes(), got.as_bytes())
        {
            return true;
        }
        // The connected peer itself: no proxy is trusted by `peer`, so no
        // forwarded header can name another address.
        !self.nets.is_empty()
            && self
                .peer
                .extract(req)
                .is_some_and(|ip| self.nets.iter().any(|net| net.contains(&ip)))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `delay=200ms, status=503, grpc=14, abort, percent=50` (any order, `,` or
/// `;` between parts; `percent` applies to each part, default 100).
fn parse_header(value: &HeaderValue) -> Result<Fault, BuildError> {
    let bad = || BuildError::Header;
    let text = value.to_str().map_err(|_| bad())?;
    let mut percent = 100.0;
    let (mut delay, mut status, mut grpc, mut abort) = (None, None, None, false);
    for part in text
        .split([',', ';'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (name, val) = part.split_once('=').unwrap_or((part, ""));
        match (name.trim().to_ascii_lowercase().as_str(), val.trim()) {
            ("delay", v) => delay = Some(parse_duration(v).ok_or_else(bad)?),
            ("status", v) => status = Some(v.parse::<u16>().map_err(|_| bad())?),
            ("grpc", v) => {
                grpc = Some(grpc_code(v.parse::<i32>().map_err(|_| bad())?).ok_or_else(bad)?)
            }
            ("abort", "") => abort = true,
            ("percent", v) => percent = v.parse::<f64>().map_err(|_| bad())?,
            _ => return Err(bad()),
        }
    }
    let mut fault = Fault::new();
    if let Some(d) = delay {
        fault = fault.delay(d, percent);
    }
    if status.is_some() || grpc.is_some() {
        fault = fault.error(status.unwrap_or(503), percent);
        if let Some(code) = grpc {
            fault = fault.grpc_code(code);
        }
    }
    if abort {
        fault = fault.abort(percent);
    }
    Ok(fault)
}

/// `250ms`, `2s`, or a bare number of milliseconds.
fn parse_duration(v: &str) -> Option<Duration> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = v.strip_suffix('s') {
        return s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
    }
    v.parse().ok().map(Duration::from_millis)
}

/// The gRPC code numbered `n`.
pub(crate) fn grpc_code(n: i32) -> Option<GrpcCode> {
    use GrpcCode::*;
    Some(match n {
        1 => Cancelled,
        2 => Unknown,
        3 => InvalidArgument,
        4 => DeadlineExceeded,
        5 => NotFound,
        6 => AlreadyExists,
        7 => PermissionDenied,
        8 => ResourceExhausted,
        9 => FailedPrecondition,
        10 => Aborted,
        11 => OutOfRange,
        12 => Unimplemented,
        13 => Internal,
        14 => Unavailable,
        15 => DataLoss,
        16 => Unauthenticated,
        _ => return None,
    })
}

/// Builds a [`FaultLayer`].
pub struct FaultLayerBuilder<K = NoKey> {
    rules: Vec<Rule>,
    extractor: K,
    peers: Option<Vec<IpNet>>,
    token: Option<String>,
    seed: Option<u64>,
    metrics: Option<(FaultMetrics, String)>,
}

impl<K: fmt::Debug> fmt::Debug for FaultLayerBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultLayerBuilder")
            .field("rules", &self.rules)
            .field("extractor", &self.extractor)
            .field("peers", &self.peers)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("seed", &self.seed)
            .finish()
    }
}

impl<K> FaultLayerBuilder<K> {
    /// Adds a rule; the first rule that matches a call decides its fault.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Keys calls with `extractor`, for rules with [`Rule::key`].
    ///
    /// ```
    /// use palisade_core::key::HeaderKey;
    /// use palisade_fault::{Fault, FaultLayer, Rule};
    ///
    /// let layer = FaultLayer::builder()
    ///     .key(HeaderKey::new("x-tenant"))
    ///     .rule(Rule::all().key("canary").fault(Fault::new().error(500, 50.0)))
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    pub fn key<K2>(self, extractor: K2) -> FaultLayerBuilder<K2> {
        FaultLayerBuilder {
            rules: self.rules,
            extractor,
            peers: self.peers,
            token: self.token,
            seed: self.seed,
            metrics: self.metrics,
        }
    }

    /// Honours `x-palisade-fault` from peers in these networks (the
    /// connected peer, as a server inserts it: [`PeerAddr`](palisade_core::key::PeerAddr),
    /// axum's or tonic's connect info; never a forwarded address).
    ///
    /// ```
    /// use palisade_core::key::PeerAddr;
    /// use palisade_fault::FaultLayer;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = FaultLayer::builder()
    ///     .trust_peers(["10.0.0.0/8".parse().unwrap()])
    ///     .build()
    ///     .unwrap();
    /// let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    /// });
    /// let ask = |peer: &str| {
    ///     let mut req = http::Request::builder().header("x-palisade-fault", "status=500").body(()).unwrap();
    ///     req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
    ///     req
    /// };
    /// assert_eq!(svc.clone().oneshot(ask("10.1.2.3:4000")).await.unwrap().status(), 500);
    /// assert_eq!(svc.oneshot(ask("203.0.113.5:4000")).await.unwrap().status(), 200);
    /// # }
    /// ```
    pub fn trust_peers(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.peers = Some(nets.into_iter().collect());
        self
    }

    /// Honours `x-palisade-fault` from callers that send this secret in
    /// `x-palisade-fault-token` (compared in constant time). An empty
    /// secret is ignored.
    pub fn trust_token(mut self, secret: impl Into<String>) -> Self {
        let secret = secret.into();
        self.token = (!secret.is_empty()).then_some(secret);
        self
    }

    /// Seeds the generator the percentages draw from (tests; default: a
    /// random seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Counts injected faults in `palisade_fault_injected_total{name, kind}`.
    pub fn metrics(mut self, metrics: &FaultMetrics, name: &str) -> Self {
        self.metrics = Some((metrics.clone(), name.to_owned()));
        self
    }

    /// The layer.
    ///
    /// # Errors
    /// A percentage outside 0–100 or an error status outside 400–599.
    pub fn build(self) -> Result<FaultLayer<K>, BuildError> {
        let rules = self
            .rules
            .iter()
            .map(|r| {
                Ok(CompiledRule {
                    path_prefix: r.path_prefix.clone(),
                    key: r.key.clone(),
                    fault: r.fault.compile()?,
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        let keyed = rules.iter().any(|r| r.key.is_some());
        let peers = self.peers.unwrap_or_default();
        let trust = (!peers.is_empty() || self.token.is_some()).then(|| Trust {
            nets: peers,
            peer: PeerIp::new().when_missing(MissingPeer::Skip),
            token: self.token,
        });
        let counters = self.metrics.map(|(m, name)| Counters {
            delay: m.injected.with_label_values(&[name.as_str(), "delay"]),
            error: m.injected.with_label_values(&[name.as_str(), "error"]),
            abort: m.injected.with_label_values(&[name.as_str(), "abort"]),
        });
        Ok(FaultLayer {
            shared: Arc::new(Shared {
                rules,
                keyed,
                trust,
                rng: Rng::new(self.seed),
                counters,
            }),
            extractor: self.extractor,
        })
    }
}

impl<S, K: Clone> Layer<S> for FaultLayer<K> {
    type Service = FaultInjection<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultInjection {
            inner,
            layer: self.clone(),
        }
    }
}

/// An HTTP service with faults injected; see the [crate docs](crate).
#[derive(Clone, Debug)]
pub struct FaultInjection<S, K = NoKey> {
    inner: S,
    layer: FaultLayer<K>,
}

impl<S, K> FaultInjection<S, K> {
    palisade_core::inner_accessors!(inner: S);
}

impl<S, K, B, ResBody> Service<Request<B>> for FaultInjection<S, K>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    K: KeyExtractor<Request<B>>,
{
    type Response = Response<PalisadeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<B>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let decision = self.layer.decide_http(&mut req);
        let grpc = is_grpc_request(req.headers());
        let state = match (decision.delay, decision.outcome) {
            (None, Outcome::Call) => State::Called {
                fut: self.inner.call(req),
            },
            (None, outcome) => State::Done {
                outcome: Some(outcome),
            },
            (Some(by), outcome) => {
                let pending = matches!(outcome, Outcome::Call).then(|| {
                    // The ready service goes with the request; this one
                    // gets a fresh clone.
                    let clone = self.inner.clone();
                    (std::mem::replace(&mut self.inner, clone), req)
                });
                State::Delayed {
                    sleep: tokio::time::sleep(by),
                    pending,
                    outcome,
                }
            }
        };
        ResponseFuture { state, grpc }
    }
}

pin_project! {
    /// Response future of [`FaultInjection`].
    pub struct ResponseFuture<S, R>
    where
        S: Service<R>,
    {
        #[pin]
        state: State<S, R>,
        grpc: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, R>
    where
        S: Service<R>,
    {
        Called { #[pin] fut: S::Future },
        Delayed { #[pin] sleep: Sleep, pending: Option<(S, R)>, outcome: Outcome },
        Done { outcome: Option<Outcome> },
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
{
    type Output = Result<Response<PalisadeBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    let res = std::task::ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(res.map(PalisadeBody::inner)));
                }
                StateProj::Delayed {
                    sleep,
                    pending,
                    outcome,
                } => {
                    std::task::ready!(sleep.poll(cx));
                    let next = match pending.take() {
                        Some((mut svc, req)) => State::Called { fut: svc.call(req) },
                        None => State::Done {
                            outcome: Some(*outcome),
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Done { outcome } => {
                    let res = match outcome.take().expect("polled after completion") {
                        Outcome::Answer(answer) => error_answer(answer, *this.grpc),
                        _ => aborted(),
                    };
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}

/// An injected error answer: the status with a problem body, or a gRPC
/// trailers-only answer.
fn error_answer<B>(answer: FaultAnswer, grpc: bool) -> Response<PalisadeBody<B>> {
    let mut res = if grpc {
        let mut res = Response::new(PalisadeBody::empty());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from(answer.grpc as i32));
        h.insert("grpc-message", HeaderValue::from_static("injected%20fault"));
        res
    } else {
        let status = answer.status;
        let body = format!(
            r#"{{"type":"about:blank","title":"{}","status":{},"detail":"injected fault"}}"#,
            status.canonical_reason().unwrap_or("Error"),
            status.as_u16()
        );
        let mut res = Response::new(PalisadeBody::full(body));
        *res.status_mut() = status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        res
    };
    res.headers_mut()
        .insert(FAULT_HEADER, HeaderValue::from_static("injected"));
    res
}

/// An injected abort: a `502` head (what a proxy makes of an upstream that
/// cut the connection, so breakers and retries count it as one) whose
/// body fails at once, so the server cuts the client's connection (HTTP/1.1)
/// or resets its stream (HTTP/2).
fn aborted<B>() -> Response<PalisadeBody<B>> {
    let mut res = Response::new(PalisadeBody::failed(Bytes::new(), Box::new(Aborted(()))));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res.headers_mut()
        .insert(FAULT_HEADER, HeaderValue::from_static("injected"));
    res
}

/// Faults for any service, with a typed error: built by
/// [`FaultLayer::for_services`].
#[derive(Clone, Debug)]
pub struct ServiceFaultLayer<K = NoKey> {
    layer: FaultLayer<K>,
}

impl<S, K: Clone> Layer<S> for ServiceFaultLayer<K> {
    type Service = ServiceFaultInjection<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceFaultInjection {
            inner,
            layer: self.layer.clone(),
        }
    }
}

/// A service with faults injected and a typed error; see
/// [`FaultLayer::for_services`].
#[derive(Clone, Debug)]
pub struct ServiceFaultInjection<S, K = NoKey> {
    inner: S,
    layer: FaultLayer<K>,
}

impl<S, K> ServiceFaultInjection<S, K> {
    palisade_core::inner_accessors!(inner: S);
}

impl<S, K, R> Service<R> for ServiceFaultInjection<S, K>
where
    S: Service<R> + Clone,
    K: KeyExtractor<R>,
{
    type Response = S::Response;
    type Error = FaultError<S::Error>;
    type Future = ServiceResponseFuture<S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(FaultError::Inner)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let decision = self.layer.by_rules(None, &req);
        self.layer.count(&decision);
        let state = match (decision.delay, decision.outcome) {
            (None, Outcome::Call) => State::Called {
                fut: self.inner.call(req),
            },
            (None, outcome) => State::Done {
                outcome: Some(outcome),
            },
            (Some(by), outcome) => {
                let pending = matches!(outcome, Outcome::Call).then(|| {
                    let clone = self.inner.clone();
                    (std::mem::replace(&mut self.inner, clone), req)
                });
                State::Delayed {
                    sleep: tokio::time::sleep(by),
                    pending,
                    outcome,
                }
            }
        };
        ServiceResponseFuture { state }
    }
}

pin_project! {
    /// Response future of [`ServiceFaultInjection`].
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
    type Output = Result<S::Response, FaultError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    return fut.poll(cx).map_err(FaultError::Inner);
                }
                StateProj::Delayed {
                    sleep,
                    pending,
                    outcome,
                } => {
                    std::task::ready!(sleep.poll(cx));
                    let next = match pending.take() {
                        Some((mut svc, req)) => State::Called { fut: svc.call(req) },
                        None => State::Done {
                            outcome: Some(*outcome),
                        },
                    };
                    this.state.set(next);
                }
                StateProj::Done { outcome } => {
                    return Poll::Ready(Err(
                        match outcome.take().expect("polled after completion") {
                            Outcome::Answer(answer) => FaultError::Injected(answer),
                            _ => FaultError::Aborted,
                        },
                    ));
                }
            }
        }
    }
}

impl<E: Into<palisade_core::BoxError>> From<FaultError<E>> for palisade_core::Error {
    fn from(err: FaultError<E>) -> Self {
        use palisade_core::{Error, ErrorKind};
        match err {
            FaultError::Injected(answer) => {
                let kind = match answer.status.as_u16() {
                    429 => ErrorKind::RateLimited,
                    504 => ErrorKind::Timeout,
                    502 => ErrorKind::Upstream,
                    500 => ErrorKind::Internal,
                    400 => ErrorKind::BadRequest,
                    _ => ErrorKind::Unavailable,
                };
                Error::new(kind, "injected fault")
            }
            FaultError::Aborted => Error::new(ErrorKind::Upstream, "injected fault: call aborted"),
            FaultError::Inner(e) => {
                Error::new(ErrorKind::Upstream, "the service failed").with_source(e)
            }
        }
    }
}
