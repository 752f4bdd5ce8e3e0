//! The gateway example, run as a real process against its demo upstream:
//! every check goes through HTTP on loopback.

mod support;

use serde_json::json;
use support::{Gateway, get, post_json};

#[tokio::test]
async fn proxies_to_the_demo_upstream_and_serves_metrics() {
    let gw = Gateway::start(&[], &[]);
    let res = get(&format!("{}/health", gw.url)).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "ok");
    let res = get(&format!("{}/no-such-route", gw.url)).await;
    assert_eq!(res.status, 404);

    let metrics = get(&format!("{}/metrics", gw.admin)).await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    assert!(
        text.contains("palisade_http_request_duration_seconds_count{status=\"2xx\"} 1"),
        "{text}"
    );
    assert!(text.contains("palisade_http_request_duration_seconds_count{status=\"4xx\"} 1"));
}

#[tokio::test]
async fn batch_runs_sub_requests_and_reports_statistics() {
    let gw = Gateway::start(&[], &[]);
    let batch = json!({
        "requests": [
            { "request_id": "a", "path": "/health" },
            { "request_id": "b", "path": "/missing" },
            { "request_id": "c", "method": "POST", "path": "/echo", "body": { "x": 1 } },
        ]
    });
    let res = post_json(&format!("{}/_batch", gw.url), &batch).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let body = res.json();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["request_id"], "a");
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["body"], "ok");
    assert_eq!(results[1]["status"], 404);
    assert!(results[1]["error"].is_string());
    assert_eq!(results[2]["body"], json!({ "x": 1 }));
    assert!(
        results
            .iter()
            .all(|r| r["time_ms"].as_f64().unwrap() >= 0.0)
    );
    let stats = &body["stats"];
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["succeeded"], 2);
    assert_eq!(stats["failed"], 1);

    // Sequential with stop_on_error skips what follows a failure.
    let batch = json!({
        "mode": "sequential", "stop_on_error": true,
        "requests": [
            { "request_id": "1", "path": "/missing" },
            { "request_id": "2", "path": "/health" },
        ]
    });
    let body = post_json(&format!("{}/_batch", gw.url), &batch)
        .await
        .json();
    assert_eq!(body["results"][1]["status"], serde_json::Value::Null);
    assert_eq!(body["stats"]["skipped"], 1);
}

#[tokio::test]
async fn batch_rejects_bad_input_with_clear_400s() {
    let gw = Gateway::start(&[], &[]);
    let url = format!("{}/_batch", gw.url);
    let too_many: Vec<_> = (0..21)
        .map(|i| json!({ "request_id": i.to_string(), "path": "/health" }))
        .collect();
    let res = post_json(&url, &json!({ "requests": too_many })).await;
    assert_eq!(res.status, 400);
    assert!(
        res.json()["detail"]
            .as_str()
            .unwrap()
            .contains("limit of 20")
    );

    let res = support::send(http::Method::POST, &url, &[], b"{not json").await;
    assert_eq!(res.status, 400);
    assert!(
        res.json()["detail"]
            .as_str()
            .unwrap()
            .contains("invalid batch JSON")
    );

    let res = post_json(
        &url,
        &json!({ "requests": [{ "request_id": "x", "path": "relative" }] }),
    )
    .await;
    assert_eq!(res.status, 400);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests() {
    let mut gw = Gateway::start(&[], &[]);
    let upstream = gw.upstream.clone().unwrap();
    let hits_before: u64 = get(&format!("{upstream}/hits"))
        .await
        .text()
        .parse()
        .unwrap();
    let slow_url = format!("{}/slow?ms=300", gw.url);
    let slow = tokio::spawn(async move { get(&slow_url).await });
    // Wait (by polling the upstream's own counter) until the slow request is in flight.
    // Another process: no event to wait on, so poll with a time bound (not
    // a count of polls, which says nothing about how long it waited).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let hits: u64 = get(&format!("{upstream}/hits"))
            .await
            .text()
            .parse()
            .unwrap();
        if hits > hits_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slow request never reached the upstream"
        );
    }
    gw.terminate();
    let res = slow.await.unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["slept_ms"], 300);
    let status = tokio::task::spawn_blocking(move || gw.child.wait().map(|s| s.success()))
        .await
        .unwrap()
        .unwrap();
    assert!(status, "gateway exited with an error after SIGTERM");
}

/// A WebSocket goes through the gateway: the handshake is forwarded with
/// its upgrade headers, and on `101` the two connections are joined. The
/// client is tokio-tungstenite, the upstream axum's WebSocket support.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_pass_through() {
    use axum::extract::ws::{Message, WebSocketUpgrade};
    use futures_util::{SinkExt, StreamExt};
    let app = axum::Router::new().route(
        "/chat",
        axum::routing::get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(msg)) = socket.recv().await {
                    if let Message::Text(text) = msg {
                        let reply = format!("echo: {}", text.as_str());
                        if socket.send(Message::Text(reply.into())).await.is_err() {
                            return;
                        }
                    }
                }
            })
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let gw = Gateway::start(&["--upstream", &upstream], &[]);
    let url = format!("{}/chat", gw.url.replace("http://", "ws://"));
    let (mut ws, res) = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .expect("the handshake is answered")
    .expect("the handshake succeeds through the gateway");
    assert_eq!(res.status(), 101);
    for text in ["hello", "again"] {
        ws.send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .unwrap();
        let reply = tokio::time::timeout(std::time::Duration::from_secs(20), ws.next())
            .await
            .expect("a reply")
            .expect("an open socket")
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {text}"));
    }
    ws.close(None).await.unwrap();
}

/// Clients that trickle their request bodies keep the upstream (which
/// answers once it has the whole body) waiting: that time is theirs, not
/// the upstream's. With a 1-second response limit and a breaker that opens
/// on one failure, five POSTs whose bodies take 3 s each are answered
/// `200` with their bodies, and the breaker stays closed for everyone.
/// (Before, each got `504` after 1 s and the circuit opened.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_are_not_upstream_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start_with_config(
        Some(
            "[upstream]\nresponse_timeout = \"1s\"\n\
             [circuit_breaker]\nfailure_threshold = 1\n\
             [retry]\nenabled = false\n",
        ),
        &[],
        &[],
    );
    let to = gw.url.trim_start_matches("http://").to_owned();
    let mut clients = Vec::new();
    for i in 0..5 {
        let to = to.clone();
        clients.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&to).await.unwrap();
            s.write_all(
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                  Content-Length: 6\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            for part in [&b"sl"[..], b"ow", b"ly"] {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                s.write_all(part).await.unwrap();
            }
            let mut answer = Vec::new();
            tokio::time::timeout(
                std::time::Duration::from_secs(20),
                s.read_to_end(&mut answer),
            )
            .await
            .unwrap_or_else(|_| panic!("client {i}: no answer within 20 s"))
            .unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    for (i, c) in clients.into_iter().enumerate() {
        let answer = c.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "client {i}: {answer}");
        assert!(answer.ends_with("slowly"), "client {i}: {answer}");
    }
    let health = get(&format!("{}/health", gw.url)).await;
    assert_eq!(health.status, 200, "the breaker stayed closed");
}

/// Tiered limits in the gateway: the plan comes from `rate_limit.tiers.header`,
/// set by the authenticating proxy in front. From a trusted proxy (here the
/// test, on 127.0.0.1) each plan gets its quota; on a gateway that does not
/// trust the peer, a client naming its own plan gets the default tier's.
#[tokio::test]
async fn tiered_limits_take_the_plan_from_a_trusted_proxys_header() {
    let config = |trusted: &str| {
        format!(
            r#"
[rate_limit]
trusted_proxies = ["{trusted}"]

[[rate_limit.limits]]
name = "plan"
key = "header"
header = "x-user"
tiered = true

[rate_limit.tiers]
header = "x-plan"
period = "1h"

[rate_limit.tiers.limits]
anonymous = 1
free = 2
premium = 4
"#
        )
    };
    async fn admitted(gw: &Gateway, user: &str, plan: Option<&str>) -> usize {
        let mut n = 0;
        for _ in 0..6 {
            let mut headers = vec![("x-user", user)];
            if let Some(p) = plan {
                headers.push(("x-plan", p));
            }
            let res = support::send(
                http::Method::GET,
                &format!("{}/users/7", gw.url),
                &headers,
                b"",
            )
            .await;
            match res.status.as_u16() {
                200 => n += 1,
                429 => assert!(res.header("retry-after").is_some(), "{res:?}"),
                other => panic!("{other}: {res:?}"),
            }
        }
        n
    }

    let behind_proxy = Gateway::start_with_config(Some(&config("127.0.0.1/32")), &[], &[]);
    assert_eq!(admitted(&behind_proxy, "ann", Some("premium")).await, 4);
    assert_eq!(admitted(&behind_proxy, "bob", Some("free")).await, 2);
    assert_eq!(admitted(&behind_proxy, "cy", None).await, 1);
    assert_eq!(admitted(&behind_proxy, "di", Some("no-such-plan")).await, 1);

    let exposed = Gateway::start_with_config(Some(&config("10.0.0.0/8")), &[], &[]);
    assert_eq!(
        admitted(&exposed, "eve", Some("premium")).await,
        1,
        "a client cannot name its own plan"
    );
}
