//! Overhead of a successful first-try call through palisade's retry layer,
//! side by side with tower's `retry` (given a `TpsBudget` and a `Clone`
//! request) and tower-resilience's retry.
//!
//! Run: `cargo bench -p palisade-retry --bench retry`
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use palisade_retry::{ReplayBody, RetryLayer, RetryOnErrors, RetryReason, Verdict, retry_fn};
use std::{
    future::{Ready, ready},
    hint::black_box,
    io,
    sync::Arc,
    time::{Duration, Instant},
};
use tower::{
    Layer, Service, ServiceExt,
    retry::{
        Policy,
        budget::{Budget, TpsBudget},
    },
    service_fn,
};

/// What tower users write: deposit on every answered request, withdraw on a
/// retry, clone the request up front.
#[derive(Clone)]
struct TowerPolicy {
    budget: Arc<TpsBudget>,
    left: u32,
}

impl<B: Clone, R, E> Policy<Request<B>, Response<R>, E> for TowerPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<B>,
        result: &mut Result<Response<R>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(res) if !res.status().is_server_error() => {
                self.budget.deposit();
                None
            }
            _ if self.left > 0 && self.budget.withdraw() => {
                self.left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &Request<B>) -> Option<Request<B>> {
        Some(req.clone())
    }
}

/// The same for a plain `Clone` request (no HTTP).
#[derive(Clone)]
struct TowerPlainPolicy {
    budget: Arc<TpsBudget>,
    left: u32,
}

impl Policy<u64, u64, io::Error> for TowerPlainPolicy {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _req: &mut u64,
        result: &mut Result<u64, io::Error>,
    ) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(_) if self.left > 0 && self.budget.withdraw() => {
                self.left -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

async fn drive<S, Req>(mut svc: S, req: Req, iters: u64) -> Duration
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
    Req: Clone,
{
    let start = Instant::now();
    for _ in 0..iters {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(black_box(req.clone()))
            .await
            .unwrap();
        black_box(res);
    }
    start.elapsed()
}

fn requests() -> [(&'static str, Request<Full<Bytes>>); 2] {
    let get = Request::get("http://upstream.local/tools/search")
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap();
    let post = Request::post("http://upstream.local/tools/run")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(vec![b'x'; 1024])))
        .unwrap();
    [("get", get), ("post_1k", post)]
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("retry_first_try");
    for (name, req) in requests() {
        group.bench_with_input(BenchmarkId::new("inner_only", name), &req, |b, req| {
            b.to_async(&rt).iter_custom(|iters| {
                let svc = service_fn(|_req: Request<Full<Bytes>>| async {
                    Ok::<_, io::Error>(Response::new(()))
                });
                drive(svc, req.clone(), iters)
            })
        });
        group.bench_with_input(BenchmarkId::new("palisade", name), &req, |b, req| {
            b.to_async(&rt).iter_custom(|iters| {
                let inner = service_fn(|_req: Request<ReplayBody<Full<Bytes>>>| async {
                    Ok::<_, io::Error>(Response::new(()))
                });
                let svc = RetryLayer::new().layer(inner);
                drive(svc, req.clone(), iters)
            })
        });
        group.bench_with_input(BenchmarkId::new("palisade_clone", name), &req, |b, req| {
            b.to_async(&rt).iter_custom(|iters| {
                let inner = service_fn(|_req: Request<Full<Bytes>>| async {
                    Ok::<_, io::Error>(Response::new(()))
                });
                let classify = retry_fn(|r: Result<&Response<()>, &io::Error>| match r {
                    Ok(res) if !res.status().is_server_error() => Verdict::Done,
                    _ => Verdict::retry(RetryReason::Error),
                });
                let svc = RetryLayer::new().for_services(classify).layer(inner);
                drive(svc, req.clone(), iters)
            })
        });
        group.bench_with_input(
            BenchmarkId::new("tower_tps_budget", name),
            &req,
            |b, req| {
                b.to_async(&rt).iter_custom(|iters| {
                    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
                        Ok::<_, io::Error>(Response::new(()))
                    });
                    let policy = TowerPolicy {
                        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
                        left: 2,
                    };
                    let svc = tower::retry::RetryLayer::new(policy).layer(inner);
                    drive(svc, req.clone(), iters)
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("tower_resilience", name),
            &req,
            |b, req| {
                b.to_async(&rt).iter_custom(|iters| {
                    let inner = service_fn(|_req: Request<Full<Bytes>>| async {
                        Ok::<_, io::Error>(Response::new(()))
                    });
                    let layer = tower_resilience::retry::RetryLayer::<
                        Request<Full<Bytes>>,
                        Response<()>,
                        io::Error,
                    >::builder()
                    .max_attempts(3)
                    .exponential_backoff(Duration::from_secs(2))
                    .retry_on_response(|res: &Response<()>| res.status().is_server_error())
                    .build();
                    let svc = layer.layer(inner);
                    drive(svc, req.clone(), iters)
                })
            },
        );
    }
    group.finish();

    // A plain `Clone` request: what is left is the layers' own work.
    let mut group = c.benchmark_group("retry_first_try_plain");
    let echo = || service_fn(|n: u64| async move { Ok::<_, io::Error>(n) });
    group.bench_function("inner_only", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| drive(echo(), 7u64, iters))
    });
    group.bench_function("palisade", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let svc = RetryLayer::new().for_services(RetryOnErrors).layer(echo());
            drive(svc, 7u64, iters)
        })
    });
    group.bench_function("palisade_no_budget", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let svc = RetryLayer::builder()
                .no_budget()
                .build()
                .unwrap()
                .for_services(RetryOnErrors)
                .layer(echo());
            drive(svc, 7u64, iters)
        })
    });
    group.bench_function("tower_tps_budget", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let policy = TowerPlainPolicy {
                budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
                left: 2,
            };
            let svc = tower::retry::RetryLayer::new(policy).layer(echo());
            drive(svc, 7u64, iters)
        })
    });
    group.bench_function("tower_resilience", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let layer = tower_resilience::retry::RetryLayer::<u64, u64, io::Error>::builder()
                .max_attempts(3)
                .exponential_backoff(Duration::from_secs(2))
                .build();
            drive(layer.layer(echo()), 7u64, iters)
        })
    });
    group.finish();

    let mut group = c.benchmark_group("budget_deposit");
    let ours = palisade_retry::RetryBudget::new(Duration::from_secs(10), 10, 0.2);
    let theirs = TpsBudget::new(Duration::from_secs(10), 10, 0.2);
    let _guard = rt.enter();
    group.bench_function("palisade", |b| b.iter(|| ours.deposit()));
    group.bench_function("tower_tps_budget", |b| b.iter(|| theirs.deposit()));
    group.bench_function("std_instant_now", |b| b.iter(|| black_box(Instant::now())));
    group.bench_function("tokio_instant_now", |b| {
        b.iter(|| black_box(tokio::time::Instant::now()))
    });
    group.finish();
}

type Run<'a> = Box<dyn Fn() -> Duration + 'a>;

/// Paired figures: the contenders alternate in short slices (a few ms each),
/// so the load of a shared machine hits them alike; medians of the slices.
fn paired(_c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const ITERS: u64 = 4000;
    const ROUNDS: usize = 60;
    let inner_http =
        || service_fn(|_req: Request<Full<Bytes>>| async { Ok::<_, io::Error>(Response::new(())) });
    let budget = || Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    for (name, req) in requests() {
        let rt = &rt;
        let req = &req;
        let runs: Vec<(&str, Run<'_>)> = vec![
            (
                "inner_only",
                Box::new(move || rt.block_on(drive(inner_http(), req.clone(), ITERS))),
            ),
            (
                "palisade",
                Box::new(move || {
                    let inner = service_fn(|_req: Request<ReplayBody<Full<Bytes>>>| async {
                        Ok::<_, io::Error>(Response::new(()))
                    });
                    rt.block_on(drive(RetryLayer::new().layer(inner), req.clone(), ITERS))
                }),
            ),
            (
                "tower_tps_budget",
                Box::new(move || {
                    let policy = TowerPolicy {
                        budget: budget(),
                        left: 2,
                    };
                    let svc = tower::retry::RetryLayer::new(policy).layer(inner_http());
                    rt.block_on(drive(svc, req.clone(), ITERS))
                }),
            ),
            (
                "tower_resilience",
                Box::new(move || {
                    let layer = tower_resilience::retry::RetryLayer::<
                        Request<Full<Bytes>>,
                        Response<()>,
                        io::Error,
                    >::builder()
                    .max_attempts(3)
                    .exponential_backoff(Duration::from_secs(2))
                    .retry_on_response(|res: &Response<()>| res.status().is_server_error())
                    .build();
                    rt.block_on(drive(layer.layer(inner_http()), req.clone(), ITERS))
                }),
            ),
        ];
        report(&format!("paired/{name}"), &runs, ROUNDS, ITERS);
    }
    let echo = || service_fn(|n: u64| async move { Ok::<_, io::Error>(n) });
    let rt = &rt;
    let runs: Vec<(&str, Run<'_>)> = vec![
        (
            "inner_only",
            Box::new(move || rt.block_on(drive(echo(), 7u64, ITERS * 10))),
        ),
        (
            "palisade",
            Box::new(move || {
                let svc = RetryLayer::new().for_services(RetryOnErrors).layer(echo());
                rt.block_on(drive(svc, 7u64, ITERS * 10))
            }),
        ),
        (
            "tower_tps_budget",
            Box::new(move || {
                let policy = TowerPlainPolicy {
                    budget: budget(),
                    left: 2,
                };
                let svc = tower::retry::RetryLayer::new(policy).layer(echo());
                rt.block_on(drive(svc, 7u64, ITERS * 10))
            }),
        ),
        (
            "tower_resilience",
            Box::new(move || {
                let layer = tower_resilience::retry::RetryLayer::<u64, u64, io::Error>::builder()
                    .max_attempts(3)
                    .exponential_backoff(Duration::from_secs(2))
                    .build();
                rt.block_on(drive(layer.layer(echo()), 7u64, ITERS * 10))
            }),
        ),
    ];
    report("paired/plain", &runs, ROUNDS, ITERS * 10);
}

fn report(group: &str, runs: &[(&str, Run<'_>)], rounds: usize, iters: u64) {
    let mut samples = vec![Vec::with_capacity(rounds); runs.len()];
    for _ in 0..rounds {
        for (i, (_, run)) in runs.iter().enumerate() {
            samples[i].push(run().as_nanos() as f64 / iters as f64);
        }
    }
    let medians: Vec<f64> = samples
        .iter_mut()
        .map(|s| {
            s.sort_by(|a, b| a.total_cmp(b));
            s[s.len() / 2]
        })
        .collect();
    let base = medians[0];
    let ours = medians[1] - base;
    for ((name, _), m) in runs.iter().zip(&medians) {
        let overhead = m - base;
        let ratio = if *name == "palisade" || *name == "inner_only" {
            String::new()
        } else {
            format!(
                "  palisade/this: {:.2}x total, {:.2}x overhead",
                medians[1] / m,
                ours / overhead
            )
        };
        println!("{group}/{name}: {m:.1} ns (overhead {overhead:.1} ns){ratio}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench, paired
}
criterion_main!(benches);
