//! MCP through the gateway binary, between peers written with the official
//! MCP Python SDK (PyPI `mcp`: its `MCPServer` over streamable HTTP, and its
//! `Client`), with `[mcp] enabled = true`: the session works through the
//! gateway (initialize, session id, list, call), a per-tool limit refuses
//! one tool's fourth call while another tool answers, a tool that answers
//! `isError` opens its own breaker only, and the open breaker answers the
//! call with a JSON-RPC error the SDK reads. With the annotations the
//! gateway learns from `tools/list` (and `[mcp.tools.NAME]` overrides): a
//! read-only tool's result is served from the cache on the second identical
//! call while a destructive tool's call and a tool error always reach the
//! server, and a read-only tool's call is retried after a 503 while a
//! destructive one's is not; a result over its tool's token budget is cut
//! to fit and stays valid. Run against the server's event stream replies
//! and its JSON replies. Two replicas on one Redis share what they learned
//! and what they cached.
//!
//! Needs Python with `mcp`: `.ci/run` makes `target/pyvenv`; elsewhere set
//! `PALISADE_PYTHON` or the test skips (under CI it fails).

mod support;

use std::{path::PathBuf, process::Stdio, time::Duration};
use support::Gateway;
use tokio::io::{AsyncBufReadExt, BufReader};

fn python() -> Option<PathBuf> {
    support::python_with("mcp", "the MCP SDK (pip install mcp)")
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/mcp")
        .join(name)
}

/// The SDK's MCP server, and its port.
async fn mcp_server(python: &PathBuf, json: bool) -> (tokio::process::Child, u16) {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script("server.py"));
    if json {
        cmd.arg("--json");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the MCP server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the MCP server prints its port within 60 s")
        .unwrap()
        .expect("a port line");
    let port = line
        .trim_start_matches("listening on ")
        .trim()
        .parse()
        .unwrap();
    (child, port)
}

/// Runs the SDK client against `url` with `steps`; one JSON value a step.
async fn client(python: &PathBuf, url: &str, steps: serde_json::Value) -> Vec<serde_json::Value> {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(python)
            .arg(script("client.py"))
            .arg(url)
            .arg(steps.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the MCP client finishes within 90 s")
    .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the MCP client failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

const CONFIG: &str = r#"
[mcp]
enabled = true

[circuit_breaker]
failure_threshold = 2
recovery_timeout = "10m"

[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 100000

[[rate_limit.limits]]
name = "tool"
key = "tool"
limit = 3
"#;

async fn per_tool_limits_and_breakers(json: bool) {
    let Some(python) = python() else { return };
    let (_server, port) = mcp_server(&python, json).await;
    let upstream = format!("http://127.0.0.1:{port}");
    let gw = Gateway::start_with_config(Some(CONFIG), &["--upstream", &upstream], &[]);
    let call = |tool: &str, args: serde_json::Value| serde_json::json!(["call", tool, args]);
    let steps = serde_json::json!([
        ["list"],
        call("echo", serde_json::json!({"text": "one"})),
        call("echo", serde_json::json!({"text": "two"})),
        call("echo", serde_json::json!({"text": "three"})),
        // 100 KiB of arguments: past the 64 KiB a JSON body was read ahead
        // before `mcp.max_call_bytes`, this call went unlearned and the
        // per-tool limit never saw it.
        call(
            "echo",
            serde_json::json!({"text": format!("four {}", "f".repeat(100 * 1024))})
        ),
        call("search", serde_json::json!({"q": "x"})),
        call("broken", serde_json::json!({})),
        call("broken", serde_json::json!({})),
        call("broken", serde_json::json!({})),
        call("search", serde_json::json!({"q": "y"})),
    ]);
    let out = client(&python, &format!("{}/mcp", gw.url), steps).await;
    let mode = if json {
        "JSON replies"
    } else {
        "event-stream replies"
    };
    assert_eq!(out.len(), 10, "{mode}: one line a step: {out:#?}");
    assert_eq!(
        out[0]["tools"],
        serde_json::json!([
            "broken",
            "echo",
            "failing_read",
            "flaky_lookup",
            "flaky_remove",
            "huge",
            "lookup",
            "plain",
            "remove",
            "search"
        ])
    );
    for (i, text) in [(1, "one"), (2, "two"), (3, "three")] {
        assert_eq!(out[i]["is_error"], false, "{mode}: {:?}", out[i]);
        assert_eq!(out[i]["text"], text, "{mode}");
    }
    let refused = out[4]["error"].as_str().unwrap_or_else(|| {
        let text = out[4]["text"].as_str().map(|t| &t[..t.len().min(40)]);
        panic!("{mode}: the fourth call of echo (100 KiB) is refused; got {text:?}")
    });
    assert!(
        refused.contains("rate limit"),
        "{mode}: the SDK reads the gateway's JSON-RPC refusal: {refused}"
    );
    assert_eq!(
        out[5]["is_error"], false,
        "{mode}: search answers: {:?}",
        out[5]
    );
    assert!(out[5]["text"].as_str().unwrap().contains("x-1"), "{mode}");
    for i in [6, 7] {
        assert_eq!(
            out[i]["is_error"], true,
            "{mode}: the tool error: {:?}",
            out[i]
        );
        assert!(
            out[i]["text"].as_str().unwrap().contains("broken"),
            "{mode}"
        );
    }
    let open = out[8]["error"].as_str().unwrap_or_else(|| {
        panic!(
            "{mode}: broken's breaker is open after two tool errors: {:?}",
            out[8]
        )
    });
    assert!(
        open.contains("circuit breaker is open"),
        "{mode}: the JSON-RPC error of the open breaker: {open}"
    );
    assert_eq!(
        out[9]["is_error"], false,
        "{mode}: search's breaker is its own: {:?}",
        out[9]
    );
    assert!(out[9]["text"].as_str().unwrap().contains("y-1"), "{mode}");

    // The admin view: broken's breaker open, the others closed.
    let breakers = support::get(&format!("{}/breakers", gw.admin)).await;
    let text = breakers.text();
    assert!(text.contains("broken"), "per-tool breakers listed: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sdk_through_the_gateway_with_event_stream_replies() {
    per_tool_limits_and_breakers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_sdk_through_the_gateway_with_json_replies() {
    per_tool_limits_and_breakers(true).await;
}

const TOOLS_CONFIG: &str = r#"
[mcp]
enabled = true

# No annotations on the server: read-only by configuration.
[mcp.tools.plain]
read_only = true

[mcp.tools.huge]
max_output_tokens = 400

[retry]
initial_delay = "10ms"
max_delay = "50ms"

[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 100000
"#;

async fn annotations_retries_and_cache(json: bool) {
    let Some(python) = python() else { return };
    let (_server, port) = mcp_server(&python, json).await;
    let upstream = format!("http://127.0.0.1:{port}");
    let gw = Gateway::start_with_config(Some(TOOLS_CONFIG), &["--upstream", &upstream], &[]);
    let call = |tool: &str, key: &str| serde_json::json!(["call", tool, {"key": key}]);
    let steps = serde_json::json!([
        ["list"],
        call("lookup", "a"),
        call("lookup", "a"),
        call("lookup", "b"),
        call("remove", "a"),
        call("remove", "a"),
        call("failing_read", "a"),
        call("failing_read", "a"),
        call("plain", "a"),
        call("plain", "a"),
        call("flaky_lookup", "a"),
        call("flaky_remove", "a"),
        call("flaky_remove", "a"),
        call("huge", "a"),
        call("huge", "a"),
    ]);
    let out = client(&python, &format!("{}/mcp", gw.url), steps).await;
    let mode = if json {
        "JSON replies"
    } else {
        "event-stream replies"
    };
    assert_eq!(out.len(), 15, "{mode}: one line a step: {out:#?}");
    let answered = |i: usize, text: &str| {
        assert_eq!(out[i]["is_error"], false, "{mode}: step {i}: {:?}", out[i]);
        assert_eq!(out[i]["text"], text, "{mode}: step {i}");
    };
    // Read-only: the second identical call is served from the cache (the
    // tool ran once), other arguments reach the server.
    answered(1, "a: run 1");
    answered(2, "a: run 1");
    answered(3, "b: run 2");
    // Destructive: every call reaches the server.
    answered(4, "removed a: run 1");
    answered(5, "removed a: run 2");
    // A tool error of a read-only tool is never cached.
    for (i, run) in [(6, 1), (7, 2)] {
        assert_eq!(out[i]["is_error"], true, "{mode}: {:?}", out[i]);
        assert!(
            out[i]["text"]
                .as_str()
                .unwrap()
                .contains(&format!("run {run}")),
            "{mode}: the tool ran again: {:?}",
            out[i]
        );
    }
    // Read-only by configuration: cached.
    answered(8, "a: run 1");
    answered(9, "a: run 1");
    // The read-only tool's 503 was retried: the client made one call, the
    // server saw two.
    answered(10, "a: arrival 2");
    // The destructive tool's 503 was not: the client sees the error, and
    // its next call is the server's second.
    assert!(
        out[11]["error"].is_string(),
        "{mode}: the destructive tool's 503 reaches the client: {:?}",
        out[11]
    );
    answered(12, "removed a: arrival 2");
    // The huge result is cut to its budget; the SDK read it (valid JSON, its
    // structured content still matching the tool's output schema), and the
    // marker says what was kept. The second call is the cache's whole
    // result, cut again: the same figures, the tool ran once.
    let mut figures = Vec::new();
    for i in [13, 14] {
        assert_eq!(out[i]["is_error"], false, "{mode}: {:?}", out[i]);
        let marker = &out[i]["meta"]["palisade.dev/outputBudget"];
        let (original, kept) = (
            marker["originalTokens"]
                .as_u64()
                .unwrap_or_else(|| panic!("{mode}: a marker: {:?}", out[i]["meta"])),
            marker["keptTokens"].as_u64().unwrap(),
        );
        assert_eq!(marker["budgetTokens"], 400, "{mode}");
        assert!(original > 10 * 400, "{mode}: 300 long lines: {original}");
        assert!(kept <= 400, "{mode}: kept {kept}");
        let lines = out[i]["structured"]["result"].as_array().unwrap();
        assert!(
            !lines.is_empty() && lines.len() < 300,
            "{mode}: {} lines",
            lines.len()
        );
        assert!(
            lines[0].as_str().unwrap().starts_with("run 1 a item 0"),
            "{mode}: {:?}",
            lines[0]
        );
        assert!(out[i]["items"].as_u64().unwrap() < 300, "{mode}");
        figures.push((original, kept));
    }
    assert_eq!(figures[0], figures[1], "{mode}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_annotations_retries_and_cache_with_event_stream_replies() {
    annotations_retries_and_cache(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_annotations_retries_and_cache_with_json_replies() {
    annotations_retries_and_cache(true).await;
}

/// Polls `ready` (at most 10 s) until the shared store holds what a replica
/// writes after answering (it shares after the answer's bytes went out).
async fn until_stored<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} is in the store within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas on one Redis: what one learned from `tools/list` and the
/// result it cached serve a client of the other, which never listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_redis_share_annotations_and_cached_results() {
    let Some(python) = python() else { return };
    let Some(redis) = palisade_testkit::RedisServer::start() else {
        return;
    };
    let url = redis.url();
    let (_server, port) = mcp_server(&python, true).await;
    let upstream = format!("http://127.0.0.1:{port}");
    let env = [("REDIS_URL", url.as_str())];
    let a = Gateway::start_with_config(Some(TOOLS_CONFIG), &["--upstream", &upstream], &env);
    let b = Gateway::start_with_config(Some(TOOLS_CONFIG), &["--upstream", &upstream], &env);

    let through_a = client(
        &python,
        &format!("{}/mcp", a.url),
        serde_json::json!([["list"], ["call", "lookup", {"key": "r"}]]),
    )
    .await;
    assert_eq!(through_a[1]["text"], "r: run 1", "{through_a:?}");

    // A shares both after answering: wait for them in the store.
    let cfg =
        palisade::config::PalisadeConfig::from_sources(Some(TOOLS_CONFIG), [("", ""); 0]).unwrap();
    let store = palisade::store::Store::connect(&url).await.unwrap();
    let catalog = palisade::mcp::ToolCatalog::new(
        &cfg.mcp,
        upstream.parse::<http::Uri>().unwrap().to_string(),
        store.clone(),
    );
    until_stored("lookup's annotations", || {
        let catalog = catalog.clone();
        async move { catalog.facts("lookup").await.annotations.is_read_only() }
    })
    .await;
    let entry = store.key(
        &cfg.cache.namespace,
        "tool",
        r#"/mcp lookup {"key":"r"}"#,
        &cfg.cache.version,
    );
    until_stored("lookup's result", || {
        let (store, entry) = (store.clone(), entry.clone());
        async move { matches!(store.get(&entry).await, Ok(Some(_))) }
    })
    .await;

    // B never saw a list: it knows lookup is read-only from the store, and
    // answers from A's cached result (the tool ran once).
    let through_b = client(
        &python,
        &format!("{}/mcp", b.url),
        serde_json::json!([["call", "lookup", {"key": "r"}], ["call", "remove", {"key": "r"}]]),
    )
    .await;
    assert_eq!(through_b[0]["text"], "r: run 1", "{through_b:?}");
    assert_eq!(through_b[1]["text"], "removed r: run 1", "{through_b:?}");
}
