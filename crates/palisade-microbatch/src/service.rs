//! The layer, the service and the batching task.

use crate::{Batcher, MicroBatchError, MicroBatchMetrics};
use prometheus::{Histogram, IntCounter};
use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    time::Instant,
};
use tower_layer::Layer;
use tower_service::Service;

type Outcome<B, Req, E> =
    Result<<B as Batcher<Req>>::Item, MicroBatchError<E, <B as Batcher<Req>>::Error>>;

struct Job<Req, T> {
    request: Req,
    reply: oneshot::Sender<T>,
    queued_at: Instant,
    /// A place in the queue, given back when the batch is sent.
    _place: OwnedSemaphorePermit,
}

#[derive(Clone)]
struct Counters {
    size: Histogram,
    wait: Histogram,
    rejected: IntCounter,
}

/// Gathers calls into batches; see the [crate docs](crate).
pub struct MicroBatchLayer<B, Req> {
    batcher: Arc<B>,
    max_batch_size: usize,
    max_wait: Duration,
    max_queue: usize,
    counters: Option<Counters>,
    _req: PhantomData<fn(Req)>,
}

impl<B, Req> Clone for MicroBatchLayer<B, Req> {
    fn clone(&self) -> Self {
        Self {
            batcher: self.batcher.clone(),
            max_batch_size: self.max_batch_size,
            max_wait: self.max_wait,
            max_queue: self.max_queue,
            counters: self.counters.clone(),
            _req: PhantomData,
        }
    }
}

impl<B, Req> fmt::Debug for MicroBatchLayer<B, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicroBatchLayer")
            .field("max_batch_size", &self.max_batch_size)
            .field("max_wait", &self.max_wait)
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

impl<B: Batcher<Req>, Req> MicroBatchLayer<B, Req> {
    /// Batches of at most 100 calls, sent after at most 1 s, with up to
    /// 1000 calls waiting (the `batch_processor` defaults).
    pub fn new(batcher: B) -> Self {
        Self {
            batcher: Arc::new(batcher),
            max_batch_size: 100,
            max_wait: Duration::from_secs(1),
            max_queue: 1000,
            counters: None,
            _req: PhantomData,
        }
    }

    /// A batch is sent as soon as it holds this many calls (at least 1).
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n.max(1);
        self
    }

    /// A batch is sent at the latest this long after its first call.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// Calls that may wait at once (at least 1); one more fails with
    /// [`MicroBatchError::Full`].
    pub fn max_queue(mut self, n: usize) -> Self {
        self.max_queue = n.max(1);
        self
    }

    /// Reports on `metrics`, labelled `name`.
    pub fn metrics(mut self, metrics: &MicroBatchMetrics, name: &str) -> Self {
        self.counters = Some(Counters {
            size: metrics.size.with_label_values(&[name]),
            wait: metrics.wait.with_label_values(&[name]),
            rejected: metrics.rejected.with_label_values(&[name]),
        });
        self
    }
}

impl<S, B, Req> Layer<S> for MicroBatchLayer<B, Req>
where
    B: Batcher<Req>,
    S: Service<B::Batch, Response = B::Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + Sync + 'static,
    B::Batch: Send,
    B::Item: Send + 'static,
    B::Error: Send + 'static,
    Req: Send + 'static,
{
    type Service = MicroBatch<Req, B, S::Error>;

    fn layer(&self, inner: S) -> Self::Service {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            inner,
            batcher: self.batcher.clone(),
            rx,
            max_batch_size: self.max_batch_size,
            max_wait: self.max_wait,
            counters: self.counters.clone(),
        };
        tokio::spawn(task.run());
        MicroBatch {
            tx,
            places: Arc::new(Semaphore::new(self.max_queue)),
            rejected: self.counters.as_ref().map(|c| c.rejected.clone()),
        }
    }
}

/// A service whose calls are gathered into batches; see the
/// [crate docs](crate). Clones share the batches.
pub struct MicroBatch<Req, B: Batcher<Req>, E> {
    tx: mpsc::UnboundedSender<Job<Req, Outcome<B, Req, E>>>,
    /// Calls waiting for their batch to be sent, at most `max_queue`.
    places: Arc<Semaphore>,
    rejected: Option<IntCounter>,
}

impl<Req, B: Batcher<Req>, E> Clone for MicroBatch<Req, B, E> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            places: self.places.clone(),
            rejected: self.rejected.clone(),
        }
    }
}

impl<Req, B: Batcher<Req>, E> fmt::Debug for MicroBatch<Req, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MicroBatch")
            .field("free_places", &self.places.available_permits())
            .finish()
    }
}

impl<Req, B: Batcher<Req>, E> Service<Req> for MicroBatch<Req, B, E> {
    type Response = B::Item;
    type Error = MicroBatchError<E, B::Error>;
    type Future = ResponseFuture<Outcome<B, Req, E>>;

    /// Always ready: a full queue fails the call at once instead of
    /// holding callers in `poll_ready` (which axum would not pass on).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let Ok(place) = self.places.clone().try_acquire_owned() else {
            if let Some(c) = &self.rejected {
                c.inc();
            }
            tracing::debug!("micro-batch queue full; refusing");
            return ResponseFuture { rx: None };
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            reply,
            queued_at: Instant::now(),
            _place: place,
        };
        // When the task is gone the job, and its reply sender, are dropped:
        // the caller gets `Closed`.
        let _ = self.tx.send(job);
        ResponseFuture { rx: Some(rx) }
    }
}

/// Response future of [`MicroBatch`]: the caller's own result.
pub struct ResponseFuture<T> {
    /// `None`: refused, the queue was full.
    rx: Option<oneshot::Receiver<T>>,
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<I, E, IE> Future for ResponseFuture<Result<I, MicroBatchError<E, IE>>> {
    type Output = Result<I, MicroBatchError<E, IE>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.rx.as_mut() {
            None => Poll::Ready(Err(MicroBatchError::Full)),
            Some(rx) => Pin::new(rx)
                .poll(cx)
                .map(|got| got.unwrap_or(Err(MicroBatchError::Closed))),
        }
    }
}

/// The background task: gathers, sends and answers.
struct Task<S, B: Batcher<Req>, Req, E> {
    inner: S,
    batcher: Arc<B>,
    rx: mpsc::UnboundedReceiver<Job<Req, Outcome<B, Req, E>>>,
    max_batch_size: usize,
    max_wait: Duration,
    counters: Option<Counters>,
}

impl<S, B, Req> Task<S, B, Req, S::Error>
where
    B: Batcher<Req>,
    S: Service<B::Batch, Response = B::Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + Sync + 'static,
    B::Batch: Send,
    B::Item: Send + 'static,
    B::Error: Send + 'static,
    Req: Send + 'static,
{
    async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let deadline = first.queued_at + self.max_wait;
            let mut jobs = vec![first];
            let sleep = tokio::time::sleep_until(deadline);
            tokio::pin!(sleep);
            while jobs.len() < self.max_batch_size {
                tokio::select! {
                    biased;
                    job = self.rx.recv() => match job {
                        Some(job) => jobs.push(job),
                        None => break,
                    },
                    () = &mut sleep => break,
                }
            }
            // Callers that went away are left out.
            jobs.retain(|job| !job.reply.is_closed());
            if jobs.is_empty() {
                continue;
            }
            let now = Instant::now();
            if let Some(c) = &self.counters {
                c.size.observe(jobs.len() as f64);
                for job in &jobs {
                    c.wait
                        .observe(now.saturating_duration_since(job.queued_at).as_secs_f64());
                }
            }
            let n = jobs.len();
            let (requests, replies): (Vec<Req>, Vec<_>) =
                jobs.into_iter().map(|j| (j.request, j.reply)).unzip();
            tracing::debug!(size = n, "sending a micro-batch");
            let batch = self.batcher.combine(requests);
            if let Err(e) = std::future::poll_fn(|cx| self.inner.poll_ready(cx)).await {
                let e = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(MicroBatchError::Inner(e.clone())));
                }
                continue;
            }
            let call = self.inner.call(batch);
            let batcher = self.batcher.clone();
            tokio::spawn(async move {
                match call.await {
                    Ok(res) => {
                        let parts = batcher.split(res, n);
                        if parts.len() != n {
                            tracing::warn!(
                                expected = n,
                                got = parts.len(),
                                "a batch answer did not split"
                            );
                            let got = parts.len();
                            for reply in replies {
                                let _ =
                                    reply.send(Err(MicroBatchError::Split { expected: n, got }));
                            }
                            return;
                        }
                        for (reply, part) in replies.into_iter().zip(parts) {
                            let _ = reply.send(part.map_err(MicroBatchError::Item));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for reply in replies {
                            let _ = reply.send(Err(MicroBatchError::Inner(e.clone())));
                        }
                    }
                }
            });
        }
    }
}
