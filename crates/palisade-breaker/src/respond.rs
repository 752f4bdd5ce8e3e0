//! What a [`CircuitBreaker`](crate::CircuitBreaker) service answers when its
//! circuit is open — the flavour of the layer, chosen by type.
//!
//! | flavour | built by | `Response` | `Error` | open circuit |
//! |---|---|---|---|---|
//! | [`TypedError`] | [`CircuitBreakerLayer::builder`](crate::CircuitBreakerLayer::builder) | `S::Response` | [`BreakerError<S::Error>`](crate::BreakerError) | `Err(BreakerError::Open)` |
//! | [`HttpAnswer`] | [`.http()`](crate::Builder::http) | `Response<PalisadeBody<B>>` | `S::Error` | 503 + `Retry-After`, or gRPC `UNAVAILABLE` |
//! | [`Fallback`] | [`.fallback(svc)`](crate::Builder::fallback) on a typed builder | `S::Response` | `S::Error` | the fallback's answer |
//! | [`HttpFallback`] | [`.fallback(svc)`](crate::Builder::fallback) on an HTTP builder | `Response<PalisadeBody<B>>` | `S::Error` | the fallback's answer |
//!
//! A per-key breaker whose key extractor refuses a request
//! ([`KeyExtractor::refusal`](palisade_core::key::KeyExtractor::refusal):
//! a [`PeerIp`](palisade_core::key::PeerIp) with
//! [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse) and no
//! peer address) never calls the inner service: [`OnOpen::refused`]
//! answers it — `Err(BreakerError::Refused)` ([`TypedError`]), the
//! extractor's 500 problem+json or gRPC `INTERNAL` ([`HttpAnswer`],
//! [`HttpFallback`]), or the fallback's answer ([`Fallback`], whose error
//! type cannot carry the refusal).

use crate::breaker::Permit;
use crate::error::{BreakerError, CircuitOpen};
use futures_util::future::{Either, MapOk, Ready, TryFutureExt, ready};
use http::{Request, Response};
use palisade_core::body::sent::RequestSent;
use palisade_core::body::{BodyEnd, OnEnd};
use palisade_core::classify::{AtEnd, Outcome};
use palisade_core::jsonrpc::JsonRpcCall;
use palisade_core::{PalisadeBody, is_grpc_request};
use tower::util::{Oneshot, ServiceExt};
use tower_service::Service;

/// How a flavour wraps the inner service's results (the half of
/// [`OnOpen`] that does not depend on the request type).
pub trait Wrap<Res, E> {
    /// The response type of the breaker service.
    type Response;
    /// The error type of the breaker service.
    type Error;

    /// Wraps the inner service's response.
    fn response(res: Res) -> Self::Response;
    /// Wraps the inner service's error.
    fn error(err: E) -> Self::Error;

    /// Wraps a response whose outcome is known only at the end of its
    /// body (see [`Classify::at_end`](palisade_core::classify::Classify::at_end)):
    /// the permit is recorded then. Flavours whose response has no body to
    /// watch record a success at once (the default).
    fn watch(res: Res, permit: Permit, _at_end: AtEnd) -> Self::Response {
        permit.record(Outcome::Success);
        Self::response(res)
    }
}

/// The body of `res`, recording `permit` when it ends (or, for a body
/// judged by its JSON-RPC reply, as soon as the reply has been read).
fn watched<B>(res: Response<B>, permit: Permit, at_end: AtEnd) -> Response<PalisadeBody<B>> {
    let scan = at_end.reply_scan(res.headers());
    res.map(|body| {
        let on_end: OnEnd = Box::new(move |end| {
            permit.record(match end {
                BodyEnd::Trailers(t) => at_end.classify(Some(t)),
                BodyEnd::Finished => at_end.classify(None),
                BodyEnd::Replied(reply) => at_end.judge_reply(reply),
                _ => Outcome::Failure,
            });
        });
        match scan {
            Some(scan) => PalisadeBody::watched_for_reply(body, scan, on_end),
            None => PalisadeBody::watched(body, on_end),
        }
    })
}

/// The flavour of a breaker service: how it wraps the inner service's
/// results and what it answers when the circuit is open.
///
/// Implemented by [`TypedError`], [`HttpAnswer`], [`Fallback`] and
/// [`HttpFallback`].
pub trait OnOpen<Req, Res, E>: Wrap<Res, E> + Clone + Send + Sync + 'static {
    /// The future of the answer to a rejected call.
    type Future: Future<Output = Result<Self::Response, Self::Error>>;

    /// Answers a call whose circuit is open.
    fn open(&self, req: Req, open: CircuitOpen) -> Self::Future;

    /// Answers a call whose key extractor refused it
    /// ([`Select::refusal`](crate::Select::refusal)): `err` is the
    /// extractor's error (HTTP 500, gRPC `INTERNAL`). The inner service is
    /// not called.
    ///
    /// ```
    /// use palisade_breaker::respond::{HttpAnswer, OnOpen};
    /// use palisade_core::{Error, ErrorKind};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = Error::new(ErrorKind::Internal, "no peer address");
    /// let answer = <HttpAnswer as OnOpen<_, http::Response<()>, std::io::Error>>::refused(
    ///     &HttpAnswer::default(),
    ///     http::Request::new(()),
    ///     err,
    /// );
    /// let res = answer.await.unwrap();
    /// assert_eq!(res.status(), 500);
    /// assert_eq!(res.headers()["content-type"], "application/problem+json");
    /// # }
    /// ```
    fn refused(&self, req: Req, err: palisade_core::Error) -> Self::Future;

    /// The request's body, when it is known to be still arriving (an HTTP
    /// request carrying a [`RequestSent`]): a call dropped before it ended
    /// is not counted as a failure.
    #[inline]
    fn sending(&self, req: &Req) -> Option<RequestSent> {
        let _ = req;
        None
    }
}

/// The unfinished [`RequestSent`] of an HTTP request.
#[inline]
fn sending_of<B>(req: &Request<B>) -> Option<RequestSent> {
    req.extensions()
        .get::<RequestSent>()
        .filter(|s| !s.is_sent())
        .cloned()
}

/// Generic services: an open circuit is `Err(BreakerError::Open)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TypedError;

impl<Res, E> Wrap<Res, E> for TypedError {
    type Response = Res;
    type Error = BreakerError<E>;

    #[inline]
    fn response(res: Res) -> Res {
        res
    }

    #[inline]
    fn error(err: E) -> BreakerError<E> {
        BreakerError::Inner(err)
    }
}

impl<Req, Res, E> OnOpen<Req, Res, E> for TypedError {
    type Future = Ready<Result<Res, BreakerError<E>>>;

    fn open(&self, _req: Req, open: CircuitOpen) -> Self::Future {
        ready(Err(BreakerError::Open(open)))
    }

    fn refused(&self, _req: Req, err: palisade_core::Error) -> Self::Future {
        ready(Err(BreakerError::Refused(Box::new(err))))
    }
}

/// HTTP services: an open circuit is answered at once with 503 and
/// `Retry-After` (gRPC requests: `grpc-status` 14, `UNAVAILABLE`), so axum
/// needs no `HandleErrorLayer`. With
/// [`.json_rpc_answers(status)`](crate::Builder::json_rpc_answers), a
/// JSON-RPC call (a request carrying a
/// [`JsonRpcCall`] with an id) is
/// answered with a JSON-RPC error reply to its id instead, so MCP clients
/// see their own call fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpAnswer {
    json_rpc: Option<http::StatusCode>,
}

impl HttpAnswer {
    /// JSON-RPC calls answered with a JSON-RPC error reply, with HTTP
    /// `status` (see [`Builder::json_rpc_answers`](crate::Builder::json_rpc_answers)).
    pub(crate) fn json_rpc(status: http::StatusCode) -> Self {
        Self {
            json_rpc: Some(status),
        }
    }
}

impl<ResB, E> Wrap<Response<ResB>, E> for HttpAnswer {
    type Response = Response<PalisadeBody<ResB>>;
    type Error = E;

    #[inline]
    fn response(res: Response<ResB>) -> Self::Response {
        res.map(PalisadeBody::inner)
    }

    #[inline]
    fn error(err: E) -> E {
        err
    }

    fn watch(res: Response<ResB>, permit: Permit, at_end: AtEnd) -> Self::Response {
        watched(res, permit, at_end)
    }
}

impl<ReqB, ResB, E> OnOpen<Request<ReqB>, Response<ResB>, E> for HttpAnswer {
    type Future = Ready<Result<Self::Response, E>>;

    #[inline]
    fn sending(&self, req: &Request<ReqB>) -> Option<RequestSent> {
        sending_of(req)
    }

    fn open(&self, req: Request<ReqB>, open: CircuitOpen) -> Self::Future {
        if let Some(status) = self.json_rpc
            && let Some(id) = req
                .extensions()
                .get::<JsonRpcCall>()
                .and_then(JsonRpcCall::id)
        {
            return ready(Ok(
                palisade_core::Error::from(open).into_json_rpc_response(id, status)
            ));
        }
        let grpc = is_grpc_request(req.headers());
        ready(Ok(palisade_core::Error::from(open).into_http_response(grpc)))
    }

    fn refused(&self, req: Request<ReqB>, err: palisade_core::Error) -> Self::Future {
        ready(Ok(self.refusal(&req, err)))
    }
}

impl HttpAnswer {
    /// The answer to a refused request: the extractor's error as
    /// problem+json (gRPC: its status, trailers-only), or as a JSON-RPC
    /// error reply to a JSON-RPC call when JSON-RPC answers are on.
    fn refusal<ReqB, ResB>(
        &self,
        req: &Request<ReqB>,
        err: palisade_core::Error,
    ) -> Response<PalisadeBody<ResB>> {
        if self.json_rpc.is_some()
            && let Some(id) = req
                .extensions()
                .get::<JsonRpcCall>()
                .and_then(JsonRpcCall::id)
        {
            let status = err.http_status();
            return err.into_json_rpc_response(id, status);
        }
        err.into_http_response(is_grpc_request(req.headers()))
    }
}

/// An open circuit is answered by a fallback service (for a closure, wrap
/// it in [`tower::service_fn`]); it gets the request the inner service
/// would have had.
#[derive(Clone, Debug)]
pub struct Fallback<F>(pub(crate) F);

impl<F, Res, E> Wrap<Res, E> for Fallback<F> {
    type Response = Res;
    type Error = E;

    #[inline]
    fn response(res: Res) -> Res {
        res
    }

    #[inline]
    fn error(err: E) -> E {
        err
    }
}

impl<F, Req, Res, E> OnOpen<Req, Res, E> for Fallback<F>
where
    F: Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
{
    type Future = Oneshot<F, Req>;

    fn open(&self, req: Req, _open: CircuitOpen) -> Self::Future {
        self.0.clone().oneshot(req)
    }

    /// The error type cannot carry the refusal: the fallback answers (the
    /// inner service is still not called; the refusal is logged at debug
    /// level and counted in `palisade_missing_peer_total`).
    fn refused(&self, req: Req, err: palisade_core::Error) -> Self::Future {
        tracing::debug!(error = %err, "breaker key refused; the fallback answers");
        self.0.clone().oneshot(req)
    }
}

/// [`Fallback`] for the HTTP flavour: the fallback answers with the inner
/// service's response type; its body is passed through.
#[derive(Clone, Debug)]
pub struct HttpFallback<F>(pub(crate) F);

type WrapBody<B> = fn(Response<B>) -> Response<PalisadeBody<B>>;

impl<F, ResB, E> Wrap<Response<ResB>, E> for HttpFallback<F> {
    type Response = Response<PalisadeBody<ResB>>;
    type Error = E;

    #[inline]
    fn response(res: Response<ResB>) -> Self::Response {
        res.map(PalisadeBody::inner)
    }

    #[inline]
    fn error(err: E) -> E {
        err
    }

    fn watch(res: Response<ResB>, permit: Permit, at_end: AtEnd) -> Self::Response {
        watched(res, permit, at_end)
    }
}

/// The future of [`HttpFallback`]'s answers: the fallback's (an open
/// circuit) or a ready refusal (a key extractor's
/// [`refusal`](palisade_core::key::KeyExtractor::refusal)).
///
/// ```
/// use palisade_breaker::CircuitBreakerLayer;
/// use palisade_core::key::{MissingPeer, PeerIp};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let ok = |_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// };
/// let layer = CircuitBreakerLayer::builder("per-client")
///     .http()
///     .per_key(PeerIp::new().when_missing(MissingPeer::Refuse))
///     .fallback(service_fn(ok))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
/// // No peer address: the extractor's 500, not the fallback's answer.
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 500);
/// # }
/// ```
pub type HttpFallbackFuture<F, ReqB, ResB, E> = Either<
    MapOk<Oneshot<F, Request<ReqB>>, WrapBody<ResB>>,
    Ready<Result<Response<PalisadeBody<ResB>>, E>>,
>;

impl<F, ReqB, ResB, E> OnOpen<Request<ReqB>, Response<ResB>, E> for HttpFallback<F>
where
    F: Service<Request<ReqB>, Response = Response<ResB>, Error = E> + Clone + Send + Sync + 'static,
{
    type Future = HttpFallbackFuture<F, ReqB, ResB, E>;

    #[inline]
    fn sending(&self, req: &Request<ReqB>) -> Option<RequestSent> {
        sending_of(req)
    }

    fn open(&self, req: Request<ReqB>, _open: CircuitOpen) -> Self::Future {
        let wrap: WrapBody<ResB> = |res| res.map(PalisadeBody::inner);
        Either::Left(self.0.clone().oneshot(req).map_ok(wrap))
    }

    /// The extractor's answer (500 problem+json, gRPC `INTERNAL`), not the
    /// fallback's: a refusal is a setup mistake, not an unavailable upstream.
    fn refused(&self, req: Request<ReqB>, err: palisade_core::Error) -> Self::Future {
        Either::Right(ready(Ok(
            err.into_http_response(is_grpc_request(req.headers()))
        )))
    }
}

/// Turns a flavour into its fallback flavour (used by
/// [`Builder::fallback`](crate::Builder::fallback)).
pub trait WithFallback<F> {
    /// The flavour with a fallback.
    type Output;
    /// Adds the fallback.
    fn with_fallback(self, fallback: F) -> Self::Output;
}

impl<F> WithFallback<F> for TypedError {
    type Output = Fallback<F>;
    fn with_fallback(self, fallback: F) -> Fallback<F> {
        Fallback(fallback)
    }
}

impl<F> WithFallback<F> for HttpAnswer {
    type Output = HttpFallback<F>;
    fn with_fallback(self, fallback: F) -> HttpFallback<F> {
        HttpFallback(fallback)
    }
}
