//! Run many calls through one stack: in parallel (bounded) or in sequence
//! (optionally stopping at the first error), with per-call results and times
//! and batch statistics.
//!
//! # Example
//!
//! ```
//! use palisade::batch::{BatchCall, BatchExecutor, BatchMode};
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let double = service_fn(|n: u32| async move {
//!     if n == 3 { Err("three is unlucky") } else { Ok(n * 2) }
//! });
//! let calls = (1..=4).map(|n| BatchCall::new(format!("call-{n}"), n)).collect();
//! let report = BatchExecutor::new()
//!     .run(double, calls, BatchMode::Parallel)
//!     .await
//!     .unwrap();
//! assert_eq!(report.stats.total, 4);
//! assert_eq!(report.stats.failed, 1);
//! assert_eq!(report.results[0].id, "call-1");
//! assert_eq!(*report.results[1].outcome.as_ref().unwrap(), 4);
//! # }
//! ```

use futures_util::{StreamExt, stream};
use palisade_core::classify::{Classify, ErrorsAsFailures, Outcome};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// How a batch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchMode {
    /// All calls at once, at most `max_concurrency` in flight.
    #[default]
    Parallel,
    /// One call after another.
    Sequential {
        /// Skip the remaining calls after the first failure.
        stop_on_error: bool,
    },
}

/// One call of a batch: an id the caller chose and the request.
#[derive(Clone, Debug)]
pub struct BatchCall<Req> {
    /// The caller's id for this call, echoed in its result.
    pub id: String,
    /// The request.
    pub request: Req,
}

impl<Req> BatchCall<Req> {
    /// A call with the given id.
    pub fn new(id: impl Into<String>, request: Req) -> Self {
        Self {
            id: id.into(),
            request,
        }
    }
}

/// Why a call has no outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skipped {
    /// A sequential batch stopped at an earlier failure.
    AfterError,
}

/// The result of one call.
#[derive(Debug)]
pub struct CallResult<Res, E> {
    /// The call's id.
    pub id: String,
    /// What the service answered, or why the call was skipped.
    pub outcome: Result<Res, CallError<E>>,
    /// How the classifier judged the outcome (skipped calls are failures).
    pub success: bool,
    /// How long the call took (zero when skipped).
    pub elapsed: Duration,
}

/// A call that failed or did not run.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The service returned an error.
    #[error("call failed: {0}")]
    Service(E),
    /// The call did not run.
    #[error("call skipped: an earlier call failed")]
    Skipped(Skipped),
}

/// Figures for a whole batch.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct BatchStats {
    /// Calls in the batch.
    pub total: usize,
    /// Calls judged successful.
    pub succeeded: usize,
    /// Calls judged failed (including skipped ones).
    pub failed: usize,
    /// Calls that did not run.
    pub skipped: usize,
    /// `succeeded / total`, 0 for an empty batch.
    pub success_rate: f64,
    /// Fastest call that ran, in milliseconds.
    pub min_ms: f64,
    /// Mean time of the calls that ran, in milliseconds.
    pub avg_ms: f64,
    /// Slowest call that ran, in milliseconds.
    pub max_ms: f64,
    /// Wall time of the whole batch, in milliseconds.
    pub wall_ms: f64,
}

/// A batch's results, in the order the calls were given, and its figures.
#[derive(Debug)]
pub struct BatchReport<Res, E> {
    /// One result per call, in input order.
    pub results: Vec<CallResult<Res, E>>,
    /// The batch figures.
    pub stats: BatchStats,
}

/// A batch was refused before any call ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// More calls than `max_batch_size`.
    #[error("batch of {size} calls is over the limit of {max}")]
    TooLarge {
        /// Calls given.
        size: usize,
        /// The limit.
        max: usize,
    },
}

impl From<BatchError> for palisade_core::Error {
    fn from(err: BatchError) -> Self {
        palisade_core::Error::new(palisade_core::ErrorKind::BadRequest, err.to_string())
    }
}

/// Runs batches of calls through a service (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct BatchExecutor<C = ErrorsAsFailures> {
    max_concurrency: usize,
    max_batch_size: usize,
    classifier: C,
}

impl BatchExecutor {
    /// Defaults: at most 10 calls in flight, at most 20 calls a batch; a
    /// call fails when the service returns an error.
    pub fn new() -> Self {
        Self {
            max_concurrency: 10,
            max_batch_size: 20,
            classifier: ErrorsAsFailures,
        }
    }
}

impl Default for BatchExecutor {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> BatchExecutor<C> {
    /// At most `n` calls in flight in a parallel batch (at least 1).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// At most `n` calls a batch.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// Judges outcomes with `classifier` (for HTTP, e.g. 4xx / 5xx as failures).
    pub fn classify_with<C2>(self, classifier: C2) -> BatchExecutor<C2> {
        BatchExecutor {
            max_concurrency: self.max_concurrency,
            max_batch_size: self.max_batch_size,
            classifier,
        }
    }

    /// The largest batch accepted.
    pub fn batch_limit(&self) -> usize {
        self.max_batch_size
    }

    /// Runs `calls` through `service`.
    pub async fn run<S, Req>(
        &self,
        service: S,
        calls: Vec<BatchCall<Req>>,
        mode: BatchMode,
    ) -> Result<BatchReport<S::Response, S::Error>, BatchError>
    where
        S: Service<Req> + Clone,
        C: Classify<S::Response, S::Error>,
    {
        if calls.len() > self.max_batch_size {
            return Err(BatchError::TooLarge {
                size: calls.len(),
                max: self.max_batch_size,
            });
        }
        let started = Instant::now();
        let results = match mode {
            BatchMode::Parallel => {
                let mut indexed: Vec<(usize, CallResult<_, _>)> =
                    stream::iter(calls.into_iter().enumerate())
                        .map(|(i, call)| {
                            let svc = service.clone();
                            async move { (i, self.call_one(svc, call).await) }
                        })
                        .buffer_unordered(self.max_concurrency)
                        .collect()
                        .await;
                indexed.sort_by_key(|(i, _)| *i);
                indexed.into_iter().map(|(_, r)| r).collect()
            }
            BatchMode::Sequential { stop_on_error } => {
                let mut results = Vec::with_capacity(calls.len());
                let mut failed = false;
                for call in calls {
                    if failed && stop_on_error {
                        results.push(CallResult {
                            id: call.id,
                            outcome: Err(CallError::Skipped(Skipped::AfterError)),
                            success: false,
                            elapsed: Duration::ZERO,
                        });
                        continue;
                    }
                    let result = self.call_one(service.clone(), call).await;
                    failed |= !result.success;
                    results.push(result);
                }
                results
            }
        };
        let stats = stats(&results, started.elapsed());
        Ok(BatchReport { results, stats })
    }

    async fn call_one<S, Req>(
        &self,
        svc: S,
        call: BatchCall<Req>,
    ) -> CallResult<S::Response, S::Error>
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error>,
    {
        let started = Instant::now();
        let outcome = svc.oneshot(call.request).await;
        let elapsed = started.elapsed();
        let success = self.classifier.classify(outcome.as_ref()) != Outcome::Failure;
        CallResult {
            id: call.id,
            outcome: outcome.map_err(CallError::Service),
            success,
            elapsed,
        }
    }
}

fn stats<Res, E>(results: &[CallResult<Res, E>], wall: Duration) -> BatchStats {
    let total = results.len();
    let skipped = results
        .iter()
        .filter(|r| matches!(r.outcome, Err(CallError::Skipped(_))))
        .count();
    let succeeded = results.iter().filter(|r| r.success).count();
    let ran: Vec<f64> = results
        .iter()
        .filter(|r| !matches!(r.outcome, Err(CallError::Skipped(_))))
        .map(|r| r.elapsed.as_secs_f64() * 1000.0)
        .collect();
    let (min_ms, max_ms, avg_ms) = if ran.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            ran.iter().copied().fold(f64::INFINITY, f64::min),
            ran.iter().copied().fold(0.0, f64::max),
            ran.iter().sum::<f64>() / ran.len() as f64,
        )
    };
    BatchStats {
        total,
        succeeded,
        failed: total - succeeded,
        skipped,
        success_rate: if total == 0 {
            0.0
        } else {
            succeeded as f64 / total as f64
        },
        min_ms,
        avg_ms,
        max_ms,
        wall_ms: wall.as_secs_f64() * 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    use tower::service_fn;

    /// A service that sleeps `ms` (on the paused clock) and fails on odd ids.
    fn sleeper(
        in_flight: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
    ) -> impl Service<u64, Response = u64, Error = &'static str, Future: Send> + Clone {
        service_fn(move |ms: u64| {
            let in_flight = in_flight.clone();
            let peak = peak.clone();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if ms % 2 == 1 { Err("odd") } else { Ok(ms) }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_is_bounded_ordered_and_timed() {
        let peak = Arc::new(AtomicUsize::new(0));
        let svc = sleeper(Arc::default(), peak.clone());
        let calls: Vec<_> = [40u64, 10, 20, 31, 50, 60, 70, 80]
            .into_iter()
            .enumerate()
            .map(|(i, ms)| BatchCall::new(i.to_string(), ms))
            .collect();
        let report = BatchExecutor::new()
            .max_concurrency(3)
            .run(svc, calls, BatchMode::Parallel)
            .await
            .unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 3);
        let ids: Vec<_> = report.results.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7"]);
        assert_eq!(report.results[1].elapsed, Duration::from_millis(10));
        let s = &report.stats;
        assert_eq!((s.total, s.succeeded, s.failed, s.skipped), (8, 7, 1, 0));
        assert_eq!((s.min_ms, s.max_ms), (10.0, 80.0));
        assert!((s.avg_ms - 361.0 / 8.0).abs() < 1e-9);
        assert!((s.success_rate - 0.875).abs() < 1e-9);
        // Three lanes: wall time is well under the 361 ms a sequence takes.
        assert!(s.wall_ms < 200.0, "{}", s.wall_ms);
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_stops_on_error_when_asked() {
        let peak = Arc::new(AtomicUsize::new(0));
        let svc = sleeper(Arc::default(), peak.clone());
        let calls = |v: &[u64]| -> Vec<_> {
            v.iter()
                .map(|ms| BatchCall::new(ms.to_string(), *ms))
                .collect()
        };
        let report = BatchExecutor::new()
            .run(
                svc.clone(),
                calls(&[2, 3, 4]),
                BatchMode::Sequential {
                    stop_on_error: true,
                },
            )
            .await
            .unwrap();
        assert_eq!(peak.load(Ordering::SeqCst), 1);
        assert!(report.results[0].success);
        assert!(matches!(
            report.results[1].outcome,
            Err(CallError::Service("odd"))
        ));
        assert!(matches!(
            report.results[2].outcome,
            Err(CallError::Skipped(Skipped::AfterError))
        ));
        assert_eq!((report.stats.failed, report.stats.skipped), (2, 1));

        let report = BatchExecutor::new()
            .run(
                svc,
                calls(&[2, 3, 4]),
                BatchMode::Sequential {
                    stop_on_error: false,
                },
            )
            .await
            .unwrap();
        assert!(report.results[2].success);
        assert_eq!(report.stats.wall_ms, 9.0);
    }

    #[tokio::test]
    async fn oversized_batches_are_refused_before_any_call() {
        let calls_made = Arc::new(AtomicUsize::new(0));
        let counter = calls_made.clone();
        let svc = service_fn(move |_: ()| {
            counter.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, &'static str>(()) }
        });
        let calls = (0..21).map(|i| BatchCall::new(i.to_string(), ())).collect();
        let err = BatchExecutor::new()
            .run(svc, calls, BatchMode::Parallel)
            .await
            .unwrap_err();
        assert!(matches!(err, BatchError::TooLarge { size: 21, max: 20 }));
        assert_eq!(calls_made.load(Ordering::SeqCst), 0);
        let core: palisade_core::Error = err.into();
        assert_eq!(core.http_status(), 400);
    }
}
