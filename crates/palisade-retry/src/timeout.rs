//! A per-request time limit for HTTP and gRPC servers and clients that
//! answers by itself: `504 Gateway Timeout` with a problem body, or — for
//! gRPC requests — `DEADLINE_EXCEEDED`.
//!
//! tower's `Timeout` turns the error into a `BoxError` (an axum server then
//! needs a `HandleErrorLayer`, and hyper drops the connection), and
//! tower-http's answers with a bare status and knows nothing of gRPC. This one
//! keeps the inner error type, answers like every palisade layer (body from
//! [`palisade_core::Error`]) and, for gRPC, also honours a shorter
//! `grpc-timeout` sent by the caller.
//!
//! One request can carry its own limit in place of the layer's: a
//! [`RouteTimeout`] in its extensions (a route's own, put there by whatever
//! matched the route).
//!
//! For any other service (a client, a database call, a queue consumer),
//! [`TimeoutLayer::for_services`] gives the same limit with a typed error,
//! [`TimeoutError`], instead of an answer.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use palisade_retry::timeout::TimeoutLayer;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_secs(1)))
//!     .service_fn(|_req: http::Request<()>| async {
//!         tokio::time::sleep(Duration::from_secs(5)).await;
//!         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
//!     });
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 504);
//! # }
//! ```

use crate::RetryMetrics;
use http::{HeaderMap, Request, Response};
use palisade_core::body::sent::RequestSent;
use palisade_core::{BoxError, Error, ErrorKind, PalisadeBody, is_grpc_request};
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

/// A request extension that sets this request's limit in place of the
/// [`TimeoutLayer`]'s own — longer or shorter (a route's own limit, say).
/// A gRPC caller's shorter `grpc-timeout` still wins, and the clock still
/// waits for the request body to end.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade_retry::timeout::{RouteTimeout, TimeoutLayer};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(TimeoutLayer::new(Duration::from_secs(1)))
///     .service_fn(|_req: http::Request<()>| async {
///         tokio::time::sleep(Duration::from_secs(5)).await;
///         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
///     });
/// // This request may take 10 s: the slow answer arrives.
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(RouteTimeout(Duration::from_secs(10)));
/// let res = svc.clone().oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 200);
/// // Without it, the layer's 1 s.
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 504);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteTimeout(pub Duration);

/// Applies [`Timeout`] to a service; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
    elapsed: Option<IntCounter>,
}

impl TimeoutLayer {
    /// Requests taking longer than `timeout` are answered with 504 (or
    /// `DEADLINE_EXCEEDED`).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            elapsed: None,
        }
    }

    /// Counts timeouts in `palisade_timeout_elapsed_total{name}`.
    ///
    /// ```
    /// use palisade_retry::{RetryMetrics, timeout::TimeoutLayer};
    /// use std::time::Duration;
    ///
    /// let metrics = RetryMetrics::register(&prometheus::Registry::new()).unwrap();
    /// let layer = TimeoutLayer::new(Duration::from_secs(30)).metrics(&metrics, "api");
    /// # let _ = layer;
    /// ```
    pub fn metrics(mut self, metrics: &RetryMetrics, name: &str) -> Self {
        self.elapsed = Some(metrics.timeout_counter(name));
        self
    }

    /// The same limit for any service: a call that takes longer fails with
    /// [`TimeoutError::Elapsed`], and the inner call is dropped.
    ///
    /// ```
    /// use palisade_retry::timeout::{TimeoutError, TimeoutLayer};
    /// use std::time::Duration;
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let lookup = ServiceBuilder::new()
    ///     .layer(TimeoutLayer::new(Duration::from_millis(250)).for_services())
    ///     .service_fn(|id: u64| async move {
    ///         tokio::time::sleep(Duration::from_secs(id)).await;
    ///         Ok::<_, std::io::Error>(id)
    ///     });
    /// assert_eq!(lookup.clone().oneshot(0).await.unwrap(), 0);
    /// let err = lookup.oneshot(5).await.unwrap_err();
    /// assert!(matches!(err, TimeoutError::Elapsed(d) if d == Duration::from_millis(250)));
    /// let err: palisade_core::Error = err.into();
    /// assert_eq!(err.http_status(), 504);
    /// # }
    /// ```
    pub fn for_services(self) -> ServiceTimeoutLayer {
        ServiceTimeoutLayer { layer: self }
    }
}

/// A time limit for any service, with a typed error: built by
/// [`TimeoutLayer::for_services`].
#[derive(Clone, Debug)]
pub struct ServiceTimeoutLayer {
    layer: TimeoutLayer,
}

impl<S> Layer<S> for ServiceTimeoutLayer {
    type Service = ServiceTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceTimeout {
            inner,
            timeout: self.layer.timeout,
            elapsed: self.layer.elapsed.clone(),
        }
    }
}

/// Why a [`ServiceTimeout`] call failed.
#[derive(Debug, thiserror::Error)]
pub enum TimeoutError<E> {
    /// The call took longer than the limit (which is given).
    #[error("timed out after {0:?}")]
    Elapsed(Duration),
    /// The inner service failed.
    #[error(transparent)]
    Inner(E),
}

impl<E: Into<BoxError>> From<TimeoutError<E>> for Error {
    fn from(err: TimeoutError<E>) -> Self {
        match err {
            TimeoutError::Elapsed(after) => {
                Error::new(ErrorKind::Timeout, format!("timed out after {after:?}"))
            }
            TimeoutError::Inner(e) => inner_error(e.into()),
        }
    }
}

/// An inner service's error as a core error: itself when it is one, an
/// upstream failure with it as the source otherwise.
pub(crate) fn inner_error(e: BoxError) -> Error {
    match e.downcast::<Error>() {
        Ok(core) => *core,
        Err(e) => Error::new(ErrorKind::Upstream, "upstream failed").with_source(e),
    }
}

/// A time-limited service with a typed error; see
/// [`TimeoutLayer::for_services`].
#[derive(Clone, Debug)]
pub struct ServiceTimeout<S> {
    inner: S,
    timeout: Duration,
    elapsed: Option<IntCounter>,
}

impl<S> ServiceTimeout<S> {
    palisade_core::inner_accessors!(inner: S; get_ref, into_inner);
}

impl<S, Req> Service<Req> for ServiceTimeout<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = TimeoutError<S::Error>;
    type Future = ServiceResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(TimeoutError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ServiceResponseFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            timeout: self.timeout,
            elapsed: self.elapsed.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`ServiceTimeout`].
    pub struct ServiceResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        timeout: Duration,
        elapsed: Option<IntCounter>,
    }
}

impl<F> fmt::Debug for ServiceResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceResponseFuture")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, T, E> Future for ServiceResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, TimeoutError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            return Poll::Ready(res.map_err(TimeoutError::Inner));
        }
        if this.sleep.poll(cx).is_ready() {
            tracing::debug!(
                timeout_ms = this.timeout.as_millis() as u64,
                "call timed out"
            );
            if let Some(c) = this.elapsed {
                c.inc();
            }
            return Poll::Ready(Err(TimeoutError::Elapsed(*this.timeout)));
        }
        Poll::Pending
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
            elapsed: self.elapsed.clone(),
        }
    }
}

/// A service whose requests are time limited; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    elapsed: Option<IntCounter>,
}

impl<S> Timeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            elapsed: None,
        }
    }

    palisade_core::inner_accessors!(inner: S; get_ref, into_inner);
}

/// The `grpc-timeout` header: an integer of at most 8 digits and a unit.
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Timeout<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<PalisadeBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc_request(req.headers());
        // This request's own limit (a route's), else the layer's.
        let mut timeout = req
            .extensions()
            .get::<RouteTimeout>()
            .map_or(self.timeout, |own| own.0);
        if grpc && let Some(asked) = grpc_timeout(req.headers()) {
            timeout = timeout.min(asked);
        }
        // A body still arriving (see `palisade_core::body::sent`): the
        // clock starts when it has ended, so a client that trickles its
        // body is not taken for a slow upstream.
        let sending = req
            .extensions()
            .get::<RequestSent>()
            .filter(|s| !s.is_sent())
            .cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(timeout),
            sending,
            grpc,
            timeout,
            elapsed: self.elapsed.clone(),
        }
    }
}

pin_project! {
    /// Response future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        // The request body has not ended yet: the clock waits for it.
        sending: Option<RequestSent>,
        grpc: bool,
        timeout: Duration,
        elapsed: Option<IntCounter>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<PalisadeBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(res) = this.inner.poll(cx) {
            return Poll::Ready(res.map(|r| r.map(PalisadeBody::inner)));
        }
        if let Some(sending) = this.sending {
            if sending.poll_sent(cx).is_pending() {
                return Poll::Pending;
            }
            *this.sending = None;
            this.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + *this.timeout);
        }
        if this.sleep.poll(cx).is_ready() {
            tracing::debug!(
                timeout_ms = this.timeout.as_millis() as u64,
                "request timed out"
            );
            if let Some(c) = this.elapsed {
                c.inc();
            }
            let err = Error::new(ErrorKind::Timeout, "request timed out");
            return Poll::Ready(Ok(err.into_http_response(*this.grpc)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok(Response::new(Full::new(Bytes::from("done"))))
        })
    }

    /// A body whose one frame comes after `delay`.
    fn trickled(
        delay: Duration,
    ) -> http_body_util::StreamBody<
        impl futures_util::Stream<Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>>,
    > {
        http_body_util::StreamBody::new(futures_util::stream::once(async move {
            tokio::time::sleep(delay).await;
            Ok(http_body::Frame::data(Bytes::from("body")))
        }))
    }

    /// An upstream that answers `answer_after` once it has read the whole
    /// request body (an echo, an upload).
    fn reads_then_answers<B>(
        answer_after: Duration,
    ) -> impl Service<
        Request<B>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Debug,
    {
        tower::service_fn(move |req: Request<B>| async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            tokio::time::sleep(answer_after).await;
            Ok(Response::new(Full::new(body)))
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_starts_when_the_request_body_has_ended() {
        let layer = TimeoutLayer::new(Duration::from_secs(2));
        let start = tokio::time::Instant::now();
        // The body takes 5 s to arrive, the upstream answers 1 s after it:
        // within the limit, which counts from the end of the body.
        let req = palisade_core::body::sent::track(Request::new(trickled(Duration::from_secs(5))));
        let res = layer
            .layer(reads_then_answers(Duration::from_secs(1)))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "body");
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        // An upstream that hangs once it has the body: 504, two seconds
        // after the body ended.
        let start = tokio::time::Instant::now();
        let req = palisade_core::body::sent::track(Request::new(trickled(Duration::from_secs(5))));
        let res = layer
            .layer(reads_then_answers(Duration::from_secs(3600)))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(start.elapsed(), Duration::from_secs(7));
        // Untracked, the clock starts at the call, as before.
        let start = tokio::time::Instant::now();
        let res = layer
            .layer(reads_then_answers(Duration::from_secs(1)))
            .oneshot(Request::new(trickled(Duration::from_secs(5))))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_timeout_replaces_the_layers_limit_for_its_request() {
        let layer = TimeoutLayer::new(Duration::from_secs(2));
        let with = |limit: Duration| {
            let mut req = Request::new(());
            req.extensions_mut().insert(RouteTimeout(limit));
            req
        };
        // Longer than the layer's: a 3 s answer arrives.
        let res = layer
            .layer(slow(Duration::from_secs(3)))
            .oneshot(with(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // Shorter: cut at its own limit, not the layer's.
        let start = tokio::time::Instant::now();
        let res = layer
            .layer(slow(Duration::from_secs(1)))
            .oneshot(with(Duration::from_millis(500)))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        // A gRPC caller's shorter deadline still wins.
        let mut req = with(Duration::from_secs(10));
        req.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        req.headers_mut()
            .insert("grpc-timeout", "300m".parse().unwrap());
        let start = tokio::time::Instant::now();
        let res = layer
            .layer(slow(Duration::from_secs(3)))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        // And the clock still starts when the body has ended: 4 s of body,
        // then a 2 s answer, within a 3 s route limit.
        let start = tokio::time::Instant::now();
        let mut req =
            palisade_core::body::sent::track(Request::new(trickled(Duration::from_secs(4))));
        req.extensions_mut()
            .insert(RouteTimeout(Duration::from_secs(3)));
        let res = layer
            .layer(reads_then_answers(Duration::from_secs(2)))
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(start.elapsed(), Duration::from_secs(6));
    }

    #[tokio::test(start_paused = true)]
    async fn fast_answers_pass_slow_ones_get_504() {
        let registry = prometheus::Registry::new();
        let metrics = RetryMetrics::register(&registry).unwrap();
        let layer = TimeoutLayer::new(Duration::from_secs(2)).metrics(&metrics, "api");
        let res = layer
            .layer(slow(Duration::from_secs(1)))
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "done");
        let start = tokio::time::Instant::now();
        let res = layer
            .layer(slow(Duration::from_secs(3)))
            .oneshot(Request::new(()))
            .await
            .unwrap();
        assert_eq!(res.status(), 504);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let elapsed = registry
            .gather()
            .iter()
            .find(|f| f.name() == "palisade_timeout_elapsed_total")
            .map(|f| f.get_metric()[0].get_counter().get_value());
        assert_eq!(elapsed, Some(1.0));
    }

    #[tokio::test(start_paused = true)]
    async fn grpc_gets_deadline_exceeded_and_its_own_shorter_timeout() {
        let svc = TimeoutLayer::new(Duration::from_secs(10)).layer(slow(Duration::from_secs(3)));
        let req = Request::builder()
            .header("content-type", "application/grpc")
            .header("grpc-timeout", "500m")
            .body(())
            .unwrap();
        let start = tokio::time::Instant::now();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[test]
    fn grpc_timeout_parsing() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(h("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(h("2S"), Some(Duration::from_secs(2)));
        assert_eq!(h("250m"), Some(Duration::from_millis(250)));
        assert_eq!(h("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(h("5x"), None);
        assert_eq!(h("S"), None);
        assert_eq!(h("123456789S"), None, "at most 8 digits");
    }
}
