//! Security through the gateway process: rate-limit keys that clients
//! cannot spoof or inject, a cache that never hands one user's answer to
//! another, PII kept out of logs, error messages and dead letters, and an
//! admin listener on loopback behind a token.

mod reliability_support;
mod support;

use axum::{Router, http::HeaderMap, routing::get as route};
use palisade_testkit::RedisServer;
use reliability_support::{figure, redis_keys, serve, time_until};
use std::time::Duration;
use support::{Gateway, get, send};

fn get_with(
    url: &str,
    headers: &[(&str, &str)],
) -> impl std::future::Future<Output = support::Answer> {
    send(http::Method::GET, url, headers, b"")
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peers_do_not_change_the_rate_limit_key() {
    let cfg =
        "[[rate_limit.limits]]\nname = \"ip\"\nkey = \"peer_ip\"\nlimit = 3\nperiod = \"1h\"\n";
    let gw = Gateway::start_with_config(Some(cfg), &[], &[]);
    let mut statuses = Vec::new();
    for i in 0..10 {
        let spoof = format!("203.0.113.{i}");
        let forwarded = format!("for={spoof}");
        let res = get_with(
            &format!("{}/health", gw.url),
            &[
                ("x-forwarded-for", &spoof),
                ("x-forwarded-for", "198.51.100.7"),
                ("forwarded", &forwarded),
                ("x-real-ip", &spoof),
            ],
        )
        .await;
        statuses.push(res.status.as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429, 429, 429, 429, 429],
        "every spoofed request counted against the real peer (127.0.0.1)"
    );

    // The control: when loopback is a trusted proxy, X-Forwarded-For is
    // believed, so the same requests are ten different clients.
    let trusted = format!("[rate_limit]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{cfg}");
    let gw = Gateway::start_with_config(Some(&trusted), &[], &[]);
    for i in 0..10 {
        let spoof = format!("203.0.113.{i}");
        let res = get_with(
            &format!("{}/health", gw.url),
            &[("x-forwarded-for", &spoof)],
        )
        .await;
        assert_eq!(res.status, 200, "client {spoof} from a trusted proxy");
    }
    figure(
        "security_xff",
        "10 requests with 10 spoofed X-Forwarded-For from an untrusted peer",
        "3 admitted (the limit), 7 refused",
    );
}

/// Values a client chooses, each built to break a naive key scheme.
const HOSTILE: &[&str] = &[
    "*",
    "?",
    "[a-z]",
    "a:b",
    "a%3Ab",
    "A",
    "%41",
    "palisade:cache:http:x:v1",
    "{tag}",
    "}{",
    "\\",
    "x y",
    "\u{43a}\u{43b}\u{44e}\u{447}",
    "..",
    "%",
    "%%",
];

#[tokio::test]
async fn rate_limit_keys_from_user_input_cannot_collide_or_inject() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let cfg = "[[rate_limit.limits]]\nname = \"key\"\nkey = \"header\"\nheader = \"x-api-key\"\nlimit = 2\nperiod = \"1h\"\n";
    let url = redis.url();
    let gw = Gateway::start_with_config(Some(cfg), &[], &[("REDIS_URL", url.as_str())]);
    let long = "k".repeat(4000);
    let mut values: Vec<&str> = HOSTILE.to_vec();
    values.push(&long);
    // Two requests per value: all admitted only if no two values share a
    // counter (a collision would make some key's third request a 429).
    for v in &values {
        for _ in 0..2 {
            let res = get_with(&format!("{}/health", gw.url), &[("x-api-key", v)]).await;
            assert_eq!(res.status, 200, "value {v:?}: {}", res.text());
        }
    }
    for v in &values {
        let res = get_with(&format!("{}/health", gw.url), &[("x-api-key", v)]).await;
        assert_eq!(res.status, 429, "value {v:?} has its own counter");
    }
    let keys: Vec<String> = redis_keys(redis.port())
        .into_iter()
        .filter(|k| k.starts_with("palisade:ratelimit:"))
        .collect();
    assert_eq!(keys.len(), values.len(), "one key per value: {keys:#?}");
    for key in &keys {
        let parts: Vec<&str> = key.split(':').collect();
        assert_eq!(
            parts.len(),
            5,
            "no separator injected (prefix:ratelimit:limit:id:version): {key}"
        );
        assert_eq!(&parts[..3], ["palisade", "ratelimit", "key"], "{key}");
        assert!(
            !key.contains(['*', '?', '[', ']', '{', '}', ' ']),
            "no glob or hash-tag character reaches Redis raw: {key}"
        );
    }
    figure(
        "security_keys",
        "hostile rate-limit key values",
        format!(
            "{} values, {} distinct Redis keys, 0 collisions, 0 injected separators",
            values.len(),
            keys.len()
        ),
    );
}

#[tokio::test]
async fn a_cache_purge_prefix_is_literal_not_a_glob() {
    let gw = Gateway::start(&[], &[]);
    for path in ["/catalog", "/catalog?x=1"] {
        get(&format!("{}{path}", gw.url)).await;
    }
    for prefix in ["*", "?", "[a-z]", "\\"] {
        let res = send(
            http::Method::POST,
            &format!("{}/cache/purge?prefix={}", gw.admin, urlencode(prefix)),
            &[],
            b"",
        )
        .await;
        assert_eq!(res.status, 200, "{}", res.text());
        assert_eq!(res.json()["removed"], 0, "prefix {prefix:?} is literal");
    }
    assert_eq!(
        get(&format!("{}/catalog", gw.url)).await.header("x-cache"),
        Some("HIT")
    );
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// An upstream that answers with the caller's Authorization in the body,
/// under the Cache-Control (and other headers) the path names.
async fn per_user_upstream() -> String {
    async fn answer(
        axum::extract::Path(case): axum::extract::Path<String>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        // Who the credentials belong to (the body carries a name, not the
        // credential, which the PII layer would mask).
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let who = ["alice", "bob", "Y2Fyb2w"]
            .into_iter()
            .find(|n| auth.contains(n))
            .unwrap_or("nobody");
        let body = format!("{{\"for\":\"{who}\"}}");
        let ct = ("content-type", "application/json");
        match case.as_str() {
            "max-age" => ([ct, ("cache-control", "max-age=60")], body).into_response(),
            "private" => ([ct, ("cache-control", "private, max-age=60")], body).into_response(),
            "no-store" => ([ct, ("cache-control", "no-store")], body).into_response(),
            "no-cache-control" => (
                [ct, ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                body,
            )
                .into_response(),
            "vary" => (
                [
                    ct,
                    ("cache-control", "public, max-age=60"),
                    ("vary", "Authorization"),
                ],
                body,
            )
                .into_response(),
            "cookie" => (
                [
                    ct,
                    ("cache-control", "max-age=60"),
                    ("set-cookie", "session=abc"),
                ],
                body,
            )
                .into_response(),
            _ => (axum::http::StatusCode::NOT_FOUND, "no such case").into_response(),
        }
    }
    let app = Router::new().route("/u/{case}", route(answer));
    serve(app).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_never_serves_one_users_answer_to_another() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let upstream = per_user_upstream().await;
    let url = redis.url();
    let env = [("REDIS_URL", url.as_str())];
    let args = ["--upstream", upstream.as_str()];
    // Two replicas sharing L2, so a leak through Redis would show too.
    let one = Gateway::start_with_config(None, &args, &env);
    let two = Gateway::start_with_config(None, &args, &env);
    let cases = [
        "max-age",
        "private",
        "no-store",
        "no-cache-control",
        "vary",
        "cookie",
    ];
    let users = [
        "Bearer alice-token",
        "Bearer bob-token",
        "Basic Y2Fyb2w6cHc=",
    ];
    let mut checked = 0;
    for case in cases {
        for round in 0..2 {
            for (i, user) in users.iter().enumerate() {
                let gw = if (i + round) % 2 == 0 { &one } else { &two };
                let res = get_with(
                    &format!("{}/u/{case}", gw.url),
                    &[("authorization", user), ("host", "api.example.test")],
                )
                .await;
                assert_eq!(res.status, 200);
                let expected = ["alice", "bob", "Y2Fyb2w"][i];
                assert_eq!(
                    res.json()["for"],
                    expected,
                    "case {case}: {user} got someone else's answer (x-cache {:?})",
                    res.header("x-cache")
                );
                checked += 1;
            }
        }
    }
    // And an anonymous request never gets an authorized answer.
    for case in cases {
        let res = get_with(
            &format!("{}/u/{case}", one.url),
            &[("host", "api.example.test")],
        )
        .await;
        assert_eq!(res.json()["for"], "nobody", "case {case}");
    }
    figure(
        "security_cache",
        "authorized requests across 2 replicas sharing Redis",
        format!(
            "{checked} requests over {} Cache-Control cases, 0 served to another user",
            cases.len()
        ),
    );
}

const PII: &[&str] = &[
    "asha.rao@example.com",
    "9876543210",
    "4111111111111111",
    "ABCDE1234F",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_never_reaches_logs_errors_or_dead_letters() {
    use axum::response::IntoResponse;
    // An upstream that fails with PII in its error body and headers.
    let app = Router::new().fallback(|headers: HeaderMap, body: axum::body::Bytes| async move {
        let echo = String::from_utf8_lossy(&body).into_owned();
        (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [
                ("x-debug-user", "asha.rao@example.com"),
                ("content-type", "text/plain"),
            ],
            format!(
                "failed for asha.rao@example.com (card 4111111111111111) {echo} {:?}",
                headers.get("x-email")
            ),
        )
            .into_response()
    });
    let (upstream, _task) = serve(app).await;
    let gw = Gateway::start_with_config(
        Some("[circuit_breaker]\nfailure_threshold = 0\n[retry]\nmax_attempts = 1\n"),
        &["--upstream", &upstream],
        &[("RUST_LOG", "debug")],
    );
    let jwt = PII[4];
    let auth = format!("Bearer {jwt}");
    let hostile_paths = [
        "/users/asha.rao@example.com/9876543210".to_owned(),
        "/pay?card=4111111111111111&pan=ABCDE1234F".to_owned(),
        format!("/t/{jwt}"),
        // A bad selector carrying PII: the 400's detail must not echo it raw.
        "/catalog?fields=asha.rao@example.com((".to_owned(),
        "/catalog?fields=9876543210)".to_owned(),
    ];
    for path in &hostile_paths {
        for method in [http::Method::GET, http::Method::POST] {
            let res = send(
                method,
                &format!("{}{path}", gw.url),
                &[
                    ("x-email", "asha.rao@example.com"),
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                br#"{"email":"asha.rao@example.com","phone":"9876543210","card":"4111111111111111"}"#,
            )
            .await;
            assert!(res.status.as_u16() >= 400, "{path}: {}", res.status);
            // Bodies (the gateway's own errors and the upstream's) are
            // masked; response headers are not in the masker's scope (the
            // upstream's x-debug-user header is only checked in the logs).
            let shown = res.text();
            for raw in PII {
                assert!(!shown.contains(raw), "{path}: {raw} in the answer: {shown}");
            }
        }
    }
    // Dead letters are written off the request path: wait for all 6 5xx.
    let admin = gw.admin.clone();
    time_until(Duration::from_secs(10), || {
        let admin = admin.clone();
        async move { get(&format!("{admin}/dlq/stats")).await.json()["total"].as_u64() >= Some(6) }
    })
    .await
    .expect("dead letters recorded");
    let dlq = get(&format!("{}/dlq?count=100", gw.admin)).await.text();
    let logs = gw.logs();
    assert!(logs.contains("DEBUG"), "debug logging is on: {logs}");
    for raw in PII {
        assert!(!dlq.contains(raw), "{raw} in the dead-letter queue: {dlq}");
        let line = logs.lines().find(|l| l.contains(raw));
        assert!(line.is_none(), "{raw} in the logs: {line:?}");
    }
    figure(
        "security_pii",
        "PII values x places checked (path, query, header, body, upstream error; logs at debug, answers, DLQ)",
        format!(
            "{} values x {} requests, 0 found raw",
            PII.len(),
            hostile_paths.len() * 2
        ),
    );
}

#[tokio::test]
async fn the_admin_listener_is_on_loopback_by_default_and_behind_its_token() {
    // The default address, as the binary documents it.
    let help = std::process::Command::new(support::gateway_binary())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let admin_line = help
        .lines()
        .skip_while(|l| !l.contains("--admin <"))
        .take(3)
        .collect::<String>();
    assert!(
        admin_line.contains("[default: 127.0.0.1:"),
        "admin defaults to loopback: {admin_line}"
    );
    // And started without --admin, it binds there (when that port is free here).
    if std::net::TcpListener::bind("127.0.0.1:9090").is_ok() {
        let mut child = std::process::Command::new(support::gateway_binary())
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("REDIS_URL")
            .env_remove("ADMIN_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let line = out
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("admin on "))
            .expect("admin line");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(line, "admin on http://127.0.0.1:9090");
    }

    let gw = Gateway::start(&["--admin-token", "s3cret-t0ken"], &[]);
    let routes: &[(http::Method, &str)] = &[
        (http::Method::GET, "/metrics"),
        (http::Method::GET, "/breakers"),
        (http::Method::POST, "/breakers/upstream/force-open"),
        (http::Method::GET, "/cache/stats"),
        (http::Method::POST, "/cache/purge?prefix="),
        (http::Method::GET, "/ratelimit/ip/127.0.0.1"),
        (http::Method::GET, "/dlq"),
        (http::Method::DELETE, "/dlq"),
    ];
    let wrong = [
        None,
        Some("Bearer s3cret-t0ke"),
        Some("Bearer s3cret-t0ken0"),
        Some("Bearer  s3cret-t0ken"),
        Some("Basic czNjcmV0LXQwa2Vu"),
        Some("s3cret-t0ken"),
        Some("Bearer "),
    ];
    for (method, path) in routes {
        for auth in wrong {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let res = send(
                method.clone(),
                &format!("{}{path}", gw.admin),
                &headers,
                b"",
            )
            .await;
            assert_eq!(res.status, 401, "{method} {path} with {auth:?}");
        }
        let res = send(
            method.clone(),
            &format!("{}{path}?token=s3cret-t0ken", gw.admin).replace("??", "?"),
            &[],
            b"",
        )
        .await;
        assert_eq!(
            res.status, 401,
            "a token in the query string is not accepted"
        );
    }
    // Nothing changed: the breaker was never forced open.
    let ok = get_with(
        &format!("{}/breakers", gw.admin),
        &[("authorization", "Bearer s3cret-t0ken")],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()[0]["state"], "closed");
    figure(
        "security_admin",
        "admin routes x wrong credentials",
        format!("{} x {}, all 401", routes.len(), wrong.len() + 1),
    );
}
