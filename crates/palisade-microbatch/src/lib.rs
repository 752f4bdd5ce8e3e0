//! Micro-batching: single calls gathered into one upstream call — what
//! Python users know as `@batch_processor(batch_size=100, max_wait=1.0)`.
//!
//! A batch is sent when it holds `max_batch_size` calls or when its first
//! call has waited `max_wait`, whichever comes first. Each caller gets its
//! own result, or its own error: a [`Batcher`] says how to combine the
//! requests into one and how to split the answer back (closures through
//! [`batch_fn`]). A caller that goes away before its batch is sent is left
//! out of it. At most `max_queue` calls wait; one more fails at once with
//! [`MicroBatchError::Full`] (503 through [`palisade_core::Error`]).
//!
//! The layer runs a background task (as tower's `Buffer` does), so it must
//! be built inside a Tokio runtime; the task ends when the last clone of
//! the service is dropped. While one batch is in flight the next is
//! already being gathered.
//!
//! # Example
//!
//! ```
//! use palisade_microbatch::{MicroBatchLayer, batch_fn};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // The upstream squares many numbers in one call.
//! let batcher = batch_fn(
//!     |xs: Vec<u64>| xs,                                           // combine
//!     |squares: Vec<u64>, _n| squares.into_iter().map(Ok::<_, std::convert::Infallible>).collect(), // split
//! );
//! let svc = ServiceBuilder::new()
//!     .layer(MicroBatchLayer::new(batcher).max_batch_size(10).max_wait(Duration::from_millis(5)))
//!     .service_fn(|xs: Vec<u64>| async move {
//!         Ok::<_, std::io::Error>(xs.iter().map(|x| x * x).collect::<Vec<_>>())
//!     });
//! let (a, b) = tokio::join!(svc.clone().oneshot(3), svc.clone().oneshot(4));
//! assert_eq!((a.unwrap(), b.unwrap()), (9, 16));
//! # }
//! ```

mod config;
mod service;

pub use config::MicroBatchConfig;
pub use service::{MicroBatch, MicroBatchLayer, ResponseFuture};

use palisade_core::{Error, ErrorKind};
use prometheus::{HistogramVec, IntCounterVec, Registry};
use std::{fmt, marker::PhantomData, sync::Arc, time::Duration};

/// How single requests become one, and one answer becomes many.
pub trait Batcher<Req>: Send + Sync + 'static {
    /// The combined request the service is called with.
    type Batch;
    /// The service's answer to a combined request.
    type Response;
    /// What one caller gets.
    type Item;
    /// One caller's own failure (the upstream answered the batch but not
    /// this part of it).
    type Error;

    /// Combines requests, in arrival order, into one.
    fn combine(&self, requests: Vec<Req>) -> Self::Batch;

    /// Splits the answer to a batch of `n` requests into `n` results, in
    /// the same order.
    fn split(&self, response: Self::Response, n: usize) -> Vec<Result<Self::Item, Self::Error>>;
}

/// A [`Batcher`] from two closures; see [`batch_fn`].
pub struct BatchFn<C, S, Res> {
    combine: C,
    split: S,
    _res: PhantomData<fn(Res)>,
}

impl<C, S, Res> fmt::Debug for BatchFn<C, S, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BatchFn")
    }
}

/// A [`Batcher`] from a `combine` and a `split` closure.
///
/// ```
/// use palisade_microbatch::{Batcher, batch_fn};
///
/// let b = batch_fn(
///     |words: Vec<&str>| words.join(" "),
///     |line: String, _n| line.split(' ').map(|w| Ok::<_, ()>(w.len())).collect(),
/// );
/// assert_eq!(b.combine(vec!["ab", "c"]), "ab c");
/// assert_eq!(b.split("ab c".to_string(), 2), vec![Ok(2), Ok(1)]);
/// ```
pub fn batch_fn<Req, Batch, Res, Item, E, C, S>(combine: C, split: S) -> BatchFn<C, S, Res>
where
    C: Fn(Vec<Req>) -> Batch,
    S: Fn(Res, usize) -> Vec<Result<Item, E>>,
{
    BatchFn {
        combine,
        split,
        _res: PhantomData,
    }
}

impl<Req, Batch, Res, Item, E, C, S> Batcher<Req> for BatchFn<C, S, Res>
where
    C: Fn(Vec<Req>) -> Batch + Send + Sync + 'static,
    S: Fn(Res, usize) -> Vec<Result<Item, E>> + Send + Sync + 'static,
    Res: 'static,
{
    type Batch = Batch;
    type Response = Res;
    type Item = Item;
    type Error = E;

    fn combine(&self, requests: Vec<Req>) -> Batch {
        (self.combine)(requests)
    }

    fn split(&self, response: Res, n: usize) -> Vec<Result<Item, E>> {
        (self.split)(response, n)
    }
}

/// Why one caller's call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MicroBatchError<E, I> {
    /// `max_queue` calls were already waiting; this one was not queued.
    #[error("micro-batch queue is full")]
    Full,
    /// The batching task is gone (its runtime shut down).
    #[error("micro-batch task is gone")]
    Closed,
    /// The batch call failed: every caller of the batch gets this error.
    #[error("batch call failed: {0}")]
    Inner(Arc<E>),
    /// The batch was answered, but not this caller's part of it.
    #[error("this call failed in its batch")]
    Item(I),
    /// The answer split into the wrong number of parts.
    #[error("a batch of {expected} calls was split into {got} results")]
    Split {
        /// Calls in the batch.
        expected: usize,
        /// Results the split gave.
        got: usize,
    },
}

impl<E, I> From<MicroBatchError<E, I>> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: MicroBatchError<E, I>) -> Self {
        match err {
            MicroBatchError::Full => Error::new(ErrorKind::Overloaded, "micro-batch queue is full")
                .with_retry_after(Duration::from_secs(1)),
            MicroBatchError::Closed => {
                Error::new(ErrorKind::Unavailable, "micro-batch task is gone")
            }
            MicroBatchError::Inner(e) => {
                Error::new(ErrorKind::Upstream, "the batch call failed").with_source(ArcError(e))
            }
            MicroBatchError::Item(_) => {
                Error::new(ErrorKind::Upstream, "this call failed in its batch")
            }
            MicroBatchError::Split { .. } => {
                Error::new(ErrorKind::Internal, "a batch answer did not split")
            }
        }
    }
}

/// A shared error as a source.
struct ArcError<E>(Arc<E>);

impl<E: fmt::Debug> fmt::Debug for ArcError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: fmt::Display> fmt::Display for ArcError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error> std::error::Error for ArcError<E> {}

/// The micro-batch layer's metrics, labelled by each layer's `name`:
/// `palisade_microbatch_size` (calls per batch sent),
/// `palisade_microbatch_wait_seconds` (a call's wait until its batch was
/// sent) and `palisade_microbatch_rejected_total` (calls refused, queue
/// full).
///
/// ```
/// use palisade_microbatch::MicroBatchMetrics;
///
/// let metrics = MicroBatchMetrics::register(&prometheus::Registry::new()).unwrap();
/// # let _ = metrics;
/// ```
#[derive(Clone, Debug)]
pub struct MicroBatchMetrics {
    size: HistogramVec,
    wait: HistogramVec,
    rejected: IntCounterVec,
}

impl MicroBatchMetrics {
    /// Registers the families on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use palisade_core::metrics::{register_counter_vec, register_histogram_vec};
        Ok(Self {
            size: register_histogram_vec(
                registry,
                "palisade_microbatch_size",
                "Calls per batch sent.",
                &["name"],
                Some(&[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
            )?,
            wait: register_histogram_vec(
                registry,
                "palisade_microbatch_wait_seconds",
                "How long a call waited until its batch was sent.",
                &["name"],
                None,
            )?,
            rejected: register_counter_vec(
                registry,
                "palisade_microbatch_rejected_total",
                "Calls refused because the micro-batch queue was full.",
                &["name"],
            )?,
        })
    }
}
