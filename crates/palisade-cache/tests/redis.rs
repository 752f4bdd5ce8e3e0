//! L2 on a real redis-server / Redis Cluster (palisade-testkit): sharing
//! between instances, cross-replica coalescing, pattern invalidation and
//! store failure.

mod support;

use palisade_cache::{CacheBuilder, CacheHandle, CacheLayer, CacheServiceLayer};
use palisade_core::key::key_fn;
use palisade_store::Store;
use palisade_testkit::{RedisCluster, RedisServer};
use std::time::Duration;
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};

fn layer(store: &Store, name: &str) -> CacheLayer {
    CacheLayer::builder()
        .name(name)
        .namespace(&format!("test-{}", std::process::id()))
        .store(store.clone())
        .build()
        .unwrap()
}

async fn wait_until(cond: impl FnMut() -> bool) {
    palisade_testkit::eventually("condition", Duration::from_secs(20), cond).await;
}

#[tokio::test]
async fn l2_is_shared_by_two_layer_instances() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = Store::connect(&redis.url()).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let a = ServiceBuilder::new()
        .layer(layer(&store, "a"))
        .service(client());
    let b_layer = layer(&store, "b");
    let b = ServiceBuilder::new()
        .layer(b_layer.clone())
        .service(client());

    let (x, body_a) = text(a.clone().oneshot(get(addr, "/fresh/1")).await.unwrap()).await;
    assert_eq!(x, "MISS");
    let (x, body_b) = text(b.clone().oneshot(get(addr, "/fresh/1")).await.unwrap()).await;
    assert_eq!(x, "HIT");
    assert_eq!(body_a, body_b);
    assert_eq!(up.hits("fresh"), 1);
    // Vary markers and variants travel through L2 too.
    let lang = |l: &str| {
        let mut r = get(addr, "/vary/1");
        r.headers_mut()
            .insert("accept-language", l.parse().unwrap());
        r
    };
    assert_eq!(
        text(a.clone().oneshot(lang("en")).await.unwrap()).await.0,
        "MISS"
    );
    let (x, body) = text(b.clone().oneshot(lang("en")).await.unwrap()).await;
    assert_eq!((x.as_str(), body.ends_with("in en")), ("HIT", true));
    assert_eq!(
        text(b.clone().oneshot(lang("fr")).await.unwrap()).await.0,
        "MISS"
    );
    assert_eq!(up.hits("vary"), 2);
    // An invalidation through one instance reaches L2.
    a.clone()
        .oneshot(
            http::Request::post(format!("http://{addr}/fresh/1"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let c = ServiceBuilder::new()
        .layer(layer(&store, "c"))
        .service(client());
    assert_eq!(
        text(c.oneshot(get(addr, "/fresh/1")).await.unwrap())
            .await
            .0,
        "MISS"
    );
    assert_eq!(b_layer.handle().stats().store_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_coalesce_across_replicas() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    coalesce_across_replicas(&redis.url()).await;
}

/// The fill lock on the 3-master cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_coalesce_across_replicas_on_the_cluster() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    coalesce_across_replicas(&cluster.url()).await;
}

async fn coalesce_across_replicas(url: &str) {
    let store_a = Store::connect(url).await.unwrap();
    let store_b = Store::connect(url).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let a = ServiceBuilder::new()
        .layer(layer(&store_a, "a"))
        .service(client());
    let b_layer = layer(&store_b, "b");
    let b = ServiceBuilder::new()
        .layer(b_layer.clone())
        .service(client());

    up.close_gate();
    let ta =
        tokio::spawn(async move { text(a.oneshot(get(addr, "/slow/7")).await.unwrap()).await });
    wait_until(|| up.hits("slow") == 1).await;
    let tb =
        tokio::spawn(async move { text(b.oneshot(get(addr, "/slow/7")).await.unwrap()).await });
    // Replica B found A's fill lock and is polling L2.
    let h = b_layer.handle();
    wait_until(|| h.stats().remote_waits == 1).await;
    up.open_gate();
    let (xa, body_a) = ta.await.unwrap();
    let (xb, body_b) = tb.await.unwrap();
    assert_eq!((xa.as_str(), xb.as_str()), ("MISS", "HIT"));
    assert_eq!(body_a, body_b);
    assert_eq!(up.hits("slow"), 1);
    assert_eq!(h.stats().coalesced, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stops_waiting_when_the_fill_stores_nothing() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = Store::connect(&redis.url()).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let a = ServiceBuilder::new()
        .layer(layer(&store, "a"))
        .service(client());
    // B would wait an hour for A's fill if it did not notice the lock go.
    let b_layer = CacheLayer::builder()
        .name("b")
        .namespace(&format!("test-{}", std::process::id()))
        .store(store.clone())
        .coalesce_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let b = ServiceBuilder::new()
        .layer(b_layer.clone())
        .service(client());
    up.close_gate();
    let ta =
        tokio::spawn(
            async move { text(a.oneshot(get(addr, "/slowprivate/1")).await.unwrap()).await },
        );
    wait_until(|| up.hits("slowprivate") == 1).await;
    let tb =
        tokio::spawn(
            async move { text(b.oneshot(get(addr, "/slowprivate/1")).await.unwrap()).await },
        );
    let h = b_layer.handle();
    wait_until(|| h.stats().remote_waits == 1).await;
    up.open_gate();
    ta.await.unwrap();
    // Deadlock guard only: without the lock check B would sleep for an hour.
    let (xb, _) = tokio::time::timeout(Duration::from_secs(60), tb)
        .await
        .expect("B stopped waiting")
        .unwrap();
    assert_eq!(xb, "MISS");
    assert_eq!(up.hits("slowprivate"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_invalidation_on_redis_cluster() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
    else {
        return;
    };
    let store = Store::connect(&cluster.url()).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let a_layer = layer(&store, "a");
    let a = ServiceBuilder::new()
        .layer(a_layer.clone())
        .service(client());
    let paths: Vec<String> = (0..20)
        .map(|i| format!("/fresh/item{i}"))
        .chain((0..20).map(|i| format!("/fresh/other{i}")))
        .collect();
    for p in &paths {
        assert_eq!(
            text(a.clone().oneshot(get(addr, p)).await.unwrap()).await.0,
            "MISS"
        );
    }
    let deleted = a_layer
        .handle()
        .invalidate_matching(&format!("GET http://127.0.0.1:{}/fresh/item*", addr.port()))
        .await
        .unwrap();
    assert_eq!(deleted, 20, "keys spread over every master are found");
    // A fresh instance sees only what is left in L2; A's own L1 is purged too.
    let b = ServiceBuilder::new()
        .layer(layer(&store, "b"))
        .service(client());
    for p in &paths {
        let want = if p.contains("item") { "MISS" } else { "HIT" };
        assert_eq!(
            text(b.clone().oneshot(get(addr, p)).await.unwrap()).await.0,
            want,
            "{p}"
        );
    }
    assert_eq!(
        text(a.oneshot(get(addr, "/fresh/item3")).await.unwrap())
            .await
            .0,
        "HIT"
    );
    let deleted = a_layer
        .handle()
        .invalidate_prefix(&format!("GET http://127.0.0.1:{}/fresh/oth", addr.port()))
        .await
        .unwrap();
    assert_eq!(deleted, 20);
}

#[tokio::test]
async fn a_failing_store_is_bypassed_never_an_error() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let store = Store::connect(&redis.url()).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let l = layer(&store, "a");
    let svc = ServiceBuilder::new().layer(l.clone()).service(client());
    redis.kill();
    let (x, body) = text(svc.clone().oneshot(get(addr, "/fresh/1")).await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "fresh/1 v1"));
    assert!(l.handle().stats().store_errors >= 1);
    // L1 still works.
    assert_eq!(
        text(svc.oneshot(get(addr, "/fresh/1")).await.unwrap())
            .await
            .0,
        "HIT"
    );
}

#[tokio::test]
async fn generic_service_cache_shares_l2_and_coalesces() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = Store::connect(&redis.url()).await.unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let make = |name: &str| {
        let layer: CacheServiceLayer<Vec<String>, _> = CacheServiceLayer::new(
            CacheBuilder::default()
                .name(name)
                .namespace(&format!("svc-{}", std::process::id()))
                .store(store.clone()),
            key_fn(|q: &String| Some(q.clone())),
        )
        .unwrap();
        let calls = calls.clone();
        let svc = ServiceBuilder::new()
            .layer(layer.clone())
            .service_fn(move |q: String| {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move { Ok::<_, std::convert::Infallible>(vec![q.clone(), q.to_uppercase()]) }
            });
        (layer, svc)
    };
    let (la, mut a) = make("a");
    let (lb, mut b) = make("b");
    let v1 = a
        .ready()
        .await
        .unwrap()
        .call("tool:search?q=x".into())
        .await
        .unwrap();
    let v2 = b
        .ready()
        .await
        .unwrap()
        .call("tool:search?q=x".into())
        .await
        .unwrap();
    assert_eq!(v1, v2);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        (la.handle().stats().misses, lb.handle().stats().hits),
        (1, 1)
    );
    lb.handle().invalidate("tool:search?q=x").await.unwrap();
    la.handle().invalidate("tool:search?q=x").await.unwrap();
    a.ready()
        .await
        .unwrap()
        .call("tool:search?q=x".into())
        .await
        .unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Calls of `cmd` (e.g. "set") so far, from `INFO commandstats`.
async fn calls(conn: &mut redis::aio::MultiplexedConnection, cmd: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{cmd}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn uncacheable_keys_skip_the_l2_lookup_and_the_fill_lock() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = Store::connect(&redis.url()).await.unwrap();
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let svc = ServiceBuilder::new()
        .layer(layer(&store, "memo"))
        .service(client());

    let counts = async |conn: &mut redis::aio::MultiplexedConnection| {
        (
            calls(conn, "get").await,
            calls(conn, "set").await,
            calls(conn, "del").await,
        )
    };
    // The first miss looks in L2 and takes the fill lock...
    let before = counts(&mut conn).await;
    let (x, _) = text(svc.clone().oneshot(get(addr, "/plain/1")).await.unwrap()).await;
    assert_eq!(x, "MISS");
    let first = counts(&mut conn).await;
    assert!(
        first.0 > before.0 && first.1 > before.1,
        "{before:?} {first:?}"
    );
    // ...the response is not storable: the next misses go straight upstream.
    for _ in 0..5 {
        let (x, _) = text(svc.clone().oneshot(get(addr, "/plain/1")).await.unwrap()).await;
        assert_eq!(x, "MISS");
    }
    assert_eq!(counts(&mut conn).await, first);
    assert_eq!(up.hits("plain"), 6);
    // A cacheable key still takes the whole path.
    let (x, _) = text(svc.clone().oneshot(get(addr, "/fresh/1")).await.unwrap()).await;
    assert_eq!(x, "MISS");
    let after = counts(&mut conn).await;
    assert!(
        after.0 > first.0 && after.1 > first.1,
        "{first:?} {after:?}"
    );
    // An upstream error is not remembered: retries keep the whole path.
    up.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let (x, body) = text(svc.clone().oneshot(get(addr, "/sie/1")).await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "down"));
    let error = counts(&mut conn).await;
    let _ = text(svc.clone().oneshot(get(addr, "/sie/1")).await.unwrap()).await;
    let retry = counts(&mut conn).await;
    assert!(
        retry.0 > error.0 && retry.1 > error.1,
        "{error:?} {retry:?}"
    );
}

/// Invalidating a key removes its Vary variants from Redis too, not only
/// the index that points at them.
#[tokio::test]
async fn invalidating_a_key_removes_its_vary_variants_from_l2() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store = Store::connect(&redis.url()).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let layer = layer(&store, "v");
    let svc = ServiceBuilder::new().layer(layer.clone()).service(client());
    let lang = |l: &str| {
        let mut r = get(addr, "/vary/1");
        r.headers_mut()
            .insert("accept-language", l.parse().unwrap());
        r
    };
    for l in ["en", "fr"] {
        assert_eq!(
            text(svc.clone().oneshot(lang(l)).await.unwrap()).await.0,
            "MISS"
        );
    }
    let keys = || {
        palisade_testkit::command(redis.port(), &["DBSIZE"])
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(keys(), 3, "the Vary index and two variants");
    let uri: http::Uri = format!("http://{addr}/vary/1").parse().unwrap();
    layer
        .handle()
        .invalidate(&palisade_cache::CacheHandle::http_key(&uri, ""))
        .await
        .unwrap();
    assert_eq!(keys(), 0, "every variant is gone from Redis");
    // A new instance (empty L1) finds nothing on L2 either.
    let other = ServiceBuilder::new()
        .layer(self::layer(&store, "v"))
        .service(client());
    assert_eq!(
        text(other.oneshot(lang("fr")).await.unwrap()).await.0,
        "MISS"
    );
}

/// A purge on one replica reaches the other's in-process tier: without it,
/// B would keep answering from its L1 until `l1_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_on_one_replica_empties_the_others_l1() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let store_a = Store::connect(&redis.url()).await.unwrap();
    let store_b = Store::connect(&redis.url()).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    // A long L1 TTL: only the purge can take the entry out of B's L1.
    let replica = |store: &Store, name: &str| {
        CacheLayer::builder()
            .name(name)
            .namespace(&format!("purge-{}", std::process::id()))
            .l1_ttl(Duration::from_secs(3600))
            .store(store.clone())
            .build()
            .unwrap()
    };
    let a_layer = replica(&store_a, "a");
    let b_layer = replica(&store_b, "b");
    let a = ServiceBuilder::new()
        .layer(a_layer.clone())
        .service(client());
    let b = ServiceBuilder::new()
        .layer(b_layer.clone())
        .service(client());
    for path in ["/fresh/20", "/fresh/21"] {
        assert_eq!(
            text(a.clone().oneshot(get(addr, path)).await.unwrap())
                .await
                .0,
            "MISS"
        );
        assert_eq!(
            text(b.clone().oneshot(get(addr, path)).await.unwrap())
                .await
                .0,
            "HIT"
        );
    }
    let b_handle = b_layer.handle();
    b_handle.run_pending_tasks();
    assert_eq!(b_handle.stats().entries, 2, "both in B's L1");
    let hits = up.hits("fresh");

    // One key purged on A: gone from B's L1 too, the other key stays.
    let key = CacheHandle::http_key(&format!("http://{addr}/fresh/20").parse().unwrap(), "");
    a_layer.handle().invalidate(&key).await.unwrap();
    wait_until(|| {
        b_handle.run_pending_tasks();
        b_handle.stats().entries == 1
    })
    .await;
    assert_eq!(
        text(b.clone().oneshot(get(addr, "/fresh/20")).await.unwrap())
            .await
            .0,
        "MISS"
    );
    assert_eq!(up.hits("fresh"), hits + 1, "B asked the upstream again");
    assert_eq!(
        text(b.clone().oneshot(get(addr, "/fresh/21")).await.unwrap())
            .await
            .0,
        "HIT"
    );

    // Clearing A clears B's L1.
    a_layer.handle().clear().await.unwrap();
    wait_until(|| {
        b_handle.run_pending_tasks();
        b_handle.stats().entries == 0
    })
    .await;
    assert_eq!(
        text(b.clone().oneshot(get(addr, "/fresh/21")).await.unwrap())
            .await
            .0,
        "MISS"
    );
}

/// Stale-while-revalidate across replicas: the replica that starts the
/// background refresh takes the store's lock; another replica serving the
/// same stale entry meanwhile does not refresh it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_refreshes_a_stale_entry_the_others_serve_stale() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    swr_across_replicas(&redis.url()).await;
}

/// The same on the 3-master cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_refreshes_a_stale_entry_on_the_cluster() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    swr_across_replicas(&cluster.url()).await;
}

async fn swr_across_replicas(url: &str) {
    let store_a = Store::connect(url).await.unwrap();
    let store_b = Store::connect(url).await.unwrap();
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let a = ServiceBuilder::new()
        .layer(layer(&store_a, "a"))
        .service(client());
    let b_layer = layer(&store_b, "b");
    let b = ServiceBuilder::new()
        .layer(b_layer.clone())
        .service(client());

    assert_eq!(
        text(a.clone().oneshot(get(addr, "/slowswr/1")).await.unwrap())
            .await
            .0,
        "MISS"
    );
    up.close_gate();
    // A serves stale and starts the refresh, which the upstream holds.
    assert_eq!(
        text(a.clone().oneshot(get(addr, "/slowswr/1")).await.unwrap())
            .await
            .0,
        "STALE"
    );
    wait_until(|| up.hits("slowswr") == 2).await;
    // B serves the same stale entry; its refresh finds A's lock and stops.
    let waits = b_layer.handle().stats().remote_waits;
    assert_eq!(
        text(b.clone().oneshot(get(addr, "/slowswr/1")).await.unwrap())
            .await
            .0,
        "STALE"
    );
    wait_until(|| b_layer.handle().stats().remote_waits > waits).await;
    assert_eq!(
        up.hits("slowswr"),
        2,
        "B did not refresh what A is refreshing"
    );
    up.open_gate();
}
