//! The retry service for `http::Request<B>`: buffers the body for replay,
//! judges responses by status, gRPC status and transport error.

use crate::{
    ReplayBody, RetryError, RetryReason, StopReason, Verdict,
    classify::{classify_error, retry_after},
    config::Policy,
    engine::{Core, Judge, Replay, Session},
};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, request::Parts};
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::time::Instant;
use tower_service::Service;

/// A service retried by a [`RetryLayer`](crate::RetryLayer); see the
/// [crate docs](crate).
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, policy: Arc<Policy>) -> Self {
        Self { inner, policy }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, owned.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish()
    }
}

/// How one HTTP request is judged.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HttpJudge {
    grpc: bool,
    idempotent: bool,
}

impl<ResBody, E> Judge<Response<ResBody>, E> for HttpJudge
where
    E: std::error::Error + 'static,
{
    #[inline]
    fn judge(
        &self,
        policy: &Policy,
        result: Result<&Response<ResBody>, &E>,
    ) -> (Verdict, Option<StatusCode>) {
        match result {
            Ok(res) => {
                let status = res.status();
                let reason = if policy.retry_status(status) {
                    RetryReason::Status
                } else if self.grpc
                    && res
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<i32>().ok())
                        .is_some_and(|code| policy.retry_grpc_code(code))
                {
                    RetryReason::Grpc
                } else {
                    return (Verdict::Done, Some(status));
                };
                let after = if policy.honor_retry_after {
                    retry_after(status, res.headers())
                } else {
                    None
                };
                (Verdict::Retry { reason, after }, Some(status))
            }
            Err(e) => match classify_error(e) {
                Some((reason, after)) => (Verdict::Retry { reason, after }, None),
                None => (Verdict::Done, None),
            },
        }
    }

    #[inline]
    fn may_retry(&self, policy: &Policy, reason: RetryReason) -> Result<(), StopReason> {
        if self.idempotent
            || policy.non_idempotent
            || reason.request_not_sent()
            || (self.grpc && policy.grpc && reason == RetryReason::Grpc)
        {
            Ok(())
        } else {
            Err(StopReason::NotIdempotent)
        }
    }
}

/// What is kept to send a request again.
pub(crate) struct HttpReplay {
    parts: Parts,
    data: Bytes,
    trailers: Option<Box<HeaderMap>>,
}

impl<B> Replay<Request<ReplayBody<B>>> for HttpReplay
where
    B: Body + Send + 'static,
{
    fn replay(&self) -> Request<ReplayBody<B>> {
        Request::from_parts(
            self.parts.clone(),
            ReplayBody::buffered_boxed(self.data.clone(), self.trailers.clone()),
        )
    }
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

#[inline]
fn is_idempotent(parts: &Parts) -> bool {
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || parts.headers.contains_key(IDEMPOTENCY_KEY)
}

type HttpCore<S, B> = Core<S, Request<ReplayBody<B>>, HttpReplay, HttpJudge>;

/// The body is being read into the replay buffer.
struct Buffering<S, B: Body> {
    svc: S,
    parts: Parts,
    body: Pin<Box<B>>,
    first: Option<Bytes>,
    more: Option<BytesMut>,
    trailers: Option<Box<HeaderMap>>,
    len: usize,
    judge: HttpJudge,
    policy: Arc<Policy>,
    deadline: Option<Instant>,
}

impl<S, B: Body<Data = Bytes>> Buffering<S, B> {
    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        match (&mut self.first, &mut self.more) {
            (None, _) => self.first = Some(data),
            (Some(_), Some(more)) => more.extend_from_slice(&data),
            (Some(first), None) => {
                let mut more = BytesMut::with_capacity(first.len() + data.len());
                more.extend_from_slice(first);
                more.extend_from_slice(&data);
                self.more = Some(more);
            }
        }
    }

    fn take_data(&mut self) -> Bytes {
        match self.more.take() {
            Some(more) => more.freeze(),
            None => self.first.take().unwrap_or_default(),
        }
    }
}

pin_project! {
    /// Response future of [`Retry`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
        B: Body,
    {
        Buffering { buffering: Option<Buffering<S, B>> },
        Running { #[pin] core: HttpCore<S, B> },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + Sync + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = RetryError<S::Error>;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RetryError::Inner)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let svc = std::mem::replace(&mut self.inner, clone);
        let policy = &self.policy;
        if let Some(b) = &policy.budget {
            b.deposit();
        }
        if let Some(m) = &policy.metrics {
            m.first.inc();
        }
        let (parts, body) = req.into_parts();
        let judge = HttpJudge {
            // gRPC calls are always POSTs.
            grpc: parts.method == Method::POST && palisade_core::is_grpc_request(&parts.headers),
            idempotent: is_idempotent(&parts),
        };
        let deadline = policy.deadline.map(|d| Instant::now() + d);
        let policy = policy.clone();
        let state = if body.is_end_stream() {
            State::Running {
                core: start(svc, parts, Bytes::new(), None, judge, policy, deadline),
            }
        } else if policy.max_attempts <= 1 || body.size_hint().lower() > policy.max_body as u64 {
            // Known to be too large (or never retried): stream it through.
            State::Running {
                core: streamed(
                    svc,
                    parts,
                    VecDeque::new(),
                    Box::pin(body),
                    None,
                    judge,
                    policy,
                    deadline,
                ),
            }
        } else {
            State::Buffering {
                buffering: Some(Buffering {
                    svc,
                    parts,
                    body: Box::pin(body),
                    first: None,
                    more: None,
                    trailers: None,
                    len: 0,
                    judge,
                    policy,
                    deadline,
                }),
            }
        };
        ResponseFuture { state }
    }
}

/// Starts a request whose body is buffered.
fn start<S, B, ResBody>(
    mut svc: S,
    parts: Parts,
    data: Bytes,
    trailers: Option<Box<HeaderMap>>,
    judge: HttpJudge,
    policy: Arc<Policy>,
    deadline: Option<Instant>,
) -> HttpCore<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + Sync + 'static,
    ResBody: Send + 'static,
{
    let hedged = policy.hedge.is_some() && judge.idempotent && policy.max_attempts > 1;
    if hedged {
        let replay = HttpReplay {
            parts,
            data,
            trailers,
        };
        return Core::slow(Session {
            svc,
            replay: Some(replay),
            judge,
            policy,
            deadline,
        });
    }
    let replay = (policy.max_attempts > 1).then(|| HttpReplay {
        parts: parts.clone(),
        data: data.clone(),
        trailers: trailers.clone(),
    });
    let fut = svc.call(Request::from_parts(
        parts,
        ReplayBody::buffered_boxed(data, trailers),
    ));
    Core::first(
        fut,
        Session {
            svc,
            replay,
            judge,
            policy,
            deadline,
        },
    )
}

/// Starts a request whose body is too large to replay: sent once, whole.
#[allow(clippy::too_many_arguments)]
fn streamed<S, B, ResBody>(
    mut svc: S,
    parts: Parts,
    prefix: VecDeque<Frame<Bytes>>,
    rest: Pin<Box<B>>,
    error: Option<B::Error>,
    judge: HttpJudge,
    policy: Arc<Policy>,
    deadline: Option<Instant>,
) -> HttpCore<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + Sync + 'static,
    ResBody: Send + 'static,
{
    if policy.max_attempts > 1 {
        if let Some(m) = &policy.metrics {
            m.not_replayable.inc();
        }
        tracing::debug!(name = %policy.name, "request body over the replay limit; sent once");
    }
    let fut = svc.call(Request::from_parts(
        parts,
        ReplayBody::streamed(prefix, rest, error),
    ));
    Core::first(
        fut,
        Session {
            svc,
            replay: None,
            judge,
            policy,
            deadline,
        },
    )
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + Sync + 'static,
    ResBody: Send + 'static,
{
    type Output = Result<Response<ResBody>, RetryError<S::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Running { core } => return core.poll(cx),
                StateProj::Buffering { buffering } => {
                    let b = buffering.as_mut().expect("polled after completion");
                    let mut over = false;
                    let mut error = None;
                    loop {
                        match b.body.as_mut().poll_frame(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(None) => break,
                            Poll::Ready(Some(Err(e))) => {
                                error = Some(e);
                                break;
                            }
                            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                                Ok(data) => {
                                    b.push(data);
                                    if b.len > b.policy.max_body {
                                        over = true;
                                        break;
                                    }
                                }
                                Err(frame) => {
                                    if let Ok(t) = frame.into_trailers() {
                                        b.trailers = Some(Box::new(t));
                                    }
                                }
                            },
                        }
                    }
                    let mut b = buffering.take().expect("buffering state");
                    let data = b.take_data();
                    if over || error.is_some() {
                        // Send what was read, then the rest (or the error):
                        // nothing is cut, nothing is replayed.
                        let mut prefix = VecDeque::with_capacity(2);
                        if !data.is_empty() {
                            prefix.push_back(Frame::data(data));
                        }
                        if let Some(t) = b.trailers.take() {
                            prefix.push_back(Frame::trailers(*t));
                        }
                        streamed(
                            b.svc, b.parts, prefix, b.body, error, b.judge, b.policy, b.deadline,
                        )
                    } else {
                        start(
                            b.svc, b.parts, data, b.trailers, b.judge, b.policy, b.deadline,
                        )
                    }
                }
            };
            self.as_mut()
                .project()
                .state
                .set(State::Running { core: next });
        }
    }
}
