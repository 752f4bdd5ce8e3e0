//! gRPC through the gateway binary, between peers written with grpcio (not
//! tonic, not this project): unary calls, server streaming with trailers,
//! a status sent in the trailers after messages (which the breaker counts),
//! and the breaker answering with a gRPC status.
//!
//! Needs Python with grpcio: `.ci/run` makes `target/pyvenv`; elsewhere set
//! `PALISADE_PYTHON` or the test skips (under CI it fails).

mod support;

use std::{path::PathBuf, process::Stdio, time::Duration};
use support::Gateway;
use tokio::io::{AsyncBufReadExt, BufReader};

fn python() -> Option<PathBuf> {
    support::python_with("grpc", "grpcio")
}

fn peer_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/peer.py")
}

/// The grpcio server, and its port.
async fn grpc_server(python: &PathBuf) -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new(python)
        .arg(peer_script())
        .arg("serve")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the grpcio server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the grpcio server prints its port within 30 s")
        .unwrap()
        .expect("a port line");
    let port = line.trim_start_matches("port ").trim().parse().unwrap();
    (child, port)
}

/// Runs the grpcio client against `target`; its JSON report.
async fn grpc_calls(python: &PathBuf, target: &str) -> serde_json::Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg(peer_script())
            .args(["call", target])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the grpcio client finishes within 60 s")
    .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_pass_through_the_gateway_with_their_trailers() {
    let Some(python) = python() else { return };
    let (_server, port) = grpc_server(&python).await;
    let upstream = format!("http://127.0.0.1:{port}");
    let gw = Gateway::start(&["--upstream", &upstream], &[]);
    let target = gw.url.trim_start_matches("http://").to_owned();
    let r = grpc_calls(&python, &target).await;
    assert_eq!(r["say"]["ok"], "echo:hi", "{r}");
    assert_eq!(
        r["stream"]["ok"]["parts"],
        serde_json::json!(["part-0", "part-1", "part-2"]),
        "{r}"
    );
    assert_eq!(r["stream"]["ok"]["x-parts"], "3", "trailing metadata: {r}");
    // A status sent in the trailers after two messages reaches the client.
    assert_eq!(
        r["late"]["ok"]["parts"],
        serde_json::json!(["first", "second"]),
        "{r}"
    );
    assert_eq!(r["late"]["ok"]["code"], "UNAVAILABLE", "{r}");
    assert_eq!(r["late"]["ok"]["details"], "broke mid-stream", "{r}");
    assert_eq!(r["fail"]["code"], "UNAVAILABLE", "{r}");
    assert_eq!(r["fail"]["details"], "upstream down", "{r}");
    assert_eq!(r["after_fail"]["ok"], "echo:again", "{r}");
    // Retry (default: 3 attempts, UNAVAILABLE retried) judges a call by the
    // status in its head: `Fail`'s trailers-only UNAVAILABLE is tried three
    // times; `Late`, whose response head (and messages) had reached the
    // client before its status, is committed, as gRPC's own retry (gRFC A6)
    // has it, and tried once.
    let calls = &r["calls"]["ok"];
    assert_eq!(calls["Fail"], 3, "{r}");
    assert_eq!(calls["Late"], 1, "{r}");
    assert_eq!(calls["Say"], 2, "{r}");
    assert_eq!(calls["Stream"], 1, "{r}");
    // The latency histogram classes each call by its gRPC status, wherever
    // it came: `Fail` in the head (trailers-only), `Late` in the trailers
    // after two messages; `Say` twice, `Stream` ended OK and `Count`.
    let metrics = support::get(&format!("{}/metrics", gw.admin)).await.text();
    let count = |class: &str| -> f64 {
        let name = format!("palisade_http_request_duration_seconds_count{{status=\"{class}\"}}");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    assert_eq!((count("2xx"), count("5xx")), (4.0, 2.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_in_the_trailers_opens_the_breaker_which_answers_grpc_clients() {
    let Some(python) = python() else { return };
    let (_server, port) = grpc_server(&python).await;
    let upstream = format!("http://127.0.0.1:{port}");
    let gw = Gateway::start_with_config(
        Some("[circuit_breaker]\nfailure_threshold = 1\n"),
        &["--upstream", &upstream],
        &[],
    );
    let target = gw.url.trim_start_matches("http://").to_owned();
    let r = grpc_calls(&python, &target).await;
    assert_eq!(r["say"]["ok"], "echo:hi", "{r}");
    // A stream ending OK in its trailers is a success …
    assert_eq!(r["stream"]["ok"]["x-parts"], "3", "{r}");
    // … the UNAVAILABLE that `Late` sends in its trailers, after two
    // messages, is a failure, judged when its body ends: the circuit opens,
    // and the next calls are answered by the breaker, as a gRPC status.
    assert_eq!(r["late"]["ok"]["details"], "broke mid-stream", "{r}");
    for call in ["fail", "after_fail"] {
        assert_eq!(r[call]["code"], "UNAVAILABLE", "{call}: {r}");
        let details = r[call]["details"].as_str().unwrap_or_default();
        assert!(details.contains("circuit"), "{call}: {r}");
    }
}
