//! Micro-batching on a paused clock: flush at the size, flush at the wait,
//! partial failure, a cancelled caller, a failed batch, a full queue.

use palisade_microbatch::{MicroBatchError, MicroBatchLayer, MicroBatchMetrics, batch_fn};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

type Batches = Arc<Mutex<Vec<Vec<u64>>>>;

/// An upstream that squares a batch of numbers, refusing 13 (its part
/// fails) and failing the whole batch when it holds 666; it records each
/// batch it gets.
fn upstream(
    batches: Batches,
) -> impl Service<Vec<u64>, Response = Vec<Option<u64>>, Error = std::io::Error, Future = impl Send>
+ Send
+ 'static {
    tower::service_fn(move |xs: Vec<u64>| {
        batches.lock().unwrap().push(xs.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if xs.contains(&666) {
                return Err(std::io::Error::other("batch refused"));
            }
            Ok(xs.iter().map(|&x| (x != 13).then_some(x * x)).collect())
        }
    })
}

fn layer(
    size: usize,
    wait_ms: u64,
) -> MicroBatchLayer<
    impl palisade_microbatch::Batcher<
        u64,
        Batch = Vec<u64>,
        Response = Vec<Option<u64>>,
        Item = u64,
        Error = &'static str,
    >,
    u64,
> {
    MicroBatchLayer::new(batch_fn(
        |xs: Vec<u64>| xs,
        |ys: Vec<Option<u64>>, _n| ys.into_iter().map(|y| y.ok_or("refused")).collect(),
    ))
    .max_batch_size(size)
    .max_wait(Duration::from_millis(wait_ms))
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_is_sent_at_once() {
    let batches = Batches::default();
    let svc = layer(3, 1_000).layer(upstream(batches.clone()));
    let start = Instant::now();
    let calls: Vec<_> = (1..=3)
        .map(|x| tokio::spawn(svc.clone().oneshot(x)))
        .collect();
    let mut got = Vec::new();
    for c in calls {
        got.push(c.await.unwrap().unwrap());
    }
    assert_eq!(got, vec![1, 4, 9], "each caller gets its own result");
    assert_eq!(*batches.lock().unwrap(), vec![vec![1, 2, 3]]);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(5),
        "no wait: only the upstream's time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_is_sent_after_the_wait() {
    let batches = Batches::default();
    let registry = prometheus::Registry::new();
    let metrics = MicroBatchMetrics::register(&registry).unwrap();
    let svc = layer(100, 50)
        .metrics(&metrics, "test")
        .layer(upstream(batches.clone()));
    let start = Instant::now();
    let (a, b) = tokio::join!(svc.clone().oneshot(2), svc.clone().oneshot(3));
    assert_eq!((a.unwrap(), b.unwrap()), (4, 9));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(55),
        "50 ms wait + 5 ms upstream"
    );
    assert_eq!(*batches.lock().unwrap(), vec![vec![2, 3]]);
    // A later call starts a new batch.
    assert_eq!(svc.clone().oneshot(4).await.unwrap(), 16);
    assert_eq!(batches.lock().unwrap().len(), 2);
    let size = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "palisade_microbatch_size")
        .unwrap();
    let h = size.get_metric()[0].get_histogram();
    assert_eq!((h.get_sample_count(), h.get_sample_sum()), (2, 3.0));
}

#[tokio::test(start_paused = true)]
async fn each_caller_gets_its_own_error() {
    let batches = Batches::default();
    let svc = layer(3, 10).layer(upstream(batches.clone()));
    let (a, b, c) = tokio::join!(
        svc.clone().oneshot(2),
        svc.clone().oneshot(13),
        svc.clone().oneshot(4)
    );
    assert_eq!(a.unwrap(), 4);
    assert!(matches!(b.unwrap_err(), MicroBatchError::Item("refused")));
    assert_eq!(c.unwrap(), 16);
    // A failed batch call fails each of its callers, not the next batch.
    let (a, b) = tokio::join!(svc.clone().oneshot(666), svc.clone().oneshot(5));
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert!(matches!(&err, MicroBatchError::Inner(e) if e.to_string() == "batch refused"));
        let err: palisade_core::Error = err.into();
        assert_eq!(err.http_status(), 502);
    }
    assert_eq!(svc.oneshot(6).await.unwrap(), 36);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_caller_is_left_out() {
    let batches = Batches::default();
    let svc = layer(100, 50).layer(upstream(batches.clone()));
    let a = tokio::spawn(svc.clone().oneshot(1));
    let gone = tokio::spawn(svc.clone().oneshot(2));
    let c = tokio::spawn(svc.clone().oneshot(3));
    tokio::time::sleep(Duration::from_millis(10)).await;
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert_eq!(a.await.unwrap().unwrap(), 1);
    assert_eq!(c.await.unwrap().unwrap(), 9);
    assert_eq!(*batches.lock().unwrap(), vec![vec![1, 3]]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let batches = Batches::default();
    let registry = prometheus::Registry::new();
    let metrics = MicroBatchMetrics::register(&registry).unwrap();
    let svc = layer(100, 1_000)
        .max_queue(3)
        .metrics(&metrics, "test")
        .layer(upstream(batches.clone()));
    let a = tokio::spawn(svc.clone().oneshot(1));
    let b = tokio::spawn(svc.clone().oneshot(2));
    let c = tokio::spawn(svc.clone().oneshot(3));
    // Three calls wait for their batch (sent in a second): a fourth is
    // refused without waiting.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let start = Instant::now();
    let err = svc.clone().oneshot(4).await.unwrap_err();
    assert!(matches!(err, MicroBatchError::Full));
    assert_eq!(start.elapsed(), Duration::ZERO);
    let err: palisade_core::Error = err.into();
    assert_eq!(err.http_status(), 503);
    for (h, want) in [(a, 1), (b, 4), (c, 9)] {
        assert_eq!(h.await.unwrap().unwrap(), want);
    }
    // Places are given back when the batch is sent.
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), 25);
    let rejected = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "palisade_microbatch_rejected_total")
        .unwrap();
    assert_eq!(rejected.get_metric()[0].get_counter().get_value(), 1.0);
}

#[tokio::test]
async fn a_split_of_the_wrong_length_fails_every_caller() {
    let svc = MicroBatchLayer::new(batch_fn(
        |xs: Vec<u64>| xs,
        |_: Vec<u64>, _n| vec![Ok::<u64, ()>(0)],
    ))
    .max_batch_size(2)
    .layer(tower::service_fn(|xs: Vec<u64>| async move {
        Ok::<_, std::io::Error>(xs)
    }));
    let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert!(matches!(
            err,
            MicroBatchError::Split {
                expected: 2,
                got: 1
            }
        ));
    }
}
