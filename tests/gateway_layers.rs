//! Every layer of the gateway, seen through HTTP on loopback: the gateway
//! binary runs as a real process in front of its demo upstream.

mod support;

use serde_json::Value;
use support::{Gateway, get, send};

fn header_u64(res: &support::Answer, name: &str) -> u64 {
    res.header(name)
        .unwrap_or_else(|| panic!("missing {name}: {:?}", res.headers))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn pii_is_masked_on_the_way_out() {
    let gw = Gateway::start(&[], &[]);
    let res = get(&format!("{}/users/7", gw.url)).await;
    assert_eq!(res.status, 200);
    let text = res.text();
    for raw in [
        "asha.rao@example.com",
        "9876543210",
        "hunter2",
        "4111 1111 1111 1111",
        "ABCDE1234F",
    ] {
        assert!(!text.contains(raw), "{raw} leaked: {text}");
    }
    let body = res.json();
    assert_eq!(body["email"], "as***@example.com");
    assert_eq!(body["phone"], "98******10");
    assert_eq!(body["password"], "***REDACTED***");
    assert_eq!(header_u64(&res, "content-length") as usize, res.body.len());
}

#[tokio::test]
async fn responses_are_shaped_per_request_and_bad_selectors_are_400() {
    let gw = Gateway::start(&[], &[]);
    let res = get(&format!("{}/catalog?fields=dealers(name)", gw.url)).await;
    assert_eq!(res.status, 200);
    let dealers = res.json()["dealers"].as_array().unwrap().clone();
    assert_eq!(dealers.len(), 40);
    assert!(
        dealers
            .iter()
            .all(|d| d.as_object().unwrap().keys().eq(["name"]))
    );
    assert!(header_u64(&res, "x-tokens-saved") > 0);
    assert!(header_u64(&res, "x-tokens-shaped") < header_u64(&res, "x-tokens-original"));

    let hits = gw.upstream_hits().await;
    let res = get(&format!("{}/catalog?fields=dealers((", gw.url)).await;
    assert_eq!(res.status, 400);
    assert!(res.json()["detail"].as_str().unwrap().contains("offset"));
    assert_eq!(
        gw.upstream_hits().await,
        hits,
        "a bad selector never reaches the upstream"
    );

    // Default compaction drops nulls and empty containers.
    let res = get(&format!("{}/catalog", gw.url)).await;
    let body = res.json();
    assert!(body.get("next_page").is_none() && body.get("filters").is_none());
}

#[tokio::test]
async fn cache_serves_the_second_get_without_the_upstream_and_purges() {
    let gw = Gateway::start(&[], &[]);
    let before = gw.upstream_hits().await;
    let first = get(&format!("{}/catalog", gw.url)).await;
    assert_eq!(first.header("x-cache"), Some("MISS"));
    let second = get(&format!("{}/catalog", gw.url)).await;
    assert_eq!(second.header("x-cache"), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert_eq!(gw.upstream_hits().await, before + 1);

    let stats = get(&format!("{}/cache/stats", gw.admin)).await.json();
    assert!(stats["hits"].as_u64().unwrap() >= 1, "{stats}");
    let purged = send(
        http::Method::POST,
        &format!("{}/cache/purge?prefix=", gw.admin),
        &[],
        b"",
    )
    .await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    let third = get(&format!("{}/catalog", gw.url)).await;
    assert_eq!(third.header("x-cache"), Some("MISS"));
    assert_eq!(gw.upstream_hits().await, before + 2);

    // Private responses are never stored by the shared cache.
    get(&format!("{}/users/1", gw.url)).await;
    let again = get(&format!("{}/users/1", gw.url)).await;
    assert_ne!(again.header("x-cache"), Some("HIT"));
}

#[tokio::test]
async fn retry_turns_a_flaky_upstream_into_a_success() {
    // Short backoff: the default (2 s, then 4 s) would work the same, slowly.
    let fast = "[retry]\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\"\n";
    let gw = Gateway::start_with_config(Some(fast), &[], &[]);
    let before = gw.upstream_hits().await;
    let res = get(&format!("{}/flaky", gw.url)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(
        gw.upstream_hits().await,
        before + 3,
        "two 503s retried, then success"
    );
}

const STRICT: &str = r#"
[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 5

[circuit_breaker]
failure_threshold = 2
"#;

#[tokio::test]
async fn rate_limit_answers_429_with_every_header() {
    let gw = Gateway::start_with_config(Some(STRICT), &[], &[]);
    for expected_remaining in (0..5).rev() {
        let res = get(&format!("{}/health", gw.url)).await;
        assert_eq!(res.status, 200);
        assert_eq!(header_u64(&res, "x-ratelimit-limit"), 5);
        assert_eq!(
            header_u64(&res, "x-ratelimit-remaining"),
            expected_remaining
        );
        assert!(res.header("ratelimit").is_some() && res.header("ratelimit-policy").is_some());
    }
    let res = get(&format!("{}/health", gw.url)).await;
    assert_eq!(res.status, 429);
    assert!(header_u64(&res, "retry-after") >= 1);
    assert_eq!(header_u64(&res, "x-ratelimit-remaining"), 0);
    assert_eq!(res.header("content-type"), Some("application/problem+json"));

    let state = get(&format!("{}/ratelimit/ip/127.0.0.1", gw.admin))
        .await
        .json();
    assert_eq!(state["allowed"], false, "{state}");
    assert_eq!(state["remaining"], 0);
}

#[tokio::test]
async fn breaker_opens_answers_503_and_records_dead_letters() {
    let gw = Gateway::start_with_config(
        Some(STRICT.replace("limit = 5", "limit = 100").as_str()),
        &[],
        &[],
    );
    let before = gw.upstream_hits().await;
    for _ in 0..2 {
        assert_eq!(get(&format!("{}/fail", gw.url)).await.status, 500);
    }
    let res = get(&format!("{}/fail", gw.url)).await;
    assert_eq!(res.status, 503);
    assert!(header_u64(&res, "retry-after") >= 1);
    assert_eq!(
        gw.upstream_hits().await,
        before + 2,
        "the open circuit kept the call away"
    );

    let breakers = get(&format!("{}/breakers", gw.admin)).await.json();
    assert_eq!(breakers[0]["name"], "upstream");
    assert_eq!(breakers[0]["state"], "open");
    let reset = send(
        http::Method::POST,
        &format!("{}/breakers/upstream/reset", gw.admin),
        &[],
        b"",
    )
    .await;
    assert_eq!(reset.status, 200);
    assert_eq!(
        get(&format!("{}/breakers", gw.admin)).await.json()[0]["state"],
        "closed"
    );
    assert_eq!(get(&format!("{}/health", gw.url)).await.status, 200);

    // Dead letters are recorded off the request path, in another process:
    // poll (each try is one round trip), bounded in time.
    let mut stats = Value::Null;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        stats = get(&format!("{}/dlq/stats", gw.admin)).await.json();
        if stats["total"] == 3 {
            break;
        }
    }
    assert_eq!(stats["by_error_class"]["upstream_5xx"], 2, "{stats}");
    assert_eq!(stats["by_error_class"]["circuit_open"], 1, "{stats}");
    assert_eq!(stats["by_route"]["/fail"], 3);
    let cleared = send(http::Method::DELETE, &format!("{}/dlq", gw.admin), &[], b"").await;
    assert_eq!(cleared.status, 204);
}

#[tokio::test]
async fn metrics_cover_every_layer_and_the_admin_token_guards_them() {
    let gw = Gateway::start(&["--admin-token", "s3cret"], &[]);
    get(&format!("{}/users/7", gw.url)).await;
    get(&format!("{}/catalog?fields=total", gw.url)).await;
    let url = format!("{}/metrics", gw.admin);
    assert_eq!(get(&url).await.status, 401);
    let wrong = send(
        http::Method::GET,
        &url,
        &[("authorization", "Bearer nope")],
        b"",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let res = send(
        http::Method::GET,
        &url,
        &[("authorization", "Bearer s3cret")],
        b"",
    )
    .await;
    assert_eq!(res.status, 200);
    let text = res.text();
    for family in [
        "palisade_breaker_state",
        "palisade_breaker_calls_total",
        "palisade_ratelimit_decisions_total",
        "palisade_cache_requests_total",
        "palisade_pii_values_masked_total",
        "palisade_shape_responses_total",
        "palisade_retry_attempts_total",
        "palisade_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(family), "{family} missing from /metrics");
    }
    // The gateway hands every request its peer address: the counter of
    // requests without one is exported, and stays at zero.
    assert!(
        text.lines().any(|l| l == "palisade_missing_peer_total 0"),
        "palisade_missing_peer_total 0 missing from /metrics"
    );
}

#[tokio::test]
async fn invalid_configuration_fails_at_start_naming_the_key() {
    let out = std::process::Command::new(support::gateway_binary())
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("REDIS_URL")
        .env("RETRY_MAX_ATTEMPTS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("retry.max_attempts") && err.contains("RETRY_MAX_ATTEMPTS"),
        "{err}"
    );
}

/// `enabled = false` in each section turns that layer off: the upstream's
/// answer passes as it is (PII and all), nothing is cached, limited,
/// shaped, retried or broken open.
#[tokio::test]
async fn every_layer_can_be_switched_off() {
    let off = r#"
[rate_limit]
enabled = false

[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 1

[circuit_breaker]
enabled = false
failure_threshold = 1

[retry]
enabled = false
initial_delay = "10ms"
max_delay = "50ms"

[cache]
enabled = false

[pii]
enabled = false

[shape]
enabled = false
"#;
    let gw = Gateway::start_with_config(Some(off), &[], &[]);
    // PII passes, no shaping, no cache, no limit (1 per minute otherwise).
    for _ in 0..3 {
        let res = get(&format!("{}/catalog?fields=items(id)", gw.url)).await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.header("x-cache"), None, "no cache: {:?}", res.headers);
        assert_eq!(res.header("x-ratelimit-limit"), None, "no limit headers");
        assert_eq!(res.header("x-tokens-original"), None, "not shaped");
    }
    let user = get(&format!("{}/users/7", gw.url)).await;
    assert_eq!(user.status, 200);
    assert_eq!(user.json()["email"], "asha.rao@example.com", "not masked");
    // No retry: the flaky upstream's first 503 is the answer.
    let before = gw.upstream_hits().await;
    assert_eq!(get(&format!("{}/flaky", gw.url)).await.status, 503);
    assert_eq!(gw.upstream_hits().await, before + 1, "not retried");
    // No breaker: failures never open it (threshold 1 otherwise).
    let before = gw.upstream_hits().await;
    for _ in 0..3 {
        assert_eq!(get(&format!("{}/fail", gw.url)).await.status, 500);
    }
    assert_eq!(
        gw.upstream_hits().await,
        before + 3,
        "one call each, never refused"
    );
}

/// MCP / JSON-RPC: the tool of a `tools/call` is learned from the body, so
/// a per-tool limit (`key = "tool"`) holds per tool on one endpoint.
#[tokio::test]
async fn per_tool_limits_read_the_tool_from_json_rpc_bodies() {
    let cfg = r#"
[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 1000

[[rate_limit.limits]]
name = "tool"
key = "tool"
limit = 2
"#;
    let gw = Gateway::start_with_config(Some(cfg), &[], &[]);
    let call = |id: u32, tool: &str| {
        serde_json::json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": {"q": "x"}}
        })
    };
    let url = format!("{}/echo", gw.url);
    let mut statuses = Vec::new();
    for id in 0..3 {
        let res = support::post_json(&url, &call(id, "search")).await;
        statuses.push(res.status.as_u16());
        if res.status == 200 {
            assert_eq!(
                res.json()["params"]["name"],
                "search",
                "the body went on whole"
            );
        }
    }
    assert_eq!(statuses, [200, 200, 429], "two calls of `search` a minute");
    let other = support::post_json(&url, &call(9, "fetch")).await;
    assert_eq!(other.status, 200, "another tool has its own budget");
    // Not JSON-RPC: no tool, the tool limit does not apply.
    for _ in 0..3 {
        let plain = support::post_json(&url, &serde_json::json!({"hello": 1})).await;
        assert_eq!(plain.status, 200);
    }
}
