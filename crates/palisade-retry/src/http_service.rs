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
use palisade_core::Idempotency;
use pin_project_lite::pin_project;
use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};
use tokio::time::Instant;
use tower_service::Service;

/// A service retried by a [`RetryLayer`](crate::RetryLayer); see the
/// [crate docs](crate).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade_retry::{ReplayBody, RetryLayer};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inner = tower::service_fn(|_req: http::Request<ReplayBody<Full<Bytes>>>| async {
///     Ok::<_, std::io::Error>(http::Response::new(()))
/// });
/// let svc = RetryLayer::new().layer(inner);
/// let res = svc.oneshot(http::Request::new(Full::new(Bytes::new()))).await.unwrap();
/// assert_eq!(res.status(), 200);
/// # }
/// ```
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<Policy>,
}

impl<S> Retry<S> {
    pub(crate) fn new(inner: S, policy: Arc<Policy>) -> Self {
        Self { inner, policy }
    }

    palisade_core::inner_accessors!(inner: S);
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
    /// Marked [`Idempotency::NotIdempotent`](palisade_core::Idempotency):
    /// retried only when it surely never left, whatever the policy says.
    forbidden: bool,
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
                    && palisade_core::error_class::grpc_status(res.headers())
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
    fn may_hedge(&self) -> bool {
        self.idempotent
    }

    #[inline]
    fn may_retry(&self, policy: &Policy, reason: RetryReason) -> Result<(), StopReason> {
        if self.forbidden {
            return if reason.request_not_sent() {
                Ok(())
            } else {
                Err(StopReason::NotIdempotent)
            };
        }
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

    fn marked_idempotent(&self) -> bool {
        self.parts.headers.contains_key(IDEMPOTENCY_KEY)
            && self.parts.extensions.get::<Idempotency>() != Some(&Idempotency::NotIdempotent)
    }
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Idempotent by the [`Idempotency`] extension when there is one, else by
/// method; an `Idempotency-Key` header is looked at only when a retry is
/// considered ([`Replay::marked_idempotent`]).
#[inline]
fn is_idempotent(parts: &Parts) -> bool {
    if let Some(marked) = parts.extensions.get::<Idempotency>() {
        return *marked == Idempotency::Idempotent;
    }
    matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

type HttpCore<S, B> = Core<S, Request<ReplayBody<B>>, HttpReplay, HttpJudge>;

/// A request whose body is being read into the replay buffer.
struct BufCtx<S> {
    svc: S,
    parts: Parts,
    first: Option<Bytes>,
    more: Option<BytesMut>,
    trailers: Option<Box<HeaderMap>>,
    len: usize,
    judge: HttpJudge,
    policy: Arc<Policy>,
    deadline: Option<Instant>,
}

enum ReadEnd<E> {
    Done,
    Over,
    Failed(E),
}

impl<S> BufCtx<S> {
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

    /// Reads frames until the end, an error, or (with `limit`) more than
    /// `limit` bytes.
    fn read<B: Body<Data = Bytes>>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
        limit: Option<usize>,
    ) -> Poll<ReadEnd<B::Error>> {
        loop {
            match body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(ReadEnd::Done),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(ReadEnd::Failed(e)),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        self.push(data);
                        if limit.is_some_and(|l| self.len > l) {
                            return Poll::Ready(ReadEnd::Over);
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers = Some(Box::new(t));
                        }
                    }
                },
            }
        }
    }
}

pin_project! {
    /// Response future of [`Retry`] (see its example): no allocation when
    /// the first attempt succeeds.
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
        // The body says it fits the buffer: read in place, no allocation.
        InPlace { #[pin] body: B, ctx: Option<BufCtx<S>> },
        // The body may not fit: boxed, so it can be streamed on if it does not.
        Boxed { body: Option<Pin<Box<B>>>, ctx: Option<BufCtx<S>> },
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
            forbidden: parts.extensions.get::<Idempotency>() == Some(&Idempotency::NotIdempotent),
        };
        let deadline = policy.deadline.map(|d| Instant::now() + d);
        let policy = policy.clone();
        let state = if body.is_end_stream() {
            State::Running {
                core: start(
                    svc,
                    parts,
                    Bytes::new(),
                    None,
                    judge,
                    policy,
                    deadline,
                    true,
                ),
            }
        } else if policy.max_attempts <= 1 || body.size_hint().lower() > policy.max_body as u64 {
            // Known to be too large (or never retried): stream it through.
            State::Running {
                core: streamed(
                    svc,
                    parts,
                    VecDeque::new(),
                    Some(Box::pin(body)),
                    None,
                    judge,
                    policy,
                    deadline,
                ),
            }
        } else {
            // A body whose size is known to fit is read in place (no
            // allocation); any other may have to be streamed on, so it is boxed.
            let fits = body
                .size_hint()
                .upper()
                .is_some_and(|u| u <= policy.max_body as u64);
            let ctx = Some(BufCtx {
                svc,
                parts,
                first: None,
                more: None,
                trailers: None,
                len: 0,
                judge,
                policy,
                deadline,
            });
            if fits {
                State::InPlace { body, ctx }
            } else {
                State::Boxed {
                    body: Some(Box::pin(body)),
                    ctx,
                }
            }
        };
        ResponseFuture { state }
    }
}

/// Starts a request whose body is buffered.
#[allow(clippy::too_many_arguments)]
fn start<S, B, ResBody>(
    mut svc: S,
    parts: Parts,
    data: Bytes,
    trailers: Option<Box<HeaderMap>>,
    judge: HttpJudge,
    policy: Arc<Policy>,
    deadline: Option<Instant>,
    replayable: bool,
) -> HttpCore<S, B>
where
    S: Service<Request<ReplayBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::error::Error + Send + Sync + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Send + Sync + 'static,
    ResBody: Send + 'static,
{
    let retries = policy.max_attempts > 1;
    if !replayable {
        note_sent_once(&policy);
    }
    let hedged = policy.hedge.is_some()
        && retries
        && replayable
        && (judge.idempotent || parts.headers.contains_key(IDEMPOTENCY_KEY));
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
    let replay = (retries && replayable).then(|| HttpReplay {
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

/// Counts and logs a request that could have been retried but whose body is
/// over the replay limit, so it is sent once.
fn note_sent_once(policy: &Policy) {
    if policy.max_attempts > 1 {
        if let Some(m) = &policy.metrics {
            m.not_replayable.inc();
        }
        tracing::debug!(name = %policy.name, "request body over the replay limit; sent once");
    }
}

/// Starts a request whose body is too large to replay: sent once, whole.
#[allow(clippy::too_many_arguments)]
fn streamed<S, B, ResBody>(
    mut svc: S,
    parts: Parts,
    prefix: VecDeque<Frame<Bytes>>,
    rest: Option<Pin<Box<B>>>,
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
    note_sent_once(&policy);
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
                StateProj::InPlace { body, ctx } => {
                    let c = ctx.as_mut().expect("polled after completion");
                    // The body promised to fit; one that breaks its promise
                    // is still read whole (never cut) but not replayed.
                    let end = ready!(c.read(body, cx, None));
                    let mut c = ctx.take().expect("buffering state");
                    let data = c.take_data();
                    match end {
                        ReadEnd::Failed(e) => {
                            let mut prefix = VecDeque::with_capacity(1);
                            if !data.is_empty() {
                                prefix.push_back(Frame::data(data));
                            }
                            streamed(
                                c.svc,
                                c.parts,
                                prefix,
                                None,
                                Some(e),
                                c.judge,
                                c.policy,
                                c.deadline,
                            )
                        }
                        _ => {
                            let fits = c.len <= c.policy.max_body;
                            start(
                                c.svc, c.parts, data, c.trailers, c.judge, c.policy, c.deadline,
                                fits,
                            )
                        }
                    }
                }
                StateProj::Boxed { body, ctx } => {
                    let c = ctx.as_mut().expect("polled after completion");
                    let b = body.as_mut().expect("buffering state");
                    let limit = c.policy.max_body;
                    let end = ready!(c.read(b.as_mut(), cx, Some(limit)));
                    let (mut c, b) = (
                        ctx.take().expect("buffering state"),
                        body.take().expect("buffering state"),
                    );
                    let data = c.take_data();
                    match end {
                        ReadEnd::Done => start(
                            c.svc, c.parts, data, c.trailers, c.judge, c.policy, c.deadline, true,
                        ),
                        ReadEnd::Over | ReadEnd::Failed(_) => {
                            // Send what was read, then the rest (or the
                            // error): nothing is cut, nothing is replayed.
                            let error = match end {
                                ReadEnd::Failed(e) => Some(e),
                                _ => None,
                            };
                            let mut prefix = VecDeque::with_capacity(2);
                            if !data.is_empty() {
                                prefix.push_back(Frame::data(data));
                            }
                            if let Some(t) = c.trailers.take() {
                                prefix.push_back(Frame::trailers(*t));
                            }
                            streamed(
                                c.svc,
                                c.parts,
                                prefix,
                                Some(b),
                                error,
                                c.judge,
                                c.policy,
                                c.deadline,
                            )
                        }
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
