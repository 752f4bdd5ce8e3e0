//! `[[routes]]` through the gateway binary: a path prefix (the longest
//! wins) with its own response-head limit, idle-stream limit and body
//! limit; requests matching no route keep the top-level ones.

mod reliability_support;
mod support;

use axum::{Router, body::Body, extract::State, routing::any};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use reliability_support::serve;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use support::{Gateway, send};

/// The most any request here may take: the limits under test are far
/// shorter, the ones they replace far longer.
const BOUND: Duration = Duration::from_secs(20);

/// An upstream whose answers take their time, counting the requests that
/// reach it:
/// - `…/head-after-1s`: the response head after one second;
/// - `…/pause-1s`: a chunk, a one-second pause, a chunk;
/// - anything else: the size of the request body it read (none, for a
///   body cut short).
async fn slow_upstream() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .fallback(any(
            |State(hits): State<Arc<AtomicUsize>>, req: Request<Body>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let path = req.uri().path().to_owned();
                if path.ends_with("/head-after-1s") {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return http::Response::new(Body::from("late head"));
                }
                if path.ends_with("/pause-1s") {
                    let chunks = futures_util::stream::unfold(0, |n| async move {
                        match n {
                            0 => Some((Ok::<_, std::io::Error>(Bytes::from("first ")), 1)),
                            1 => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                Some((Ok(Bytes::from("second")), 2))
                            }
                            _ => None,
                        }
                    });
                    return http::Response::new(Body::from_stream(chunks));
                }
                let body = req.into_body().collect().await;
                match body {
                    Ok(b) => {
                        http::Response::new(Body::from(format!("read {}", b.to_bytes().len())))
                    }
                    // A body cut short by the gateway is never answered:
                    // what the client gets is the gateway's own answer.
                    Err(_) => std::future::pending().await,
                }
            },
        ))
        .with_state(hits.clone());
    let (url, task) = serve(app).await;
    (url, hits, task)
}

/// A GET whose whole body is read: the status and the body, or why the
/// body failed; bounded by [`BOUND`].
async fn get_all(url: &str) -> (u16, Result<Bytes, String>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    tokio::time::timeout(BOUND, async {
        let res = client.request(req).await.expect("response head");
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| e.to_string());
        (status, body)
    })
    .await
    .unwrap_or_else(|_| panic!("{url}: no complete answer within {BOUND:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_response_timeout_replaces_the_top_level_one() {
    let (upstream, _, _server) = slow_upstream().await;
    // Top level: 200 ms to the response head. `/patient/` waits 30 s,
    // `/patient/strict/` (the longer prefix) 200 ms again.
    let cfg = r#"
[upstream]
response_timeout = "200ms"

[retry]
max_attempts = 1

[[routes]]
path_prefix = "/patient/"
response_timeout = "30s"

[[routes]]
path_prefix = "/patient/strict/"
response_timeout = "200ms"
"#;
    let gw = Gateway::start_with_config(Some(cfg), &["--upstream", &upstream], &[]);
    let (status, body) = get_all(&format!("{}/patient/head-after-1s", gw.url)).await;
    assert_eq!(status, 200, "the route's 30 s: {body:?}");
    assert_eq!(body.unwrap(), "late head");
    let (status, _) = get_all(&format!("{}/elsewhere/head-after-1s", gw.url)).await;
    assert_eq!(status, 504, "no route: the top-level 200 ms");
    let (status, _) = get_all(&format!("{}/patient/strict/head-after-1s", gw.url)).await;
    assert_eq!(status, 504, "the longest prefix wins");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_can_be_stricter_than_the_top_level_timeout() {
    let (upstream, _, _server) = slow_upstream().await;
    // Top level: an hour. Without the route's own limit this request would
    // wait out the upstream's whole second and pass.
    let cfg = r#"
[upstream]
response_timeout = "1h"

[retry]
max_attempts = 1

[[routes]]
path_prefix = "/strict/"
response_timeout = "100ms"
"#;
    let gw = Gateway::start_with_config(Some(cfg), &["--upstream", &upstream], &[]);
    let (status, body) = get_all(&format!("{}/strict/head-after-1s", gw.url)).await;
    assert_eq!(status, 504, "{body:?}");
    let (status, _) = get_all(&format!("{}/loose/head-after-1s", gw.url)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_idle_timeout_replaces_the_top_level_one() {
    let (upstream, _, _server) = slow_upstream().await;
    // Top level: a stream silent for 200 ms is cut; `/stream/` streams may
    // pause 30 s, `/stream/tight/` ones 200 ms.
    let cfg = r#"
[upstream]
idle_timeout = "200ms"

[[routes]]
path_prefix = "/stream/"
idle_timeout = "30s"

[[routes]]
path_prefix = "/stream/tight/"
idle_timeout = "200ms"
"#;
    let gw = Gateway::start_with_config(Some(cfg), &["--upstream", &upstream], &[]);
    let (status, body) = get_all(&format!("{}/stream/pause-1s", gw.url)).await;
    assert_eq!(status, 200);
    assert_eq!(body.expect("a whole stream"), "first second");
    for path in ["/other/pause-1s", "/stream/tight/pause-1s"] {
        let (status, body) = get_all(&format!("{}{path}", gw.url)).await;
        assert_eq!(status, 200, "{path}: the head came at once");
        assert!(body.is_err(), "{path}: cut after its first chunk: {body:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_route_idle_timeout_cuts_a_stream_the_top_level_lets_pass() {
    let (upstream, _, _server) = slow_upstream().await;
    let cfg = r#"
[upstream]
idle_timeout = "1h"

[[routes]]
path_prefix = "/tight/"
idle_timeout = "100ms"
"#;
    let gw = Gateway::start_with_config(Some(cfg), &["--upstream", &upstream], &[]);
    let (_, body) = get_all(&format!("{}/tight/pause-1s", gw.url)).await;
    assert!(body.is_err(), "cut by the route's 100 ms: {body:?}");
    let (_, body) = get_all(&format!("{}/loose/pause-1s", gw.url)).await;
    assert_eq!(body.expect("whole"), "first second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_body_limit_refuses_before_the_upstream() {
    let (upstream, hits, _server) = slow_upstream().await;
    let cfg = r#"
[server]
max_body_bytes = 4096

[[routes]]
path_prefix = "/upload/small/"
max_body_bytes = 100
"#;
    let gw = Gateway::start_with_config(Some(cfg), &["--upstream", &upstream], &[]);
    let big = vec![b'x'; 1000];
    // Declared: 413 before anything reaches the upstream.
    let res = send(
        Method::POST,
        &format!("{}/upload/small/a", gw.url),
        &[],
        &big,
    )
    .await;
    assert_eq!(res.status, 413, "{}", res.text());
    assert!(res.text().contains("over 100 bytes"), "{}", res.text());
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the upstream saw nothing");
    // At the limit: passes.
    let res = send(
        Method::POST,
        &format!("{}/upload/small/a", gw.url),
        &[],
        &big[..100],
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "read 100");
    // Other paths: the global cap.
    let res = send(Method::POST, &format!("{}/upload/big", gw.url), &[], &big).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.text(), "read 1000");
    let res = send(
        Method::POST,
        &format!("{}/upload/big", gw.url),
        &[],
        &vec![b'x'; 5000],
    )
    .await;
    assert_eq!(res.status, 413, "server.max_body_bytes stays the cap");

    // Chunked (no length to judge by): cut when it grows past the route's
    // limit; answered 413.
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let chunks = futures_util::stream::iter(
        (0..10)
            .map(|_| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'y'; 50])))),
    );
    let req = Request::post(format!("{}/upload/small/chunked", gw.url))
        .body(StreamBody::new(chunks))
        .unwrap();
    let res = tokio::time::timeout(BOUND, client.request(req))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let status = res.status();
    let body = res.into_body().collect().await.map(|b| b.to_bytes());
    assert_eq!(status, 413, "{body:?}");
    // The same past the global cap on a path without a route.
    let chunks =
        futures_util::stream::iter((0..10).map(|_| {
            Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(vec![b'z'; 500])))
        }));
    let req = Request::post(format!("{}/upload/big", gw.url))
        .body(StreamBody::new(chunks))
        .unwrap();
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let res = tokio::time::timeout(BOUND, client.request(req))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(res.status(), 413);
}

/// Runs the binary with `config` and returns what it said on failing.
fn refused(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(support::gateway_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&path)
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{config} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_routes_stop_the_gateway_naming_the_key() {
    for (config, key) in [
        (
            "[[routes]]\nresponse_timeout = \"1s\"\n",
            "routes[0].path_prefix",
        ),
        (
            "[[routes]]\npath_prefix = \"/a/\"\n[[routes]]\npath_prefix = \"b\"\n",
            "routes[1].path_prefix",
        ),
        (
            "[[routes]]\npath_prefix = \"/a/\"\n[[routes]]\npath_prefix = \"/a/\"\n",
            "routes[1].path_prefix",
        ),
        (
            "[[routes]]\npath_prefix = \"/a/\"\nidle_timeout = \"soon\"\n",
            "routes[0].idle_timeout",
        ),
        (
            "[server]\nmax_body_bytes = 10\n[[routes]]\npath_prefix = \"/a/\"\nmax_body_bytes = 11\n",
            "routes[0].max_body_bytes",
        ),
        (
            "[[routes]]\npath_prefix = \"/a/\"\nmax_body_bytes = 0\n",
            "routes[0].max_body_bytes",
        ),
    ] {
        let err = refused(config);
        assert!(err.contains(&format!("`{key}`")), "{config}: {err}");
    }
    let err = refused("[[routes]]\npath_prefix = \"/a/\"\ntimeout = \"1s\"\n");
    assert!(
        err.contains("routes[0]") && err.contains("unknown field `timeout`"),
        "{err}"
    );
}
