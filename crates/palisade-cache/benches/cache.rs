//! Hit-path cost, side by side in one run:
//!
//! - L1 hit: palisade `CacheLayer` vs `http-cache-tower` (moka manager) vs
//!   `tower-http-cache` (in-memory), each in front of the same service.
//! - L2 hit on a real redis-server: palisade (L1 always missing) vs a bare
//!   Redis GET of the same bytes.
//!
//! - Miss, uncacheable response (`200 text/plain "ok"`, no Cache-Control,
//!   Expires, Last-Modified or ETag — a health check): every cache vs the
//!   bare upstream, L1 only and (palisade) with L2 on redis-server.
//!
//! Run: `cargo bench -p palisade-cache --bench cache`

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use palisade_cache::CacheLayer;
use std::{convert::Infallible, hint::black_box, time::Duration};
use tower::{Layer, Service, ServiceExt, service_fn};

static BODY: &[u8] = &[b'x'; 1024];

fn upstream()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "public, max-age=3600")
                .header("content-type", "application/json")
                .header("etag", "\"v1\"")
                .body(Full::new(Bytes::from_static(BODY)))
                .unwrap(),
        )
    })
}

/// A health-check-like upstream: nothing a cache could store or revalidate.
fn uncacheable()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap(),
        )
    })
}

fn req(uri: &Uri) -> Request<Full<Bytes>> {
    let mut r = Request::new(Full::default());
    *r.uri_mut() = uri.clone();
    r
}

/// One request through `svc`, body read to the end.
async fn one<S, B>(svc: &S, uri: &Uri) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req(uri)).await.unwrap();
    res.into_body().collect().await.unwrap().to_bytes().len()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let uri: Uri = "http://bench.local/api/items/42".parse().unwrap();

    let mut g = c.benchmark_group("l1_hit");
    let palisade = CacheLayer::new().layer(upstream());
    assert_eq!(rt.block_on(one(&palisade, &uri)), BODY.len());
    g.bench_function("palisade", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&palisade, &uri).await) })
    });

    let hct =
        http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default()).layer(upstream());
    assert_eq!(rt.block_on(one(&hct, &uri)), BODY.len());
    g.bench_function("http-cache-tower (moka)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&hct, &uri).await) })
    });

    let thc = tower_http_cache::CacheLayer::new_in_memory(10_000)
        .with_ttl(Duration::from_secs(3600))
        .layer(upstream());
    assert_eq!(rt.block_on(one(&thc, &uri)), BODY.len());
    g.bench_function("tower-http-cache (in-memory)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&thc, &uri).await) })
    });
    g.finish();

    // Paired run: the three alternate round by round, so load drifts on a
    // shared machine hit them alike.
    let rounds = 20_000u32;
    let mut t = [Duration::ZERO; 3];
    rt.block_on(async {
        for _ in 0..rounds {
            let t0 = std::time::Instant::now();
            black_box(one(&palisade, &uri).await);
            let t1 = std::time::Instant::now();
            black_box(one(&thc, &uri).await);
            let t2 = std::time::Instant::now();
            black_box(one(&hct, &uri).await);
            let t3 = std::time::Instant::now();
            t[0] += t1 - t0;
            t[1] += t2 - t1;
            t[2] += t3 - t2;
        }
    });
    println!(
        "paired L1 ({rounds} rounds): palisade {:?}, tower-http-cache {:?}, http-cache-tower {:?}; palisade / fastest peer = {:.2}",
        t[0] / rounds,
        t[1] / rounds,
        t[2] / rounds,
        t[0].as_secs_f64() / t[1].min(t[2]).as_secs_f64()
    );

    let health: Uri = "http://bench.local/health".parse().unwrap();
    let mut g = c.benchmark_group("miss_uncacheable");
    let bare = uncacheable();
    g.bench_function("no cache (bare upstream)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&bare, &health).await) })
    });
    let palisade = CacheLayer::new().layer(uncacheable());
    g.bench_function("palisade", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&palisade, &health).await) })
    });
    let hct = http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default())
        .layer(uncacheable());
    g.bench_function("http-cache-tower (moka)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&hct, &health).await) })
    });
    let thc = tower_http_cache::CacheLayer::new_in_memory(10_000)
        .with_ttl(Duration::from_secs(3600))
        .layer(uncacheable());
    g.bench_function("tower-http-cache (in-memory)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&thc, &health).await) })
    });
    g.finish();

    let Some(redis) = palisade_testkit::RedisServer::start() else {
        return;
    };
    let mut g = c.benchmark_group("miss_uncacheable_l2");
    let store = rt
        .block_on(palisade_store::Store::connect(&redis.url()))
        .unwrap();
    let palisade_l2 = CacheLayer::builder()
        .store(store)
        .build()
        .unwrap()
        .layer(uncacheable());
    g.bench_function("palisade L1+L2 (redis)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&palisade_l2, &health).await) })
    });
    g.finish();

    let mut g = c.benchmark_group("l2_hit");
    let store = rt
        .block_on(palisade_store::Store::connect(&redis.url()))
        .unwrap();
    // L1 entries are too old at once: every request is an L2 hit (which
    // then refills L1, as a real L2 hit does).
    let l2 = CacheLayer::builder()
        .store(store.clone())
        .l1_ttl(Duration::from_nanos(1))
        .build()
        .unwrap();
    let handle = l2.handle();
    let l2 = l2.layer(upstream());
    rt.block_on(one(&l2, &uri));
    let before = handle.stats();
    g.bench_function("palisade L2 (redis)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&l2, &uri).await) })
    });
    let after = handle.stats();
    assert_eq!(
        after.misses, before.misses,
        "every benched request must be an L2 hit"
    );
    assert!(after.hits > before.hits);

    let key = store.key("cache", "http", "GET http://bench.local/api/items/42", "v1");
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = rt
        .block_on(client.get_multiplexed_async_connection())
        .unwrap();
    let bytes: Vec<u8> = rt
        .block_on(redis::cmd("GET").arg(&key).query_async(&mut conn.clone()))
        .unwrap();
    assert!(bytes.len() > BODY.len(), "the L2 entry holds the body");
    g.bench_function("bare redis GET (same bytes)", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let v: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(v.len())
            }
        })
    });
    g.bench_function("palisade_store::Store::get (same bytes)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.get(&key).await.unwrap().map(|v| v.len())) })
    });
    g.finish();

    // Load on a shared machine drifts between benchmarks; a paired run
    // (alternating the two, same moments) gives a steadier ratio.
    let pairs = 3000u32;
    let (mut t_cache, mut t_bare, mut t_store) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    rt.block_on(async {
        let mut conn = conn.clone();
        for _ in 0..pairs {
            let t0 = std::time::Instant::now();
            black_box(one(&l2, &uri).await);
            let t1 = std::time::Instant::now();
            let v: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            black_box(v);
            let t2 = std::time::Instant::now();
            black_box(store.get(&key).await.unwrap());
            let t3 = std::time::Instant::now();
            t_cache += t1 - t0;
            t_bare += t2 - t1;
            t_store += t3 - t2;
        }
    });
    println!(
        "paired ({pairs} rounds): palisade L2 hit {:?}, bare GET {:?}, Store::get {:?}; L2 hit / bare GET = {:.2}",
        t_cache / pairs,
        t_bare / pairs,
        t_store / pairs,
        t_cache.as_secs_f64() / t_bare.as_secs_f64()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}
criterion_main!(benches);
