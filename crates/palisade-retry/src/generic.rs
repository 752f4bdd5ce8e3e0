//! Retries for any service whose request is `Clone`, with a classifier that
//! says which results are worth another attempt.

use crate::{
    RetryError, RetryReason, StopReason, Verdict,
    classify::classify_error,
    config::Policy,
    engine::{Core, Judge, Replay, Session},
};
use http::StatusCode;
use palisade_core::{
    BoxError,
    classify::{Classify, Outcome},
};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// Says whether a generic service's result is worth another attempt.
///
/// ```
/// use palisade_retry::{RetryClassify, RetryReason, Verdict};
///
/// #[derive(Clone)]
/// struct BusyIsRetryable;
///
/// impl RetryClassify<String, std::io::Error> for BusyIsRetryable {
///     fn verdict(&self, result: Result<&String, &std::io::Error>) -> Verdict {
///         match result {
///             Ok(s) if s == "busy" => Verdict::retry(RetryReason::Error),
///             Ok(_) => Verdict::Done,
///             Err(_) => Verdict::retry(RetryReason::Error),
///         }
///     }
/// }
/// assert!(BusyIsRetryable.verdict(Ok(&"busy".to_string())).is_retry());
/// ```
///
/// Ready-made: [`RetryOnErrors`] (errors whose type implements
/// `std::error::Error`), [`RetryOnBoxErrors`] (tower's `BoxError`),
/// [`FromClassify`] (any palisade classifier: failures are retried), and
/// closures through [`retry_fn`].
pub trait RetryClassify<Res, E>: Clone + Send + Sync + 'static {
    /// The verdict on one attempt's result.
    fn verdict(&self, result: Result<&Res, &E>) -> Verdict;
}

/// Retries errors (walking the source chain: a non-retryable
/// [`palisade_core::Error`] is returned at once, its `Retry-After` is
/// honoured); responses are returned.
///
/// ```
/// use palisade_retry::{RetryClassify, RetryOnErrors};
///
/// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
/// assert!(RetryOnErrors.verdict(Err::<&(), _>(&refused)).is_retry());
/// assert!(!RetryOnErrors.verdict(Ok::<_, &std::io::Error>(&())).is_retry());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryOnErrors;

impl<Res, E> RetryClassify<Res, E> for RetryOnErrors
where
    E: std::error::Error + 'static,
{
    fn verdict(&self, result: Result<&Res, &E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Done,
            Err(e) => error_verdict(e),
        }
    }
}

/// [`RetryOnErrors`] for services whose error is a [`BoxError`].
///
/// ```
/// use palisade_retry::{RetryClassify, RetryOnBoxErrors};
///
/// let bad: palisade_core::BoxError =
///     palisade_core::Error::new(palisade_core::ErrorKind::BadRequest, "no").into();
/// assert!(!RetryOnBoxErrors.verdict(Err::<&(), _>(&bad)).is_retry());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct RetryOnBoxErrors;

impl<Res> RetryClassify<Res, BoxError> for RetryOnBoxErrors {
    fn verdict(&self, result: Result<&Res, &BoxError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Done,
            Err(e) => error_verdict(&**e),
        }
    }
}

fn error_verdict(e: &(dyn std::error::Error + 'static)) -> Verdict {
    match classify_error(e) {
        Some((reason, after)) => Verdict::Retry {
            reason: if reason == RetryReason::Transport {
                RetryReason::Error
            } else {
                reason
            },
            after,
        },
        None => Verdict::Done,
    }
}

/// Any palisade [`Classify`]: an [`Outcome::Failure`] is retried.
///
/// ```
/// use palisade_core::classify::ErrorsAsFailures;
/// use palisade_retry::{FromClassify, RetryClassify};
///
/// let c = FromClassify(ErrorsAsFailures);
/// assert!(c.verdict(Err::<&u8, _>(&"boom")).is_retry());
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct FromClassify<C>(pub C);

impl<C, Res, E> RetryClassify<Res, E> for FromClassify<C>
where
    C: Classify<Res, E>,
{
    fn verdict(&self, result: Result<&Res, &E>) -> Verdict {
        match self.0.classify(result) {
            Outcome::Failure => Verdict::retry(RetryReason::Error),
            _ => Verdict::Done,
        }
    }
}

/// A classifier from a closure (see [`retry_fn`] for an example).
#[derive(Clone)]
pub struct RetryFn<F>(F);

impl<F> fmt::Debug for RetryFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryFn")
    }
}

/// Wraps a closure as a [`RetryClassify`].
///
/// ```
/// use palisade_retry::{RetryClassify, RetryReason, Verdict, retry_fn};
///
/// // Retry "busy" answers, not errors.
/// let c = retry_fn(|r: Result<&&str, &()>| match r {
///     Ok(&"busy") => Verdict::retry(RetryReason::Error),
///     _ => Verdict::Done,
/// });
/// assert!(c.verdict(Ok(&"busy")).is_retry());
/// ```
pub fn retry_fn<F>(f: F) -> RetryFn<F> {
    RetryFn(f)
}

impl<F, Res, E> RetryClassify<Res, E> for RetryFn<F>
where
    F: Fn(Result<&Res, &E>) -> Verdict + Clone + Send + Sync + 'static,
{
    fn verdict(&self, result: Result<&Res, &E>) -> Verdict {
        (self.0)(result)
    }
}

#[derive(Clone)]
pub(crate) struct ClassifierJudge<C>(C);

impl<C, Res, E> Judge<Res, E> for ClassifierJudge<C>
where
    C: RetryClassify<Res, E>,
{
    #[inline]
    fn judge(&self, _: &Policy, result: Result<&Res, &E>) -> (Verdict, Option<StatusCode>) {
        (self.0.verdict(result), None)
    }

    #[inline]
    fn may_retry(&self, _: &Policy, _: RetryReason) -> Result<(), StopReason> {
        Ok(())
    }

    #[inline]
    fn may_hedge(&self) -> bool {
        true
    }
}

pub(crate) struct CloneReplay<Req>(Req);

impl<Req> Replay<Req> for CloneReplay<Req>
where
    Req: Clone + Send + Sync + 'static,
{
    fn replay(&self) -> Req {
        self.0.clone()
    }
}

/// Applies retries to any service whose request is `Clone`; built by
/// [`RetryLayer::for_services`](crate::RetryLayer::for_services).
///
/// Errors become [`RetryError`]: `Exhausted` holds the last error and the
/// attempt count.
///
/// ```
/// use palisade_retry::{RetryError, RetryLayer, RetryOnErrors};
/// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
/// use std::time::Duration;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::builder().backoff(Duration::from_millis(10), 2.0, Duration::from_secs(1)).build().unwrap().for_services(RetryOnErrors))
///     .service_fn(move |name: &'static str| {
///         let n = seen.fetch_add(1, Ordering::SeqCst);
///         async move {
///             if n < 2 { Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset)) }
///             else { Ok(format!("hello {name}")) }
///         }
///     });
/// assert_eq!(svc.oneshot("tool").await.unwrap(), "hello tool");
/// assert_eq!(calls.load(Ordering::SeqCst), 3);
/// # }
/// ```
#[derive(Clone)]
pub struct ServiceRetryLayer<C> {
    policy: Arc<Policy>,
    classifier: C,
}

impl<C> ServiceRetryLayer<C> {
    pub(crate) fn new(policy: Arc<Policy>, classifier: C) -> Self {
        Self { policy, classifier }
    }
}

impl<C: fmt::Debug> fmt::Debug for ServiceRetryLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRetryLayer")
            .field("policy", &self.policy)
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<S, C: Clone> Layer<S> for ServiceRetryLayer<C> {
    type Service = ServiceRetry<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        ServiceRetry {
            inner,
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A generic service with retries; see [`ServiceRetryLayer`].
///
/// ```
/// use palisade_retry::{RetryLayer, RetryOnErrors};
/// use tower::{Layer, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let echo = tower::service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
/// let svc = RetryLayer::new().for_services(RetryOnErrors).layer(echo);
/// assert_eq!(svc.oneshot(7).await.unwrap(), 7);
/// # }
/// ```
#[derive(Clone)]
pub struct ServiceRetry<S, C> {
    inner: S,
    policy: Arc<Policy>,
    classifier: C,
}

impl<S, C> ServiceRetry<S, C> {
    palisade_core::inner_accessors!(inner: S);
}

impl<S: fmt::Debug, C: fmt::Debug> fmt::Debug for ServiceRetry<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceRetry")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .field("classifier", &self.classifier)
            .finish()
    }
}

pin_project! {
    /// Response future of [`ServiceRetry`] (see [`ServiceRetryLayer`] for an
    /// example).
    pub struct ServiceResponseFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        core: Core<S, Req, CloneReplay<Req>, ClassifierJudge<C>>,
    }
}

impl<S, Req, C> fmt::Debug for ServiceResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceResponseFuture")
    }
}

impl<S, Req, C> Future for ServiceResponseFuture<S, Req, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + Sync + 'static,
    C: RetryClassify<S::Response, S::Error>,
{
    type Output = Result<S::Response, RetryError<S::Error>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().core.poll(cx)
    }
}

impl<S, Req, C> Service<Req> for ServiceRetry<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    Req: Clone + Send + Sync + 'static,
    C: RetryClassify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = RetryError<S::Error>;
    type Future = ServiceResponseFuture<S, Req, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(RetryError::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let clone = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, clone);
        let policy = &self.policy;
        if let Some(b) = &policy.budget {
            b.deposit();
        }
        if let Some(m) = &policy.metrics {
            m.first.inc();
        }
        let deadline = policy.deadline.map(|d| Instant::now() + d);
        let retries = policy.max_attempts > 1;
        let hedged = retries && policy.hedge.is_some();
        let session = |svc, replay| Session {
            svc,
            replay,
            judge: ClassifierJudge(self.classifier.clone()),
            policy: self.policy.clone(),
            deadline,
        };
        let core = if hedged {
            Core::slow(session(svc, Some(CloneReplay(req))))
        } else {
            let replay = retries.then(|| CloneReplay(req.clone()));
            let fut = svc.call(req);
            Core::first(fut, session(svc, replay))
        };
        ServiceResponseFuture { core }
    }
}
