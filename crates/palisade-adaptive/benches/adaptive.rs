//! Per-call cost of an admitted call through palisade's adaptive
//! concurrency limit, side by side with tower's fixed `ConcurrencyLimit`
//! and tower-resilience's adaptive limiter (AIMD), on a plain service and
//! (palisade only, which answers HTTP itself) an HTTP one.
//!
//! Run: `cargo bench -p palisade-adaptive --bench adaptive`
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use palisade_adaptive::AdaptiveLayer;
use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};
use tower::{Layer, Service, ServiceExt, limit::ConcurrencyLimitLayer, service_fn};
use tower_resilience::adaptive::{AdaptiveLimiterLayer, Aimd};

async fn drive<S, Req>(mut svc: S, req: impl Fn() -> Req, iters: u64) -> Duration
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..iters {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(black_box(req()))
            .await
            .unwrap();
        black_box(res);
    }
    start.elapsed()
}

fn plain() -> impl Service<u64, Response = u64, Error = Infallible, Future = impl Send> + Clone {
    service_fn(|n: u64| async move { Ok::<_, Infallible>(n + 1) })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("adaptive_admitted_call");
    group.bench_function("inner_only", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(plain(), || 1u64, iters))
    });
    group.bench_function("tower_concurrency_limit", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            drive(
                ConcurrencyLimitLayer::new(100).layer(plain()),
                || 1u64,
                iters,
            )
        })
    });
    group.bench_function("tower_resilience_adaptive_aimd", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let aimd = Aimd::builder()
                .initial_limit(20)
                .min_limit(1)
                .max_limit(1000)
                .latency_threshold(Duration::from_millis(100))
                .build()
                .unwrap();
            drive(
                AdaptiveLimiterLayer::new(aimd).layer(plain()),
                || 1u64,
                iters,
            )
        })
    });
    group.bench_function("palisade_adaptive_aimd", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let layer = AdaptiveLayer::builder()
                .limits(1, 20, 1000)
                .build()
                .unwrap();
            drive(layer.for_services().layer(plain()), || 1u64, iters)
        })
    });
    group.bench_function("palisade_adaptive_gradient", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let layer = AdaptiveLayer::builder()
                .algorithm(palisade_adaptive::Algorithm::gradient())
                .limits(1, 20, 1000)
                .build()
                .unwrap();
            drive(layer.for_services().layer(plain()), || 1u64, iters)
        })
    });
    let http = || {
        service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        })
    };
    group.bench_function("http_inner_only", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(http(), || Request::new(()), iters))
    });
    group.bench_function("http_tower_concurrency_limit", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            drive(
                ConcurrencyLimitLayer::new(100).layer(http()),
                || Request::new(()),
                iters,
            )
        })
    });
    group.bench_function("http_palisade_adaptive_aimd", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let layer = AdaptiveLayer::builder()
                .limits(1, 20, 1000)
                .build()
                .unwrap();
            drive(layer.layer(http()), || Request::new(()), iters)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
