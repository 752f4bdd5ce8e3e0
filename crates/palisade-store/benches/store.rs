//! Store benchmarks.
//!
//! - In-process: `get` (hit), `set`, `increment`, `rate_limit` — one call per
//!   iteration on a current-thread runtime.
//! - Redis: the rate-limit decision's throughput with many calls in flight
//!   over the one multiplexed connection, against `redis-benchmark` running
//!   a trivial `EVALSHA` (`return 1`) with 50 clients on the same server in
//!   the same run. The summary line prints both rates and their ratio.
//!
//! Run: `cargo bench -p palisade-store --bench store`

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{StreamExt, TryStreamExt, stream};
use palisade_store::{GcraRule, Store};
use palisade_testkit::RedisServer;

const IN_FLIGHT: usize = 256;
const DECISIONS: usize = 200_000;

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::in_memory();
    let keys: Vec<String> = (0..1024)
        .map(|i| store.key("bench", "user", &i.to_string(), "v1"))
        .collect();
    rt.block_on(async {
        for k in &keys {
            store
                .set(k, Bytes::from_static(b"some cached value"), None)
                .await
                .unwrap();
        }
    });
    let rule = GcraRule::new(1_000_000, Duration::from_secs(3600));
    let mut g = c.benchmark_group("store/memory");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) & 1023;
        &keys[i]
    };
    g.bench_function("get", |b| {
        b.to_async(&rt).iter(|| store.get(black_box(next())))
    });
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) & 1023;
        &keys[i]
    };
    g.bench_function("set", |b| {
        b.to_async(&rt)
            .iter(|| store.set(black_box(next()), Bytes::from_static(b"v"), None))
    });
    let ctr: Vec<String> = (0..1024).map(|i| format!("ctr:{i}")).collect();
    let mut i = 0usize;
    g.bench_function("increment", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            store.increment(black_box(&ctr[i]), 1, None)
        })
    });
    let rl: Vec<String> = (0..1024).map(|i| format!("rl:{i}")).collect();
    let mut i = 0usize;
    g.bench_function("rate_limit", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            store.rate_limit(black_box(&rl[i]), rule, 1)
        })
    });
    g.finish();
}

/// `DECISIONS` rate-limit decisions with `IN_FLIGHT` in flight; decisions/s.
fn our_rate(rt: &tokio::runtime::Runtime, store: &Store, keys: &[String]) -> f64 {
    let rule = GcraRule::new(1_000_000_000, Duration::from_secs(3600 * 24 * 365));
    rt.block_on(async {
        let start = Instant::now();
        stream::iter(0..DECISIONS)
            .map(|i| store.rate_limit(&keys[i % keys.len()], rule, 1))
            .buffer_unordered(IN_FLIGHT)
            .try_for_each(|d| async move {
                assert!(d.allowed);
                Ok(())
            })
            .await
            .unwrap();
        DECISIONS as f64 / start.elapsed().as_secs_f64()
    })
}

/// `redis-benchmark -p <port> -n 200000 -c 50 -P 1 evalsha <sha of "return 1"> 0`.
fn redis_benchmark_rate(port: u16, sha: &str) -> Option<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-n",
            &DECISIONS.to_string(),
            "-c",
            "50",
            "-P",
            "1",
            "--csv",
        ])
        .args(["evalsha", sha, "0"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps",...  then  "evalsha ...","123456.78",...
    let line = text.lines().nth(1)?;
    line.split(',').nth(1)?.trim_matches('"').parse().ok()
}

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(Store::connect(&server.url())).unwrap();
    let keys: Vec<String> = (0..1024)
        .map(|i| store.key("bench", "user", &i.to_string(), "v1"))
        .collect();

    let mut g = c.benchmark_group("store/redis");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(IN_FLIGHT as u64));
    let rule = GcraRule::new(1_000_000_000, Duration::from_secs(3600 * 24 * 365));
    g.bench_function("rate_limit x256 in flight", |b| {
        b.to_async(&rt).iter(|| async {
            futures_util::future::try_join_all(
                keys[..IN_FLIGHT]
                    .iter()
                    .map(|k| store.rate_limit(k, rule, 1)),
            )
            .await
            .unwrap()
        })
    });
    g.finish();

    let sha = palisade_testkit::command(server.port(), &["SCRIPT", "LOAD", "return 1"]).unwrap();
    let (mut ours, mut theirs) = (0f64, 0f64);
    for _ in 0..3 {
        ours = ours.max(our_rate(&rt, &store, &keys));
        match redis_benchmark_rate(server.port(), &sha) {
            Some(r) => theirs = theirs.max(r),
            None => {
                eprintln!("redis-benchmark not available: no baseline");
                return;
            }
        }
    }
    println!(
        "store/redis summary: palisade rate_limit {ours:.0} decisions/s ({IN_FLIGHT} in flight, 1 connection) \
         vs redis-benchmark evalsha 'return 1' {theirs:.0} req/s (50 clients, -P 1): ratio {:.2}",
        ours / theirs
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = memory, redis
}
criterion_main!(benches);
