//! Token ledger benchmarks: one reserve + settle pair (what a budgeted LLM
//! call costs the store) against one GCRA decision (what a plain request
//! limit costs), on the same store in the same run.
//!
//! - In-process: one call per iteration on a current-thread runtime.
//! - Redis (a real `redis-server`): 256 calls in flight over the one
//!   multiplexed connection; reserve + settle is two script round trips,
//!   the GCRA decision one.
//!
//! Run: `cargo bench -p palisade-store --bench tokens`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::{StreamExt, stream};
use palisade_store::{GcraRule, Store, TokenRule};
use palisade_testkit::RedisServer;

const IN_FLIGHT: usize = 256;
const BATCH: usize = 2_000;

fn keys(store: &Store, entity: &str) -> Vec<String> {
    (0..1024)
        .map(|i| store.key("bench", entity, &i.to_string(), "v1"))
        .collect()
}

fn keys_of(store: &Store) -> Vec<String> {
    keys(store, "tokens")
}

fn memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Store::in_memory();
    let keys = keys(&store, "rl");
    let tkeys = keys_of(&store);
    let gcra = GcraRule::new(1_000_000, Duration::from_secs(3600));
    let tokens = TokenRule::new(1 << 30, Duration::from_secs(3600 * 24 * 365));
    let mut g = c.benchmark_group("tokens/memory");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("gcra_decision", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            store.rate_limit(black_box(&keys[i]), gcra, 1)
        })
    });
    let mut i = 0usize;
    g.bench_function("reserve_settle", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) & 1023;
            let (store, key) = (&store, &tkeys[i]);
            async move {
                let d = store
                    .token_reserve(black_box(key), tokens, 500)
                    .await
                    .unwrap();
                let r = d.reservation.unwrap();
                store.token_settle(key, tokens, &r, 120).await.unwrap()
            }
        })
    });
    g.finish();
}

fn redis(c: &mut Criterion) {
    let Some(server) = RedisServer::start() else {
        eprintln!("redis-server not found: skipping the Redis token benchmarks");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(Store::connect(&server.url())).unwrap();
    let keys = keys(&store, "rl");
    let tkeys = keys_of(&store);
    let gcra = GcraRule::new(1_000_000, Duration::from_secs(3600));
    let tokens = TokenRule::new(1 << 30, Duration::from_secs(3600 * 24 * 365));
    let mut g = c.benchmark_group("tokens/redis");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("gcra_decision", |b| {
        b.to_async(&rt).iter(|| {
            stream::iter(0..BATCH)
                .map(|i| store.rate_limit(&keys[i & 1023], gcra, 1))
                .buffer_unordered(IN_FLIGHT)
                .for_each(|r| {
                    r.unwrap();
                    async {}
                })
        })
    });
    g.bench_function("reserve_settle", |b| {
        b.to_async(&rt).iter(|| {
            stream::iter(0..BATCH)
                .map(|i| {
                    let (store, key) = (&store, &tkeys[i & 1023]);
                    async move {
                        let d = store.token_reserve(key, tokens, 500).await?;
                        let r = d.reservation.expect("admitted");
                        store.token_settle(key, tokens, &r, 120).await
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .for_each(|r| {
                    r.unwrap();
                    async {}
                })
        })
    });
    g.finish();
}

criterion_group!(benches, memory, redis);
criterion_main!(benches);
