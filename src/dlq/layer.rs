//! [`DeadLetterLayer`]: records every call that failed for good in a
//! [`DeadLetterQueue`], and answers the errors of the layers inside it.

use super::{DeadLetter, DeadLetterQueue};
use http::{Method, Request, Response, Uri};
use palisade_core::{Error, ErrorKind, PalisadeBody};
use pin_project_lite::pin_project;
use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tower::{Layer, Service};

/// Records failed calls (a 5xx answer, or an error of the inner stack, such
/// as retries exhausted or an open circuit) in a [`DeadLetterQueue`] — on
/// Redis, shared by every replica — and turns the inner errors into answers
/// (HTTP status and problem body, or a gRPC status), so nothing outside it
/// needs an error handler.
///
/// Recording never delays or fails the answer: it runs in a task, and a
/// store failure is logged. Put it outside retry and the breaker (the
/// gateway puts it right outside them), so a call is recorded once, after
/// its last attempt.
///
/// # Example
///
/// ```
/// use palisade::dlq::{DeadLetterLayer, DeadLetterQueue};
/// use palisade::store::Store;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let dlq = DeadLetterQueue::new(Store::in_memory());
/// let svc = ServiceBuilder::new()
///     .layer(DeadLetterLayer::new(dlq.clone()))
///     .service_fn(|_req: http::Request<()>| async {
///         Err::<http::Response<String>, _>(palisade::core::Error::new(
///             palisade::core::ErrorKind::Upstream,
///             "upstream unreachable",
///         ))
///     });
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.status(), 502);
/// // Recorded in the background.
/// for _ in 0..100 {
///     if dlq.stats().await.unwrap().total == 1 { break }
///     tokio::task::yield_now().await;
/// }
/// assert_eq!(dlq.stats().await.unwrap().total, 1);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct DeadLetterLayer {
    dlq: DeadLetterQueue,
}

impl DeadLetterLayer {
    /// Records into `dlq`.
    pub fn new(dlq: DeadLetterQueue) -> Self {
        Self { dlq }
    }
}

impl<S> Layer<S> for DeadLetterLayer {
    type Service = DeadLetters<S>;

    fn layer(&self, inner: S) -> DeadLetters<S> {
        DeadLetters {
            inner,
            dlq: self.dlq.clone(),
            not_ready: None,
        }
    }
}

/// The service of [`DeadLetterLayer`].
///
/// ```
/// use palisade::dlq::{DeadLetterLayer, DeadLetterQueue, DeadLetters};
/// use tower::Layer;
/// let svc: DeadLetters<()> =
///     DeadLetterLayer::new(DeadLetterQueue::new(palisade::store::Store::in_memory())).layer(());
/// assert!(svc.get_ref() == &());
/// ```
pub struct DeadLetters<S> {
    inner: S,
    dlq: DeadLetterQueue,
    /// A readiness failure, answered by the next call.
    not_ready: Option<Error>,
}

impl<S> DeadLetters<S> {
    palisade_core::inner_accessors!(inner: S);
}

impl<S: Clone> Clone for DeadLetters<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            dlq: self.dlq.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for DeadLetters<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for DeadLetters<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<Error>,
{
    type Response = Response<PalisadeBody<ResB>>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(err)) => {
                self.not_ready = Some(err.into());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Cheap clones (reference counts); formatted only when a call failed.
        let method = req.method().clone();
        let uri = req.uri().clone();
        let grpc = palisade_core::is_grpc_request(req.headers());
        let state = match self.not_ready.take() {
            Some(err) => State::Failed { err: Some(err) },
            None => State::Called {
                future: self.inner.call(req),
            },
        };
        ResponseFuture {
            state,
            dlq: self.dlq.clone(),
            method,
            uri,
            grpc,
        }
    }
}

pin_project! {
    /// Response future of [`DeadLetters`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        dlq: DeadLetterQueue,
        method: Method,
        uri: Uri,
        grpc: bool,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Failed { err: Option<Error> },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("method", &self.method)
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<Error>,
{
    type Output = Result<Response<PalisadeBody<ResB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.state.project() {
            StateProj::Called { future } => ready!(future.poll(cx)).map_err(Into::into),
            StateProj::Failed { err } => Err(err
                .take()
                .unwrap_or_else(|| Error::new(ErrorKind::Internal, "polled after completion"))),
        };
        let res = match outcome {
            Ok(res) => res.map(PalisadeBody::inner),
            Err(err) => err.into_http_response(*this.grpc),
        };
        if res.status().is_server_error() {
            let class = res
                .extensions()
                .get::<ErrorKind>()
                .map_or("upstream_5xx", |k| k.as_str());
            let letter = DeadLetter::new(this.method.as_str(), this.uri.path(), class)
                .status(res.status().as_u16());
            let dlq = this.dlq.clone();
            // Recording must never delay or fail the answer.
            tokio::spawn(async move {
                if let Err(err) = dlq.record(letter).await {
                    tracing::warn!(error = %err, "dead letter not recorded");
                }
            });
        }
        Poll::Ready(Ok(res))
    }
}
