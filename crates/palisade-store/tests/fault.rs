//! A Redis (or a cluster node) that dies mid-run gives typed unavailable /
//! timeout errors within the per-operation timeout, never a panic or a
//! hang; once it is back, the same `Store` works again.

use std::time::{Duration, Instant};

use bytes::Bytes;
use palisade_store::{GcraRule, Store, StoreConfig, StoreError};
use palisade_testkit::{RedisCluster, RedisServer};

const OP_TIMEOUT: Duration = Duration::from_millis(200);
/// How long past the per-operation timeout a failing call may take.
const GRACE: Duration = Duration::from_millis(1000);

/// Runs every kind of operation once; returns the results as
/// `Ok(())` / `Err(error)`, asserting none took longer than timeout + grace.
async fn exercise(store: &Store, key: &str) -> Vec<Result<(), StoreError>> {
    let mut out = Vec::new();
    macro_rules! op {
        ($e:expr) => {{
            let start = Instant::now();
            let r = tokio::time::timeout(OP_TIMEOUT + GRACE, $e).await;
            let elapsed = start.elapsed();
            let r = r.unwrap_or_else(|_| panic!("{} hung for {elapsed:?}", stringify!($e)));
            out.push(r.map(drop));
        }};
    }
    op!(store.get(key));
    op!(store.set(key, Bytes::from_static(b"v"), Some(Duration::from_secs(60))));
    op!(store.increment(&format!("{key}:n"), 1, Some(Duration::from_secs(60))));
    op!(store.rate_limit(&format!("{key}:rl"), GcraRule::per_minute(100), 1));
    op!(store.compare_and_swap(&format!("{key}:cas"), None, Bytes::from_static(b"x"), None));
    op!(store.stream_append(&format!("{key}:s"), &[("f", b"v")], 10));
    out
}

async fn wait_until_ok(store: &Store, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rs = exercise(store, key).await;
        if rs.iter().all(Result::is_ok) {
            return;
        }
        assert!(Instant::now() < deadline, "store never recovered: {rs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dies_and_the_same_store_recovers() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = Store::connect_with(StoreConfig::new(server.url()).op_timeout(OP_TIMEOUT))
        .await
        .unwrap();
    let key = store.key("fault", "k", "1", "v1");
    assert!(exercise(&store, &key).await.iter().all(Result::is_ok));

    server.kill();
    for _ in 0..3 {
        for r in exercise(&store, &key).await {
            let err = r.expect_err("the server is down");
            assert!(
                err.is_unavailable(),
                "typed unavailable / timeout, got {err:?}"
            );
        }
        let err = store.ping().await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
        assert!(
            store
                .delete_matching("fault:*")
                .await
                .unwrap_err()
                .is_unavailable()
        );
    }
    // Converts into the shared error as a retryable 503.
    let core: palisade_core::Error = store.get(&key).await.unwrap_err().into();
    assert_eq!(core.kind(), palisade_core::ErrorKind::Unavailable);

    server.restart();
    wait_until_ok(&store, &key).await;
    store.ping().await.unwrap();
    // The restarted server is empty (no persistence); the scripts were
    // reloaded transparently (NOSCRIPT) for the rate limit above.
    assert_eq!(
        store.get(&format!("{key}:n")).await.unwrap(),
        Some(Bytes::from_static(b"1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_dead_server_is_unavailable_not_a_hang() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    server.kill();
    let start = Instant::now();
    let cfg = StoreConfig::new(url).connect_timeout(Duration::from_millis(500));
    let err = Store::connect_with(cfg).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        Store::connect("redis://").await,
        Err(StoreError::InvalidConfig(_)) | Err(_)
    ));
    assert!(matches!(
        Store::connect_with(StoreConfig::new("memory://").prefix("a:b")).await,
        Err(StoreError::InvalidConfig(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_dies_and_the_same_store_recovers() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    let store = Store::connect_with(StoreConfig::new(cluster.url()).op_timeout(OP_TIMEOUT))
        .await
        .unwrap();
    // Keys spread over every node.
    let keys: Vec<String> = (0..30)
        .map(|i| store.key("fault", "k", &i.to_string(), "v1"))
        .collect();
    for k in &keys {
        assert!(exercise(&store, k).await.iter().all(Result::is_ok));
    }

    cluster.kill_node(1);
    let mut failed = 0;
    for k in &keys {
        for r in exercise(&store, k).await {
            if let Err(err) = r {
                assert!(
                    err.is_unavailable(),
                    "typed unavailable / timeout, got {err:?}"
                );
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "keys on the dead node must fail");
    let err = store.ping().await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");

    cluster.restart_node(1);
    for k in &keys {
        wait_until_ok(&store, k).await;
    }
    store.ping().await.unwrap();
    assert!(
        store
            .delete_matching(&store.pattern("fault", None))
            .await
            .unwrap()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_gives_timeout_errors() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let store = Store::connect_with(StoreConfig::new(server.url()).op_timeout(OP_TIMEOUT))
        .await
        .unwrap();
    let key = store.key("fault", "slow", "1", "v1");
    store
        .set(&key, Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    // Every client's commands are held for 1.5 s.
    palisade_testkit::command(server.port(), &["CLIENT", "PAUSE", "1500", "ALL"]).unwrap();
    let start = Instant::now();
    let err = store.get(&key).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(err, StoreError::Timeout(t) if t == OP_TIMEOUT),
        "{err:?}"
    );
    assert!(err.is_unavailable() && err.is_timeout());
    assert!(
        elapsed >= OP_TIMEOUT && elapsed < OP_TIMEOUT + GRACE,
        "{elapsed:?}"
    );
    let err = store
        .rate_limit(&key, GcraRule::per_second(5), 1)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    palisade_testkit::command(server.port(), &["CLIENT", "UNPAUSE"]).unwrap();
    wait_until_ok(&store, &key).await;
}

/// A subscription outlives a Redis restart: it says it may have missed
/// messages ([`Notice::Gap`]), then receives what is published afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_survives_a_restart_and_reports_the_gap() {
    use palisade_store::Notice;
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let store = Store::connect_with(StoreConfig::new(server.url()).op_timeout(OP_TIMEOUT))
        .await
        .unwrap();
    let channel = store.key("fault", "chan", "1", "v1");
    let mut sub = store.subscribe(&channel).await.unwrap();
    store
        .publish(&channel, Bytes::from_static(b"before"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
    assert_eq!(
        first.unwrap(),
        Some(Notice::Message(Bytes::from_static(b"before")))
    );
    server.restart();
    let gap = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("the subscription comes back after the restart");
    assert_eq!(gap, Some(Notice::Gap));
    wait_until_ok(&store, &store.key("fault", "k", "2", "v1")).await;
    store
        .publish(&channel, Bytes::from_static(b"after"))
        .await
        .unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), sub.next()).await;
    assert_eq!(
        after.unwrap(),
        Some(Notice::Message(Bytes::from_static(b"after")))
    );
}
