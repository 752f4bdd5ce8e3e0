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
    let mut polls = 0;
    loop {
        let hits: u64 = get(&format!("{upstream}/hits"))
            .await
            .text()
            .parse()
            .unwrap();
        if hits > hits_before {
            break;
        }
        polls += 1;
        assert!(polls < 10_000, "slow request never reached the upstream");
        tokio::task::yield_now().await;
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

/// A WebSocket handshake is refused with a clear answer before any layer,
/// never forwarded without its upgrade headers.
#[tokio::test]
async fn upgrade_requests_are_refused_clearly_not_broken() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[], &[]);
    let before = gw.upstream_hits().await;
    let mut s = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let read = async {
        while !String::from_utf8_lossy(&got).contains("websocket") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("an answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 501"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("websocket"), "{text}");
    assert_eq!(
        gw.upstream_hits().await,
        before,
        "nothing reached the upstream"
    );
}
