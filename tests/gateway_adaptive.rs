//! The adaptive concurrency limit and fault injection in the gateway binary,
//! in front of its demo upstream (a real slow upstream: `/slow?ms=`).

mod support;

use http::Method;
use support::{Gateway, get, send};

/// Polls (by round trips, boundedly) until the demo upstream has received
/// `n` requests.
async fn until_upstream_hits(gw: &Gateway, n: u64) {
    for _ in 0..2_000 {
        if gw.upstream_hits().await >= n {
            return;
        }
    }
    panic!("the upstream never saw {n} requests");
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

#[tokio::test]
async fn the_adaptive_limit_refuses_past_it_with_a_real_slow_upstream() {
    let config = r#"
        [adaptive_concurrency]
        enabled = true
        min_limit = 1
        initial_limit = 2
        max_limit = 2
    "#;
    let gw = Gateway::start_with_config(Some(config), &[], &[]);
    let slow = |n: u32| {
        let url = format!("{}/slow?ms=1500&n={n}", gw.url);
        tokio::spawn(async move { get(&url).await })
    };
    let (a, b) = (slow(1), slow(2));
    // Both hold their slot until the upstream answers.
    until_upstream_hits(&gw, 2).await;
    let refused = get(&format!("{}/slow?ms=1&n=3", gw.url)).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.text().contains("concurrency limit"),
        "{}",
        refused.text()
    );
    assert_eq!(gw.upstream_hits().await, 2, "the refused call never left");
    for h in [a, b] {
        assert_eq!(h.await.unwrap().status, 200);
    }
    // Slots are back.
    assert_eq!(get(&format!("{}/slow?ms=1&n=4", gw.url)).await.status, 200);
    let metrics = get(&format!("{}/metrics", gw.admin)).await.text();
    assert_eq!(metric(&metrics, "palisade_adaptive_refused_total"), 1.0);
    assert_eq!(metric(&metrics, "palisade_adaptive_in_flight"), 0.0);
    assert_eq!(metric(&metrics, "palisade_adaptive_limit"), 2.0);
}

#[tokio::test]
async fn each_configured_route_learns_its_own_limit() {
    let config = r#"
        [adaptive_concurrency]
        enabled = true
        min_limit = 1
        initial_limit = 1
        max_limit = 1
        routes = ["/slow"]
    "#;
    let gw = Gateway::start_with_config(Some(config), &[], &[]);
    let url = format!("{}/slow?ms=1500&n=1", gw.url);
    let slow = tokio::spawn(async move { get(&url).await });
    until_upstream_hits(&gw, 1).await;
    // /slow's one slot is taken: refused.
    assert_eq!(get(&format!("{}/slow?ms=1&n=2", gw.url)).await.status, 503);
    // Other paths have their own limit.
    assert_eq!(get(&format!("{}/users/7", gw.url)).await.status, 200);
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test]
async fn faults_come_from_configuration_or_a_trusted_caller_only() {
    let config = r#"
        [fault]
        enabled = true
        header_token = "game-day"
        trusted_peers = ["10.0.0.0/8"]

        [[fault.rules]]
        path_prefix = "/catalog"
        status = 500
    "#;
    let gw = Gateway::start_with_config(Some(config), &[], &[]);
    // A rule: every /catalog call answered 500, the upstream untouched.
    let res = get(&format!("{}/catalog", gw.url)).await;
    assert_eq!(res.status, 500);
    assert_eq!(res.header("x-palisade-fault"), Some("injected"));
    assert_eq!(gw.upstream_hits().await, 0);

    let ask = |headers: &'static [(&'static str, &'static str)]| {
        let url = format!("{}/health", gw.url);
        async move { send(Method::GET, &url, headers, b"").await }
    };
    // From 127.0.0.1, not a trusted peer, without the token: ignored.
    let res = ask(&[("x-palisade-fault", "status=503")]).await;
    assert_eq!(res.status, 200);
    let res = ask(&[
        ("x-palisade-fault", "status=503"),
        ("x-palisade-fault-token", "guess"),
        ("x-forwarded-for", "10.1.1.1"),
    ])
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(gw.upstream_hits().await, 2);
    // With the token: the status asked for (501: not retried, so one
    // injection).
    let res = ask(&[
        ("x-palisade-fault", "status=501"),
        ("x-palisade-fault-token", "game-day"),
    ])
    .await;
    assert_eq!(res.status, 501);
    assert_eq!(res.header("x-palisade-fault"), Some("injected"));
    assert_eq!(gw.upstream_hits().await, 2);
    let metrics = get(&format!("{}/metrics", gw.admin)).await.text();
    assert!(
        metrics.contains(r#"palisade_fault_injected_total{kind="error",name="upstream"} 2"#),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("fault"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
