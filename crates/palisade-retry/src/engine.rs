//! The retry engine shared by the HTTP and the generic service: a
//! hand-written future for the first attempt (no allocation when it
//! succeeds), then an async loop for retries and hedging.

use crate::{
    DelayContext, RetryReason, StopReason, Verdict,
    config::Policy,
    error::{LastFailure, RetryError, exhausted},
};
use http::StatusCode;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

pub(crate) type Outcome<Res, E> = Result<Res, LastFailure<E>>;
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Builds the request for another attempt.
pub(crate) trait Replay<Req>: Send + Sync + 'static {
    fn replay(&self) -> Req;

    /// Whether the request itself says it is safe to send twice (checked
    /// only when a retry is considered, off the fast path).
    fn marked_idempotent(&self) -> bool {
        false
    }
}

/// [`Judge::may_retry`], letting a request marked idempotent through.
fn may_retry<S, R, J, Req, Res, E>(
    session: &Session<S, R, J>,
    replay: Option<&R>,
    reason: RetryReason,
) -> Result<(), StopReason>
where
    R: Replay<Req>,
    J: Judge<Res, E>,
{
    match session.judge.may_retry(&session.policy, reason) {
        Err(StopReason::NotIdempotent) if replay.is_some_and(|r| r.marked_idempotent()) => Ok(()),
        other => other,
    }
}

/// Judges attempts of one request.
pub(crate) trait Judge<Res, E>: Send + Sync + 'static {
    /// The verdict on a finished attempt (not a timed-out one), and the
    /// HTTP status if there is one.
    fn judge(&self, policy: &Policy, result: Result<&Res, &E>) -> (Verdict, Option<StatusCode>);

    /// Whether this request may be sent again after a failure of `reason`.
    fn may_retry(&self, policy: &Policy, reason: RetryReason) -> Result<(), StopReason>;

    /// Whether this request may be sent twice at once (hedged).
    fn may_hedge(&self) -> bool;
}

fn judge_outcome<Res, E, J: Judge<Res, E>>(
    judge: &J,
    policy: &Policy,
    out: &Outcome<Res, E>,
) -> (Verdict, Option<StatusCode>) {
    match out {
        Ok(res) => judge.judge(policy, Ok(res)),
        Err(LastFailure::Error(e)) => judge.judge(policy, Err(e)),
        Err(LastFailure::TimedOut) => (Verdict::retry(RetryReason::Timeout), None),
    }
}

/// Everything a request needs beyond its first attempt.
pub(crate) struct Session<S, R, J> {
    pub(crate) svc: S,
    /// `None` when the request cannot be sent again (its body was too large).
    pub(crate) replay: Option<R>,
    pub(crate) judge: J,
    pub(crate) policy: Arc<Policy>,
    pub(crate) deadline: Option<Instant>,
}

impl<S, R, J> Session<S, R, J> {
    /// When the current attempt must end, if ever.
    fn attempt_end(&self, now: Instant) -> Option<Instant> {
        Timing {
            attempt_timeout: self.policy.attempt_timeout,
            deadline: self.deadline,
        }
        .end(now)
    }
}

#[derive(Clone, Copy)]
struct Timing {
    attempt_timeout: Option<Duration>,
    deadline: Option<Instant>,
}

impl Timing {
    fn end(self, now: Instant) -> Option<Instant> {
        let per = self.attempt_timeout.map(|t| now + t);
        match (per, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

pin_project! {
    /// The first attempt, then (only if needed) the boxed retry loop.
    #[project = CoreProj]
    pub(crate) enum Core<S, Req, R, J>
    where
        S: Service<Req>,
    {
        First {
            #[pin]
            fut: S::Future,
            // Boxed: only timed calls pay for a timer.
            sleep: Option<Pin<Box<Sleep>>>,
            session: Option<Session<S, R, J>>,
        },
        Slow {
            fut: BoxFuture<Result<S::Response, RetryError<S::Error>>>,
        },
        Done,
    }
}

impl<S, Req, R, J> Core<S, Req, R, J>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
    R: Replay<Req>,
    J: Judge<S::Response, S::Error>,
{
    /// Starts with the first attempt already called.
    pub(crate) fn first(fut: S::Future, session: Session<S, R, J>) -> Self {
        let sleep = if session.policy.timed() {
            session
                .attempt_end(Instant::now())
                .map(|end| Box::pin(tokio::time::sleep_until(end)))
        } else {
            None
        };
        Core::First {
            fut,
            sleep,
            session: Some(session),
        }
    }

    /// Starts in the async loop (hedged requests); the first attempt is made
    /// from the replay.
    pub(crate) fn slow(session: Session<S, R, J>) -> Self
    where
        S: Clone,
    {
        Core::Slow {
            fut: Box::pin(run(session, None)),
        }
    }
}

impl<S, Req, R, J> Future for Core<S, Req, R, J>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Send + 'static,
    R: Replay<Req>,
    J: Judge<S::Response, S::Error>,
    S: Clone,
{
    type Output = Result<S::Response, RetryError<S::Error>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (out, session) = match self.as_mut().project() {
            CoreProj::First {
                fut,
                sleep,
                session,
            } => {
                let out = match fut.poll(cx) {
                    Poll::Ready(r) => r.map_err(LastFailure::Error),
                    Poll::Pending => match sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
                        Some(Poll::Ready(())) => Err(LastFailure::TimedOut),
                        _ => return Poll::Pending,
                    },
                };
                (out, session.take().expect("polled after completion"))
            }
            CoreProj::Slow { fut } => {
                let out = ready!(fut.as_mut().poll(cx));
                self.set(Core::Done);
                return Poll::Ready(out);
            }
            CoreProj::Done => panic!("retry future polled after completion"),
        };
        let (verdict, status) = judge_outcome(&session.judge, &session.policy, &out);
        let Verdict::Retry { reason, after } = verdict else {
            self.set(Core::Done);
            return Poll::Ready(finish(out));
        };
        if let Some(stop) = quick_stop::<S, Req, R, J, _, _>(&session, reason, 1) {
            self.set(Core::Done);
            return Poll::Ready(stopped(&session.policy, out, 1, stop, reason));
        }
        let mut fut: BoxFuture<_> = Box::pin(run(session, Some((out, reason, after, status))));
        match fut.as_mut().poll(cx) {
            Poll::Ready(out) => {
                self.set(Core::Done);
                Poll::Ready(out)
            }
            Poll::Pending => {
                self.set(Core::Slow { fut });
                Poll::Pending
            }
        }
    }
}

/// Stops that need no waiting: not replayable, not idempotent, out of
/// attempts.
fn quick_stop<S, Req, R, J, Res, E>(
    session: &Session<S, R, J>,
    reason: RetryReason,
    attempts: u32,
) -> Option<StopReason>
where
    R: Replay<Req>,
    J: Judge<Res, E>,
{
    if attempts >= session.policy.max_attempts {
        return Some(StopReason::MaxAttempts);
    }
    if let Err(stop) = may_retry::<S, R, J, Req, Res, E>(session, session.replay.as_ref(), reason) {
        return Some(stop);
    }
    if session.replay.is_none() {
        return Some(StopReason::BodyTooLarge);
    }
    None
}

fn finish<Res, E>(out: Outcome<Res, E>) -> Result<Res, RetryError<E>> {
    match out {
        Ok(res) => Ok(res),
        Err(LastFailure::Error(e)) => Err(RetryError::Inner(e)),
        // Timeouts are always judged retryable; this is not reached.
        Err(LastFailure::TimedOut) => Err(exhausted(
            1,
            StopReason::MaxAttempts,
            RetryReason::Timeout,
            LastFailure::TimedOut,
        )),
    }
}

/// Retrying stopped: a response is returned as it is (HTTP returns the last
/// response), a failure becomes [`RetryError::Exhausted`].
fn stopped<Res, E>(
    policy: &Policy,
    out: Outcome<Res, E>,
    attempts: u32,
    stop: StopReason,
    reason: RetryReason,
) -> Result<Res, RetryError<E>> {
    if let Some(m) = &policy.metrics {
        m.stopped[stop.index()].inc();
    }
    if stop == StopReason::Budget {
        tracing::warn!(name = %policy.name, attempts, reason = reason.as_str(), "retry budget spent; not retrying");
    } else {
        tracing::debug!(name = %policy.name, attempts, reason = reason.as_str(), stop = stop.as_str(), "not retrying");
    }
    match out {
        Ok(res) => Ok(res),
        Err(last) => Err(exhausted(attempts, stop, reason, last)),
    }
}

/// One attempt on `svc`: wait until ready, call, bounded by `end`.
async fn attempt<S, Req>(
    svc: &mut S,
    req: Req,
    end: Option<Instant>,
) -> Outcome<S::Response, S::Error>
where
    S: Service<Req>,
{
    let call = async {
        std::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .map_err(LastFailure::Error)?;
        svc.call(req).await.map_err(LastFailure::Error)
    };
    match end {
        Some(end) => tokio::time::timeout_at(end, call)
            .await
            .unwrap_or(Err(LastFailure::TimedOut)),
        None => call.await,
    }
}

/// One attempt, hedged: if it has not answered after the hedge delay, a
/// second one is sent (when the budget allows) and the first good answer
/// wins. Returns the outcome and how many attempts were sent.
async fn hedged<S, Req, R, J>(
    (mut svc1, mut svc2): (S, S),
    policy: &Policy,
    judge: &J,
    deadline: Option<Instant>,
    replay: &R,
    hedge: Duration,
) -> (Outcome<S::Response, S::Error>, u32)
where
    S: Service<Req>,
    R: Replay<Req>,
    J: Judge<S::Response, S::Error>,
{
    let timing = Timing {
        attempt_timeout: policy.attempt_timeout,
        deadline,
    };
    let end = timing.end(Instant::now());
    let first = attempt(&mut svc1, replay.replay(), end);
    tokio::pin!(first);
    tokio::select! {
        out = &mut first => return (out, 1),
        _ = tokio::time::sleep(hedge) => {}
    }
    if let Some(budget) = &policy.budget
        && !budget.withdraw()
    {
        if let Some(m) = &policy.metrics {
            m.budget_denied.inc();
        }
        return (first.await, 1);
    }
    if let Some(m) = &policy.metrics {
        m.hedge.inc();
    }
    tracing::debug!(name = %policy.name, "hedging a slow attempt");
    let end2 = timing.end(Instant::now());
    let second = attempt(&mut svc2, replay.replay(), end2);
    tokio::pin!(second);
    let good = |o: &Outcome<S::Response, S::Error>| !judge_outcome(judge, policy, o).0.is_retry();
    tokio::select! {
        out = &mut first => {
            if good(&out) { return (out, 2) }
            let other = second.await;
            (if good(&other) { other } else { out }, 2)
        }
        out = &mut second => {
            if good(&out) { return (out, 2) }
            let other = first.await;
            (if good(&other) { other } else { out }, 2)
        }
    }
}

type First<Res, E> = (
    Outcome<Res, E>,
    RetryReason,
    Option<Duration>,
    Option<StatusCode>,
);

/// The retry loop. `first` is the judged first attempt when it was made on
/// the fast path; `None` makes the first attempt here (hedged).
async fn run<S, Req, R, J>(
    mut session: Session<S, R, J>,
    first: Option<First<S::Response, S::Error>>,
) -> Result<S::Response, RetryError<S::Error>>
where
    S: Service<Req> + Clone,
    R: Replay<Req>,
    J: Judge<S::Response, S::Error>,
{
    let policy = session.policy.clone();
    let Some(replay) = session.replay.take() else {
        unreachable!("the slow path is only taken by replayable requests")
    };
    let replay = &replay;
    let hedge = policy
        .hedge
        .filter(|_| session.judge.may_hedge() || replay.marked_idempotent());
    let (mut out, mut reason, mut after, mut status, mut attempts) = match first {
        Some((out, reason, after, status)) => (out, reason, after, status, 1),
        None => {
            let svcs = (session.svc.clone(), session.svc.clone());
            let hedge = hedge.unwrap_or(Duration::MAX);
            let (out, sent) = hedged(
                svcs,
                &policy,
                &session.judge,
                session.deadline,
                replay,
                hedge,
            )
            .await;
            let (verdict, status) = judge_outcome(&session.judge, &policy, &out);
            match verdict {
                Verdict::Done => return finish(out),
                Verdict::Retry { reason, after } => (out, reason, after, status, sent),
            }
        }
    };
    let mut previous = Duration::ZERO;
    loop {
        // Checks that need no clock.
        if let Err(stop) = may_retry::<S, R, J, Req, _, _>(&session, Some(replay), reason) {
            return stopped(&policy, out, attempts, stop, reason);
        }
        if attempts >= policy.max_attempts {
            return stopped(&policy, out, attempts, StopReason::MaxAttempts, reason);
        }
        let mut delay = policy.backoff.delay(attempts, previous);
        let hint = after.filter(|_| policy.honor_retry_after);
        if let Some(a) = hint {
            if a > policy.backoff.max() {
                return stopped(
                    &policy,
                    out,
                    attempts,
                    StopReason::RetryAfterTooLong,
                    reason,
                );
            }
            delay = a;
        }
        if let Some(f) = &policy.delay_fn {
            delay = f(&DelayContext {
                retry: attempts,
                reason,
                status,
                retry_after: hint,
                delay,
            })
            .min(policy.backoff.max());
        }
        if let Some(deadline) = session.deadline
            && Instant::now() + delay >= deadline
        {
            return stopped(&policy, out, attempts, StopReason::Deadline, reason);
        }
        if let Some(budget) = &policy.budget
            && !budget.withdraw()
        {
            if let Some(m) = &policy.metrics {
                m.budget_denied.inc();
            }
            return stopped(&policy, out, attempts, StopReason::Budget, reason);
        }
        if let Some(m) = &policy.metrics {
            m.retries[reason.index()].inc();
            m.retry.inc();
        }
        tracing::debug!(
            name = %policy.name,
            attempt = attempts + 1,
            reason = reason.as_str(),
            delay_ms = delay.as_millis() as u64,
            "retrying"
        );
        // Free the failed response (and its connection) before waiting.
        drop(out);
        tokio::time::sleep(delay).await;
        previous = delay;
        let sent;
        (out, sent) = match hedge {
            Some(h) => {
                let svcs = (session.svc.clone(), session.svc.clone());
                hedged(svcs, &policy, &session.judge, session.deadline, replay, h).await
            }
            None => {
                let end = session.attempt_end(Instant::now());
                (attempt(&mut session.svc, replay.replay(), end).await, 1)
            }
        };
        attempts += sent;
        let verdict;
        (verdict, status) = judge_outcome(&session.judge, &policy, &out);
        match verdict {
            Verdict::Done => return finish(out),
            Verdict::Retry {
                reason: r,
                after: a,
            } => {
                reason = r;
                after = a;
            }
        }
    }
}
