//! The gateway's own listener against clients that misbehave: half request
//! heads that never end, and more connections than it serves at once.

mod support;

use std::time::Duration;
use support::{Gateway, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (bounded); returns what it
/// sent.
async fn until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_request_heads_are_cut_off_after_the_header_read_timeout() {
    let gw = Gateway::start_with_config(Some("[server]\nheader_read_timeout = \"1s\"\n"), &[], &[]);
    let to = addr(&gw.url);
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(&to).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Every one of them is closed by the gateway (it may say 408 first);
    // without the limit they would all still be open when the bound ends.
    for (i, s) in slow.iter_mut().enumerate() {
        let got = until_closed(s, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("connection {i} still open 20 s after a half head"));
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 408"),
            "connection {i}: {text}"
        );
    }
    // Well-behaved clients are served all along.
    assert_eq!(get(&format!("{}/health", gw.url)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_get_503_at_once_and_are_not_queued() {
    let gw = Gateway::start_with_config(Some("[server]\nmax_connections = 4\n"), &[], &[]);
    let to = addr(&gw.url);
    // Four connections held open: the limit.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(&to).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    // The fifth is told at once and closed.
    let mut extra = TcpStream::connect(&to).await.unwrap();
    extra
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut extra, Duration::from_secs(20))
        .await
        .expect("the connection over the limit is closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    // Once the held connections go, new ones are served again (as soon as
    // the gateway has seen them close).
    drop(held);
    // Each try is a whole round trip on a new connection (no sleep): bounded
    // by the number of tries.
    let mut status = String::new();
    for _ in 0..2_000 {
        status = status_line(&to, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        if status.starts_with("HTTP/1.1 200") {
            break;
        }
    }
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// Sends `raw` on a new connection; the status line of the answer.
async fn status_line(to: &str, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    // A refusal may close the connection before everything is written.
    let _ = s.write_all(raw).await;
    let got = until_closed_or_head(&mut s).await;
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn until_closed_or_head(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    got
}

/// Smuggling attempts and oversized heads are refused with the status that
/// says why, and never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_and_oversized_heads_are_refused_before_the_upstream() {
    let gw = Gateway::start(&[], &[]);
    let to = addr(&gw.url);
    let before = gw.upstream_hits().await;
    let long_target = format!(
        "GET /health?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(10_000)
    );
    let big_head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let cases: [(&str, &[u8], &str); 5] = [
        (
            "Transfer-Encoding other than chunked",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (
            "two different Content-Lengths",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
            "HTTP/1.1 400",
        ),
        (
            "obs-fold",
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        ("request target over 8 KiB", long_target.as_bytes(), "HTTP/1.1 414"),
        ("head over 64 KiB", big_head.as_bytes(), "HTTP/1.1 431"),
    ];
    for (name, raw, want) in cases {
        let got = status_line(&to, raw).await;
        assert!(got.starts_with(want), "{name}: got {got:?}, want {want}");
    }
    assert_eq!(
        gw.upstream_hits().await,
        before,
        "no refused request reached the upstream"
    );
    // A plain request is still served.
    assert_eq!(get(&format!("{}/health", gw.url)).await.status, 200);
}

/// A client that sends part of its body and then nothing is answered 408
/// after `server.body_idle_timeout`, and the connection is not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_gets_408() {
    let gw = Gateway::start_with_config(Some("[server]\nbody_idle_timeout = \"1s\"\n"), &[], &[]);
    let to = addr(&gw.url);
    let mut s = TcpStream::connect(&to).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\nonly ten..")
        .await
        .unwrap();
    let got = until_closed_or_head(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    // Whole bodies are served as before.
    let res = support::send(
        http::Method::POST,
        &format!("{}/echo", gw.url),
        &[("content-type", "text/plain")],
        b"hello",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
}
