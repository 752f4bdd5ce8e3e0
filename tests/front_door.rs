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
    // Counted, and the held ones are the connections open.
    assert!(
        metric(
            &gw,
            "palisade_server_refused_total{limit=\"max_connections\",listener=\"client\"}"
        )
        .await
            >= 1.0
    );
    assert_eq!(
        metric(&gw, "palisade_server_connections_open{listener=\"client\"}").await,
        4.0
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
    let cases: [(&str, &[u8], &str); 7] = [
        // Heads that cannot become valid are handed to hyper at once, not
        // held until `header_read_timeout` (30 s, past the 20 s bound).
        ("binary garbage", b"\x00\x01\x02 junk", "HTTP/1.1 400"),
        (
            "an unfinished head with a bad header name",
            b"GET /health HTTP/1.1\r\nBad Name: x\r\n",
            "HTTP/1.1 400",
        ),
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

/// Heads that servers read in different ways (the stuff of request
/// smuggling) are answered 400 with a problem naming the shape, the
/// connection is closed, and neither they nor the request smuggled behind
/// them reach the upstream. hyper alone would read each of them (dropping
/// one `Content-Length`, or reading bare LFs as line ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_with_400_and_never_forwarded() {
    let gw = Gateway::start(&[], &[]);
    let to = addr(&gw.url);
    let before = gw.upstream_hits().await;
    let smuggled = "GET /users/7 HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: [(&str, String, &str); 8] = [
        (
            "a whole head of garbage (a TLS hello to a plain port)",
            format!("\x16\x03\x01\x00\u{a5} garbage\r\n\r\n{smuggled}"),
            "a malformed request head",
        ),
        (
            "Content-Length, then Transfer-Encoding",
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
            "both `Transfer-Encoding` and `Content-Length`",
        ),
        (
            "Transfer-Encoding, then Content-Length",
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "both `Transfer-Encoding` and `Content-Length`",
        ),
        (
            "two equal Content-Lengths",
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi{smuggled}"
            ),
            "more than one `Content-Length`",
        ),
        (
            "one Content-Length with two values",
            format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\nhi{smuggled}"),
            "more than one `Content-Length`",
        ),
        (
            "bare LF line ends",
            format!("GET /health HTTP/1.1\nHost: x\n\n{smuggled}"),
            "LF alone",
        ),
        (
            "one bare LF among CRLFs",
            format!("GET /health HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n{smuggled}"),
            "LF alone",
        ),
        (
            "obs-fold",
            format!("GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n{smuggled}"),
            "obs-fold",
        ),
    ];
    for (name, raw, detail) in cases {
        let mut s = TcpStream::connect(&to).await.unwrap();
        let _ = s.write_all(raw.as_bytes()).await;
        let all = until_closed(&mut s, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{name}: the connection stays open"));
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 400"), "{name}: {text}");
        assert!(text.contains("application/problem+json"), "{name}: {text}");
        assert!(text.contains(detail), "{name}: {text}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{name}: the smuggled request is never answered: {text}"
        );
    }
    assert_eq!(
        gw.upstream_hits().await,
        before,
        "neither a refused request nor one behind it reached the upstream"
    );
    assert_eq!(
        metric(
            &gw,
            "palisade_server_refused_total{limit=\"strict_http1\",listener=\"client\"}"
        )
        .await,
        8.0
    );
    // A plain request is still served.
    assert_eq!(get(&format!("{}/health", gw.url)).await.status, 200);
}

/// The strict reading keeps its place in the stream: requests pipelined on
/// one connection with bodies of every framing (a length, chunks with an
/// extension and trailers, none), their heads and bodies split across many
/// small writes, are each answered, in order, with their own body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_of_every_framing_are_all_served() {
    let gw = Gateway::start(&[], &[]);
    let mut s = TcpStream::connect(addr(&gw.url)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let raw: &[u8] = b"\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfirst\
        POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n\
        3;ext=1\r\nsec\r\n3\r\nond\r\n0\r\nX-Trailer: t\r\n\r\n\
        GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
        POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthird";
    // Pieces of 7 bytes: heads, chunk lines and bodies all arrive cut.
    for piece in raw.chunks(7) {
        s.write_all(piece).await.unwrap();
        // A traffic shape on a real socket (another process): each piece
        // its own segment.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all = until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("four answers, then the close");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 4, "{text}");
    let first = text.find("\r\n\r\nfirst").expect(&text);
    let second = text.find("\r\n\r\nsecond").expect(&text);
    let third = text.find("\r\n\r\nthird").expect(&text);
    assert!(first < second && second < third, "{text}");
}

/// With `server.strict_http1 = false`, bare-LF line ends are read as line
/// ends (RFC 9112 allows it) and never forwarded as they came: the upstream
/// gets the gateway's own CRLF framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_strict_http1_bare_lf_heads_are_reframed_with_crlf() {
    let (upstream, mut seen) = recording_upstream().await;
    let gw = Gateway::start_with_config(
        Some(
            "[server]\nstrict_http1 = false\n[upstream]\nresponse_timeout = \"1s\"\n[retry]\nmax_attempts = 1\n",
        ),
        &["--upstream", &upstream],
        &[],
    );
    // The recording upstream never answers: the gateway gives up after 1 s
    // (504) and closes the upstream connection, which hands over the bytes.
    let got = status_line(
        &addr(&gw.url),
        b"GET /lf HTTP/1.1\nHost: x\nX-Probe: 1\nConnection: close\n\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 504"), "{got}");
    let raw = tokio::time::timeout(Duration::from_secs(20), seen.recv())
        .await
        .expect("the upstream connection is closed by the gateway")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("GET /lf HTTP/1.1\r\n"), "{text}");
    assert!(text.contains("x-probe: 1\r\n"), "{text}");
    let bare = raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'));
    assert!(!bare, "a bare LF reached the upstream: {text:?}");
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
    assert!(
        metric(
            &gw,
            "palisade_server_timeouts_total{listener=\"client\",timeout=\"body_idle_timeout\"}"
        )
        .await
            >= 1.0
    );
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

fn python_with_h2() -> Option<std::path::PathBuf> {
    support::python_with("h2, hyperframe, hpack", "the h2 package")
}

/// Runs `tests/h2/attack.py MODE HOST PORT ARGS…` (bounded); its JSON report.
async fn h2_peer(
    python: &std::path::Path,
    mode: &str,
    to: &str,
    args: &[&str],
) -> serde_json::Value {
    let (host, port) = to.rsplit_once(':').unwrap();
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/h2/attack.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(script)
            .args([mode, host, port])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("attack.py {mode} finishes within 120 s"))
    .unwrap();
    assert!(
        out.status.success(),
        "attack.py {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// One HTTP/2 GET (prior knowledge) with hyper's client, on its own
/// connection: the status.
async fn h2_get(url: &str) -> u16 {
    use http_body_util::{BodyExt, Empty};
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .pool_max_idle_per_host(0)
            .build_http();
    let req = http::Request::get(url).body(Empty::new()).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("answered within 20 s")
        .expect("HTTP/2 request");
    let status = res.status().as_u16();
    let _ = res.into_body().collect().await;
    status
}

/// The value of the counter `name{labels}` in the admin `/metrics`.
async fn metric(gw: &Gateway, name_and_labels: &str) -> f64 {
    let text = get(&format!("{}/metrics", gw.admin)).await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} not in /metrics:\n{text}"))
}

/// No rate limit, so every request the attacker does not cancel reaches the
/// upstream (the work a rapid reset aims to make the server do).
const NO_RATE_LIMIT: &str = "[rate_limit]\nmode = \"disabled\"\n";

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, in
/// bursts, get the attacking connection a GOAWAY (h2's bound on streams
/// reset before they were accepted); streams reset one by one after the
/// gateway started on them get it closed (the gateway's bound on cancelled
/// requests). Other clients are served during and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_and_others_are_served() {
    let Some(python) = python_with_h2() else {
        return;
    };
    let gw = Gateway::start_with_config(Some(NO_RATE_LIMIT), &[], &[]);
    let to = addr(&gw.url);
    let health = format!("{}/health", gw.url);

    // A normal HTTP/2 client keeps asking while the attack runs.
    let attack = h2_peer(&python, "rapid-reset", &to, &["20000"]);
    tokio::pin!(attack);
    let mut served_during = 0;
    let report = loop {
        tokio::select! {
            report = &mut attack => break report,
            status = h2_get(&health) => {
                assert_eq!(status, 200, "a normal client during the attack");
                served_during += 1;
            }
        }
    };
    println!(
        "FIGURE rapid reset (bursts of 100): {report}; {served_during} normal HTTP/2 requests served meanwhile"
    );
    let how = report["how"].as_str().unwrap();
    assert!(how == "goaway" || how == "closed", "{report}");
    let sent = report["streams_sent"].as_u64().unwrap();
    assert!(sent <= 2_000, "stopped only after {sent} streams: {report}");
    if how == "goaway" && report.get("error_code").is_some() {
        assert_eq!(report["error_code"], 11, "ENHANCE_YOUR_CALM: {report}");
    }

    let report = h2_peer(&python, "reset-after-accept", &to, &["2000"]).await;
    println!("FIGURE rapid reset (one at a time, after the gateway started): {report}");
    assert_eq!(report["how"], "closed", "{report}");
    let sent = report["streams_sent"].as_u64().unwrap();
    assert!(
        sent <= 150,
        "closed only after {sent} cancelled requests: {report}"
    );
    assert!(
        metric(
            &gw,
            "palisade_server_refused_total{limit=\"cancelled_requests\",listener=\"client\"}"
        )
        .await
            >= 1.0
    );

    // And after.
    assert_eq!(h2_get(&health).await, 200);
    let after = h2_peer(&python, "get", &to, &["/health"]).await;
    assert_eq!(
        after["status"], 200,
        "{after}; {served_during} served during the attack"
    );
}

/// CONTINUATION flood: a header block that never ends is cut off after a
/// bounded number of frames (h2 bounds them by the header list size), not
/// read forever; other clients are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off() {
    let Some(python) = python_with_h2() else {
        return;
    };
    let gw = Gateway::start(&[], &[]);
    let to = addr(&gw.url);
    // Up to 256 MiB if nothing stops it.
    let report = h2_peer(&python, "continuation", &to, &["268435456"]).await;
    println!("FIGURE CONTINUATION flood: {report}");
    let how = report["how"].as_str().unwrap();
    assert!(how == "goaway" || how == "closed", "{report}");
    // What the sockets' buffers took before the close reached the client
    // is all that was sent (a few MiB at most on loopback).
    let sent = report["bytes_sent"].as_u64().unwrap();
    assert!(
        sent < 16 * 1024 * 1024,
        "{sent} bytes sent before the close: {report}"
    );
    assert_eq!(h2_get(&format!("{}/health", gw.url)).await, 200);
}

/// The HTTP/2 limits in `[server]` are announced in SETTINGS and enforced:
/// a header list over `max_header_list_size` is answered 431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_limits_are_announced_and_enforced() {
    let Some(python) = python_with_h2() else {
        return;
    };
    let gw = Gateway::start_with_config(
        Some("[server]\nmax_concurrent_streams = 7\nmax_header_list_size = 4096\n"),
        &[],
        &[],
    );
    let to = addr(&gw.url);
    let ok = h2_peer(&python, "get", &to, &["/health"]).await;
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["max_concurrent_streams"], 7, "{ok}");
    assert_eq!(ok["max_header_list_size"], 4096, "{ok}");
    let big = h2_peer(&python, "get", &to, &["/health", "8000"]).await;
    assert_eq!(big["status"], 431, "{big}");
}

/// An idle HTTP/1.1 keep-alive connection is the keep-alive limit's, not the
/// head limit's (hyper alone times the wait for the next head with
/// `header_read_timeout`, so an idle connection went at 1 s here); a head
/// that has begun on a kept-alive connection must end within the head limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http1_connections_are_the_keep_alive_limits_and_begun_heads_the_head_limits() {
    let gw = Gateway::start_with_config(
        Some("[server]\nheader_read_timeout = \"1s\"\nkeep_alive_timeout = \"3s\"\n"),
        &[],
        &[],
    );
    let timeouts = |which: &'static str| {
        let gw = &gw;
        async move {
            metric(
                gw,
                &format!(
                    "palisade_server_timeouts_total{{listener=\"client\",timeout=\"{which}\"}}"
                ),
            )
            .await
        }
    };
    let mut s = TcpStream::connect(addr(&gw.url)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("the idle keep-alive connection is closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(timeouts("keep_alive_timeout").await, 1.0);
    assert_eq!(timeouts("header_read_timeout").await, 0.0);

    // One answered request, then half a head: cut by the head limit.
    let mut s = TcpStream::connect(addr(&gw.url)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nX-Half: ")
        .await
        .unwrap();
    let got = until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("the half head is cut off");
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
    assert_eq!(timeouts("header_read_timeout").await, 1.0);
    assert_eq!(timeouts("keep_alive_timeout").await, 1.0);
}

/// `server.keep_alive_timeout` closes a connection with no request in
/// progress — HTTP/1.1 (closed) and HTTP/2 (GOAWAY) — and never one whose
/// request is still being answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_keep_alive_timeout() {
    let gw = Gateway::start_with_config(
        Some(
            "[server]\nheader_read_timeout = \"60s\"\nkeep_alive_timeout = \"1s\"\n\
             [upstream]\nresponse_timeout = \"20s\"\n",
        ),
        &[],
        &[],
    );
    let to = addr(&gw.url);
    // The answer takes longer than the keep-alive timeout: the request is
    // in progress all along, so the connection stays; then it is idle.
    let mut s = TcpStream::connect(&to).await.unwrap();
    s.write_all(b"GET /slow?ms=2500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("the idle HTTP/1.1 connection is closed well before the header read timeout");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("slept_ms"),
        "the slow answer came whole: {text}"
    );
    assert!(
        metric(
            &gw,
            "palisade_server_timeouts_total{listener=\"client\",timeout=\"keep_alive_timeout\"}"
        )
        .await
            >= 1.0
    );

    let Some(python) = python_with_h2() else {
        return;
    };
    let report = h2_peer(&python, "idle", &to, &["/slow?ms=2500"]).await;
    assert_eq!(report["status"], 200, "{report}");
    assert!(
        report["body"].as_str().unwrap().contains("slept_ms"),
        "{report}"
    );
    let how = report["how"].as_str().unwrap();
    assert!(how == "goaway" || how == "closed", "{report}");
}

/// A connection from `from` (a loopback address) to `to`, with one request
/// answered on it; the status line.
async fn held_connection(from: &str, to: &str) -> (TcpStream, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to.parse().unwrap()).await.unwrap();
    let _ = s
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = until_closed_or_head(&mut s).await;
    let status = String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    (s, status)
}

/// `server.max_connections_per_ip`: one address over it gets the same
/// immediate 503 as the global limit (counted in the metrics), other
/// addresses are served, the count is released when a connection ends, and
/// a trusted proxy is not limited by address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_limit_get_503() {
    let gw = Gateway::start_with_config(Some("[server]\nmax_connections_per_ip = 2\n"), &[], &[]);
    let to = addr(&gw.url);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (s, status) = held_connection("127.0.0.1", &to).await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        held.push(s);
    }
    let (_, status) = held_connection("127.0.0.1", &to).await;
    assert!(
        status.starts_with("HTTP/1.1 503"),
        "third from one address: {status}"
    );
    assert!(
        metric(
            &gw,
            "palisade_server_refused_total{limit=\"max_connections_per_ip\",listener=\"client\"}"
        )
        .await
            >= 1.0
    );
    // Another address is not affected.
    let (_, status) = held_connection("127.0.0.2", &to).await;
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "another address: {status}"
    );
    // Once one held connection ends, the address is served again (as soon
    // as the gateway has seen it close: each try is a whole round trip).
    held.pop();
    let mut status = String::new();
    for _ in 0..2_000 {
        let (s, got) = held_connection("127.0.0.1", &to).await;
        status = got;
        if status.starts_with("HTTP/1.1 200") {
            held.push(s);
            break;
        }
    }
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // Behind a trusted proxy, the proxy's address is not limited.
    let gw = Gateway::start_with_config(
        Some(
            "[server]\nmax_connections_per_ip = 2\n\
             [rate_limit]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        ),
        &[],
        &[],
    );
    let to = addr(&gw.url);
    let mut held = Vec::new();
    for i in 0..4 {
        let (s, status) = held_connection("127.0.0.1", &to).await;
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "connection {i}: {status}"
        );
        held.push(s);
    }
    let (_, status) = held_connection("127.0.0.3", &to).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// Reads a whole HTTP/1.1 answer with a `Content-Length` (bounded): head
/// and body.
async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    return;
                }
            }
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), read).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// `Expect: 100-continue`: the client is told to continue, sends its body,
/// and gets the upstream's answer; a declared body over
/// `server.max_body_bytes` is answered 413 without `100 Continue`, and
/// never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_and_declared_bodies_over_the_limit() {
    let gw = Gateway::start_with_config(Some("[server]\nmax_body_bytes = 1024\n"), &[], &[]);
    let to = addr(&gw.url);
    let before = gw.upstream_hits().await;

    let mut s = TcpStream::connect(&to).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    // Nothing of the body is sent before the server says so.
    let interim = until_closed_or_head(&mut s).await;
    let interim = String::from_utf8_lossy(&interim);
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    s.write_all(b"hello").await.unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    assert_eq!(gw.upstream_hits().await, before + 1);

    // Over the limit: 413 at once, no 100 Continue, nothing upstream.
    let mut s = TcpStream::connect(&to).await.unwrap();
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
          Content-Length: 2048\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    // Without Expect too.
    let big = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2048\r\n\r\n{}",
        "a".repeat(2048)
    );
    assert!(
        status_line(&to, big.as_bytes())
            .await
            .starts_with("HTTP/1.1 413")
    );
    assert_eq!(
        gw.upstream_hits().await,
        before + 1,
        "no 413 reached the upstream"
    );
    assert!(
        metric(
            &gw,
            "palisade_server_refused_total{limit=\"max_body_bytes\",listener=\"client\"}"
        )
        .await
            >= 2.0
    );
}

/// An upstream that records the raw bytes of each connection (until the
/// gateway closes it) and never answers.
async fn recording_upstream() -> (String, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got);
            });
        }
    });
    (url, rx)
}

/// A chunked body that grows past `server.max_body_bytes` fails the
/// request with 413, and the upstream connection is cut before the body is
/// complete: the upstream never gets an over-limit body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_growing_past_the_limit_get_413_and_are_cut() {
    let (upstream, mut seen) = recording_upstream().await;
    let gw = Gateway::start_with_config(
        Some("[server]\nmax_body_bytes = 1024\n[retry]\nmax_attempts = 1\n"),
        &["--upstream", &upstream],
        &[],
    );
    let to = addr(&gw.url);
    let mut s = TcpStream::connect(&to).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    // 4 chunks of 512 bytes: the third goes over 1024.
    for _ in 0..4 {
        let chunk = format!("200\r\n{}\r\n", "b".repeat(512));
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    let raw = tokio::time::timeout(Duration::from_secs(20), seen.recv())
        .await
        .expect("the upstream connection is closed by the gateway within 20 s")
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    let head_end = text.find("\r\n\r\n").map_or(raw.len(), |i| i + 4);
    let body = &raw[head_end..];
    assert!(
        !body.ends_with(b"0\r\n\r\n"),
        "the upstream got a complete body: {text}"
    );
    let body_bytes = body.iter().filter(|&&b| b == b'b').count();
    assert!(
        body_bytes <= 1024,
        "{body_bytes} body bytes reached the upstream"
    );
    assert!(
        metric(
            &gw,
            "palisade_server_refused_total{limit=\"max_body_bytes\",listener=\"client\"}"
        )
        .await
            >= 1.0
    );
}

/// Starts the gateway binary with `args` (no configuration, no
/// `ADMIN_TOKEN` unless given in `envs`); waits (bounded) until it prints
/// `listening on` or exits. Returns the child (if still running), the lines
/// it printed and its stderr when it exited.
async fn start_raw(
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Option<tokio::process::Child>, Vec<String>, String) {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(support::gateway_binary());
    cmd.args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("REDIS_URL")
        .env_remove("ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start gateway");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the gateway prints or exits within 60 s")
            .unwrap();
        match line {
            Some(line) => {
                let done = line.starts_with("listening on ");
                printed.push(line);
                if done {
                    return (Some(child), printed, String::new());
                }
            }
            None => {
                let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
                    .await
                    .expect("the gateway exits within 60 s")
                    .unwrap();
                assert!(!out.status.success(), "exited with success: {printed:?}");
                return (
                    None,
                    printed,
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                );
            }
        }
    }
}

/// The admin listener off loopback needs a token: without one the gateway
/// refuses to start and says which flag (or variable) to set; with one the
/// routes ask for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_off_loopback_needs_a_token() {
    let (child, printed, stderr) = start_raw(&["--admin", "0.0.0.0:0"], &[]).await;
    assert!(child.is_none(), "started without a token: {printed:?}");
    assert!(
        stderr.contains("--admin-token") && stderr.contains("ADMIN_TOKEN"),
        "{stderr}"
    );
    // An empty token is no token.
    let (child, _, stderr) = start_raw(&["--admin", "0.0.0.0:0"], &[("ADMIN_TOKEN", "")]).await;
    assert!(
        child.is_none() && stderr.contains("--admin-token"),
        "{stderr}"
    );

    let (child, printed, _) = start_raw(
        &["--admin", "0.0.0.0:0"],
        &[("ADMIN_TOKEN", "s3cret-token")],
    )
    .await;
    let _child = child.expect("starts with a token");
    let admin = printed
        .iter()
        .find_map(|l| l.strip_prefix("admin on http://0.0.0.0:"))
        .expect("admin line");
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    assert_eq!(get(&metrics).await.status, 401);
    let wrong = support::send(
        http::Method::GET,
        &metrics,
        &[("authorization", "Bearer s3cret-tokem")],
        b"",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let right = support::send(
        http::Method::GET,
        &metrics,
        &[("authorization", "Bearer s3cret-token")],
        b"",
    )
    .await;
    assert_eq!(right.status, 200);
    assert!(right.text().contains("palisade_server_connections_open"));
}

/// The admin listener is served with the same limits as the client one: a
/// half request head there is cut off after the header read timeout too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_has_the_same_limits() {
    let gw = Gateway::start_with_config(Some("[server]\nheader_read_timeout = \"1s\"\n"), &[], &[]);
    let mut s = TcpStream::connect(addr(&gw.admin)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    until_closed(&mut s, Duration::from_secs(20))
        .await
        .expect("the half head on the admin listener is cut off");
    assert!(
        metric(
            &gw,
            "palisade_server_timeouts_total{listener=\"admin\",timeout=\"header_read_timeout\"}"
        )
        .await
            >= 1.0
    );
}
