//! The Tower layer: HTTP and gRPC services.

use crate::limiter::{Outcome, Pending, RateLimiter, Verdict, decide_store};
use crate::quota::Decision;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use palisade_core::jsonrpc::JsonRpcCall;
use palisade_core::{PalisadeBody, is_grpc_request};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll, ready},
    time::Duration,
};
use tower_layer::Layer;
use tower_service::Service;

/// Which rate-limit headers responses carry.
///
/// ```
/// use palisade_ratelimit::HeaderStyle;
///
/// let both = HeaderStyle::default();
/// assert!(both.x_ratelimit && both.ietf);
/// let h: HeaderStyle = serde_json::from_str(r#"{"ietf": false}"#).unwrap();
/// assert!(h.x_ratelimit && !h.ietf);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// (seconds until the quota is whole again).
    pub x_ratelimit: bool,
    /// The IETF fields: `RateLimit-Policy: "<name>";q=<limit>;w=<seconds>`
    /// and `RateLimit: "<name>";r=<remaining>;t=<seconds>`.
    pub ietf: bool,
}

impl Default for HeaderStyle {
    fn default() -> Self {
        Self {
            x_ratelimit: true,
            ietf: true,
        }
    }
}

impl HeaderStyle {
    /// No rate-limit headers (`Retry-After` on refusals stays).
    pub const NONE: HeaderStyle = HeaderStyle {
        x_ratelimit: false,
        ietf: false,
    };
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Small numbers, rendered once into static bytes (cloning one is a copy:
/// no allocation, no reference count).
static NUMBERS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    let mut all = String::new();
    let mut ends = Vec::with_capacity(1025);
    for n in 0..=1024u32 {
        all.push_str(itoa::Buffer::new().format(n));
        ends.push(all.len());
    }
    let all: &'static str = Box::leak(all.into_boxed_str());
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let v = HeaderValue::from_static(&all[start..end]);
            start = end;
            v
        })
        .collect()
});

const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn number(n: u64) -> HeaderValue {
    match NUMBERS.get(usize::try_from(n).unwrap_or(usize::MAX)) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

/// Writes the limit headers of a verdict.
pub(crate) fn write_headers(headers: &mut HeaderMap, verdict: &Verdict, style: HeaderStyle) {
    let Some(policy) = &verdict.policy else {
        return;
    };
    let Decision {
        remaining,
        reset_after,
        ..
    } = verdict.decision;
    let reset = ceil_secs(reset_after);
    if !style.x_ratelimit && !style.ietf {
        return;
    }
    headers.reserve(5);
    if style.x_ratelimit {
        headers.insert(X_RATELIMIT_LIMIT, policy.limit.clone());
        headers.insert(X_RATELIMIT_REMAINING, number(u64::from(remaining)));
        headers.insert(X_RATELIMIT_RESET, number(reset));
    }
    if style.ietf {
        // Appended, not replaced: the fields are lists, and another limit
        // (a token budget below, the upstream's own) may have written its
        // policy already.
        headers.append(RATELIMIT_POLICY, policy.policy.clone());
        // `"<name>";r=<remaining>;t=<reset>`, in one exact-size allocation.
        let mut r = itoa::Buffer::new();
        let r = r.format(remaining);
        let mut t = itoa::Buffer::new();
        let t = t.format(reset);
        let mut v = Vec::with_capacity(policy.sf_name.len() + 6 + r.len() + t.len());
        v.extend_from_slice(policy.sf_name.as_bytes());
        v.extend_from_slice(b";r=");
        v.extend_from_slice(r.as_bytes());
        v.extend_from_slice(b";t=");
        v.extend_from_slice(t.as_bytes());
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(v)) {
            headers.append(RATELIMIT, v);
        }
    }
}

/// A structured-field string (RFC 8941): quoted, `"` and `\` escaped,
/// anything outside printable ASCII replaced by `_`.
pub(crate) fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

/// How a refusal is written for one request: HTTP (problem+json), gRPC
/// (a status), or, for a JSON-RPC call (an MCP `tools/call` …), a JSON-RPC
/// error reply to the call's id, so the client sees its own call refused.
#[derive(Clone, Debug)]
enum Answer {
    Http,
    Grpc,
    JsonRpc(JsonRpcCall),
}

impl Answer {
    fn of<B>(req: &Request<B>) -> Self {
        if is_grpc_request(req.headers()) {
            return Answer::Grpc;
        }
        match req.extensions().get::<JsonRpcCall>() {
            Some(call) if call.id().is_some() => Answer::JsonRpc(call.clone()),
            _ => Answer::Http,
        }
    }

    fn render<B>(&self, err: palisade_core::Error) -> Response<PalisadeBody<B>> {
        match self {
            Answer::Http => err.into_http_response(false),
            Answer::Grpc => err.into_http_response(true),
            Answer::JsonRpc(call) => {
                let status = err.http_status();
                err.into_json_rpc_response(call.id().unwrap_or("null"), status)
            }
        }
    }
}

/// Renders a refusal: 429 (or 503 when failing closed) with `Retry-After`
/// and the limit headers; gRPC gets `RESOURCE_EXHAUSTED` / `UNAVAILABLE`.
fn refusal<B>(verdict: Verdict, answer: &Answer, style: HeaderStyle) -> Response<PalisadeBody<B>> {
    let mut headers = HeaderMap::new();
    write_headers(&mut headers, &verdict, style);
    let err = match verdict.into_error() {
        Some(e) => e,
        None => crate::RateLimitError::InvalidConfig("refusal without an error".into()),
    };
    let mut err: palisade_core::Error = err.into();
    for (name, value) in headers {
        if let Some(name) = name {
            err = err.with_header(name, value);
        }
    }
    answer.render(err)
}

/// Applies a [`RateLimiter`] to a service. See [`RateLimit`].
///
/// ```
/// use palisade_ratelimit::{HeaderStyle, Limit, RateLimitLayer, RateLimiter};
///
/// let limiter = RateLimiter::builder().limit(Limit::per_user()).build().unwrap();
/// let layer = RateLimitLayer::new(limiter).headers(HeaderStyle { x_ratelimit: true, ietf: false });
/// # let _ = layer;
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
    style: HeaderStyle,
}

impl RateLimitLayer {
    /// A layer deciding with `limiter`, sending every header.
    pub fn new(limiter: RateLimiter) -> Self {
        Self {
            limiter,
            style: HeaderStyle::default(),
        }
    }

    /// Chooses the headers responses carry.
    pub fn headers(mut self, style: HeaderStyle) -> Self {
        self.style = style;
        self
    }

    /// The limiter (for programmatic checks sharing the same counters).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            style: self.style,
        }
    }
}

/// Rate-limits an HTTP or gRPC service.
///
/// Every request is checked against the limiter's limits before the inner
/// service sees it. A refused request is answered at once — HTTP 429 with
/// `Retry-After` and an `application/problem+json` body of type
/// `quota-exceeded` (gRPC: `RESOURCE_EXHAUSTED`) — inside the response
/// future, so axum needs no `HandleErrorLayer`. Every response, allowed or
/// not, carries the strictest limit's headers (see [`HeaderStyle`]).
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Empty;
/// use palisade_ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter};
/// use palisade_core::key::ConstKey;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::builder()
///     .limit(Limit::new("global", ConstKey("all"), Quota::per_minute(1)))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(RateLimitLayer::new(limiter))
///     .service_fn(|_req: Request<Empty<Bytes>>| async {
///         Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
///     });
/// let ok = svc.clone().oneshot(Request::new(Empty::new())).await.unwrap();
/// assert_eq!(ok.headers()["x-ratelimit-remaining"], "0");
/// let refused = svc.oneshot(Request::new(Empty::new())).await.unwrap();
/// assert_eq!(refused.status(), 429);
/// assert_eq!(refused.headers()["retry-after"], "60");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    limiter: RateLimiter,
    style: HeaderStyle,
}

impl<S> RateLimit<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, limiter: RateLimiter) -> Self {
        RateLimitLayer::new(limiter).layer(inner)
    }

    /// A layer wrapping services with `limiter`.
    pub fn layer(limiter: RateLimiter) -> RateLimitLayer {
        RateLimitLayer::new(limiter)
    }

    palisade_core::inner_accessors!(inner: S);
}

type CheckFuture = Pin<Box<dyn Future<Output = Verdict> + Send>>;

/// The first enforced limit whose key extractor refuses `req` (a `PeerIp`
/// with `MissingPeer::Refuse` and no peer address). Shadow limits and
/// log-only mode observe only: they never refuse.
fn refusal_of(limiter: &RateLimiter, req: &Request<()>) -> Option<palisade_core::Error> {
    if limiter.mode() != crate::Mode::Enforce {
        return None;
    }
    let err = limiter
        .limits()
        .filter(|l| !l.shadow)
        .find_map(|l| l.refusal(req))?;
    tracing::debug!(kind = %err.kind(), "rate limit refused a request without a key");
    Some(err)
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<PalisadeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, ReqBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let style = self.style;
        if self.limiter.mode() == crate::Mode::Disabled {
            return ResponseFuture::call(self.inner.call(req), None, style);
        }
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        if let Some(err) = refusal_of(&self.limiter, &head) {
            return ResponseFuture {
                state: State::Fail {
                    err: Some(err),
                    answer: Answer::of(&head),
                },
            };
        }
        let pending = self.limiter.begin(&head);
        let req = Request::from_parts(head.into_parts().0, body);
        match pending {
            Pending::Ready(verdict) if !verdict.is_allowed() => ResponseFuture {
                state: State::Refuse {
                    verdict: Some(verdict),
                    // Only a refusal needs to know (allowed requests skip
                    // the lookups).
                    answer: Answer::of(&req),
                    style,
                },
            },
            Pending::Ready(verdict) => {
                ResponseFuture::call(self.inner.call(req), Some(verdict), style)
            }
            Pending::Store(plan) => {
                // The inner service is ready; keep it for after the check.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Check {
                        check: Box::pin(decide_store(self.limiter.shared.clone(), plan)),
                        call: Some(Box::new((inner, req))),
                        style,
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`RateLimit`].
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        state: State<F, S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, B> {
        Refuse { verdict: Option<Verdict>, answer: Answer, style: HeaderStyle },
        Fail { err: Option<palisade_core::Error>, answer: Answer },
        Check {
            check: CheckFuture,
            // Boxed: the store path allocates anyway, and the future stays
            // small for the in-process path.
            call: Option<Box<(S, Request<B>)>>,
            style: HeaderStyle,
        },
        Call { #[pin] fut: F, verdict: Option<Verdict>, style: HeaderStyle },
    }
}

impl<F, S, B> ResponseFuture<F, S, B> {
    fn call(fut: F, verdict: Option<Verdict>, style: HeaderStyle) -> Self {
        Self {
            state: State::Call {
                fut,
                verdict,
                style,
            },
        }
    }
}

impl<F, S, B> fmt::Debug for ResponseFuture<F, S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, S, B, ResBody, E> Future for ResponseFuture<F, S, B>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    S: Service<Request<B>, Response = Response<ResBody>, Error = E, Future = F>,
{
    type Output = Result<Response<PalisadeBody<ResBody>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Refuse {
                    verdict,
                    answer,
                    style,
                } => {
                    let verdict = verdict.take().expect("polled after completion");
                    return Poll::Ready(Ok(refusal(verdict, answer, *style)));
                }
                StateProj::Fail { err, answer } => {
                    let err = err.take().expect("polled after completion");
                    return Poll::Ready(Ok(answer.render(err)));
                }
                StateProj::Check { check, call, style } => {
                    let verdict = ready!(check.as_mut().poll(cx));
                    let style = *style;
                    if !verdict.is_allowed() {
                        let answer = Answer::of(&call.as_ref().expect("polled after completion").1);
                        self.as_mut().project().state.set(State::Refuse {
                            verdict: Some(verdict),
                            answer,
                            style,
                        });
                        continue;
                    }
                    let (mut svc, req) = *call.take().expect("polled after completion");
                    let fut = svc.call(req);
                    self.as_mut().project().state.set(State::Call {
                        fut,
                        verdict: Some(verdict),
                        style,
                    });
                }
                StateProj::Call {
                    fut,
                    verdict,
                    style,
                } => {
                    let res = ready!(fut.poll(cx))?;
                    let mut res = res.map(PalisadeBody::inner);
                    if let Some(v) = verdict.take()
                        && v.outcome == Outcome::Allowed
                    {
                        write_headers(res.headers_mut(), &v, *style);
                    }
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}

/// Shares one limiter between layers (a cheap clone).
impl From<RateLimiter> for RateLimitLayer {
    fn from(limiter: RateLimiter) -> Self {
        Self::new(limiter)
    }
}
