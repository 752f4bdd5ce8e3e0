//! Token budgets through the gateway binary, with the official OpenAI
//! Python SDK (PyPI `openai`, `tests/llm/client.py`) as the client and the
//! demo upstream's OpenAI-compatible `/v1/chat/completions` as the model:
//! streamed and whole calls succeed and are charged what they used; a user
//! whose budget is spent gets a 429 (`openai.RateLimitError`) with
//! `Retry-After` before any stream starts, and the upstream never sees the
//! call; on three replicas sharing one real Redis (and a Redis Cluster) the
//! budget holds within the stated bound; a replica killed mid-stream gives
//! its reservation back when the lease expires. A bad `[[token_limits]]` entry
//! stops the gateway with an error naming the key.
//!
//! Needs Python with `openai`: `.ci/run` makes `target/pyvenv`; elsewhere set
//! `PALISADE_PYTHON` or the SDK tests skip (under CI they fail).

mod reliability_support;
mod support;

use palisade_testkit::{RedisCluster, RedisServer};
use serde_json::{Value, json};
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};
use support::{Gateway, get};

fn python() -> Option<PathBuf> {
    support::python_with("openai", "the OpenAI SDK (pip install openai)")
}

/// Runs the SDK client on `calls` with `concurrency` threads; one result a
/// call, in order.
async fn sdk(python: &PathBuf, calls: &[Value], concurrency: usize) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/llm/client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(python)
            .arg(script)
            .arg(Value::from(calls.to_vec()).to_string())
            .arg(concurrency.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK client finishes within 120 s")
    .expect("run the SDK client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the SDK client failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(results.len(), calls.len(), "{stdout}");
    results
}

fn call(gw: &Gateway, user: &str, stream: bool, max_tokens: u64, content: &str) -> Value {
    json!({
        "base_url": format!("{}/v1", gw.url),
        "user": user,
        "stream": stream,
        "include_usage": stream,
        "max_tokens": max_tokens,
        "content": content,
    })
}

/// `palisade_llm_tokens_total{event}` of the limit `per-user` on `gw`
/// (untiered: it must be there).
async fn tokens(gw: &Gateway, event: &str) -> u64 {
    let series =
        format!(r#"palisade_llm_tokens_total{{event="{event}",limit="per-user",tier="none"}}"#);
    metric(gw, &series).await as u64
}

/// Waits (at most 10 s) until the replicas' charged tokens add up to
/// `expected`: a response is settled as its body ends, just after the
/// client has read it. Returns the last sum seen.
async fn charged_settles_at(replicas: &[&Gateway], expected: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut sum = 0;
        for gw in replicas {
            sum += tokens(gw, "charged").await;
        }
        if sum == expected || Instant::now() > deadline {
            return sum;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const CONFIG: &str = r#"
[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 100000

[[token_limits]]
kind = "tokens"
name = "per-user"
key = "header"
key_header = "x-user"
path_prefix = "/v1/"
quota = 100
period = "1000h"
"#;

/// Eight words, 39 characters: the demo model counts 8 prompt tokens, the
/// gateway estimates ceil(39 / 4) = 10.
const EIGHT_WORDS: &str = "one two three four five six seven eight";

#[tokio::test]
async fn the_sdk_is_charged_its_usage_and_refused_before_the_stream_starts() {
    let Some(python) = python() else { return };
    let gw = Gateway::start_with_config(Some(CONFIG), &[], &[]);
    let hits = gw.upstream_hits().await;

    let out = sdk(
        &python,
        &[
            // Reserves 10 + 20, charged 8 + 12 (the whole twelve-word answer).
            call(&gw, "alice", false, 20, EIGHT_WORDS),
            // Reserves 10 + 5, streams five words: charged 8 + 5.
            call(&gw, "alice", true, 5, EIGHT_WORDS),
        ],
        1,
    )
    .await;
    assert_eq!(out[0]["ok"], true, "{out:?}");
    assert_eq!(
        out[0]["content"],
        "Palisade reserved tokens for this answer before the model saw the prompt."
    );
    assert_eq!(
        out[0]["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20})
    );
    assert_eq!(out[0]["finish_reason"], "stop");
    assert_eq!(out[1]["ok"], true, "{out:?}");
    assert_eq!(out[1]["content"], "Palisade reserved tokens for this");
    assert_eq!(out[1]["finish_reason"], "length");
    assert_eq!(
        out[1]["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13})
    );
    // Role chunk, five words, finish chunk, usage chunk.
    assert_eq!(out[1]["chunks"], 8);
    assert_eq!(charged_settles_at(&[&gw], 33).await, 33);
    assert_eq!(tokens(&gw, "reserved").await, 45);
    assert_eq!(tokens(&gw, "refunded").await, 12);

    // 67 left: a call that may use 10 + 60 does not fit, whole or
    // streamed; another user's budget is untouched.
    let out = sdk(
        &python,
        &[
            call(&gw, "alice", false, 60, EIGHT_WORDS),
            call(&gw, "alice", true, 60, EIGHT_WORDS),
            call(&gw, "bob", true, 60, EIGHT_WORDS),
        ],
        1,
    )
    .await;
    for refused in &out[..2] {
        assert_eq!(refused["ok"], false, "{out:?}");
        assert_eq!(refused["error"], "RateLimitError", "{out:?}");
        assert_eq!(refused["status"], 429);
        assert_eq!(refused["chunks"], 0, "refused before the stream started");
        let retry: u64 = refused["retry_after"]
            .as_str()
            .expect("a Retry-After")
            .parse()
            .expect("Retry-After in seconds");
        assert!(retry >= 1, "{refused}");
        // Both limits' policies, as the list the IETF fields are: the
        // token budget's and the request limit's.
        let policies: Vec<&str> = refused["ratelimit_policy"]
            .as_str()
            .expect("RateLimit-Policy")
            .split(", ")
            .collect();
        assert_eq!(
            policies,
            [
                r#""per-user";q=100;qu="tokens";w=3600000"#,
                r#""ip";q=100000;w=60"#
            ],
            "{refused}"
        );
        assert!(
            refused["ratelimit"]
                .as_str()
                .unwrap()
                .starts_with(r#""per-user";r="#),
            "{refused}"
        );
    }
    assert_eq!(out[2]["ok"], true, "{out:?}");
    assert_eq!(
        out[2]["usage"],
        json!({"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20})
    );
    assert_eq!(tokens(&gw, "refused").await, 140);
    assert_eq!(charged_settles_at(&[&gw], 53).await, 53);
    // The refused calls never reached the model.
    assert_eq!(gw.upstream_hits().await - hits, 3);
}

/// `quota` tokens per `1000h` per user on every replica of `url`; 40
/// single-letter words are 40 prompt tokens to the model but estimated at
/// ceil(79 / 4) = 20, so every admitted call is charged 20 more than it
/// reserved.
async fn replicas_share_one_budget(url: &str) {
    let Some(python) = python() else { return };
    const QUOTA: u64 = 300;
    const CONCURRENCY: usize = 6;
    let config = CONFIG.replace("quota = 100", &format!("quota = {QUOTA}"));
    let env = [("REDIS_URL", url)];
    let replicas: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start_with_config(Some(&config), &[], &env))
        .collect();
    let words = vec!["a"; 40].join(" ");
    let calls: Vec<Value> = (0..24)
        .map(|i| call(&replicas[i % 3], "carol", i % 2 == 1, 12, &words))
        .collect();
    let out = sdk(&python, &calls, CONCURRENCY).await;

    let mut used = 0;
    let mut admitted = 0;
    for (i, r) in out.iter().enumerate() {
        if r["ok"] == true {
            admitted += 1;
            assert_eq!(
                r["usage"],
                json!({"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}),
                "call {i}: {r}"
            );
            used += 52;
        } else {
            assert_eq!(r["error"], "RateLimitError", "call {i}: {r}");
            assert_eq!(r["chunks"], 0, "call {i} refused mid-stream: {r}");
            assert!(r["retry_after"].is_string(), "call {i}: {r}");
        }
    }
    // Every replica settled what the SDK was told it used.
    let refs: Vec<&Gateway> = replicas.iter().collect();
    let charged = charged_settles_at(&refs, used).await;
    if charged != used {
        for gw in &replicas {
            eprintln!(
                "replica: reserved {} charged {} refunded {} refused {}",
                tokens(gw, "reserved").await,
                tokens(gw, "charged").await,
                tokens(gw, "refunded").await,
                tokens(gw, "refused").await
            );
        }
    }
    assert_eq!(charged, used, "{out:?}");
    // The bound: past the quota by at most the true-up differences (20
    // each) of the calls in flight when it filled — at most one per client
    // thread — plus under one token of refill during the test. Separate
    // budgets per replica would have let 3 x 300 through.
    let bound = QUOTA + CONCURRENCY as u64 * 20 + 1;
    assert!(
        used <= bound,
        "charged {used} tokens, more than {QUOTA} + the in-flight bound ({bound}); {out:?}"
    );
    // A call is refused when 300 - 52 x settled - 32 x in flight < 32,
    // which cannot happen while five or fewer calls were admitted: at least
    // six are, whatever the interleaving.
    assert!(admitted >= 6, "only {admitted} admitted: {out:?}");
    assert!(admitted < 24, "nothing refused: {out:?}");

    // Spent: every replica refuses the next call before its stream starts.
    let after: Vec<Value> = replicas
        .iter()
        .map(|gw| call(gw, "carol", true, 12, &words))
        .collect();
    for r in sdk(&python, &after, 1).await {
        assert_eq!(r["status"], 429, "{r}");
        assert_eq!(r["chunks"], 0, "{r}");
    }
}

#[tokio::test]
async fn three_replicas_on_one_redis_share_the_budget() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    replicas_share_one_budget(&redis.url()).await;
}

#[tokio::test]
async fn three_replicas_on_a_redis_cluster_share_the_budget() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    replicas_share_one_budget(&cluster.url()).await;
}

#[tokio::test]
async fn a_bad_token_limit_stops_the_gateway_naming_the_key() {
    for (config, key) in [
        (
            "[[token_limits]]\nkind = \"tokens\"\nkey = \"header\"\nquota = 10\n",
            "token_limits[0].key_header",
        ),
        (
            "[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 0\n",
            "token_limits[0].quota",
        ),
        (
            "[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 10\npath_prefix = \"v1\"\n",
            "token_limits[0].path_prefix",
        ),
        (
            "[[token_limits]]\nkind = \"requests\"\nkey = \"global\"\nquota = 10\n",
            "token_limits[0].kind",
        ),
        (
            "[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 10\nquta = 5\n",
            "quta",
        ),
        (
            "[llm.pacing]\nmax_wait = \"5s\"\nmax_waiting = 0\n",
            "llm.pacing.max_waiting",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(support::gateway_binary())
                .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
                .arg("--config")
                .arg(&path)
                .env_remove("REDIS_URL")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the gateway exits within 30 s")
        .expect("run the gateway");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {config:?}");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
    }
}

/// A metric's value on `gw`: the line starting with `series` (name and
/// labels, as the exposition writes them).
async fn metric(gw: &Gateway, series: &str) -> f64 {
    let text = get(&format!("{}/metrics", gw.admin)).await.text();
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Provider pacing: the demo model's own budget is 40 tokens a minute per
/// API key (every SDK call here uses the same key). The first call uses
/// 20; the second may use 28, more than is left, and the model answers
/// 429 with `Retry-After`; the next call — another user, same API key — is
/// answered 429 by palisade with the provider's wait, and never reaches
/// the model.
#[tokio::test]
async fn after_the_providers_429_the_next_call_is_refused_without_reaching_it() {
    let Some(python) = python() else { return };
    let gw = Gateway::start_with_config(Some(CONFIG), &[], &[("PALISADE_DEMO_LLM_TOKENS", "40")]);
    let hits = gw.upstream_hits().await;
    let out = sdk(
        &python,
        &[
            call(&gw, "alice", false, 20, EIGHT_WORDS),
            call(&gw, "alice", false, 20, EIGHT_WORDS),
        ],
        1,
    )
    .await;
    assert_eq!(out[0]["ok"], true, "{out:?}");
    assert_eq!(
        metric(
            &gw,
            r#"palisade_llm_provider_remaining{kind="tokens",upstream="upstream"}"#
        )
        .await,
        20.0
    );
    // The provider's own 429 (OpenAI's error object), passed on.
    let provider = &out[1];
    assert_eq!(provider["status"], 429, "{provider}");
    assert_eq!(provider["error"], "RateLimitError");
    assert_eq!(provider["content_type"], "application/json", "{provider}");
    assert_eq!(
        provider["body"]["code"], "rate_limit_exceeded",
        "{provider}"
    );
    let n: u64 = provider["retry_after"]
        .as_str()
        .expect("the provider's Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&n), "{provider}");
    assert_eq!(gw.upstream_hits().await - hits, 2);

    let out = sdk(&python, &[call(&gw, "bob", true, 5, EIGHT_WORDS)], 1).await;
    let paced = &out[0];
    assert_eq!(paced["status"], 429, "{paced}");
    assert_eq!(paced["error"], "RateLimitError");
    assert_eq!(paced["chunks"], 0, "refused before any stream: {paced}");
    assert_eq!(paced["content_type"], "application/problem+json", "{paced}");
    assert_eq!(
        paced["body"]["type"], "https://palisade.invalid/problems/provider-quota",
        "{paced}"
    );
    assert!(
        paced["body"].to_string().contains("retry-after"),
        "names the provider's limit: {paced}"
    );
    let m: u64 = paced["retry_after"].as_str().unwrap().parse().unwrap();
    assert!(
        m >= 1 && m <= n,
        "palisade's wait {m} within the provider's {n}"
    );
    // The model was not called again.
    assert_eq!(gw.upstream_hits().await - hits, 2);
    assert_eq!(
        metric(
            &gw,
            r#"palisade_llm_provider_pacing_total{outcome="refused",upstream="upstream"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &gw,
            r#"palisade_llm_provider_pacing_total{outcome="spent",upstream="upstream"}"#
        )
        .await,
        1.0
    );
}

/// A replica killed (SIGKILL) in the middle of a stream never settles its
/// reservation: every other replica keeps the tokens counted until the
/// reservation's lease expires, and then has them back. The upstream here
/// is an OpenAI-style model whose first answer is a stream that sends one
/// chunk and then holds; later answers are whole, with their usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_gives_its_reservation_back_after_the_lease() {
    use axum::{Router, response::IntoResponse, routing::post};
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, Full};
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    const LEASE: Duration = Duration::from_secs(6);

    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    let chunk = axum::body::Bytes::from_static(
                        b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
                    );
                    let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(chunk)])
                        .chain(futures_util::stream::pending());
                    return (
                        [("content-type", "text/event-stream")],
                        axum::body::Body::from_stream(body),
                    )
                        .into_response();
                }
                axum::Json(json!({
                    "id": "c2",
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
                }))
                .into_response()
            }
        }),
    );
    let (upstream, _server) = reliability_support::serve(app).await;
    let config = CONFIG.replace("period = \"1000h\"", "period = \"1000h\"\nlease = \"6s\"");
    let env = [("REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut a = Gateway::start_with_config(Some(&config), &["--upstream", &upstream], &env);
    let b = Gateway::start_with_config(Some(&config), &["--upstream", &upstream], &env);

    let body = |stream: bool, max_tokens: u64| {
        serde_json::to_vec(&json!({
            "model": "m",
            "stream": stream,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": EIGHT_WORDS}],
        }))
        .unwrap()
    };
    // Reserves 10 + 60 = 70 of the 100 on replica A, which streams.
    let reserved_at = Instant::now();
    let req = http::Request::post(format!("{}/v1/chat/completions", a.url))
        .header("content-type", "application/json")
        .header("x-user", "dave")
        .body(Full::new(bytes::Bytes::from(body(true, 60))))
        .unwrap();
    let res = reliability_support::client().request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.frame())
        .await
        .expect("the first chunk arrives")
        .unwrap()
        .unwrap();
    assert!(first.is_data());

    // A call that may use 10 + 40 does not fit in the 30 left, on B.
    let b_url = format!("{}/v1/chat/completions", b.url);
    let small = body(false, 40);
    let ask_b = || {
        support::send(
            http::Method::POST,
            &b_url,
            &[("content-type", "application/json"), ("x-user", "dave")],
            &small,
        )
    };
    assert_eq!(ask_b().await.status, 429, "A's reservation counts on B");

    // A dies without settling. Until the lease is over B still refuses;
    // then the 70 tokens are back and the same call is admitted.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(stream);
    let refused = ask_b().await;
    if reserved_at.elapsed() < LEASE {
        assert_eq!(
            refused.status, 429,
            "released before its lease: {refused:?}"
        );
    }
    let deadline = Instant::now() + LEASE + Duration::from_secs(20);
    let admitted = loop {
        let res = ask_b().await;
        if res.status == 200 {
            break res;
        }
        assert_eq!(res.status, 429, "{res:?}");
        assert!(
            Instant::now() < deadline,
            "the killed replica's reservation never came back: {res:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        reserved_at.elapsed() >= LEASE,
        "admitted before the lease could expire"
    );
    assert_eq!(admitted.json()["usage"]["total_tokens"], 9);
    // The refusals never reached the model: the stream and the admitted call.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Token budgets per plan through the gateway: `tiers` gives a plan its
/// own quota, and the plan is the one the trusted proxy in front names in
/// `rate_limit.tiers.header`. Each call may use 10 + 12 tokens and is
/// charged 20: the default budget of 30 admits one, premium's 300 many; a
/// gateway that does not trust the peer gives a self-named "premium" the
/// default budget.
#[tokio::test]
async fn token_budgets_per_plan_from_the_trusted_proxys_header() {
    let config = |trusted: &str| {
        format!(
            r#"
[rate_limit]
trusted_proxies = ["{trusted}"]

[rate_limit.tiers]
header = "x-plan"

[[rate_limit.limits]]
name = "ip"
key = "peer_ip"
limit = 100000

[[token_limits]]
kind = "tokens"
name = "per-user"
key = "header"
key_header = "x-user"
path_prefix = "/v1/"
quota = 30
period = "1000h"
tiers = {{ premium = 300 }}
"#
        )
    };
    let behind_proxy = Gateway::start_with_config(Some(&config("127.0.0.1/32")), &[], &[]);
    assert_eq!(
        plan_calls(&behind_proxy, "ann", None).await,
        [200, 429, 429]
    );
    assert_eq!(
        plan_calls(&behind_proxy, "ann", Some("premium")).await,
        [200, 200, 200],
        "premium has its own, larger budget"
    );
    assert_eq!(tokens_of(&behind_proxy, "charged", "premium").await, 60);

    let exposed = Gateway::start_with_config(Some(&config("10.0.0.0/8")), &[], &[]);
    assert_eq!(
        plan_calls(&exposed, "bob", Some("premium")).await,
        [200, 429, 429],
        "a client cannot name its own plan"
    );
}

/// Three calls by `user` (naming `plan`), each waited for until settled
/// (a response is charged as its body ends, just after the client read it);
/// their statuses.
async fn plan_calls(gw: &Gateway, user: &str, plan: Option<&str>) -> Vec<u16> {
    let body = serde_json::to_vec(&json!({
        "model": "m",
        "max_tokens": 12,
        "messages": [{"role": "user", "content": EIGHT_WORDS}],
    }))
    .unwrap();
    let url = format!("{}/v1/chat/completions", gw.url);
    let mut headers = vec![("content-type", "application/json"), ("x-user", user)];
    if let Some(p) = plan {
        headers.push(("x-plan", p));
    }
    let mut out = Vec::new();
    for _ in 0..3 {
        let before =
            tokens_of(gw, "charged", "default").await + tokens_of(gw, "charged", "premium").await;
        let res = support::send(http::Method::POST, &url, &headers, &body).await;
        out.push(res.status.as_u16());
        if res.status != 200 {
            continue;
        }
        assert_eq!(res.json()["usage"]["total_tokens"], 20, "{res:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = tokens_of(gw, "charged", "default").await
                + tokens_of(gw, "charged", "premium").await;
            if now == before + 20 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never settled: {now} after {before}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    out
}

/// `palisade_llm_tokens_total{event}` of the limit `per-user`, tier `tier`
/// (0 before the tier's first count).
async fn tokens_of(gw: &Gateway, event: &str, tier: &str) -> u64 {
    let text = get(&format!("{}/metrics", gw.admin)).await.text();
    let prefix =
        format!(r#"palisade_llm_tokens_total{{event="{event}",limit="per-user",tier="{tier}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}
