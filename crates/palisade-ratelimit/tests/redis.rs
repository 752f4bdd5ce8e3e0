//! The shared backend on a real redis-server and a real Redis Cluster.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use palisade_core::key::ConstKey;
use palisade_ratelimit::{
    FailPolicy, Limit, Quota, RateLimitLayer, RateLimitMetrics, RateLimiter, UserId,
};
use palisade_store::{Store, StoreConfig};
use palisade_testkit::{RedisCluster, RedisServer};
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = Empty<Bytes>;

fn service(
    limiter: RateLimiter,
) -> impl Service<
    Request<Body>,
    Response = Response<palisade_core::PalisadeBody<Body>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::new())) })
}

/// A unique key prefix per test, so runs never see each other's counters.
fn config(url: &str) -> StoreConfig {
    let mut cfg = StoreConfig::new(url);
    cfg.prefix = format!("t{}", std::process::id());
    cfg.op_timeout = Duration::from_millis(300);
    cfg
}

/// Four replicas (four limiters, four connections) hammer one limit of 100
/// per hour together; with two limits (per user AND global), every user
/// stays under its own limit too. Exactly the limit is admitted.
async fn four_replicas_admit_exactly_the_limit(url: &str) {
    four_replicas_admit_exactly_the_limit_tagged(url, None).await;
}

async fn four_replicas_admit_exactly_the_limit_tagged(url: &str, tag: Option<&str>) {
    const GLOBAL: u32 = 100;
    const PER_USER: u32 = 40;
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let store = Store::connect_with(config(url)).await.unwrap();
        let mut b = RateLimiter::builder()
            .limit(Limit::per_user().with_quota(Quota::per_hour(PER_USER)))
            .limit(Limit::new(
                "global",
                ConstKey("all"),
                Quota::per_hour(GLOBAL),
            ))
            .store(store);
        if let Some(tag) = tag {
            b = b.hash_tag(tag);
        }
        let limiter = b.build().unwrap();
        replicas.push(service(limiter));
    }
    let admitted = Arc::new(AtomicU32::new(0));
    let per_user: Arc<[AtomicU32; 4]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    for (r, svc) in replicas.into_iter().enumerate() {
        for t in 0..8 {
            let (svc, admitted, per_user) = (svc.clone(), admitted.clone(), per_user.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..60 {
                    let user = (r + t + i) % 4;
                    let mut req = Request::new(Body::new());
                    req.extensions_mut()
                        .insert(UserId::new(format!("user-{user}")));
                    let res = svc.clone().oneshot(req).await.unwrap();
                    match res.status() {
                        StatusCode::OK => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            per_user[user].fetch_add(1, Ordering::Relaxed);
                        }
                        StatusCode::TOO_MANY_REQUESTS => {
                            assert!(res.headers().contains_key("retry-after"));
                        }
                        other => panic!("unexpected status {other}"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        admitted.load(Ordering::Relaxed),
        GLOBAL,
        "zero over, zero under"
    );
    for (i, n) in per_user.iter().enumerate() {
        assert!(
            n.load(Ordering::Relaxed) <= PER_USER,
            "user {i} over its limit"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_one_redis_admit_exactly_the_limit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    four_replicas_admit_exactly_the_limit(&server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_a_redis_cluster_admit_exactly_the_limit() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
    else {
        return;
    };
    four_replicas_admit_exactly_the_limit(&cluster.url()).await;
}

fn total_commands(port: u16) -> u64 {
    let info = palisade_testkit::command(port, &["INFO", "stats"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_refused_flood_does_not_reach_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let registry = prometheus::Registry::new();
    let metrics = RateLimitMetrics::register(&registry).unwrap();
    let store = Store::connect_with(config(&server.url())).await.unwrap();
    let limiter = RateLimiter::builder()
        .limit(Limit::new("global", ConstKey("all"), Quota::per_hour(3)))
        .store(store)
        .metrics(&metrics)
        .build()
        .unwrap();
    let svc = service(limiter);
    for _ in 0..4 {
        svc.clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
    }
    let before = total_commands(server.port());
    for _ in 0..500 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let after: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=1200).contains(&after), "retry-after {after}");
    }
    let during = total_commands(server.port()) - before;
    assert!(
        during <= 2,
        "{during} commands reached Redis (INFO itself is one)"
    );
}

async fn store_stops_mid_run(policy: FailPolicy) {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let registry = prometheus::Registry::new();
    let metrics = RateLimitMetrics::register(&registry).unwrap();
    let store = Store::connect_with(config(&server.url())).await.unwrap();
    let limiter = RateLimiter::builder()
        .limit(Limit::new("global", ConstKey("all"), Quota::per_hour(1000)))
        .store(store)
        .on_store_error(policy)
        .metrics(&metrics)
        .build()
        .unwrap();
    let svc = service(limiter);
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-ratelimit-remaining"], "999");

    tokio::task::block_in_place(|| server.kill());
    for _ in 0..3 {
        // The store's per-operation timeout bounds this; the outer timeout
        // only turns a hang into a failure.
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            svc.clone().oneshot(Request::new(Body::new())),
        )
        .await
        .expect("a dead store must not hang the request")
        .unwrap();
        match policy {
            FailPolicy::Open => {
                assert_eq!(res.status(), StatusCode::OK);
                assert!(!res.headers().contains_key("x-ratelimit-limit"));
            }
            _ => {
                assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(res.headers()["retry-after"], "1");
            }
        }
    }
    let errors: f64 = registry
        .gather()
        .iter()
        .find(|f| f.name() == "palisade_ratelimit_store_errors_total")
        .unwrap()
        .get_metric()
        .iter()
        .map(|m| m.get_counter().get_value())
        .sum();
    assert_eq!(errors, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_open() {
    store_stops_mid_run(FailPolicy::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_run_fails_closed() {
    store_stops_mid_run(FailPolicy::Closed).await;
}

#[tokio::test]
async fn programmatic_checks_share_the_store() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = RateLimiter::builder()
        .limit(Limit::per_tool().with_quota(Quota::per_hour(2)))
        .store(Store::connect_with(config(&server.url())).await.unwrap())
        .build()
        .unwrap();
    let b = RateLimiter::builder()
        .limit(Limit::per_tool().with_quota(Quota::per_hour(2)))
        .store(Store::connect_with(config(&server.url())).await.unwrap())
        .build()
        .unwrap();
    assert!(
        a.check_key("tool", &"search", 1)
            .await
            .unwrap()
            .is_allowed()
    );
    let v = b.check_key("tool", &"search", 1).await.unwrap();
    assert!(v.is_allowed());
    assert_eq!(v.remaining(), 0);
    let v = a.check_key("tool", &"search", 1).await.unwrap();
    assert!(!v.is_allowed());
    let after = v.retry_after().unwrap();
    assert!(after > Duration::from_secs(1700) && after <= Duration::from_secs(1800));
    assert!(a.check_key("nope", &"x", 1).await.is_err());
    // Window algorithms are in-process only.
    let err = RateLimiter::builder()
        .limit(Limit::per_tool().with_quota(
            Quota::per_hour(2).with_algorithm(palisade_ratelimit::Algorithm::FixedWindow),
        ))
        .store(Store::in_memory())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("in-process only"), "{err}");
}

/// Script calls (`EVALSHA` / `EVAL`) served by the nodes at `ports`.
fn script_calls(ports: &[u16]) -> u64 {
    ports
        .iter()
        .map(|&p| {
            let info = palisade_testkit::command(p, &["INFO", "commandstats"]).unwrap();
            info.lines()
                .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
                .filter_map(|l| {
                    l.split("calls=")
                        .nth(1)?
                        .split(',')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .sum::<u64>()
        })
        .sum()
}

/// Three limits of one request on the 3-master cluster: under one hash tag
/// the decision is one script call; spread over slots it takes more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_tag_makes_one_round_trip_per_decision_on_the_cluster() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
    else {
        return;
    };
    const N: u64 = 20;
    let mut calls = Vec::new();
    for tag in [Some("rl"), None] {
        let store = Store::connect_with(config(&cluster.url())).await.unwrap();
        let mut b = RateLimiter::builder()
            .limit(Limit::per_user().with_quota(Quota::per_hour(1000)))
            .limit(Limit::per_tool().with_quota(Quota::per_hour(1000)))
            .limit(Limit::new("global", ConstKey("all"), Quota::per_hour(1000)))
            .store(store);
        if let Some(tag) = tag {
            b = b.hash_tag(tag);
        }
        let svc = service(b.build().unwrap());
        let request = |i: u64| {
            let mut req = Request::new(Body::new());
            req.extensions_mut()
                .insert(UserId::new(format!("user-{}", i % 3)));
            req.extensions_mut()
                .insert(palisade_ratelimit::ToolName::new(format!("tool-{}", i % 5)));
            req
        };
        // Warm up: every node has the script loaded.
        for i in 0..10 {
            assert_eq!(
                svc.clone().oneshot(request(i)).await.unwrap().status(),
                StatusCode::OK
            );
        }
        let before = script_calls(&cluster.ports());
        for i in 0..N {
            assert_eq!(
                svc.clone().oneshot(request(i)).await.unwrap().status(),
                StatusCode::OK
            );
        }
        calls.push(script_calls(&cluster.ports()) - before);
    }
    assert_eq!(calls[0], N, "hash-tagged: one script call per decision");
    assert!(
        calls[1] > N,
        "spread over slots: more than one per decision ({})",
        calls[1]
    );
}

/// Under a hash tag the limits stay exact across replicas on the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tagged_limits_stay_exact_on_the_cluster() {
    let Some(cluster) = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap()
    else {
        return;
    };
    four_replicas_admit_exactly_the_limit_tagged(&cluster.url(), Some("rl")).await;
}
