//! Results of MCP tool calls, cached: a `tools/call` is a `POST`, which HTTP
//! caching never stores, so this is the explicit path for it.
//!
//! A call is cached only when a gateway marked it with
//! [`ToolFacts`] saying the tool is read-only with a TTL (see
//! [`ToolFacts::cacheable_for`]) and [`peek`](palisade_core::jsonrpc::peek)
//! learned its [`JsonRpcCall`]. The key is the request path, the tool, its
//! canonical arguments (object keys sorted) and a hash of the request's
//! `Authorization` (callers with different credentials never share an
//! entry). Only results are stored — never a JSON-RPC `error`, never a
//! result with `isError: true`, never a non-200 answer or an encoded body —
//! from a JSON reply or the event of an event stream carrying the result.
//! A hit answers in the form the server used (JSON, or one event), with
//! the reply's id replaced by the new request's, and `X-Cache: HIT`.
//! Each entry keeps its own expiry (the tool's TTL), checked at every read,
//! in L1 and in the shared L2 on the store.

use crate::CacheHandle;
use crate::core::{Core, Value};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use palisade_core::jsonrpc::{JsonRpcCall, JsonRpcReply, ReplyScan};
use palisade_core::mcp::{ReplyTap, ToolFacts, with_id};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    hash::{Hash, Hasher},
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tower_layer::Layer;
use tower_service::Service;

/// One stored result.
#[derive(Clone, Debug)]
pub(crate) struct ToolEntry {
    /// The server answered with an event stream.
    events: bool,
    /// Unix milliseconds after which the entry is stale.
    expires_ms: u64,
    /// The JSON-RPC reply.
    message: Bytes,
}

impl Value for ToolEntry {
    fn weight(&self) -> usize {
        self.message.len() + 32
    }

    fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.message.len() + 12);
        out.put_slice(b"PT1");
        out.put_u8(u8::from(self.events));
        out.put_u64(self.expires_ms);
        out.put_slice(&self.message);
        out.freeze()
    }

    fn decode(mut bytes: Bytes) -> Option<Self> {
        if bytes.len() < 12 || &bytes[..3] != b"PT1" {
            return None;
        }
        bytes.advance(3);
        let events = bytes.get_u8() == 1;
        let expires_ms = bytes.get_u64();
        Some(Self {
            events,
            expires_ms,
            message: bytes,
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Caches `tools/call` results of read-only MCP tools (see the
/// [module docs](self)); built by
/// [`CacheBuilder::build_tools`](crate::CacheBuilder::build_tools).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade_cache::CacheLayer;
/// use palisade_core::jsonrpc::peek;
/// use palisade_core::mcp::{ToolAnnotations, ToolFacts};
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let c = calls.clone();
/// let layer = CacheLayer::builder().name("tools").build_tools().unwrap();
/// let mut svc = ServiceBuilder::new().layer(layer).service_fn(move |_req: http::Request<_>| {
///     let n = c.fetch_add(1, Ordering::SeqCst) + 1;
///     async move {
///         let reply = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"call {n}"}}]}}}}"#);
///         Ok::<_, std::convert::Infallible>(
///             http::Response::builder()
///                 .header("content-type", "application/json")
///                 .body(Full::new(Bytes::from(reply)))
///                 .unwrap(),
///         )
///     }
/// });
/// let read_only = ToolFacts::new(ToolAnnotations { read_only: Some(true), ..Default::default() })
///     .cache_ttl(Duration::from_secs(60));
/// for id in [1, 2] {
///     let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"search","arguments":{{"q":"x"}}}}}}"#);
///     let mut req = peek(http::Request::post("/mcp").body(Full::new(Bytes::from(body))).unwrap(), 1 << 16).await;
///     req.extensions_mut().insert(read_only.clone());
///     let res = svc.ready().await.unwrap().call(req).await.unwrap();
///     let body = res.into_body().collect().await.unwrap().to_bytes();
///     let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
///     assert_eq!(reply["id"], id, "the reply answers this request");
///     assert_eq!(reply["result"]["content"][0]["text"], "call 1");
/// }
/// assert_eq!(calls.load(Ordering::SeqCst), 1, "the second call was served from the cache");
/// # }
/// ```
#[derive(Clone)]
pub struct ToolCacheLayer {
    core: Arc<Core<ToolEntry>>,
    max_body: usize,
    x_cache: bool,
}

impl fmt::Debug for ToolCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCacheLayer")
            .field("name", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl ToolCacheLayer {
    pub(crate) fn new(core: Arc<Core<ToolEntry>>, max_body: usize, x_cache: bool) -> Self {
        Self {
            core,
            max_body,
            x_cache,
        }
    }

    /// Stats and invalidation (logical keys are
    /// `<path> <tool> <canonical arguments>[ <credential hash>]`).
    pub fn handle(&self) -> CacheHandle {
        CacheHandle::new(self.core.clone())
    }
}

impl<S> Layer<S> for ToolCacheLayer {
    type Service = ToolCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ToolCache {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`ToolCacheLayer`].
#[derive(Clone)]
pub struct ToolCache<S> {
    inner: S,
    layer: ToolCacheLayer,
}

impl<S: fmt::Debug> fmt::Debug for ToolCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What a cacheable call is looked up by.
struct Lookup {
    key: Arc<str>,
    id: String,
    ttl: Duration,
}

fn lookup<B>(req: &Request<B>) -> Option<Lookup> {
    let call = req.extensions().get::<JsonRpcCall>()?;
    if call.method() != "tools/call" {
        return None;
    }
    let ttl = req.extensions().get::<ToolFacts>()?.cacheable_for()?;
    let (tool, arguments, id) = (call.target()?, call.arguments()?, call.id()?);
    let mut key = format!("{} {tool} {arguments}", req.uri().path());
    if let Some(auth) = req.headers().get(header::AUTHORIZATION) {
        let mut h = std::hash::DefaultHasher::new();
        auth.as_bytes().hash(&mut h);
        key.push_str(&format!(" {:016x}", h.finish()));
    }
    Some(Lookup {
        key: key.into(),
        id: id.to_owned(),
        ttl,
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for ToolCache<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ToolCacheBody<ResBody>>;
    type Error = S::Error;
    type Future = ToolCacheFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(lookup) = lookup(&req) else {
            return ToolCacheFuture {
                kind: FutKind::Pass {
                    fut: inner.call(req),
                },
            };
        };
        let layer = self.layer.clone();
        let fut = Box::pin(async move {
            let core = &layer.core;
            let now = now_ms();
            let found = match core.l1_get(&lookup.key) {
                Some(entry) => Some(entry),
                None => core.l2_get(&lookup.key).await,
            };
            if let Some(entry) = found.filter(|e| e.expires_ms > now)
                && let Some(message) = with_id(&entry.message, &lookup.id)
            {
                core.counters.hits.fetch_add(1, Relaxed);
                if let Some(m) = &core.metrics {
                    m.hit.inc();
                }
                return Ok(hit(&entry, message, layer.x_cache));
            }
            core.counters.misses.fetch_add(1, Relaxed);
            if let Some(m) = &core.metrics {
                m.miss.inc();
            }
            let res = inner.call(req).await?;
            let identity = res
                .headers()
                .get(header::CONTENT_ENCODING)
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
            let scan = (res.status() == StatusCode::OK && identity)
                .then(|| ReplyScan::for_response(res.headers(), layer.max_body))
                .flatten();
            let Some(scan) = scan else {
                return Ok(res.map(|body| ToolCacheBody::pass(body)));
            };
            let events = res
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
            let store = layer.core.clone();
            let key = lookup.key;
            let expires_ms =
                now.saturating_add(u64::try_from(lookup.ttl.as_millis()).unwrap_or(u64::MAX));
            let (mut parts, body) = res.into_parts();
            if layer.x_cache {
                parts
                    .headers
                    .insert(crate::X_CACHE, HeaderValue::from_static("MISS"));
            }
            let body = ReplyTap::new(
                body,
                scan,
                Box::new(move |reply, message| {
                    if reply != JsonRpcReply::Result {
                        return;
                    }
                    let entry = ToolEntry {
                        events,
                        expires_ms,
                        message,
                    };
                    // In L1 before the client reads the reply, so its next
                    // call finds it; L2 follows.
                    store.l1_put(key.clone(), entry.clone());
                    if store.l2.is_some() && tokio::runtime::Handle::try_current().is_ok() {
                        tokio::spawn(async move { store.l2_put(&key, &entry).await });
                    }
                }),
            );
            Ok(Response::from_parts(parts, ToolCacheBody::tapped(body)))
        });
        ToolCacheFuture {
            kind: FutKind::Cached { fut },
        }
    }
}

pin_project! {
    /// The response future of a [`ToolCache`]: the inner future as it is
    /// for a call that is not cacheable (no allocation), a boxed lookup
    /// for one that is.
    pub struct ToolCacheFuture<F, B, E> {
        #[pin]
        kind: FutKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutKindProj]
    enum FutKind<F, B, E> {
        Pass { #[pin] fut: F },
        Cached { fut: BoxFuture<Result<Response<ToolCacheBody<B>>, E>> },
    }
}

impl<F, B, E> fmt::Debug for ToolCacheFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ToolCacheFuture")
    }
}

impl<F, B, E> Future for ToolCacheFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ToolCacheBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutKindProj::Pass { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(ToolCacheBody::pass))),
            FutKindProj::Cached { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// The answer from a stored entry.
fn hit<B>(entry: &ToolEntry, message: Bytes, x_cache: bool) -> Response<ToolCacheBody<B>> {
    let (content_type, data) = if entry.events {
        let mut event = BytesMut::with_capacity(message.len() + 24);
        event.put_slice(b"event: message\ndata: ");
        event.put_slice(&message);
        event.put_slice(b"\n\n");
        ("text/event-stream", event.freeze())
    } else {
        ("application/json", message)
    };
    let mut res = Response::new(ToolCacheBody::hit(data));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if x_cache {
        res.headers_mut()
            .insert(crate::X_CACHE, HeaderValue::from_static("HIT"));
    }
    res
}

pin_project! {
    /// The response body of a [`ToolCache`]: a stored reply, or the
    /// upstream's body (read on its way for the reply to store).
    pub struct ToolCacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Hit { data: Option<Bytes> },
        Tapped { #[pin] body: ReplyTap<B> },
        Pass { #[pin] body: B },
    }
}

impl<B> ToolCacheBody<B> {
    fn hit(data: Bytes) -> Self {
        Self {
            kind: Kind::Hit { data: Some(data) },
        }
    }

    fn tapped(body: ReplyTap<B>) -> Self {
        Self {
            kind: Kind::Tapped { body },
        }
    }

    fn pass(body: B) -> Self {
        Self {
            kind: Kind::Pass { body },
        }
    }

    /// Whether this answer came from the cache.
    pub fn is_hit(&self) -> bool {
        matches!(self.kind, Kind::Hit { .. })
    }
}

impl<B> fmt::Debug for ToolCacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Hit { .. } => "ToolCacheBody::Hit",
            Kind::Tapped { .. } => "ToolCacheBody::Tapped",
            Kind::Pass { .. } => "ToolCacheBody::Pass",
        })
    }
}

impl<B: Body<Data = Bytes>> Body for ToolCacheBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Hit { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Tapped { body } => body.poll_frame(cx),
            KindProj::Pass { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Hit { data } => data.is_none(),
            Kind::Tapped { body } => body.is_end_stream(),
            Kind::Pass { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Hit { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Tapped { body } => body.size_hint(),
            Kind::Pass { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use palisade_core::jsonrpc::peek;
    use palisade_core::mcp::ToolAnnotations;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tower::{Service, ServiceExt};

    type Upstream = tower::util::BoxCloneService<
        Request<palisade_core::PalisadeBody<Full<Bytes>>>,
        Response<Full<Bytes>>,
        std::convert::Infallible,
    >;

    /// An upstream answering `reply(n)` (n counts calls from 1) as
    /// `content_type`.
    fn upstream(
        content_type: &'static str,
        reply: fn(usize) -> String,
    ) -> (Arc<AtomicUsize>, Upstream) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let svc = tower::service_fn(move |_req| {
            let n = c.fetch_add(1, SeqCst) + 1;
            async move {
                Ok(Response::builder()
                    .header("content-type", content_type)
                    .body(Full::new(Bytes::from(reply(n))))
                    .unwrap())
            }
        });
        (calls, Upstream::new(svc))
    }

    async fn call<S>(
        svc: &mut S,
        facts: &ToolFacts,
        id: u32,
        args: &str,
    ) -> (Option<String>, serde_json::Value)
    where
        S: Service<
                Request<palisade_core::PalisadeBody<Full<Bytes>>>,
                Response = Response<ToolCacheBody<Full<Bytes>>>,
                Error = std::convert::Infallible,
            >,
    {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#
        );
        let mut req = peek(
            Request::post("/mcp")
                .body(Full::new(Bytes::from(body)))
                .unwrap(),
            1 << 16,
        )
        .await;
        req.extensions_mut().insert(facts.clone());
        let res = svc.ready().await.unwrap().call(req).await.unwrap();
        let x_cache = res
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let json = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or(&text);
        (x_cache, serde_json::from_str(json).unwrap())
    }

    fn read_only() -> ToolFacts {
        ToolFacts::new(ToolAnnotations {
            read_only: Some(true),
            ..Default::default()
        })
        .cache_ttl(Duration::from_secs(60))
    }

    fn result(n: usize) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"call {n}"}}]}}}}"#
        )
    }

    #[tokio::test]
    async fn read_only_results_are_served_again_in_their_form() {
        for content_type in ["application/json", "text/event-stream"] {
            let reply: fn(usize) -> String = if content_type == "application/json" {
                result
            } else {
                |n| format!("event: message\ndata: {}\n\n", result(n))
            };
            let (calls, up) = upstream(content_type, reply);
            let layer = crate::CacheLayer::builder().build_tools().unwrap();
            let mut svc = layer.layer(up);
            let (x, first) = call(&mut svc, &read_only(), 1, r#"{"a":1,"b":2}"#).await;
            assert_eq!(x.as_deref(), Some("MISS"));
            assert_eq!(first["result"]["content"][0]["text"], "call 1");
            // Same arguments in another order: the same entry.
            let (x, again) = call(&mut svc, &read_only(), 2, r#"{"b":2,"a":1}"#).await;
            assert_eq!(x.as_deref(), Some("HIT"), "{content_type}");
            assert_eq!(again["id"], 2);
            assert_eq!(again["result"]["content"][0]["text"], "call 1");
            let (_, other) = call(&mut svc, &read_only(), 3, r#"{"a":2}"#).await;
            assert_eq!(other["result"]["content"][0]["text"], "call 2");
            assert_eq!(calls.load(SeqCst), 2);
            assert_eq!(layer.handle().stats().hits, 1);
        }
    }

    #[tokio::test]
    async fn errors_and_destructive_tools_are_never_cached() {
        let (calls, up) = upstream("application/json", |n| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"content":[{{"type":"text","text":"fail {n}"}}],"isError":true}}}}"#
            )
        });
        let mut svc = crate::CacheLayer::builder()
            .build_tools()
            .unwrap()
            .layer(up);
        for id in 1..=2 {
            let (x, reply) = call(&mut svc, &read_only(), id, "{}").await;
            assert_eq!(x.as_deref(), Some("MISS"));
            assert_eq!(reply["result"]["content"][0]["text"], format!("fail {id}"));
        }
        assert_eq!(calls.load(SeqCst), 2);

        let (calls, up) = upstream("application/json", |_| {
            r#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"x"}}"#.to_owned()
        });
        let mut svc = crate::CacheLayer::builder()
            .build_tools()
            .unwrap()
            .layer(up);
        for id in 1..=2 {
            let _ = call(&mut svc, &read_only(), id, "{}").await;
        }
        assert_eq!(calls.load(SeqCst), 2);

        let (calls, up) = upstream("application/json", result);
        let mut svc = crate::CacheLayer::builder()
            .build_tools()
            .unwrap()
            .layer(up);
        let destructive =
            ToolFacts::new(ToolAnnotations::default()).cache_ttl(Duration::from_secs(60));
        for id in 1..=2 {
            let (x, _) = call(&mut svc, &destructive, id, "{}").await;
            assert_eq!(x, None, "not looked up at all");
        }
        assert_eq!(calls.load(SeqCst), 2);
    }

    #[test]
    fn entries_round_trip_through_l2_bytes() {
        let e = ToolEntry {
            events: true,
            expires_ms: 42,
            message: Bytes::from_static(b"{}"),
        };
        let back = ToolEntry::decode(e.encode()).unwrap();
        assert!(back.events);
        assert_eq!((back.expires_ms, &back.message[..]), (42, &b"{}"[..]));
        assert!(ToolEntry::decode(Bytes::from_static(b"PC1xxxxxxxxxxx")).is_none());
    }
}
