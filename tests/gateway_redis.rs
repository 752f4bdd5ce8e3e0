//! Two gateway processes (two replicas) sharing one real Redis: the cache,
//! the rate limit and the dead-letter queue are shared; nothing else is.

mod support;

use palisade_testkit::RedisServer;
use support::{Answer, Gateway, get, send};

/// Replicas behind one load balancer see the same public Host.
async fn get_public(base: &str, path: &str) -> Answer {
    send(
        http::Method::GET,
        &format!("{base}{path}"),
        &[("host", "api.example.test")],
        b"",
    )
    .await
}

const CONFIG: &str = r#"
[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 5

[circuit_breaker]
failure_threshold = 1
"#;

#[tokio::test]
async fn replicas_share_cache_rate_limit_and_dead_letters() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let a = Gateway::start_with_config(Some(CONFIG), &[], &env);
    let b = Gateway::start_with_config(Some(CONFIG), &[], &env);

    // The cache: A fills L2 on Redis, B answers from it without its upstream.
    let b_hits = b.upstream_hits().await;
    let first = get_public(&a.url, "/catalog").await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let from_b = get_public(&b.url, "/catalog").await;
    assert_eq!(
        from_b.header("x-cache"),
        Some("HIT"),
        "{:?}",
        from_b.headers
    );
    assert_eq!(from_b.body, first.body);
    assert_eq!(
        b.upstream_hits().await,
        b_hits,
        "B's upstream was not called"
    );

    // The rate limit is exact across replicas: 5 per IP in total, and both
    // replicas have already counted one request each above.
    let mut allowed = 2;
    let mut refused = 0;
    for i in 0..8 {
        let gw = if i % 2 == 0 { &a } else { &b };
        match get(&format!("{}/health", gw.url)).await.status.as_u16() {
            200 => allowed += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((allowed, refused), (5, 5));

    // No call failed (429s are answers, not failures): B's view of the
    // shared dead-letter stream is empty. A failure on A listed by B is
    // `dead_letters_from_one_replica_are_seen_by_another`.
    let dead = get(&format!("{}/dlq/stats", b.admin)).await.json();
    assert_eq!(dead["total"], 0, "{dead}");
}

#[tokio::test]
async fn dead_letters_from_one_replica_are_seen_by_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let a = Gateway::start_with_config(Some(CONFIG), &[], &env);
    let b = Gateway::start_with_config(Some(CONFIG), &[], &env);
    assert_eq!(get(&format!("{}/fail", a.url)).await.status, 500);
    // Recording is asynchronous, in another process: ask B again (each ask
    // is a round trip to B and Redis; bounded by the number of asks).
    let mut stats = serde_json::Value::Null;
    for _ in 0..2_000 {
        stats = get(&format!("{}/dlq/stats", b.admin)).await.json();
        if stats["total"] == 1 {
            break;
        }
    }
    assert_eq!(stats["total"], 1, "{stats}");
    assert_eq!(stats["by_error_class"]["upstream_5xx"], 1, "{stats}");
}

#[tokio::test]
async fn redis_down_at_request_time_does_not_fail_requests() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let gw = Gateway::start_with_config(None, &[], &[("REDIS_URL", url.as_str())]);
    assert_eq!(get(&format!("{}/health", gw.url)).await.status, 200);
    redis.kill();
    // Rate limiting fails open (the default), the cache is bypassed.
    for _ in 0..3 {
        let res = get(&format!("{}/catalog", gw.url)).await;
        assert_eq!(res.status, 200, "{}", res.text());
    }
    redis.restart();
    let mut last = 0;
    for _ in 0..200 {
        let res = get(&format!("{}/catalog", gw.url)).await;
        last = res.status.as_u16();
        if res.header("x-cache") == Some("HIT") {
            return;
        }
    }
    panic!("the cache never used Redis again after its restart (last status {last})");
}

#[tokio::test]
async fn a_breaker_tripped_on_one_replica_is_open_on_the_other() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let config = format!("{CONFIG}shared_poll_interval = \"100ms\"\n");
    let a = Gateway::start_with_config(Some(&config), &[], &env);
    let b = Gateway::start_with_config(Some(&config), &[], &env);
    assert_eq!(
        get(&format!("{}/fail", a.url)).await.status,
        500,
        "one failure trips A"
    );
    assert_eq!(get(&format!("{}/fail", a.url)).await.status, 503);

    // B learns it from Redis within a poll interval: watch its admin view.
    let b_hits = b.upstream_hits().await;
    let mut state = serde_json::Value::Null;
    for _ in 0..100 {
        state = get(&format!("{}/breakers", b.admin)).await.json()[0]["state"].clone();
        if state == "open" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(state, "open");
    assert_eq!(get(&format!("{}/fail", b.url)).await.status, 503);
    assert_eq!(
        b.upstream_hits().await,
        b_hits,
        "B never called its upstream"
    );
}

/// A purge on one replica's admin listener reaches the other replica's
/// in-process tier (Redis pub/sub): B stops answering from its L1 at once,
/// not after its `l1_ttl` (an hour here).
#[tokio::test]
async fn a_purge_on_one_replica_reaches_the_others_l1() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let config = "[cache]\nl1_ttl = \"1h\"\n";
    let a = Gateway::start_with_config(Some(config), &[], &env);
    let b = Gateway::start_with_config(Some(config), &[], &env);
    assert_eq!(
        get_public(&a.url, "/catalog").await.header("x-cache"),
        Some("MISS")
    );
    // B answers from L2, then from its own L1.
    for _ in 0..2 {
        assert_eq!(
            get_public(&b.url, "/catalog").await.header("x-cache"),
            Some("HIT")
        );
    }
    let b_hits = b.upstream_hits().await;
    let purged = send(
        http::Method::POST,
        &format!("{}/cache/purge?pattern=*catalog*", a.admin),
        &[],
        b"",
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    // The purge reaches B asynchronously; each try is one round trip to
    // B, and a HIT means its L1 still has the entry. Bounded, never slept.
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let answer = loop {
        let res = get_public(&b.url, "/catalog").await;
        if res.header("x-cache") != Some("HIT") {
            break res;
        }
        assert!(
            std::time::Instant::now() < give_up,
            "B kept answering from its L1 after the purge"
        );
    };
    assert_eq!(answer.header("x-cache"), Some("MISS"));
    assert_eq!(b.upstream_hits().await, b_hits + 1, "B called its upstream");
}
