//! Faults of the shared store under load: Redis (single node and a
//! 3-master cluster) killed and restarted while gateway processes serve a
//! steady load on loopback; four replicas sharing one limit; SIGTERM during
//! load. Every request sent is counted, and every one must be answered.
//!
//! Figures are printed as `FIGURE | test | what | value` lines (run with
//! `--nocapture` to see them); RELIABILITY.md records them.

mod reliability_support;
mod support;

use palisade_testkit::{RedisCluster, RedisServer};
use reliability_support::{
    Outcome, Record, SteadyLoad, figure, load, load_with, redis_keys, serve, time_until,
};
use std::time::{Duration, Instant};
use support::{Gateway, get};

/// The rate limit and the cache both on the store; short store timeouts so
/// an outage is noticed quickly; a limit high enough never to refuse.
fn config(on_store_error: &str, key: &str) -> String {
    format!(
        r#"
[store]
op_timeout = "100ms"

[rate_limit]
on_store_error = "{on_store_error}"

[[rate_limit.limits]]
name = "load"
key = "{key}"
limit = 1000000
period = "1h"

[circuit_breaker]
failure_threshold = 1000
"#
    )
}

/// Replicas behind one load balancer see the same public Host (the cache
/// key holds it).
fn public_host() -> Vec<(String, String)> {
    vec![("host".into(), "api.example.test".into())]
}

fn status(r: &Record) -> Option<u16> {
    match r.outcome {
        Outcome::Status(s) => Some(s),
        _ => None,
    }
}

/// Statuses of the requests sent and answered entirely inside `[from, to]`.
fn statuses_between(records: &[Record], from: Instant, to: Instant) -> Vec<u16> {
    records
        .iter()
        .filter(|r| r.sent >= from && r.done <= to)
        .filter_map(status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_loses_no_request() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let open = Gateway::start_with_config(Some(&config("open", "peer_ip")), &[], &env);
    let closed = Gateway::start_with_config(Some(&config("closed", "peer_ip")), &[], &env);

    // Half the load on each gateway; /catalog is cacheable, so the cache
    // uses Redis (L2) too.
    let (a, b) = (open.url.clone(), closed.url.clone());
    let steady = SteadyLoad::start(
        move |i| {
            // A new cache key every 20 requests: fills keep writing to
            // Redis, and the others are hits.
            let base = if i % 2 == 0 { &a } else { &b };
            format!("{base}/catalog?page={}", i / 20)
        },
        8,
        20_000,
    );
    steady.wait_for(300, Duration::from_secs(60)).await;
    let keys_before = redis_keys(redis.port());
    assert!(
        keys_before.iter().any(|k| k.contains("cache")) && keys_before.len() >= 2,
        "rate limit and cache use Redis: {keys_before:?}"
    );

    redis.kill();
    let killed = Instant::now();
    let at_kill = steady.done();
    steady
        .wait_for(at_kill + 300, Duration::from_secs(60))
        .await;
    // The breaker keeps its own (local) state and answers on the admin API.
    let breakers = get(&format!("{}/breakers", open.admin)).await.json();
    assert_eq!(breakers[0]["state"], "closed", "{breakers}");

    let restarting = Instant::now();
    redis.restart();
    let restarted = Instant::now();
    // Full use resumes: the restarted (empty) Redis holds rate-limit and
    // cache entries again, written by the running gateways.
    let port = redis.port();
    let resumed = time_until(Duration::from_secs(20), || async move {
        let keys = redis_keys(port);
        keys.iter().any(|k| k.contains("cache")) && keys.iter().any(|k| !k.contains("cache"))
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the gateways never wrote to Redis again after its restart: {:?}",
            redis_keys(port)
        )
    });
    // The fail-closed gateway admits requests again.
    let closed_url = format!("{}/catalog", closed.url);
    let closed_resumed = time_until(Duration::from_secs(20), || {
        let url = closed_url.clone();
        async move { get(&url).await.status == 200 }
    })
    .await
    .expect("the fail-closed gateway never admitted requests again");
    let at_resume = steady.done();
    steady
        .wait_for(at_resume + 300, Duration::from_secs(60))
        .await;
    let resumed_at = Instant::now();
    let (report, records) = steady.finish().await;

    assert_eq!(report.missing(), 0, "every request answered: {report:?}");
    assert!(
        report.errors.is_empty() && report.timed_out == 0,
        "{report:?}"
    );
    // The fail-open gateway answered 200 throughout; the fail-closed one
    // answered 503 while Redis was down, 200 otherwise.
    let outage = statuses_between(&records, killed + Duration::from_millis(50), restarting);
    assert!(!outage.is_empty());
    assert!(
        outage.iter().all(|s| *s == 200 || *s == 503),
        "only 200 (fail-open) and 503 (fail-closed): {outage:?}"
    );
    let refused = outage.iter().filter(|s| **s == 503).count();
    let admitted = outage.iter().filter(|s| **s == 200).count();
    // Half the requests went to each gateway: the fail-open one admitted
    // all of its half, the fail-closed one refused all of its half.
    assert!(
        refused > 0 && admitted > 0 && refused.abs_diff(admitted) <= 16,
        "fail-open admits, fail-closed refuses: {admitted} admitted, {refused} refused"
    );
    let after = statuses_between(
        &records,
        restarted + closed_resumed + Duration::from_millis(200),
        resumed_at,
    );
    assert!(
        !after.is_empty() && after.iter().all(|s| *s == 200),
        "after recovery every request is admitted: {after:?}"
    );

    let t = "redis_killed_and_restarted";
    figure(t, "requests sent", report.sent);
    figure(t, "requests answered", report.answered);
    figure(t, "requests missing", report.missing());
    figure(t, "statuses", format!("{:?}", report.statuses));
    figure(t, "outage: admitted by fail-open", admitted);
    figure(t, "outage: refused 503 by fail-closed", refused);
    figure(
        t,
        "outage length (kill to restart)",
        format!("{:?}", restarting - killed),
    );
    figure(t, "restart to Redis written again", format!("{resumed:?}"));
    figure(
        t,
        "restart to fail-closed admitting again",
        format!("{closed_resumed:?}"),
    );
    figure(
        t,
        "throughput (req/s)",
        format!("{:.0}", report.sent as f64 / report.elapsed.as_secs_f64()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_under_load_errors_clearly_then_recovers() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let env = [("REDIS_URL", url.as_str())];
    let open = Gateway::start_with_config(Some(&config("open", "route")), &[], &env);
    let closed = Gateway::start_with_config(Some(&config("closed", "route")), &[], &env);
    // 30 routes (keys spread over the three masters' slots); the demo
    // upstream answers 404 for them, which is an answer like any other.
    let (a, b) = (open.url.clone(), closed.url.clone());
    let steady = SteadyLoad::start(
        move |i| {
            let base = if i % 2 == 0 { &a } else { &b };
            format!("{base}/r/{}", (i / 2) % 30)
        },
        8,
        20_000,
    );
    steady.wait_for(300, Duration::from_secs(60)).await;

    cluster.kill_node(1);
    let killed = Instant::now();
    let at_kill = steady.done();
    steady
        .wait_for(at_kill + 400, Duration::from_secs(60))
        .await;
    let restarting = Instant::now();
    cluster.restart_node(1);
    let restarted = Instant::now();

    // Recovery: a full round of the 30 routes through the fail-closed
    // gateway is admitted.
    let closed_url = closed.url.clone();
    let recovered = time_until(Duration::from_secs(30), || {
        let base = closed_url.clone();
        async move {
            let (report, _) = load(move |i| format!("{base}/r/{i}"), 30, 10).await;
            report.count(503) == 0 && report.missing() == 0
        }
    })
    .await
    .expect("the cluster slots of the restarted master never came back");
    let at_resume = steady.done();
    steady
        .wait_for(at_resume + 300, Duration::from_secs(60))
        .await;
    let end = Instant::now();
    let (report, records) = steady.finish().await;

    assert_eq!(report.missing(), 0, "every request answered: {report:?}");
    let outage = statuses_between(&records, killed + Duration::from_millis(50), restarting);
    let refused = outage.iter().filter(|s| **s == 503).count();
    assert!(outage.iter().all(|s| *s == 404 || *s == 503), "{outage:?}");
    // Only the keys of the dead master are refused (fail-closed), so some
    // requests of the fail-closed half still pass, and every request of the
    // fail-open half does.
    assert!(refused > 0, "fail-closed refuses the dead master's keys");
    assert!(
        refused < outage.len() / 2,
        "the other masters' keys are still served: {refused} of {}",
        outage.len()
    );
    let after = statuses_between(&records, restarted + recovered, end);
    assert!(
        !after.is_empty() && after.iter().all(|s| *s == 404),
        "after recovery every request is admitted: {:?}",
        after.iter().filter(|s| **s != 404).count()
    );
    let t = "cluster_master_killed";
    figure(t, "requests sent", report.sent);
    figure(t, "requests missing", report.missing());
    figure(t, "statuses", format!("{:?}", report.statuses));
    figure(
        t,
        "outage: refused 503 (fail-closed, dead master's keys)",
        format!("{refused} of {}", outage.len()),
    );
    figure(t, "restart to all slots admitted", format!("{recovered:?}"));
}

/// 4 replicas share one limit: exactly `limit` admitted under concurrency.
async fn replicas_admit_exactly(url: &str, t: &str) {
    const LIMIT: u64 = 60;
    let cfg = format!(
        r#"
[[rate_limit.limits]]
name = "user"
key = "header"
header = "x-user"
limit = {LIMIT}
period = "1h"
"#
    );
    let env = [("REDIS_URL", url)];
    let replicas: Vec<Gateway> = (0..4)
        .map(|_| Gateway::start_with_config(Some(&cfg), &[], &env))
        .collect();
    let urls: Vec<String> = replicas.iter().map(|g| g.url.clone()).collect();
    // 5 users (spread over cluster slots), 120 requests each, round-robin
    // over the replicas, 32 in flight.
    let (report, records) = load_with(
        |i| {
            (
                format!("{}/health", urls[(i % 4) as usize]),
                vec![("x-user".into(), format!("user-{}", (i / 4) % 5))],
            )
        },
        600,
        32,
    )
    .await;
    assert_eq!(report.missing(), 0, "{report:?}");
    assert_eq!(
        report.count(200),
        5 * LIMIT,
        "exactly the limit admitted across 4 replicas: {report:?}"
    );
    assert_eq!(report.count(429), 600 - 5 * LIMIT, "{report:?}");
    let _ = records;
    figure(t, "replicas", 4);
    figure(t, "requests (5 users x 120)", report.sent);
    figure(t, "admitted (limit 60/user/h x 5)", report.count(200));
    figure(t, "refused 429", report.count(429));
    figure(t, "requests missing", report.missing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_one_redis_admit_exactly_the_limit() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    replicas_admit_exactly(&redis.url(), "replicas_single_redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_a_cluster_admit_exactly_the_limit() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    replicas_admit_exactly(&cluster.url(), "replicas_cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_leaves_redis_consistent() {
    use axum::{Router, routing::get as route};
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // A slow upstream (300 ms) with cacheable answers that say who they are.
    let started = Arc::new(AtomicU64::new(0));
    let counter = started.clone();
    let app = Router::new().route(
        "/slow/{n}",
        route(move |axum::extract::Path(n): axum::extract::Path<u32>| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                (
                    [("cache-control", "public, max-age=60")],
                    format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(4096)),
                )
            }
        }),
    );
    let (upstream, _task) = serve(app).await;
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let args = ["--upstream", upstream.as_str()];
    let gw = Gateway::start_with_config(None, &args, &env);

    const IN_FLIGHT: u64 = 24;
    let base = gw.url.clone();
    let requests = tokio::spawn(async move {
        load_with(
            move |i| (format!("{base}/slow/{i}"), public_host()),
            IN_FLIGHT,
            IN_FLIGHT as usize,
        )
        .await
    });
    // Wait until every request reached the upstream, then SIGTERM.
    let s = started.clone();
    time_until(Duration::from_secs(20), || {
        let s = s.clone();
        async move { s.load(Ordering::SeqCst) == IN_FLIGHT }
    })
    .await
    .expect("requests reached the upstream");
    gw.terminate();
    let (report, records) = requests.await.unwrap();
    assert_eq!(report.missing(), 0, "{report:?}");
    assert_eq!(report.count(200), IN_FLIGHT, "{report:?}");
    for r in &records {
        assert!(r.body.len() > 4096, "whole bodies: {}", r.body.len());
    }
    let mut gw = gw;
    let exited = tokio::task::spawn_blocking(move || {
        let status = gw.child.wait().unwrap();
        (status, gw)
    })
    .await
    .unwrap();
    assert!(exited.0.success(), "clean exit: {:?}", exited.0);

    // Nothing half-written: every key left has an expiry (or is a stream),
    // and a fresh gateway on the same Redis serves every URL whole from it.
    for key in redis_keys(redis.port()) {
        let ttl = palisade_testkit::command(redis.port(), &["PTTL", &key]).unwrap();
        let kind = palisade_testkit::command(redis.port(), &["TYPE", &key]).unwrap();
        assert!(
            ttl.trim() != "-1" || kind.contains("stream"),
            "{key} ({kind}) has no expiry"
        );
    }
    let fresh = Gateway::start_with_config(None, &args, &env);
    let before = started.load(Ordering::SeqCst);
    let base = fresh.url.clone();
    let (again, records) = load_with(
        move |i| (format!("{base}/slow/{i}"), public_host()),
        IN_FLIGHT,
        8,
    )
    .await;
    assert_eq!(again.count(200), IN_FLIGHT);
    let hits = records
        .iter()
        .filter(|r| r.x_cache.as_deref() == Some("HIT"))
        .count() as u64;
    for r in &records {
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("whole JSON");
        assert!(v["n"].is_u64());
    }
    assert_eq!(
        hits,
        IN_FLIGHT,
        "every answer was stored whole before shutdown, and read back from Redis (upstream calls: {})",
        started.load(Ordering::SeqCst) - before
    );
    let t = "sigterm_during_load";
    figure(t, "requests in flight at SIGTERM", IN_FLIGHT);
    figure(t, "finished with 200", report.count(200));
    figure(t, "served whole from Redis by a new process", hits);
}
