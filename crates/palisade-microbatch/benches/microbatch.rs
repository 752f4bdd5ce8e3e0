//! 100 concurrent single calls, against an upstream whose every call costs
//! a fixed 5 µs (busy) plus nothing per item, and against a free one:
//! one by one (no batching), through palisade's micro-batch layer (batches
//! of up to 100, each caller gets its own result), and through tower-batch
//! 0.4 (`BatchControl::Item` per request, one `Flush`; every caller gets
//! the flush's one answer).
//!
//! Run: `cargo bench -p palisade-microbatch --bench microbatch`
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::future::join_all;
use palisade_microbatch::{MicroBatchLayer, batch_fn};
use std::{
    convert::Infallible,
    future::{Ready, ready},
    hint::black_box,
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_batch::{Batch, BatchControl};

const CALLERS: u64 = 100;

/// The fixed cost of one upstream call.
fn call_cost(cost: Duration) {
    let start = Instant::now();
    while start.elapsed() < cost {
        std::hint::spin_loop();
    }
}

/// tower-batch's inner service: items are buffered, the flush pays the cost.
struct Summer {
    buf: Vec<u64>,
    cost: Duration,
}

impl Service<BatchControl<u64>> for Summer {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: BatchControl<u64>) -> Self::Future {
        match req {
            BatchControl::Item(x) => {
                self.buf.push(x);
                ready(Ok(0))
            }
            BatchControl::Flush => {
                call_cost(self.cost);
                let sum = self.buf.drain(..).map(|x| x * x).sum();
                ready(Ok(sum))
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (label, cost) in [
        ("upstream_5us", Duration::from_micros(5)),
        ("upstream_free", Duration::ZERO),
    ] {
        let mut group = c.benchmark_group(format!("microbatch_100_callers/{label}"));
        group.bench_function("one_by_one", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let svc = service_fn(move |x: u64| {
                    call_cost(cost);
                    ready(Ok::<_, Infallible>(x * x))
                });
                let start = Instant::now();
                for _ in 0..iters {
                    let all = join_all((0..CALLERS).map(|x| svc.oneshot(x))).await;
                    black_box(all);
                }
                start.elapsed()
            })
        });
        group.bench_function("palisade_microbatch", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let batcher = batch_fn(
                    |xs: Vec<u64>| xs,
                    |ys: Vec<u64>, _n| ys.into_iter().map(Ok::<_, Infallible>).collect(),
                );
                let svc = MicroBatchLayer::new(batcher)
                    .max_batch_size(CALLERS as usize)
                    .max_wait(Duration::from_secs(1))
                    .layer(service_fn(move |xs: Vec<u64>| {
                        call_cost(cost);
                        ready(Ok::<_, Infallible>(
                            xs.iter().map(|x| x * x).collect::<Vec<_>>(),
                        ))
                    }));
                let start = Instant::now();
                for _ in 0..iters {
                    let all = join_all((0..CALLERS).map(|x| svc.clone().oneshot(x))).await;
                    black_box(all);
                }
                start.elapsed()
            })
        });
        group.bench_function("tower_batch", |b| {
            b.to_async(&rt).iter_custom(|iters| async move {
                let svc = Batch::new(
                    Summer {
                        buf: Vec::new(),
                        cost,
                    },
                    CALLERS as usize,
                    Duration::from_secs(1),
                );
                let start = Instant::now();
                for _ in 0..iters {
                    let all = join_all((0..CALLERS).map(|x| svc.clone().oneshot(x))).await;
                    black_box(all);
                }
                start.elapsed()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
