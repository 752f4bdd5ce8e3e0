//! palisade-ratelimit against its peers, in one run.
//!
//! In-process decisions: palisade's `LocalLimiter` and `RateLimiter` engine
//! vs `governor` (direct and keyed); through a Tower layer: palisade's
//! `RateLimitLayer` vs `tower_governor` and `tower-resilience`'s rate
//! limiter. Single key and 10 000 keys, one thread and two contending.
//!
//! Redis decisions (when `redis-server` is available): palisade on
//! palisade-store vs `throttle-kit`'s Redis GCRA backend and vs
//! `redis-benchmark` running a trivial `EVALSHA` on the same server, all at
//! the same concurrency. Printed as ratios at the end.
//!
//! Run: `cargo bench -p palisade-ratelimit --bench ratelimit`

use axum::body::Body;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use futures_util::{FutureExt, StreamExt};
use governor::{Quota as GQuota, RateLimiter as Governor};
use http::{Request, Response};
use palisade_core::key::{ConstKey, PeerIp};
use palisade_ratelimit::{
    Clock, HeaderStyle, Limit, LocalLimiter, Quota, RateLimitLayer, RateLimiter,
};
use std::{
    hint::black_box,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    num::NonZeroU32,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};
use tower::{Layer, Service, ServiceExt};

const KEYS: u64 = 10_000;

/// Always-allowing quotas, so every decision does the same work.
fn quota() -> Quota {
    Quota::per_second(1_000_000_000)
}

fn gquota() -> GQuota {
    GQuota::with_period(Duration::from_nanos(1))
        .unwrap()
        .allow_burst(NonZeroU32::new(1_000_000_000).unwrap())
}

fn engine(limit: Limit, clock: Clock) -> RateLimiter {
    RateLimiter::builder()
        .limit(limit)
        .clock(clock)
        .build()
        .unwrap()
}

fn decisions(c: &mut Criterion) {
    let local = LocalLimiter::new(quota()).unwrap();
    let tsc = LocalLimiter::new(quota()).unwrap().with_clock(Clock::Tsc);
    let engine_tsc = engine(Limit::new("k", ConstKey("k"), quota()), Clock::Tsc);
    let engine = engine(Limit::new("k", ConstKey("k"), quota()), Clock::Tokio);
    let direct = Governor::direct(gquota());
    let keyed = Governor::keyed(gquota());

    let mut g = c.benchmark_group("decision/single_key");
    g.throughput(Throughput::Elements(1));
    g.bench_function("palisade LocalLimiter (tokio clock)", |b| {
        b.iter(|| black_box(local.check(black_box(&7u64))))
    });
    g.bench_function("palisade LocalLimiter (tsc clock)", |b| {
        b.iter(|| black_box(tsc.check(black_box(&7u64))))
    });
    for (name, e) in [("tokio", &engine), ("tsc", &engine_tsc)] {
        g.bench_function(format!("palisade RateLimiter ({name} clock)"), |b| {
            b.iter(|| {
                black_box(
                    e.check_key("k", black_box(&7u64), 1)
                        .now_or_never()
                        .unwrap()
                        .unwrap(),
                )
            })
        });
    }
    g.bench_function("governor direct", |b| b.iter(|| black_box(direct.check())));
    g.bench_function("governor keyed", |b| {
        b.iter(|| black_box(keyed.check_key(black_box(&7u64))))
    });
    g.finish();

    let mut g = c.benchmark_group("decision/10k_keys");
    g.throughput(Throughput::Elements(1));
    for k in 0..KEYS {
        local.check(&k);
        tsc.check(&k);
        let _ = keyed.check_key(&k);
        let _ = engine.check_key("k", &k, 1).now_or_never();
        let _ = engine_tsc.check_key("k", &k, 1).now_or_never();
    }
    let mut i = 0u64;
    for (name, l) in [("tokio", &local), ("tsc", &tsc)] {
        g.bench_function(format!("palisade LocalLimiter ({name} clock)"), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(l.check(&i))
            })
        });
    }
    for (name, e) in [("tokio", &engine), ("tsc", &engine_tsc)] {
        g.bench_function(format!("palisade RateLimiter ({name} clock)"), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                black_box(e.check_key("k", &i, 1).now_or_never().unwrap().unwrap())
            })
        });
    }
    g.bench_function("governor keyed", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(keyed.check_key(&i))
        })
    });
    g.finish();

    // Two threads deciding at once (time per decision per thread).
    let local = Arc::new(tsc);
    let direct = Arc::new(direct);
    let keyed = Arc::new(keyed);
    let mut g = c.benchmark_group("decision/contended_2_threads");
    g.throughput(Throughput::Elements(1));
    for (label, spread) in [("single_key", 1u64), ("10k_keys", KEYS)] {
        let run = |f: Arc<dyn Fn(u64) + Send + Sync>| {
            move |iters: u64| {
                let barrier = Arc::new(Barrier::new(3));
                let hs: Vec<_> = (0..2u64)
                    .map(|t| {
                        let (f, barrier) = (f.clone(), barrier.clone());
                        std::thread::spawn(move || {
                            barrier.wait();
                            for n in 0..iters {
                                f((n * 2 + t) % spread);
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for h in hs {
                    h.join().unwrap();
                }
                start.elapsed()
            }
        };
        let l = local.clone();
        let f = run(Arc::new(move |k| {
            black_box(l.check(&k));
        }));
        g.bench_function(
            BenchmarkId::new("palisade LocalLimiter (tsc clock)", label),
            |b| b.iter_custom(&f),
        );
        let k2 = keyed.clone();
        let f = run(Arc::new(move |k| {
            let _ = black_box(k2.check_key(&k));
        }));
        g.bench_function(BenchmarkId::new("governor keyed", label), |b| {
            b.iter_custom(&f)
        });
        if spread == 1 {
            let d = direct.clone();
            let f = run(Arc::new(move |_| {
                let _ = black_box(d.check());
            }));
            g.bench_function(BenchmarkId::new("governor direct", label), |b| {
                b.iter_custom(&f)
            });
        }
    }
    g.finish();
}

fn request(ip: u64) -> Request<Body> {
    let mut req = Request::new(Body::empty());
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + ip as u32)), 4000);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    req
}

/// Runs `iters` requests through `svc` in one task (ready + call each).
fn drive<S>(rt: &tokio::runtime::Runtime, svc: &S, keys: u64, iters: u64) -> Duration
where
    S: Service<Request<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut svc = svc.clone();
    rt.block_on(async move {
        let start = Instant::now();
        for n in 0..iters {
            let req = request(n % keys);
            let s = svc.ready().await.unwrap();
            black_box(s.call(req).await.unwrap());
        }
        start.elapsed()
    })
}

fn layers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inner = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
    });
    for (label, keys) in [("single_key", 1u64), ("10k_keys", KEYS)] {
        let mut g = c.benchmark_group(format!("layer/{label}"));
        g.throughput(Throughput::Elements(1));
        for (name, clock, style) in [
            (
                "all headers, tokio clock",
                Clock::Tokio,
                HeaderStyle::default(),
            ),
            ("all headers, tsc clock", Clock::Tsc, HeaderStyle::default()),
            ("no headers, tsc clock", Clock::Tsc, HeaderStyle::NONE),
        ] {
            let ours = RateLimitLayer::new(engine(Limit::new("ip", PeerIp::new(), quota()), clock))
                .headers(style)
                .layer(inner);
            g.bench_function(format!("palisade RateLimitLayer ({name})"), |b| {
                b.iter_custom(|iters| drive(&rt, &ours, keys, iters))
            });
        }
        let gov = tower_governor::governor::GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(1_000_000_000)
            .key_extractor(tower_governor::key_extractor::PeerIpKeyExtractor)
            .finish()
            .unwrap();
        let gov = tower_governor::GovernorLayer::new(Arc::new(gov)).layer(inner);
        g.bench_function("tower_governor", |b| {
            b.iter_custom(|iters| drive(&rt, &gov, keys, iters))
        });
        let gov = tower_governor::governor::GovernorConfigBuilder::default()
            .per_nanosecond(1)
            .burst_size(1_000_000_000)
            .key_extractor(tower_governor::key_extractor::PeerIpKeyExtractor)
            .use_headers()
            .finish()
            .unwrap();
        let gov = tower_governor::GovernorLayer::new(Arc::new(gov)).layer(inner);
        g.bench_function("tower_governor (use_headers)", |b| {
            b.iter_custom(|iters| drive(&rt, &gov, keys, iters))
        });
        if keys == 1 {
            // tower-resilience's limiter is not keyed: one global limit.
            let tr = tower_resilience_ratelimiter::RateLimiterLayer::builder()
                .limit_for_period(1_000_000_000)
                .refresh_period(Duration::from_secs(1))
                .build()
                .unwrap()
                .layer(inner);
            g.bench_function("tower-resilience", |b| {
                b.iter_custom(|iters| drive(&rt, &tr, keys, iters))
            });
        }
        g.finish();
    }
}

criterion_group! {
    name = local;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = decisions, layers
}

/// Decisions per second at `concurrency` in flight (one run).
fn throughput<F, Fut>(rt: &tokio::runtime::Runtime, n: u64, concurrency: usize, f: F) -> f64
where
    F: Fn(u64) -> Fut + Copy,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        futures_util::stream::iter(0..n)
            .map(f)
            .buffer_unordered(concurrency)
            .for_each(|()| async {})
            .await;
        n as f64 / start.elapsed().as_secs_f64()
    })
}

fn redis_comparison() {
    let Some(server) = palisade_testkit::RedisServer::start() else {
        eprintln!("redis-server not found: skipping the Redis comparison");
        return;
    };
    const N: u64 = 100_000;
    const CONCURRENCY: usize = 50;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = server.url();

    let store = rt.block_on(palisade_store::Store::connect(&url)).unwrap();
    let ours = RateLimiter::builder()
        .limit(Limit::new("k", ConstKey("k"), Quota::per_second(1000)))
        .store(store)
        .build()
        .unwrap();
    let ours = &ours;

    let tk = rt
        .block_on(throttle_kit::RedisBackend::connect(&url))
        .unwrap();
    // throttle-kit works in whole milliseconds: 1000/s is its finest rule.
    let tk = throttle_kit::RateLimiter::new(throttle_kit::Quota::per_second(1000), tk);
    let tk = &tk;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("tk:{k}")).collect();
    let keys = &keys;
    // Interleaved rounds, best of each: the machine is shared and noisy.
    let (mut palisade, mut throttle) = (0f64, 0f64);
    for _ in 0..3 {
        palisade = palisade.max(throughput(&rt, N, CONCURRENCY, |i| async move {
            let v = ours.check_key("k", &(i % KEYS), 1).await.unwrap();
            assert!(v.is_allowed());
        }));
        throttle = throttle.max(throughput(&rt, N, CONCURRENCY, |i| async move {
            let r = tk.check(&keys[(i % KEYS) as usize]).await;
            black_box(r);
        }));
    }

    let sha = palisade_testkit::command(server.port(), &["SCRIPT", "LOAD", "return 1"]).unwrap();
    let redis_benchmark = |pipeline: usize| {
        let out = std::process::Command::new("redis-benchmark")
            .args([
                "-p",
                &server.port().to_string(),
                "-c",
                &CONCURRENCY.to_string(),
            ])
            .args(["-P", &pipeline.to_string(), "-n", &N.to_string(), "--csv"])
            .args(["evalsha", sha.trim(), "0"])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "evalsha ...","<requests per second>",...
        text.lines().last().and_then(|l| {
            l.split(',')
                .nth(1)
                .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        })
    };

    println!("\nRedis decisions, {N} each, {CONCURRENCY} in flight, one server:");
    println!("  palisade (palisade-store GCRA):  {palisade:>9.0} /s");
    println!(
        "  throttle-kit RedisBackend:       {throttle:>9.0} /s   palisade = {:.2}x",
        palisade / throttle
    );
    for pipeline in [1, 16] {
        match redis_benchmark(pipeline) {
            Some(rps) => println!(
                "  redis-benchmark EVALSHA (-P {pipeline:>2}): {rps:>9.0} /s   palisade = {:.0} %",
                100.0 * palisade / rps
            ),
            None => println!("  redis-benchmark: not available"),
        }
    }
}

fn main() {
    local();
    if std::env::var_os("PALISADE_BENCH_SKIP_REDIS").is_none() {
        redis_comparison();
    }
    Criterion::default().configure_from_args().final_summary();
}
