//! Tiered fallback: primary → secondary → tertiary, skipping open circuits.

use crate::{breaker::Breaker, error::CircuitOpen};
use futures_util::future::BoxFuture;
use palisade_core::classify::{Classify, ErrorsAsFailures, Outcome};
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};
use tower::util::{BoxCloneSyncService, ServiceExt};
use tower_service::Service;

struct Tier<Req, Res, E> {
    breaker: Breaker,
    service: BoxCloneSyncService<Req, Res, E>,
}

/// Tries each tier in order — each behind its own [`Breaker`] — and answers
/// with the first that succeeds. A tier whose circuit is open is skipped
/// without a call. When every tier fails, [`AllTiersFailed`] names each
/// tier's failure.
///
/// The request is cloned for each tier tried. Each call allocates one boxed
/// future (this is the failover path, not the hot path of a single breaker).
/// Pair with [`Breaker::spawn_probe`] to close a tier's breaker as soon as
/// its health check passes.
///
/// # Example
///
/// ```
/// use palisade_breaker::{Breaker, Config, TieredFallback};
/// use tower::{ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let primary = Breaker::new("primary-llm", Config::default()).unwrap();
/// let secondary = Breaker::new("secondary-llm", Config::default()).unwrap();
/// let svc = TieredFallback::new()
///     .tier(primary.clone(), service_fn(|q: String| async move {
///         Err::<String, _>(std::io::Error::other("overloaded"))
///     }))
///     .tier(secondary, service_fn(|q: String| async move { Ok(format!("answer to {q}")) }));
///
/// assert_eq!(svc.clone().oneshot("q1".into()).await.unwrap(), "answer to q1");
/// primary.force_open();
/// assert_eq!(svc.oneshot("q2".into()).await.unwrap(), "answer to q2");
/// # }
/// ```
pub struct TieredFallback<Req, Res, E, C = ErrorsAsFailures> {
    tiers: Arc<[Tier<Req, Res, E>]>,
    classifier: C,
}

impl<Req, Res, E> TieredFallback<Req, Res, E> {
    /// No tiers yet; errors are failures.
    pub fn new() -> Self {
        Self {
            tiers: Arc::new([]),
            classifier: ErrorsAsFailures,
        }
    }
}

impl<Req, Res, E> Default for TieredFallback<Req, Res, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req, Res, E, C> TieredFallback<Req, Res, E, C> {
    /// Adds a tier, tried after the ones before it; named by its breaker.
    pub fn tier<S>(self, breaker: Breaker, service: S) -> Self
    where
        S: Service<Req, Response = Res, Error = E> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        Req: 'static,
    {
        let mut tiers: Vec<Tier<Req, Res, E>> = Vec::with_capacity(self.tiers.len() + 1);
        for t in self.tiers.iter() {
            tiers.push(Tier {
                breaker: t.breaker.clone(),
                service: t.service.clone(),
            });
        }
        tiers.push(Tier {
            breaker,
            service: BoxCloneSyncService::new(service),
        });
        Self {
            tiers: tiers.into(),
            classifier: self.classifier,
        }
    }

    /// Judges each tier's result with `classifier` (e.g. 5xx responses fail).
    pub fn classifier<C2>(self, classifier: C2) -> TieredFallback<Req, Res, E, C2> {
        TieredFallback {
            tiers: self.tiers,
            classifier,
        }
    }

    /// The tiers' breakers, in order.
    pub fn breakers(&self) -> Vec<Breaker> {
        self.tiers.iter().map(|t| t.breaker.clone()).collect()
    }
}

impl<Req, Res, E, C: Clone> Clone for TieredFallback<Req, Res, E, C> {
    fn clone(&self) -> Self {
        Self {
            tiers: self.tiers.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<Req, Res, E, C: fmt::Debug> fmt::Debug for TieredFallback<Req, Res, E, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredFallback")
            .field(
                "tiers",
                &self
                    .tiers
                    .iter()
                    .map(|t| t.breaker.name())
                    .collect::<Vec<_>>(),
            )
            .field("classifier", &self.classifier)
            .finish()
    }
}

impl<Req, Res, E, C> Service<Req> for TieredFallback<Req, Res, E, C>
where
    Req: Clone + Send + 'static,
    Res: Send + 'static,
    E: Send + 'static,
    C: Classify<Res, E>,
{
    type Response = Res;
    type Error = AllTiersFailed<E>;
    type Future = BoxFuture<'static, Result<Res, AllTiersFailed<E>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each tier is driven to readiness when it is tried.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let tiers = self.tiers.clone();
        let classifier = self.classifier.clone();
        Box::pin(async move {
            let mut failures = Vec::with_capacity(tiers.len());
            for tier in tiers.iter() {
                let tier_name: Arc<str> = tier.breaker.name_arc().clone();
                let permit = match tier.breaker.try_acquire() {
                    Ok(p) => p,
                    Err(open) => {
                        failures.push(TierFailure::Open {
                            tier: tier_name,
                            open,
                        });
                        continue;
                    }
                };
                let result = tier.service.clone().oneshot(req.clone()).await;
                let outcome = classifier.classify(result.as_ref());
                permit.record(outcome);
                match (outcome, result) {
                    (Outcome::Success | Outcome::Ignored, Ok(res)) => return Ok(res),
                    (_, Err(error)) => failures.push(TierFailure::Error {
                        tier: tier_name,
                        error,
                    }),
                    (Outcome::Failure, Ok(_)) => {
                        failures.push(TierFailure::Response { tier: tier_name })
                    }
                }
            }
            Err(AllTiersFailed { failures })
        })
    }
}

/// Why one tier did not answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum TierFailure<E> {
    /// Its circuit was open; it was not called.
    Open {
        /// The tier's (breaker's) name.
        tier: Arc<str>,
        /// The rejection.
        open: CircuitOpen,
    },
    /// It returned an error.
    Error {
        /// The tier's name.
        tier: Arc<str>,
        /// Its error.
        error: E,
    },
    /// It answered, but the classifier judged the answer a failure.
    Response {
        /// The tier's name.
        tier: Arc<str>,
    },
}

impl<E> TierFailure<E> {
    /// The tier's name.
    pub fn tier(&self) -> &str {
        match self {
            Self::Open { tier, .. } | Self::Error { tier, .. } | Self::Response { tier } => tier,
        }
    }
}

impl<E: fmt::Display> fmt::Display for TierFailure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Open { tier, .. } => write!(f, "{tier}: circuit open"),
            Self::Error { tier, error } => write!(f, "{tier}: {error}"),
            Self::Response { tier } => write!(f, "{tier}: failed response"),
        }
    }
}

/// Every tier failed; each failure is named, in tier order.
///
/// Converts into [`palisade_core::Error`] as `Unavailable` (503).
#[derive(Debug)]
pub struct AllTiersFailed<E> {
    failures: Vec<TierFailure<E>>,
}

impl<E> AllTiersFailed<E> {
    /// Each tier's failure, in order.
    pub fn failures(&self) -> &[TierFailure<E>] {
        &self.failures
    }

    /// Each tier's failure, owned.
    pub fn into_failures(self) -> Vec<TierFailure<E>> {
        self.failures
    }
}

impl<E: fmt::Display> fmt::Display for AllTiersFailed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("all tiers failed")?;
        for (i, failure) in self.failures.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for AllTiersFailed<E> {}

impl<E: fmt::Debug + fmt::Display + Send + Sync + 'static> From<AllTiersFailed<E>>
    for palisade_core::Error
{
    fn from(err: AllTiersFailed<E>) -> Self {
        let retry_after = err
            .failures
            .iter()
            .filter_map(|f| match f {
                TierFailure::Open { open, .. } => open.retry_after(),
                _ => None,
            })
            .min();
        let mut core = palisade_core::Error::new(
            palisade_core::ErrorKind::Unavailable,
            "every upstream tier failed",
        );
        if let Some(after) = retry_after {
            core = core.with_retry_after(after);
        }
        core.with_source(err)
    }
}
