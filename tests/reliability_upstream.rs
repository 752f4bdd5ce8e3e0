//! Upstream faults: the gateway runs as a real process in front of an
//! upstream that misbehaves on purpose (a raw TCP server, or an axum app),
//! on loopback. Every client request gets an answer, with the right status,
//! and the extra load retries put on a failing upstream stays capped.

mod reliability_support;
mod support;

use axum::{Router, http::StatusCode, routing::get as route};
use reliability_support::{Misbehaviour, Outcome, RawUpstream, figure, load, serve};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use support::{Gateway, get};

/// Fast retries, a high rate limit; the breaker off unless a test turns it on.
const BASE: &str = r#"
[retry]
initial_delay = "5ms"
max_delay = "20ms"

[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 1000000

[circuit_breaker]
initial_mode = "disabled"
"#;

fn gateway(upstream: &str, extra: &str) -> Gateway {
    let cfg = format!("{BASE}\n{extra}");
    // The extra sections replace the base ones they name.
    let cfg = merge(&cfg);
    Gateway::start_with_config(Some(&cfg), &["--upstream", upstream], &[])
}

/// Later `[section]` keys win over earlier ones (TOML forbids repeating a
/// table, so sections are merged here).
fn merge(text: &str) -> String {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.to_owned();
            if t.starts_with("[[") || !sections.iter().any(|(s, _)| *s == current) {
                sections.push((current.clone(), Vec::new()));
            }
            continue;
        }
        if t.is_empty() {
            continue;
        }
        let key = t.split('=').next().unwrap().trim().to_owned();
        let section = &mut sections
            .iter_mut()
            .rev()
            .find(|(s, _)| *s == current)
            .unwrap()
            .1;
        section.retain(|l| l.split('=').next().unwrap().trim() != key);
        section.push(t.to_owned());
    }
    sections
        .into_iter()
        .map(|(s, lines)| format!("{s}\n{}\n", lines.join("\n")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_gets_504_from_attempt_timeout_and_deadline() {
    let upstream = RawUpstream::start(Misbehaviour::Hang).await;
    let gw = gateway(
        &upstream.url,
        "[retry]\nattempt_timeout = \"150ms\"\ndeadline = \"400ms\"\nmax_attempts = 3\n",
    );
    let base = gw.url.clone();
    let (report, records) = load(move |i| format!("{base}/hang/{i}"), 40, 20).await;
    assert_eq!(report.missing(), 0, "{report:?}");
    assert_eq!(report.count(504), 40, "{report:?}");
    let slowest = records.iter().map(|r| r.done - r.sent).max().unwrap();
    // The deadline (400 ms) bounds every call; 10 s is far above any
    // scheduling noise and far below "hangs forever".
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    let per_request = upstream.requests() as f64 / 40.0;
    assert!(
        (1.0..=3.0).contains(&per_request),
        "attempts per request: {per_request}"
    );
    let t = "upstream_hang";
    figure(t, "client requests", report.sent);
    figure(t, "answered 504", report.count(504));
    figure(
        t,
        "slowest answer (deadline 400 ms)",
        format!("{slowest:?}"),
    );
    figure(
        t,
        "upstream requests per client request",
        format!("{per_request:.2}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_trip_the_breaker() {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/slow",
        route(move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(120)).await;
                "late"
            }
        }),
    );
    let (url, _task) = serve(app).await;
    let gw = gateway(
        &url,
        r#"
[circuit_breaker]
initial_mode = "closed"
failure_threshold = 0
slow_call_threshold = "40ms"
slow_call_rate_threshold = 0.5
minimum_calls = 4
sliding_window = { kind = "count", size = 10 }
recovery_timeout = "60s"
"#,
    );
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&format!("{}/slow", gw.url)).await.status.as_u16());
    }
    // Four slow successes fill the minimum; the rate (100 % slow) trips it.
    assert_eq!(&statuses[..4], &[200, 200, 200, 200], "{statuses:?}");
    assert!(statuses[4..].iter().all(|s| *s == 503), "{statuses:?}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        4,
        "the open breaker kept calls away"
    );
    let breakers = get(&format!("{}/breakers", gw.admin)).await.json();
    assert_eq!(breakers[0]["state"], "open", "{breakers}");
    figure("upstream_slow", "calls before the breaker opened", 4);
    figure(
        "upstream_slow",
        "statuses of 12 calls",
        format!("{statuses:?}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_resets_garbage_and_bad_heads_become_502() {
    let cases: Vec<(&str, Misbehaviour)> = vec![
        ("reset", Misbehaviour::Reset),
        (
            "garbage",
            Misbehaviour::Write(b"\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n".to_vec()),
        ),
        (
            "bad content-length",
            Misbehaviour::Write(b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nhello".to_vec()),
        ),
        (
            "bad status line",
            Misbehaviour::Write(b"HTTP/1.1 2000 NOPE\r\n\r\n".to_vec()),
        ),
        ("closed at once", Misbehaviour::Write(Vec::new())),
    ];
    for (name, how) in cases {
        let upstream = RawUpstream::start(how).await;
        let gw = gateway(&upstream.url, "");
        let base = gw.url.clone();
        let (report, _) = load(move |i| format!("{base}/x/{i}"), 30, 10).await;
        assert_eq!(report.missing(), 0, "{name}: {report:?}");
        assert_eq!(report.count(502), 30, "{name}: {report:?}");
        let per_request = upstream.requests() as f64 / 30.0;
        assert!(per_request <= 3.0, "{name}: {per_request}");
        // The gateway is still healthy.
        assert_eq!(get(&format!("{}/health", gw.admin)).await.status, 200);
        figure(
            "upstream_broken",
            name,
            format!("30 requests, 30 answered 502, {per_request:.2} upstream requests each"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_responses_are_never_passed_off_as_whole_nor_cached() {
    let head = |ct: &str| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: 1000\r\nCache-Control: public, max-age=60\r\n\r\n"
        )
    };
    let cases = [
        (
            "binary",
            format!("{}only a few bytes", head("application/octet-stream")),
        ),
        (
            "json with PII",
            format!(
                "{}{{\"email\":\"asha.rao@example.com\",\"note\":\"call 9876543210",
                head("application/json")
            ),
        ),
    ];
    for (name, raw) in cases {
        let upstream = RawUpstream::start(Misbehaviour::Write(raw.into_bytes())).await;
        let gw = gateway(&upstream.url, "");
        let client = reliability_support::client();
        for round in 0..3 {
            let rec = reliability_support::one(
                &client,
                http::Method::GET,
                &format!("{}/t", gw.url),
                &[],
                bytes::Bytes::new(),
                Duration::from_secs(10),
            )
            .await;
            match &rec.outcome {
                // Either the client sees the body break off, or an error status.
                Outcome::Error(_) => {}
                Outcome::Status(s) if *s >= 500 => {}
                other => panic!(
                    "{name} round {round}: a truncated body passed as whole: {other:?} {:?}",
                    rec.body
                ),
            }
            assert_ne!(
                rec.x_cache.as_deref(),
                Some("HIT"),
                "{name}: a truncated body was cached"
            );
            let text = String::from_utf8_lossy(&rec.body);
            assert!(
                !text.contains("asha.rao@example.com") && !text.contains("9876543210"),
                "{name}: PII leaked from a truncated body: {text}"
            );
        }
        assert!(upstream.requests() >= 3, "every round went upstream");
        assert_eq!(get(&format!("{}/health", gw.admin)).await.status, 200);
    }
    figure(
        "upstream_truncated",
        "binary and JSON bodies cut short",
        "never served as whole, never cached, no PII",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_is_capped_by_the_retry_budget_and_the_breaker() {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
        }
    });
    let (url, _task) = serve(app).await;
    const N: u64 = 400;

    // Retries alone: 3 attempts each would triple the load; the budget
    // (10 % of requests + 1 retry/s over 10 s) caps it.
    let budget = gateway(
        &url,
        "[retry]\nmax_attempts = 3\nbudget = { ratio = 0.1, min_per_sec = 1, window = \"10s\" }\n",
    );
    let base = budget.url.clone();
    let (report, _) = load(move |i| format!("{base}/storm/{i}"), N, 16).await;
    assert_eq!(report.missing(), 0, "{report:?}");
    assert_eq!(report.count(503), N, "{report:?}");
    let with_budget = hits.swap(0, Ordering::SeqCst);
    let cap = N + N / 10 + 10 + 5;
    assert!(
        with_budget <= cap,
        "{with_budget} upstream requests for {N} (cap {cap})"
    );
    assert!(with_budget > N, "retries happened at all: {with_budget}");

    // Without a budget the same storm is tripled: the budget is what caps it.
    let unbounded = gateway(
        &url,
        "[retry]\nmax_attempts = 3\nbudget = { ratio = 1000.0, min_per_sec = 100000, window = \"10s\" }\n",
    );
    let base = unbounded.url.clone();
    let (report, _) = load(move |i| format!("{base}/storm/{i}"), N, 16).await;
    assert_eq!(report.missing(), 0);
    let without_budget = hits.swap(0, Ordering::SeqCst);
    assert_eq!(without_budget, 3 * N);

    // With the breaker (5 consecutive failures trip it) the storm stops.
    let breaker = gateway(
        &url,
        "[circuit_breaker]\ninitial_mode = \"closed\"\nfailure_threshold = 5\n",
    );
    let base = breaker.url.clone();
    let (report, _) = load(move |i| format!("{base}/storm/{i}"), N, 16).await;
    assert_eq!(report.missing(), 0, "{report:?}");
    assert_eq!(
        report.count(503),
        N,
        "503 from upstream or from the breaker: {report:?}"
    );
    let with_breaker = hits.swap(0, Ordering::SeqCst);
    assert!(with_breaker < 60, "{with_breaker} upstream requests");

    let t = "upstream_5xx_storm";
    figure(t, "client requests per run", N);
    figure(
        t,
        "upstream req / client req, retry 3 attempts, no budget",
        format!("{:.2}", without_budget as f64 / N as f64),
    );
    figure(
        t,
        "upstream req / client req, budget 10 % + 1/s",
        format!("{:.2}", with_budget as f64 / N as f64),
    );
    figure(
        t,
        "upstream req / client req, breaker (5 failures)",
        format!("{:.3}", with_breaker as f64 / N as f64),
    );
}
