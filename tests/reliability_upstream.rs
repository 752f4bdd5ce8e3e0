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

/// With the default `[upstream]` limits only shortened: a hanging upstream
/// gets the client a 504 problem answer, each hang is a failure for the
/// breaker, which opens and then answers 503 without calling the upstream;
/// after the recovery time, a trial that hangs too opens it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_upstream_opens_the_breaker_and_a_hanging_trial_reopens_it() {
    let upstream = RawUpstream::start(Misbehaviour::Hang).await;
    let gw = gateway(
        &upstream.url,
        r#"
[upstream]
response_timeout = "1s"

[retry]
max_attempts = 1

[circuit_breaker]
initial_mode = "closed"
failure_threshold = 2
recovery_timeout = "1s"
"#,
    );
    let url = format!("{}/hang", gw.url);
    for i in 1..=2 {
        let res = tokio::time::timeout(Duration::from_secs(20), get(&url))
            .await
            .unwrap_or_else(|_| panic!("hang {i}: no answer: the client is left waiting"));
        assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT, "hang {i}");
        assert_eq!(
            res.header("content-type"),
            Some("application/problem+json"),
            "hang {i}"
        );
        assert_eq!(upstream.requests(), i, "hang {i} reached the upstream");
    }
    // Two hangs were two failures: open, answered without the upstream.
    let res = get(&url).await;
    assert_eq!(
        res.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        res.text()
    );
    let wait: u64 = res
        .header("retry-after")
        .expect("Retry-After on the open circuit")
        .parse()
        .unwrap();
    assert_eq!(upstream.requests(), 2, "an open circuit does not call");
    // After the recovery time the trial reaches the upstream, hangs, and
    // is cut by the limit: the circuit opens again.
    // What is tested here is a client that honours Retry-After across
    // processes: real time, as a paused clock cannot reach the gateway.
    tokio::time::sleep(Duration::from_secs(wait.clamp(1, 5))).await;
    let res = tokio::time::timeout(Duration::from_secs(20), get(&url))
        .await
        .expect("the trial is answered");
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(upstream.requests(), 3, "the trial reached the upstream");
    let res = get(&url).await;
    assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.requests(), 3, "re-opened: no call");
    let breakers = get(&format!("{}/breakers", gw.admin)).await.text();
    assert!(breakers.contains("open"), "{breakers}");
}

/// A stream that stops sending is cut after `upstream.idle_timeout`; one
/// that keeps sending, for longer than the limit in all, never is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_is_cut_and_a_flowing_one_is_not() {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let app = Router::new()
        .route(
            "/stall",
            route(|| async {
                let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                    axum::body::Bytes::from_static(b"data: first\n\n"),
                )]);
                let body =
                    axum::body::Body::from_stream(first.chain(futures_util::stream::pending()));
                ([("content-type", "text/event-stream")], body)
            }),
        )
        .route(
            "/flow",
            route(|| async {
                // Ten events 300 ms apart: 3 s in all, never 1 s idle.
                let events = futures_util::stream::unfold(0u32, |i| async move {
                    if i == 10 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let e = axum::body::Bytes::from(format!("data: {i}\n\n"));
                    Some((Ok::<_, std::convert::Infallible>(e), i + 1))
                });
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(events),
                )
            }),
        );
    let (url, _task) = serve(app).await;
    let gw = gateway(&url, "[upstream]\nidle_timeout = \"1s\"\n");
    let client = reliability_support::client();

    let res = client
        .get(format!("{}/stall", gw.url).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "data: first\n\n");
    let end = tokio::time::timeout(Duration::from_secs(20), body.frame())
        .await
        .expect("an idle stream is cut, not left open");
    assert!(
        !matches!(end, Some(Ok(_))),
        "nothing more comes from a stalled stream: {end:?}"
    );

    let res = client
        .get(format!("{}/flow", gw.url).parse().unwrap())
        .await
        .unwrap();
    let all = tokio::time::timeout(Duration::from_secs(30), res.into_body().collect())
        .await
        .expect("the flowing stream ends")
        .expect("and is never cut")
        .to_bytes();
    let events = String::from_utf8_lossy(&all).matches("data: ").count();
    assert_eq!(events, 10, "{all:?}");
}

/// `upstream.max_concurrent` is a bulkhead: with two calls held by the
/// upstream, a third is answered 503 with `Retry-After` at once and never
/// reaches it; once one call ends, its slot serves the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_max_concurrent_get_503_at_once_and_never_reach_the_upstream() {
    use tokio::sync::{Semaphore, mpsc};
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Semaphore::new(0));
    let hits = Arc::new(AtomicU64::new(0));
    let (r, h) = (release.clone(), hits.clone());
    let app = Router::new().route(
        "/held",
        route(move || {
            let (r, h, arrived) = (r.clone(), h.clone(), arrived_tx.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let _ = arrived.send(());
                r.acquire().await.unwrap().forget();
                "done"
            }
        }),
    );
    let (upstream, _server) = serve(app).await;
    let gw = gateway(
        &upstream,
        "[upstream]\nmax_concurrent = 2\n\n[retry]\nmax_attempts = 1\n",
    );
    // Distinct queries: distinct cache keys, so no call waits on another.
    let url = |n: u32| format!("{}/held?n={n}", gw.url);
    let first = tokio::spawn(get_owned(url(1)));
    let second = tokio::spawn(get_owned(url(2)));
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(20), arrived.recv())
            .await
            .expect("both held calls reach the upstream");
    }
    let third = tokio::time::timeout(Duration::from_secs(20), get(&url(3)))
        .await
        .expect("the call over the limit is answered at once, not queued");
    assert_eq!(
        third.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        third.text()
    );
    assert_eq!(third.header("retry-after"), Some("1"));
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "the refused call never reached the upstream"
    );
    release.add_permits(1);
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            a = first => a.unwrap(),
            b = second => b.unwrap(),
        }
    })
    .await
    .expect("a released call completes");
    assert_eq!(done.status, StatusCode::OK);
    // A freed slot serves the next call (released at once).
    release.add_permits(2);
    let next = tokio::time::timeout(Duration::from_secs(20), get(&url(4)))
        .await
        .expect("answered");
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
}

async fn get_owned(url: String) -> support::Answer {
    get(&url).await
}
