//! The axum_routes, tonic, client and hyper_server examples, run as real processes: each
//! starts its servers on loopback, shows what the layers do and exits; the
//! tests check what they print.
//!
//! Run with a plain `cargo test`, which builds the examples first;
//! `cargo test --test examples` alone runs the example binaries last built
//! (`cargo build --examples` refreshes them).

mod support;

use std::{
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Runs example `name` to its end (60 s at most) and returns its output.
fn run_example(name: &str) -> String {
    // `cargo test` builds every example next to the gateway's binary.
    let bin = support::gateway_binary().with_file_name(name);
    let child = Command::new(&bin)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("example `{name}` did not exit by itself within 60 s");
    };
    let out = out.expect("wait for the example");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example `{name}` failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Asserts that `output` has lines containing each of `expected`, in this
/// order (other lines may come between).
fn assert_lines(output: &str, expected: &[&str]) {
    let mut lines = output.lines();
    for want in expected {
        assert!(
            lines.any(|line| line.contains(want)),
            "no line containing {want:?} (in order) in:\n{output}"
        );
    }
}

fn line_with<'a>(output: &'a str, fragment: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.contains(fragment))
        .unwrap_or_else(|| panic!("no line containing {fragment:?} in:\n{output}"))
}

#[test]
fn axum_routes_layers_only_their_routes() {
    let out = run_example("axum_routes");
    assert_lines(
        &out,
        &[
            "listening on http://127.0.0.1:",
            // Rate limit per tool, and shaping.
            "POST /tools/search #1 -> 200, remaining 2,",
            "POST /tools/search #3 -> 200, remaining 0,",
            "POST /tools/search #4 -> 429, retry-after",
            "POST /tools/lookup -> 200",
            // Cache.
            "GET /catalog -> 200, x-cache MISS",
            "GET /catalog -> 200, x-cache HIT",
            "catalog handler ran 1 time(s)",
            // PII.
            "GET /users/7 -> ",
            // Breaker: three upstream failures, then answered without it.
            "GET /weather -> 500 (from the upstream)",
            "GET /weather -> 500 (from the upstream)",
            "GET /weather -> 500 (from the upstream)",
            "GET /weather -> 503 (circuit open, retry-after \"30\")",
            "upstream called 3 time(s)",
            "GET /health -> 200 (no layers)",
        ],
    );

    let shaped = line_with(&out, "shaped: ");
    assert!(shaped.contains("search result 3"), "{shaped}");
    for gone in ["search result 4", "debug", "note", "null"] {
        assert!(!shaped.contains(gone), "{gone:?} not shaped away: {shaped}");
    }
    let saved: f64 = line_with(&out, "POST /tools/search #1")
        .split(", ")
        .find_map(|part| part.strip_suffix("% fewer tokens"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token savings in:\n{out}"));
    assert!(saved > 50.0, "{saved}");

    let user = line_with(&out, "GET /users/7 -> ");
    for masked in [
        r#""email":"as***@example.com""#,
        r#""phone":"98******10""#,
        r#""password":"***REDACTED***""#,
        "4111********1111",
    ] {
        assert!(user.contains(masked), "{masked} missing: {user}");
    }
    for raw in [
        "asha@example.com",
        "9876543210",
        "hunter2",
        "4111111111111111",
    ] {
        assert!(!out.contains(raw), "{raw} leaked:\n{out}");
    }
}

#[test]
fn tonic_example_speaks_grpc_status_codes() {
    let out = run_example("tonic");
    assert_lines(
        &out,
        &[
            "gRPC server on http://127.0.0.1:",
            "alice: SayHello(world) -> OK: hello world",
            // The first attempt got UNAVAILABLE; the client's retry succeeded.
            "alice: SayHello(flaky) -> OK: hello flaky (attempt 2)",
        ],
    );
    let bob: Vec<&str> = out.lines().filter(|l| l.starts_with("bob: ")).collect();
    assert_eq!(bob.len(), 6, "{out}");
    assert!(
        bob[..5].iter().all(|l| l.ends_with("-> OK: hello again")),
        "{out}"
    );
    assert!(bob[5].contains("-> ResourceExhausted: "), "{out}");

    let carol: Vec<&str> = out.lines().filter(|l| l.starts_with("carol: ")).collect();
    assert_eq!(carol.len(), 4, "{out}");
    assert!(
        carol[..3]
            .iter()
            .all(|l| l.ends_with("-> Internal: the database is down")),
        "{out}"
    );
    assert!(carol[3].contains("-> Unavailable: "), "{out}");
    // The open breaker answered the 4th call, and the client did not retry
    // its UNAVAILABLE: the Retry-After (30 s) is beyond the retry's cap.
    assert_lines(
        &out,
        &["SayHello(broken) ran 3 time(s); breaker open, 1 call(s) rejected"],
    );
}

#[test]
fn client_example_shows_each_layer() {
    let out = run_example("client");
    assert_lines(
        &out,
        &[
            "upstream on http://127.0.0.1:",
            // Retry: the server saw two calls, the caller one answer.
            "[server] GET /flaky -> 503",
            "[server] GET /flaky -> 200",
            "GET /flaky -> 200 flaky answer",
            // Cache: one call reaches the server, the second is a hit.
            "[server] GET /catalog -> 200",
            "GET /catalog -> 200 x-cache: MISS",
            "GET /catalog -> 200 x-cache: HIT",
            // PII: what the server received was already masked.
            "[server] POST /echo received",
            "POST /echo -> 200 echoed",
            // Breaker.
            "[server] GET /down -> 500",
            "GET /down -> 500",
            "[server] GET /down -> 500",
            "GET /down -> 500",
            "[server] GET /down -> 500",
            "GET /down -> 500",
            "GET /down -> 503 (circuit open, retry-after \"30\")",
            // Rate limit: 10 calls a minute, the 11th refused.
            "GET /catalog -> 200 x-cache: HIT, remaining: 1",
            "GET /catalog -> 200 x-cache: HIT, remaining: 0",
            "GET /catalog -> 429 x-cache: -, remaining: 0",
            "refused, retry-after",
        ],
    );
    assert_eq!(out.matches("[server] GET /flaky").count(), 2, "{out}");
    assert_eq!(out.matches("[server] GET /catalog").count(), 1, "{out}");
    assert_eq!(out.matches("[server] GET /down").count(), 3, "{out}");

    let received = line_with(&out, "[server] POST /echo received");
    for masked in [
        r#""email":"as***@example.com""#,
        r#""phone":"98******10""#,
        r#""password":"***REDACTED***""#,
    ] {
        assert!(received.contains(masked), "{masked} missing: {received}");
    }
    for raw in ["asha@example.com", "9876543210", "hunter2"] {
        assert!(
            !received.contains(raw),
            "{raw} reached the server: {received}"
        );
    }
}

/// A plain hyper server hands the peer address to the layers in one line;
/// a request without any is limited under one shared key, never skipped.
#[test]
fn hyper_server_example_limits_per_peer_and_never_skips_an_unknown_peer() {
    let out = run_example("hyper_server");
    assert_lines(
        &out,
        &[
            "request 1 from 127.0.0.1: 200",
            "request 2 from 127.0.0.1: 200",
            "request 3 from 127.0.0.1: 429",
            "request 4 from 127.0.0.1: 429",
            "request 1 without a peer address: 200",
            "request 2 without a peer address: 200",
            "request 3 without a peer address: 429",
            "requests seen without a peer address: 3",
        ],
    );
}

#[cfg(feature = "microbatch")]
#[test]
fn microbatch_embeddings_merges_single_texts_into_one_call() {
    let out = run_example("microbatch_embeddings");
    assert_lines(
        &out,
        &[
            "front listening on http://127.0.0.1:",
            "[provider] call #1: /v1/embeddings with 8 inputs",
            "8 single-text requests, 1 provider call(s)",
        ],
    );
    // Each caller got its own text's embedding back: [length, vowels, spaces].
    assert!(
        line_with(&out, "\"hello world\" ->").contains("[11.0,3.0,1.0]"),
        "{out}"
    );
    assert!(
        line_with(&out, "\"rust\" ->").contains("[4.0,1.0,0.0]"),
        "{out}"
    );
    assert!(!out.contains("call #2"), "{out}");
}
