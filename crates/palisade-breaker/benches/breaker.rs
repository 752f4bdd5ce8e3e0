//! Closed-state overhead per call, side by side with recloser, failsafe and
//! tower-resilience's circuit breaker.
//!
//! Run: `cargo bench -p palisade-breaker --bench breaker`
//!
//! - `direct/*`: the breaker around an inline call (palisade `call_sync`,
//!   recloser `call`, failsafe `call`).
//! - `service/*`: a Tower service around a trivial `service_fn` (palisade
//!   `CircuitBreakerLayer`, tower-resilience `CircuitBreakerLayer`, and the
//!   bare service as a baseline). Futures complete at once and are polled
//!   with `now_or_never`, so no executor cost is measured.
//! - `contended/*`: 64 tasks on a 2-worker Tokio runtime share one breaker;
//!   time per call over all tasks.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use palisade_breaker::{Breaker, CircuitBreakerLayer, Config};
use std::{
    hint::black_box,
    sync::Arc,
    time::{Duration, Instant},
};
use tower::{Layer, Service, ServiceExt, service_fn};

type Io = std::io::Error;

fn palisade_breaker() -> Breaker {
    Breaker::new("bench", Config::default()).unwrap()
}

fn direct(c: &mut Criterion) {
    let mut g = c.benchmark_group("direct");
    let b = palisade_breaker();
    g.bench_function("palisade", |bench| {
        bench.iter(|| b.call_sync(|| Ok::<u64, Io>(black_box(1))))
    });
    let rec = recloser::Recloser::default();
    g.bench_function("recloser", |bench| {
        bench.iter(|| rec.call(|| Ok::<u64, Io>(black_box(1))))
    });
    let fs = failsafe::Config::new().build();
    g.bench_function("failsafe", |bench| {
        bench.iter(|| failsafe::CircuitBreaker::call(&fs, || Ok::<u64, Io>(black_box(1))))
    });
    g.finish();
}

fn service(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let mut g = c.benchmark_group("service");

    let mut bare = service_fn(|x: u64| async move { Ok::<u64, Io>(x) });
    g.bench_function("baseline", |bench| {
        bench.iter(|| {
            let _ = bare.ready().now_or_never();
            bare.call(black_box(1)).now_or_never().unwrap()
        })
    });

    let mut pal = CircuitBreakerLayer::new("bench")
        .layer(service_fn(|x: u64| async move { Ok::<u64, Io>(x) }));
    g.bench_function("palisade", |bench| {
        bench.iter(|| {
            let _ = pal.ready().now_or_never();
            pal.call(black_box(1)).now_or_never().unwrap()
        })
    });

    let mut trs = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .layer(service_fn(|x: u64| async move { Ok::<u64, Io>(x) }));
    g.bench_function("tower-resilience", |bench| {
        bench.iter(|| {
            let _ = trs.ready().now_or_never();
            trs.call(black_box(1)).now_or_never().unwrap()
        })
    });

    let rec = recloser::AsyncRecloser::from(recloser::Recloser::default());
    g.bench_function("recloser-async", |bench| {
        bench.iter(|| {
            rec.call(async { Ok::<u64, Io>(black_box(1)) })
                .now_or_never()
                .unwrap()
        })
    });

    let fs = failsafe::Config::new().build();
    g.bench_function("failsafe-async", |bench| {
        bench.iter(|| {
            failsafe::futures::CircuitBreaker::call(&fs, async { Ok::<u64, Io>(black_box(1)) })
                .now_or_never()
                .unwrap()
        })
    });
    g.finish();
}

const TASKS: u64 = 64;

/// Runs `iters` calls spread over 64 tasks on 2 workers; returns the time.
fn contended_run<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, make: F) -> Duration
where
    F: Fn() -> Box<dyn FnMut() -> Fut + Send>,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let per_task = iters.div_ceil(TASKS);
    let calls: Vec<_> = (0..TASKS).map(|_| make()).collect();
    rt.block_on(async move {
        let start = Instant::now();
        let handles: Vec<_> = calls
            .into_iter()
            .map(|mut call| {
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        call().await;
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
        start.elapsed()
    })
}

fn contended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("contended");

    let pal = CircuitBreakerLayer::new("bench")
        .layer(service_fn(|x: u64| async move { Ok::<u64, Io>(x) }));
    g.bench_function(BenchmarkId::new("palisade", TASKS), |bench| {
        bench.iter_custom(|iters| {
            contended_run(&rt, iters, || {
                let svc = pal.clone();
                Box::new(move || {
                    let svc = svc.clone();
                    async move {
                        let r = svc.oneshot(black_box(1)).await;
                        black_box(r.unwrap());
                    }
                })
            })
        })
    });

    let trs = {
        let _guard = rt.enter();
        tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
            .build()
            .unwrap()
            .layer(service_fn(|x: u64| async move { Ok::<u64, Io>(x) }))
    };
    g.bench_function(BenchmarkId::new("tower-resilience", TASKS), |bench| {
        bench.iter_custom(|iters| {
            contended_run(&rt, iters, || {
                let svc = trs.clone();
                Box::new(move || {
                    let svc = svc.clone();
                    async move {
                        let r = svc.oneshot(black_box(1)).await;
                        black_box(r.unwrap());
                    }
                })
            })
        })
    });

    let rec = recloser::AsyncRecloser::from(recloser::Recloser::default());
    g.bench_function(BenchmarkId::new("recloser", TASKS), |bench| {
        bench.iter_custom(|iters| {
            contended_run(&rt, iters, || {
                let rec = rec.clone();
                Box::new(move || {
                    let f = rec.call(async { Ok::<u64, Io>(black_box(1)) });
                    async move {
                        black_box(f.await.unwrap());
                    }
                })
            })
        })
    });

    let fs = Arc::new(failsafe::Config::new().build());
    g.bench_function(BenchmarkId::new("failsafe", TASKS), |bench| {
        bench.iter_custom(|iters| {
            contended_run(&rt, iters, || {
                let fs = fs.clone();
                Box::new(move || {
                    let fs = fs.clone();
                    async move {
                        let r = failsafe::futures::CircuitBreaker::call(&*fs, async {
                            Ok::<u64, Io>(black_box(1))
                        })
                        .await;
                        black_box(r.unwrap());
                    }
                })
            })
        })
    });

    let b = palisade_breaker();
    g.bench_function(BenchmarkId::new("palisade-direct", TASKS), |bench| {
        bench.iter_custom(|iters| {
            contended_run(&rt, iters, || {
                let b = b.clone();
                Box::new(move || {
                    let r = b.call_sync(|| Ok::<u64, Io>(black_box(1)));
                    async move {
                        black_box(r.unwrap());
                    }
                })
            })
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = direct, service, contended
}
criterion_main!(benches);
