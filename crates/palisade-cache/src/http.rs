//! The HTTP cache: [`CacheLayer`] and [`Cache`].

use crate::{
    CacheBuilder, CacheError, CacheHandle, Config,
    core::{Core, Join, Lock, Value},
    directives::CacheControl,
    key::{same_origin_target, with_buf, write_primary, write_variant},
    policy::{self, Decision, Rules, Stored},
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use palisade_core::body::collect::{Read, read_bounded};
use palisade_core::body::media::MediaKind;
use palisade_core::body::tee::TeeBody;
use palisade_core::{BoxError, PalisadeBody, key::KeyExtractor};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    hash::{BuildHasher, Hasher},
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
};
use tower_layer::Layer;
use tower_service::Service;

/// The `X-Cache` header name.
pub const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");

/// How a response was produced, as written in `X-Cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
}

impl Outcome {
    fn value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
        })
    }
}

/// No custom key part: the key is the method, URI and Vary fields only.
///
/// ```
/// use palisade_core::key::KeyExtractor;
/// assert_eq!(palisade_cache::NoKey.extract(&http::Request::new(())), Some(""));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl<Req> KeyExtractor<Req> for NoKey {
    type Key = &'static str;
    fn extract(&self, _req: &Req) -> Option<&'static str> {
        Some("")
    }
}

/// A Vary marker: the stored responses of a URI vary on `names`.
#[derive(Debug)]
pub(crate) struct VaryMarker {
    names: Vec<String>,
    generation: u64,
}

#[derive(Clone, Debug)]
pub(crate) enum HttpValue {
    Response(Arc<Stored>),
    Vary(Arc<VaryMarker>),
}

impl Value for HttpValue {
    fn weight(&self) -> usize {
        match self {
            Self::Response(s) => s.weight(),
            Self::Vary(m) => 64 + m.names.iter().map(String::len).sum::<usize>(),
        }
    }

    fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_slice(b"PC1");
        match self {
            Self::Response(s) => {
                out.reserve(s.weight());
                out.put_u8(b'R');
                s.encode(&mut out);
            }
            Self::Vary(m) => {
                out.put_u8(b'V');
                out.put_u64(m.generation);
                out.put_slice(m.names.join(",").as_bytes());
            }
        }
        out.freeze()
    }

    fn decode(mut bytes: Bytes) -> Option<Self> {
        if bytes.len() < 4 || &bytes[..3] != b"PC1" {
            return None;
        }
        bytes.advance(3);
        match bytes.get_u8() {
            b'R' => Stored::decode(bytes).map(|s| Self::Response(Arc::new(s))),
            b'V' if bytes.len() >= 8 => {
                let generation = bytes.get_u64();
                let names = std::str::from_utf8(&bytes)
                    .ok()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                Some(Self::Vary(Arc::new(VaryMarker { names, generation })))
            }
            _ => None,
        }
    }
}

pub(crate) struct Shared {
    /// `false`: every request passes straight through.
    enabled: bool,
    core: Arc<Core<HttpValue>>,
    rules: Rules,
    max_body: usize,
    x_cache: bool,
    /// Primary keys whose last response could not be stored, with the
    /// unix ms until which that is remembered (see [`MEMO_MS`]).
    uncacheable: DashMap<Box<str>, u64>,
}

/// How long a key whose response could not be stored skips the cache's
/// miss-path work (L2 lookup, coalescing, the cross-replica lock).
const MEMO_MS: u64 = 2_000;
/// At most this many keys are remembered as uncacheable.
const MEMO_MAX: usize = 16_384;

impl Shared {
    /// Whether `primary`'s last response could not be stored (recently).
    #[inline]
    fn memo_hit(&self, primary: &str, now: u64) -> bool {
        self.uncacheable
            .get(primary)
            .is_some_and(|until| *until > now)
    }

    /// Remembers that `primary`'s response could not be stored.
    fn memo_insert(&self, primary: &str, now: u64) {
        if self.uncacheable.len() >= MEMO_MAX {
            self.uncacheable.retain(|_, until| *until > now);
            if self.uncacheable.len() >= MEMO_MAX {
                return;
            }
        }
        self.uncacheable.insert(Box::from(primary), now + MEMO_MS);
    }

    fn count(&self, o: Outcome) {
        let c = &self.core.counters;
        let m = self.core.metrics.as_ref();
        match o {
            Outcome::Hit => {
                c.hits.fetch_add(1, Relaxed);
                if let Some(m) = m {
                    m.hit.inc();
                }
            }
            Outcome::Miss => {
                c.misses.fetch_add(1, Relaxed);
                if let Some(m) = m {
                    m.miss.inc();
                }
            }
            Outcome::Stale => {
                c.stale.fetch_add(1, Relaxed);
                if let Some(m) = m {
                    m.stale.inc();
                }
            }
            Outcome::Revalidated => {
                c.revalidations.fetch_add(1, Relaxed);
                if let Some(m) = m {
                    m.revalidated.inc();
                }
            }
        }
    }

    fn bypass(&self) {
        self.core.counters.bypassed.fetch_add(1, Relaxed);
        if let Some(m) = &self.core.metrics {
            m.bypass.inc();
        }
    }

    /// L1 lookup of the primary key in `buf` (a Vary marker leads on to the
    /// variant, whose key is then left in `buf`).
    #[inline]
    fn l1_lookup(
        &self,
        buf: &mut String,
        headers: &HeaderMap,
        now: tokio::time::Instant,
    ) -> Option<Arc<Stored>> {
        match self.core.l1_get_at(buf, now)? {
            HttpValue::Response(s) => Some(s),
            HttpValue::Vary(m) => {
                write_variant(
                    buf,
                    m.generation,
                    m.names.iter().map(String::as_str),
                    headers,
                );
                match self.core.l1_get_at(buf, now)? {
                    HttpValue::Response(s) => Some(s),
                    HttpValue::Vary(_) => None,
                }
            }
        }
    }

    /// L2 lookup; returns the entry and its key.
    async fn l2_lookup(
        &self,
        primary: &Arc<str>,
        headers: &HeaderMap,
    ) -> Option<(Arc<Stored>, Arc<str>)> {
        self.core.l2.as_ref()?;
        match self.core.l2_get(primary).await? {
            HttpValue::Response(s) => Some((s, primary.clone())),
            HttpValue::Vary(m) => {
                let mut key = String::from(&**primary);
                write_variant(
                    &mut key,
                    m.generation,
                    m.names.iter().map(String::as_str),
                    headers,
                );
                match self.core.l2_get(&key).await? {
                    HttpValue::Response(s) => Some((s, Arc::from(key))),
                    HttpValue::Vary(_) => None,
                }
            }
        }
    }

    /// Counts `outcome` and builds the answer from a stored response.
    fn respond<B>(
        &self,
        s: &Stored,
        outcome: Outcome,
        req: &HeaderMap,
        head: bool,
        now: u64,
    ) -> Response<PalisadeBody<B>> {
        self.count(outcome);
        self.build(s, outcome, req, head, now)
    }

    /// Builds the answer from a stored response (answering the client's
    /// own conditional request with a 304 when it matches).
    fn build<B>(
        &self,
        s: &Stored,
        outcome: Outcome,
        req: &HeaderMap,
        head: bool,
        now: u64,
    ) -> Response<PalisadeBody<B>> {
        let not_modified = s.status == StatusCode::OK
            && (req.contains_key(header::IF_NONE_MATCH)
                || req.contains_key(header::IF_MODIFIED_SINCE))
            && policy::client_not_modified(req, &s.headers);
        let secs = s.age(now) / 1000;
        let age = age_value(secs);
        let headers = if outcome == Outcome::Hit && self.x_cache && !not_modified {
            // Hot path: a prepared map, one value replaced in place.
            let mut headers = s.hit_headers.clone();
            headers.insert(header::AGE, age);
            headers
        } else {
            let mut headers = if not_modified {
                policy::not_modified_headers(&s.headers)
            } else {
                s.headers.clone()
            };
            // A response straight from the origin carries no Age of ours
            // unless it arrived aged (RFC 9111 §5.1).
            if outcome != Outcome::Miss || secs > 0 {
                headers.insert(header::AGE, age);
            }
            if s.flags & policy::SURROGATE != 0 {
                headers.remove("surrogate-control");
            }
            if self.x_cache {
                headers.insert(X_CACHE, outcome.value());
            }
            headers
        };
        let body = if not_modified || head {
            PalisadeBody::full(Bytes::new())
        } else {
            PalisadeBody::full(s.body.clone())
        };
        let mut res = Response::new(body);
        *res.status_mut() = if not_modified {
            StatusCode::NOT_MODIFIED
        } else {
            s.status
        };
        *res.headers_mut() = headers;
        res
    }

    /// Stores `s` for a request with `req_headers` under `primary` (through
    /// a Vary marker when the response varies); `key` pins the variant key.
    async fn store(
        &self,
        primary: &Arc<str>,
        key: Option<&Arc<str>>,
        req_headers: &HeaderMap,
        s: Stored,
    ) {
        let mut names: Vec<String> = policy::vary_names(&s.headers)
            .map(str::to_ascii_lowercase)
            .collect();
        names.sort();
        names.dedup();
        let value = HttpValue::Response(Arc::new(s));
        if names.is_empty() {
            self.core.put(key.unwrap_or(primary).clone(), value).await;
            return;
        }
        let marker = match self.core.l1_get(primary) {
            Some(HttpValue::Vary(m)) if m.names == names => m,
            _ => Arc::new(VaryMarker {
                names,
                generation: random_u64(),
            }),
        };
        let mut variant = String::from(&**primary);
        write_variant(
            &mut variant,
            marker.generation,
            marker.names.iter().map(String::as_str),
            req_headers,
        );
        self.core
            .put(primary.clone(), HttpValue::Vary(marker))
            .await;
        self.core.put(Arc::from(variant), value).await;
    }
}

/// `Age` values: the first 1024 seconds prepared once (cheap clones).
fn age_value(secs: u64) -> HeaderValue {
    static AGES: std::sync::LazyLock<Box<[HeaderValue]>> =
        std::sync::LazyLock::new(|| (0..1024u64).map(HeaderValue::from).collect());
    usize::try_from(secs)
        .ok()
        .and_then(|i| AGES.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(secs))
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Tower layer of the RFC 9111 shared HTTP cache. See the [crate docs](crate).
///
/// `K` adds a custom key part (tenant, API version) to every key: any
/// [`KeyExtractor`] of the request; a request it gives no key is not cached.
/// A request it refuses ([`KeyExtractor::refusal`]: a
/// [`PeerIp`](palisade_core::key::PeerIp) with
/// [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse) and no
/// peer address) is answered with the extractor's error — 500
/// problem+json, gRPC `INTERNAL` — before any lookup: the inner service is
/// not called and nothing is stored.
///
/// ```
/// use palisade_cache::CacheLayer;
/// use palisade_core::key::HeaderKey;
///
/// let per_tenant = CacheLayer::builder().name("api").build().unwrap().key(HeaderKey::new("x-tenant"));
/// # let _ = per_tenant;
/// ```
pub struct CacheLayer<K = NoKey> {
    shared: Arc<Shared>,
    key: K,
}

impl<K: Clone> Clone for CacheLayer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for CacheLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("name", &self.shared.core.name)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A builder with the SPEC defaults.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// An L1-only cache with the SPEC defaults.
    pub fn new() -> Self {
        Self::builder()
            .build()
            .expect("the default cache settings are valid")
    }

    /// A cache from a validated [`Config`] (L1 only; add a store with
    /// [`CacheBuilder::from_config`] + [`CacheBuilder::store`]).
    pub fn from_config(cfg: &Config) -> Result<Self, CacheError> {
        CacheBuilder::from_config(cfg).build()
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheBuilder {
    /// Builds the HTTP cache layer.
    ///
    /// # Errors
    ///
    /// [`CacheError::Invalid`] naming the first invalid setting.
    pub fn build(self) -> Result<CacheLayer, CacheError> {
        let cfg = self.validated()?;
        let core = Core::new(self.tier_settings(&cfg, "http"));
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                enabled: cfg.enabled,
                core,
                rules: Rules {
                    default_ttl: cfg.default_ttl,
                    heuristic_fraction: cfg.heuristic_fraction,
                    heuristic_max: cfg.heuristic_max,
                    store_set_cookie: cfg.store_set_cookie,
                },
                max_body: cfg.max_body_bytes,
                x_cache: cfg.x_cache_header,
                uncacheable: DashMap::new(),
            }),
            key: NoKey,
        })
    }
}

impl<K> CacheLayer<K> {
    /// Adds a custom key part taken from each request.
    pub fn key<K2>(self, key: K2) -> CacheLayer<K2> {
        CacheLayer {
            shared: self.shared,
            key,
        }
    }

    /// Stats and invalidation for this cache.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.core.clone())
    }
}

impl<S, K: Clone> Layer<S> for CacheLayer<K> {
    type Service = Cache<S, K>;
    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

/// The HTTP cache service. See [`CacheLayer`] and the [crate docs](crate).
///
/// ```
/// use palisade_cache::{Cache, CacheLayer};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(
///         http::Response::builder()
///             .header("cache-control", "max-age=60")
///             .body(http_body_util::Full::new(bytes::Bytes::from("hi")))
///             .unwrap(),
///     )
/// });
/// let svc: Cache<_> = Cache::new(svc, &CacheLayer::new());
/// let req = || http::Request::get("http://example.com/a").body(String::new()).unwrap();
/// let first = svc.clone().oneshot(req()).await.unwrap();
/// assert_eq!(first.headers()["x-cache"], "MISS");
/// let second = svc.oneshot(req()).await.unwrap();
/// assert_eq!(second.headers()["x-cache"], "HIT");
/// # }
/// ```
pub struct Cache<S, K = NoKey> {
    inner: S,
    shared: Arc<Shared>,
    key: K,
}

impl<S, K: Clone> Cache<S, K> {
    /// Wraps `inner` with the cache of `layer`.
    pub fn new(inner: S, layer: &CacheLayer<K>) -> Self {
        layer.layer(inner)
    }

    /// Stats and invalidation for this cache.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.shared.core.clone())
    }

    palisade_core::inner_accessors!(inner: S);
}

impl<S: Clone, K: Clone> Clone for Cache<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, K: fmt::Debug> fmt::Debug for Cache<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("name", &self.shared.core.name)
            .field("key", &self.key)
            .finish()
    }
}

type BoxResFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<PalisadeBody<B>>, E>> + Send>>;

pin_project! {
    /// Response future of [`Cache`]: ready at once for cache hits, the
    /// inner future for requests the cache does not handle, boxed for misses.
    ///
    /// ```
    /// use palisade_cache::{CacheLayer, ResponseFuture};
    /// use tower::{Layer, Service};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let mut svc = CacheLayer::new().layer(tower::service_fn(|_req: http::Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    /// }));
    /// let fut = svc.call(http::Request::get("http://ex.com/").body(()).unwrap());
    /// assert!(format!("{fut:?}").starts_with("ResponseFuture"));
    /// assert_eq!(fut.await.unwrap().status(), 200);
    /// # }
    /// ```
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: FutKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutProj]
    enum FutKind<F, B, E> {
        Ready { res: Option<Response<PalisadeBody<B>>> },
        Pass { #[pin] fut: F },
        // A key remembered as uncacheable: the inner future polled in
        // place, the answer judged on its head; boxed only to store an
        // answer that turned storable.
        Memo { #[pin] fut: F, memo: Option<MemoCall> },
        Boxed { fut: BoxResFuture<B, E> },
    }
}

/// What a call on a key remembered as uncacheable needs once its answer
/// comes (see [`FutKind::Memo`]).
struct MemoCall {
    shared: Arc<Shared>,
    primary: Arc<str>,
    req_cc: CacheControl,
    request_time: u64,
    started: tokio::time::Instant,
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            FutKind::Ready { .. } => "Ready",
            FutKind::Pass { .. } => "Pass",
            FutKind::Memo { .. } => "Memo",
            FutKind::Boxed { .. } => "Boxed",
        };
        f.debug_tuple("ResponseFuture").field(&kind).finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: 'static,
{
    type Output = Result<Response<PalisadeBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let (parts, body, memo) = match kind.as_mut().project() {
                FutProj::Ready { res } => {
                    return Poll::Ready(Ok(res.take().expect("polled after completion")));
                }
                FutProj::Pass { fut } => {
                    return fut.poll(cx).map_ok(|r| r.map(PalisadeBody::inner));
                }
                FutProj::Boxed { fut } => return fut.as_mut().poll(cx),
                FutProj::Memo { fut, memo } => {
                    let result = std::task::ready!(fut.poll(cx));
                    let memo = memo.take().expect("polled after completion");
                    if let Some(m) = &memo.shared.core.metrics {
                        m.upstream.observe(memo.started.elapsed().as_secs_f64());
                    }
                    let Ok(res) = result else {
                        memo.shared.count(Outcome::Miss);
                        return Poll::Ready(result.map(|r| r.map(PalisadeBody::inner)));
                    };
                    let (parts, body) = res.into_parts();
                    (parts, body, memo)
                }
            };
            let MemoCall {
                shared,
                primary,
                req_cc,
                request_time,
                ..
            } = memo;
            let now = shared.core.clock.now_ms();
            shared.count(Outcome::Miss);
            let client = HeaderMap::new();
            let res_cc = CacheControl::parse(&parts.headers);
            // As `fetch` judges an answer in `Mode { memo: true, light: true }`.
            let storable = !req_cc.no_store
                && policy::storable(
                    &Method::GET,
                    &client,
                    &req_cc,
                    parts.status,
                    &parts.headers,
                    &res_cc,
                    &shared.rules,
                )
                && content_length(&parts.headers).is_none_or(|l| l <= shared.max_body as u64);
            let unkeyable = policy::vary_names(&parts.headers).next().is_some();
            if storable || unkeyable {
                // Cacheable again: the next request takes the full path.
                shared.uncacheable.remove(&*primary);
            }
            if !storable || unkeyable {
                shared.core.counters.uncacheable.fetch_add(1, Relaxed);
                return Poll::Ready(Ok(with_x_cache(
                    &shared,
                    Response::from_parts(parts, PalisadeBody::inner(body)),
                    Outcome::Miss,
                )));
            }
            let keeping = Box::pin(async move {
                Ok(keep(
                    &shared,
                    parts,
                    body,
                    &primary,
                    None,
                    &client,
                    res_cc,
                    request_time,
                    now,
                )
                .await)
            });
            kind.set(FutKind::Boxed { fut: keeping });
        }
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn ready(res: Response<PalisadeBody<B>>) -> Self {
        Self {
            kind: FutKind::Ready { res: Some(res) },
        }
    }
    fn pass(fut: F) -> Self {
        Self {
            kind: FutKind::Pass { fut },
        }
    }
    fn boxed(fut: BoxResFuture<B, E>) -> Self {
        Self {
            kind: FutKind::Boxed { fut },
        }
    }
}

/// Per-request state of the slow path.
struct Ctx {
    primary: Arc<str>,
    candidate: Option<(Arc<Stored>, Arc<str>)>,
    req_cc: CacheControl,
    head: bool,
    /// A stored response exists but cannot answer this (Authorization).
    blocked: bool,
    /// The key's last response could not be stored: go straight upstream.
    memo: bool,
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Cache<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    K: KeyExtractor<Request<ReqBody>>,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<PalisadeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let shared = &self.shared;
        if !shared.enabled {
            return ResponseFuture::pass(self.inner.call(req));
        }
        // A key extractor that must refuse the request (`MissingPeer::Refuse`
        // and no peer address): answered before any lookup, so nothing is
        // served from or stored in the cache, the inner service never sees
        // it, and it is counted once (no `extract` after it).
        if let Some(err) = self.key.refusal(&req) {
            return ResponseFuture::ready(refused(&req, err));
        }
        if palisade_core::is_grpc_request(req.headers()) {
            // gRPC over HTTP/2 is not HTTP-cacheable: use CacheServiceLayer
            // on the typed service instead.
            shared.bypass();
            return ResponseFuture::pass(self.inner.call(req));
        }
        let method = req.method();
        let head = method == Method::HEAD;
        if method != Method::GET && !head {
            if is_safe(method) {
                shared.bypass();
                return ResponseFuture::pass(self.inner.call(req));
            }
            // Unsafe method: invalidate the target (and Location /
            // Content-Location) after a non-error response.
            let Some(custom) = self.key.extract(&req) else {
                shared.bypass();
                return ResponseFuture::pass(self.inner.call(req));
            };
            let custom = custom.to_string();
            let inner = take_ready(&mut self.inner);
            return ResponseFuture::boxed(Box::pin(invalidate_after(
                shared.clone(),
                inner,
                req,
                custom,
            )));
        }
        if req.headers().contains_key(header::RANGE) {
            shared.bypass();
            return ResponseFuture::pass(self.inner.call(req));
        }
        let Some(custom) = self.key.extract(&req) else {
            shared.bypass();
            return ResponseFuture::pass(self.inner.call(req));
        };
        let req_cc = CacheControl::parse(req.headers());
        let has_auth = req.headers().contains_key(header::AUTHORIZATION);
        let now_instant = tokio::time::Instant::now();
        let now = shared.core.clock.ms_at(now_instant);

        // Fast path: L1, no allocation for the key.
        enum Fast<B> {
            Served(Response<PalisadeBody<B>>),
            Swr(Response<PalisadeBody<B>>, Arc<str>, Arc<Stored>, Arc<str>),
            Slow(Arc<str>, Option<(Arc<Stored>, Arc<str>)>, bool, bool),
        }
        let fast = with_buf(|buf| {
            write_primary(buf, req.uri(), req.headers(), &custom);
            let primary_len = buf.len();
            let found = shared.l1_lookup(buf, req.headers(), now_instant);
            let mut blocked = false;
            if let Some(s) = &found {
                match s.decide(&req_cc, has_auth, now) {
                    Decision::Fresh => {
                        return Fast::Served(shared.respond(
                            s,
                            Outcome::Hit,
                            req.headers(),
                            head,
                            now,
                        ));
                    }
                    Decision::StaleAllowed => {
                        return Fast::Served(shared.respond(
                            s,
                            Outcome::Stale,
                            req.headers(),
                            head,
                            now,
                        ));
                    }
                    Decision::StaleWhileRevalidate => {
                        let res = shared.respond(s, Outcome::Stale, req.headers(), head, now);
                        let key: Arc<str> = Arc::from(buf.as_str());
                        return Fast::Swr(res, Arc::from(&buf[..primary_len]), s.clone(), key);
                    }
                    Decision::Validate => {}
                    Decision::Unusable => blocked = true,
                }
            }
            let candidate = found
                .filter(|_| !blocked)
                .map(|s| (s, Arc::from(buf.as_str())));
            let memo = candidate.is_none() && !blocked && shared.memo_hit(&buf[..primary_len], now);
            Fast::Slow(Arc::from(&buf[..primary_len]), candidate, blocked, memo)
        });
        match fast {
            Fast::Served(res) => ResponseFuture::ready(res),
            Fast::Swr(res, primary, stored, key) => {
                if !head {
                    let inner = take_ready(&mut self.inner);
                    spawn_refresh(shared.clone(), inner, req, primary, stored, key);
                }
                ResponseFuture::ready(res)
            }
            Fast::Slow(primary, None, false, true)
                if !req_cc.only_if_cached
                    && !head
                    && !req.headers().contains_key(header::IF_NONE_MATCH)
                    && !req.headers().contains_key(header::IF_MODIFIED_SINCE)
                    && !has_auth =>
            {
                // Remembered as uncacheable, nothing stored, no conditionals
                // or credentials: what `slow` would do, without its box.
                let memo = MemoCall {
                    request_time: shared.core.clock.ms_at(now_instant),
                    shared: shared.clone(),
                    primary,
                    req_cc,
                    started: now_instant,
                };
                ResponseFuture {
                    kind: FutKind::Memo {
                        fut: self.inner.call(req),
                        memo: Some(memo),
                    },
                }
            }
            Fast::Slow(primary, candidate, blocked, memo) => {
                let inner = take_ready(&mut self.inner);
                let ctx = Ctx {
                    primary,
                    candidate,
                    req_cc,
                    head,
                    blocked,
                    memo,
                };
                ResponseFuture::boxed(Box::pin(slow(shared.clone(), inner, req, ctx)))
            }
        }
    }
}

/// The answer to a request the key extractor refused: its error as
/// problem+json (gRPC: trailers-only `grpc-status`).
#[cold]
#[inline(never)]
fn refused<ReqBody, B>(
    req: &Request<ReqBody>,
    err: palisade_core::Error,
) -> Response<PalisadeBody<B>> {
    tracing::debug!(kind = %err.kind(), "cache refused a request without a key");
    err.into_http_response(palisade_core::is_grpc_request(req.headers()))
}

/// Swaps a fresh clone in and returns the ready service (tower's pattern).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

fn is_safe(m: &Method) -> bool {
    matches!(*m, Method::OPTIONS | Method::TRACE | Method::CONNECT)
}

fn spawn_refresh<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    req: Request<ReqBody>,
    primary: Arc<str>,
    stored: Arc<Stored>,
    key: Arc<str>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Join::Leader(flight) = shared.core.join(&primary) else {
        return; // a refresh (or fill) is already running
    };
    let req_cc = CacheControl::parse(req.headers());
    rt.spawn(async move {
        let _flight = flight;
        // One replica refreshes; the others keep serving stale meanwhile
        // (the fill lock on the store; in-process only, on a memory store
        // or with the store down).
        let lock = match shared.core.lock(&primary).await {
            Lock::Held => return,
            Lock::Acquired(k) => Some(k),
            Lock::Unavailable => None,
        };
        let client = req.headers().clone();
        let fetched = fetch(
            &shared,
            inner,
            req,
            &primary,
            Some((stored, key)),
            &req_cc,
            true,
            &client,
            false,
            Mode::default(),
        )
        .await;
        if let Ok(res) = fetched {
            // Drain whatever was not cached, so the connection can be reused.
            let _ = http_body_util::BodyExt::collect(res.into_body()).await;
        }
        if let Some(k) = lock {
            shared.core.unlock(&k).await;
        }
    });
}

async fn invalidate_after<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
    custom: String,
) -> Result<Response<PalisadeBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let uri = req.uri().clone();
    let headers = req.headers().clone();
    let res = inner.call(req).await?;
    let status = res.status();
    if status.is_success() || status.is_redirection() {
        let mut targets = vec![uri.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(t) = res
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| same_origin_target(v, &uri, &headers))
            {
                targets.push(t);
            }
        }
        for t in targets {
            let mut key = String::new();
            write_primary(&mut key, &t, &headers, &custom);
            if let Err(e) = shared.core.remove(&key).await {
                tracing::debug!(error = %e, "invalidation in L2 failed");
            }
        }
    }
    Ok(res.map(PalisadeBody::inner))
}

async fn slow<S, ReqBody, ResBody>(
    shared: Arc<Shared>,
    mut inner: S,
    req: Request<ReqBody>,
    mut ctx: Ctx,
) -> Result<Response<PalisadeBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let core = &shared.core;
    let has_auth = req.headers().contains_key(header::AUTHORIZATION);
    // L2
    if ctx.candidate.is_none()
        && !ctx.blocked
        && !ctx.memo
        && let Some((s, key)) = shared.l2_lookup(&ctx.primary, req.headers()).await
    {
        let now = core.clock.now_ms();
        match s.decide(&ctx.req_cc, has_auth, now) {
            Decision::Fresh => {
                return Ok(shared.respond(&s, Outcome::Hit, req.headers(), ctx.head, now));
            }
            Decision::StaleAllowed => {
                return Ok(shared.respond(&s, Outcome::Stale, req.headers(), ctx.head, now));
            }
            Decision::StaleWhileRevalidate => {
                let res = shared.respond(&s, Outcome::Stale, req.headers(), ctx.head, now);
                if !ctx.head {
                    spawn_refresh(shared.clone(), inner, req, ctx.primary, s, key);
                }
                return Ok(res);
            }
            Decision::Validate => ctx.candidate = Some((s, key)),
            Decision::Unusable => ctx.blocked = true,
        }
    }
    if ctx.req_cc.only_if_cached {
        shared.count(Outcome::Miss);
        let mut res = Response::new(PalisadeBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        return Ok(res);
    }
    if ctx.head {
        shared.count(Outcome::Miss);
        let res = inner.call(req).await?;
        return Ok(with_x_cache(
            &shared,
            res.map(PalisadeBody::inner),
            Outcome::Miss,
        ));
    }

    // Coalescing: one upstream call per key, in-process and across replicas.
    let mut store_allowed = !ctx.req_cc.no_store;
    let mut flight = None;
    let mut lock = None;
    if core.coalesce && !ctx.blocked && !ctx.memo && !ctx.req_cc.no_cache {
        match core.join(&ctx.primary) {
            Join::Leader(f) => flight = Some(f),
            Join::Follower(rx) => {
                if core.wait(rx).await {
                    let now = core.clock.now_ms();
                    let found = with_buf(|buf| {
                        buf.push_str(&ctx.primary);
                        shared
                            .l1_lookup(buf, req.headers(), tokio::time::Instant::now())
                            .map(|s| (s, Arc::<str>::from(buf.as_str())))
                    });
                    if let Some((s, key)) = found {
                        match s.decide(&ctx.req_cc, has_auth, now) {
                            Decision::Fresh
                            | Decision::StaleAllowed
                            | Decision::StaleWhileRevalidate => {
                                core.counters.coalesced.fetch_add(1, Relaxed);
                                if let Some(m) = &core.metrics {
                                    m.coalesced.inc();
                                }
                                return Ok(shared.respond(
                                    &s,
                                    Outcome::Hit,
                                    req.headers(),
                                    false,
                                    now,
                                ));
                            }
                            Decision::Validate => ctx.candidate = Some((s, key)),
                            Decision::Unusable => {}
                        }
                    }
                } else {
                    store_allowed = false;
                }
            }
        }
        if flight.is_some() && ctx.candidate.is_none() && core.l2.is_some() {
            match core.lock(&ctx.primary).await {
                Lock::Acquired(k) => lock = Some(k),
                Lock::Unavailable => {}
                Lock::Held => {
                    // Another replica is filling: poll L2 for its answer.
                    let deadline = tokio::time::Instant::now() + core.coalesce_timeout;
                    loop {
                        tokio::time::sleep(core.poll_interval).await;
                        if let Some((s, _)) = shared.l2_lookup(&ctx.primary, req.headers()).await {
                            let now = core.clock.now_ms();
                            if matches!(
                                s.decide(&ctx.req_cc, has_auth, now),
                                Decision::Fresh | Decision::StaleAllowed
                            ) {
                                core.counters.coalesced.fetch_add(1, Relaxed);
                                if let Some(m) = &core.metrics {
                                    m.coalesced.inc();
                                }
                                return Ok(shared.respond(
                                    &s,
                                    Outcome::Hit,
                                    req.headers(),
                                    false,
                                    now,
                                ));
                            }
                        }
                        if core.lock_released(&ctx.primary).await {
                            break; // filled nothing usable: go upstream
                        }
                        if tokio::time::Instant::now() >= deadline {
                            store_allowed = false;
                            break;
                        }
                    }
                }
            }
        }
    }
    // The client's fields are needed after the call only to store the
    // response (Vary) and to answer its own conditionals. A key known to be
    // uncacheable skips the copy when the request has neither conditionals
    // nor credentials; should the response turn out storable without Vary,
    // an empty map serves just as well.
    let light = ctx.memo
        && !req.headers().contains_key(header::IF_NONE_MATCH)
        && !req.headers().contains_key(header::IF_MODIFIED_SINCE)
        && !req.headers().contains_key(header::AUTHORIZATION);
    let client = if light {
        HeaderMap::new()
    } else {
        req.headers().clone()
    };
    let primary = ctx.primary.clone();
    let result = fetch(
        &shared,
        inner,
        req,
        &primary,
        ctx.candidate,
        &ctx.req_cc,
        store_allowed,
        &client,
        ctx.blocked,
        Mode {
            memo: ctx.memo,
            light,
        },
    )
    .await;
    if let Some(k) = lock {
        core.unlock(&k).await;
    }
    drop(flight);
    result
}

fn with_x_cache<B>(shared: &Shared, mut res: Response<B>, o: Outcome) -> Response<B> {
    if shared.x_cache {
        res.headers_mut().insert(X_CACHE, o.value());
    }
    res
}

/// How [`fetch`] was reached.
#[derive(Clone, Copy, Debug, Default)]
struct Mode {
    /// The key was remembered as uncacheable.
    memo: bool,
    /// `client` is empty (not a copy of the request's fields).
    light: bool,
}

/// Sends the request upstream (conditionally when a stored response with
/// validators exists), stores what may be stored, and answers.
#[allow(clippy::too_many_arguments)]
async fn fetch<S, ReqBody, ResBody>(
    shared: &Arc<Shared>,
    mut inner: S,
    mut req: Request<ReqBody>,
    primary: &Arc<str>,
    candidate: Option<(Arc<Stored>, Arc<str>)>,
    req_cc: &CacheControl,
    store_allowed: bool,
    client: &HeaderMap,
    blocked: bool,
    mode: Mode,
) -> Result<Response<PalisadeBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let core = &shared.core;
    let mut conditional = false;
    if store_allowed && !blocked {
        // Fetch a full, storable response; the client's own conditionals
        // are answered by the cache afterwards.
        let h = req.headers_mut();
        h.remove(header::IF_NONE_MATCH);
        h.remove(header::IF_MODIFIED_SINCE);
        if let Some((s, _)) = &candidate
            && s.has_validator()
        {
            s.add_validators(h);
            conditional = true;
        }
    }
    let request_time = core.clock.now_ms();
    let started = tokio::time::Instant::now();
    let result = inner.call(req).await;
    if let Some(m) = &core.metrics {
        m.upstream.observe(started.elapsed().as_secs_f64());
    }
    let now = core.clock.now_ms();
    let res = match result {
        Ok(res) => res,
        Err(e) => {
            if let Some((s, _)) = &candidate
                && s.usable_on_error(req_cc, now)
            {
                tracing::debug!(cache = %core.name, "upstream failed; serving stale");
                return Ok(shared.respond(s, Outcome::Stale, client, false, now));
            }
            shared.count(Outcome::Miss);
            return Err(e);
        }
    };
    let (parts, body) = res.into_parts();
    // We validated exactly one stored response: a 304 selects it.
    if parts.status == StatusCode::NOT_MODIFIED
        && conditional
        && let Some((s, key)) = &candidate
    {
        let merged = s.merge_304(&parts.headers, request_time, now, &shared.rules);
        let cc = CacheControl::parse(&merged.headers);
        let ok = policy::storable(
            &Method::GET,
            client,
            req_cc,
            merged.status,
            &merged.headers,
            &cc,
            &shared.rules,
        );
        let res = shared.respond(&merged, Outcome::Revalidated, client, false, now);
        if ok {
            shared.store(primary, Some(key), client, merged).await;
        } else {
            let _ = core.remove(key).await;
        }
        return Ok(res);
    }
    if matches!(parts.status.as_u16(), 500 | 502 | 503 | 504)
        && let Some((s, _)) = &candidate
        && s.usable_on_error(req_cc, now)
    {
        return Ok(shared.respond(s, Outcome::Stale, client, false, now));
    }
    shared.count(Outcome::Miss);
    let res_cc = CacheControl::parse(&parts.headers);
    let storable = store_allowed
        && policy::storable(
            &Method::GET,
            client,
            req_cc,
            parts.status,
            &parts.headers,
            &res_cc,
            &shared.rules,
        )
        && content_length(&parts.headers).is_none_or(|l| l <= shared.max_body as u64);
    // Without the client's fields a varying response cannot be keyed.
    let unkeyable = mode.light && policy::vary_names(&parts.headers).next().is_some();
    if mode.memo && (storable || unkeyable) {
        // Cacheable again: the next request takes the full path.
        shared.uncacheable.remove(&**primary);
    }
    let storable = storable && !unkeyable;
    if !storable {
        if !mode.memo
            && store_allowed
            && !blocked
            && parts.status.as_u16() < 500
            && !client.contains_key(header::AUTHORIZATION)
        {
            // The response itself is the reason (and not a passing upstream
            // error, whose retries should stay coalesced): remember it.
            shared.memo_insert(primary, now);
        }
        if let Some((_, key)) = &candidate
            && parts.status.as_u16() < 500
            && !req_cc.no_store
        {
            let _ = core.remove(key).await;
        }
        core.counters.uncacheable.fetch_add(1, Relaxed);
        return Ok(with_x_cache(
            shared,
            Response::from_parts(parts, PalisadeBody::inner(body)),
            Outcome::Miss,
        ));
    }
    Ok(keep(
        shared,
        parts,
        body,
        primary,
        candidate.as_ref().map(|(_, key)| key),
        client,
        res_cc,
        request_time,
        now,
    )
    .await)
}

/// Answers a storable response and stores it: a stream is forwarded as it
/// arrives and stored once complete; a body with a length is read (within
/// the limit) and stored before answering. `stale` is the key of a stored
/// response this one replaces, removed when the new one cannot be kept.
#[allow(clippy::too_many_arguments)]
async fn keep<ResBody>(
    shared: &Arc<Shared>,
    parts: http::response::Parts,
    body: ResBody,
    primary: &Arc<str>,
    stale: Option<&Arc<str>>,
    client: &HeaderMap,
    res_cc: CacheControl,
    request_time: u64,
    now: u64,
) -> Response<PalisadeBody<ResBody>>
where
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let core = &shared.core;
    // A stream (no length: SSE, NDJSON, a chunked answer) is forwarded as it
    // arrives and stored on the side once complete within the limit.
    if content_length(&parts.headers).is_none()
        && (MediaKind::of(&parts.headers).is_framed_stream() || body.size_hint().exact().is_none())
    {
        let (x_shared, max_body) = (&**shared, shared.max_body);
        let shared = shared.clone();
        let primary = primary.clone();
        let client = client.clone();
        let head = (parts.status, parts.headers.clone());
        let on_complete = move |c: palisade_core::body::Collected| {
            if c.trailers.is_some() {
                return;
            }
            let stored = Stored::new(
                head.0,
                &head.1,
                &res_cc,
                c.data,
                request_time,
                now,
                &shared.rules,
            );
            // Stored in L1 at once (so the next request finds it); what
            // waits on L2 goes on in a task.
            let mut store =
                Box::pin(async move { shared.store(&primary, None, &client, stored).await });
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if store.as_mut().poll(&mut cx).is_pending() {
                tokio::spawn(store);
            }
        };
        if let Some(key) = stale {
            let _ = core.remove(key).await;
        }
        let tee = TeeBody::new(body, max_body, on_complete);
        return with_x_cache(
            x_shared,
            Response::from_parts(parts, PalisadeBody::stream(tee)),
            Outcome::Miss,
        );
    }
    match read_bounded(body, shared.max_body).await {
        Read::Complete(c) if c.trailers.is_none() => {
            let stored = Stored::new(
                parts.status,
                &parts.headers,
                &res_cc,
                c.data,
                request_time,
                now,
                &shared.rules,
            );
            // Already counted as a miss above.
            let res = shared.build(&stored, Outcome::Miss, client, false, now);
            shared.store(primary, None, client, stored).await;
            res
        }
        other => {
            if let Some(key) = stale {
                let _ = core.remove(key).await;
            }
            let body = match other {
                Read::Complete(c) => PalisadeBody::from(c),
                Read::Over { prefix, rest } => PalisadeBody::resumed_pinned(prefix, rest),
                Read::Failed { prefix, error } => PalisadeBody::failed(prefix, error),
            };
            with_x_cache(shared, Response::from_parts(parts, body), Outcome::Miss)
        }
    }
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
