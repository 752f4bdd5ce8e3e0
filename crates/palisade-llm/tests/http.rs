//! Token budgets through real servers on loopback: a fake provider speaking
//! OpenAI Chat Completions (JSON and server-sent events, with and without
//! usage, cut mid-way) behind the layer, on the in-process store and on a
//! real redis-server with three replicas.

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use palisade_core::key::HeaderKey;
use palisade_llm::{OnMissingUsage, TokenBudgetLayer, TokenMetrics, usage::Estimator};
use palisade_store::{Store, StoreConfig, TokenRule};
use palisade_testkit::{RedisServer, eventually};
use std::{net::SocketAddr, time::Duration};

/// The fake provider. `x-completion` sets the completion tokens reported
/// (default 40); prompt tokens are always 10. `x-cut: N` streams N chunks
/// then fails the stream; `x-hang` streams one chunk then never ends;
/// `x-linger` streams every event, `[DONE]` included, then keeps the
/// stream open.
async fn chat(headers: HeaderMap, body: Bytes) -> Response {
    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let completion: u64 = headers
        .get("x-completion")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(40);
    let usage = serde_json::json!({"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10 + completion});
    if req["stream"] != true {
        let reply = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": req["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return ([("content-type", "application/json")], reply.to_string()).into_response();
    }
    let include = req["stream_options"]["include_usage"] == true;
    let cut: Option<usize> = headers
        .get("x-cut")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let mut events: Vec<String> = (0..4)
        .map(|i| {
            let chunk = serde_json::json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": req["model"],
                "choices": [{"index": 0, "delta": {"content": format!("word{i} ")}, "finish_reason": null}],
                "usage": serde_json::Value::Null,
            });
            format!("data: {chunk}\n\n")
        })
        .collect();
    if include {
        let last = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": req["model"], "choices": [], "usage": usage});
        events.push(format!("data: {last}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    if headers.contains_key("x-hang") {
        let first =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(events.remove(0)))]);
        return (
            [("content-type", "text/event-stream")],
            Body::from_stream(first.chain(futures_util::stream::pending())),
        )
            .into_response();
    }
    if headers.contains_key("x-linger") {
        let all = futures_util::stream::iter(
            events
                .into_iter()
                .map(|e| Ok::<_, std::io::Error>(Bytes::from(e)))
                .collect::<Vec<_>>(),
        );
        return (
            [("content-type", "text/event-stream")],
            Body::from_stream(all.chain(futures_util::stream::pending())),
        )
            .into_response();
    }
    let items: Vec<Result<Bytes, std::io::Error>> = match cut {
        Some(n) => events
            .into_iter()
            .take(n)
            .map(|e| Ok(Bytes::from(e)))
            .chain(std::iter::once(Err(std::io::Error::other(
                "upstream went away",
            ))))
            .collect(),
        None => events.into_iter().map(|e| Ok(Bytes::from(e))).collect(),
    };
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(futures_util::stream::iter(items)),
    )
        .into_response()
}

struct Replica {
    addr: SocketAddr,
    registry: prometheus::Registry,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Replica {
    /// Sum of `palisade_llm_tokens_total{event}`.
    fn tokens(&self, event: &str) -> u64 {
        metric(&self.registry, "palisade_llm_tokens_total", "event", event)
    }

    fn decisions(&self, outcome: &str) -> u64 {
        metric(
            &self.registry,
            "palisade_llm_decisions_total",
            "outcome",
            outcome,
        )
    }
}

fn metric(registry: &prometheus::Registry, name: &str, label: &str, value: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == label && l.value() == value)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

async fn replica(
    store: Store,
    rule: TokenRule,
    on_missing: OnMissingUsage,
    default_output: u64,
) -> Replica {
    let registry = prometheus::Registry::new();
    let layer = TokenBudgetLayer::builder(store, HeaderKey::new("x-user"), rule)
        .name("per-user")
        .metrics(&TokenMetrics::register(&registry).unwrap())
        .on_missing_usage(on_missing)
        .estimator(Estimator {
            chars_per_token: 4.0,
            default_output,
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Replica {
        addr,
        registry,
        server,
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

fn request(addr: SocketAddr, user: &str) -> http::request::Builder {
    http::Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("x-user", user)
        .header("content-type", "application/json")
}

async fn send(
    c: &Client,
    addr: SocketAddr,
    user: &str,
    body: serde_json::Value,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut b = request(addr, user);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let res = match tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("answered in time")
    {
        Ok(res) => res,
        // A stream cut before the client read its head: the connection
        // went away with it.
        Err(_) => return (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::new()),
    };
    let (parts, body) = res.into_parts();
    let bytes = match tokio::time::timeout(Duration::from_secs(10), body.collect()).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => Bytes::new(), // a cut stream
        Err(_) => panic!("body never ended"),
    };
    (parts.status, parts.headers, bytes)
}

/// "hi" is 1 token at 4 characters a token; with `max_tokens` the
/// reservation is 1 + max_tokens.
fn ask(max_tokens: u64, stream: bool, include_usage: bool) -> serde_json::Value {
    let mut v = serde_json::json!({"model": "gpt-4o-mini", "max_tokens": max_tokens, "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]});
    if include_usage {
        v["stream_options"] = serde_json::json!({"include_usage": true});
    }
    v
}

#[tokio::test]
async fn streams_within_budget_then_429_before_any_stream() {
    let store = Store::in_memory();
    let r = replica(
        store,
        TokenRule::per_day(200),
        OnMissingUsage::Streamed,
        100,
    )
    .await;
    let c = client();
    // 1 + 100 reserved, 50 charged (10 + 40), 51 refunded.
    let (status, headers, body) = send(&c, r.addr, "alice", ask(100, true, true), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(
        headers["ratelimit-policy"],
        r#""per-user";q=200;qu="tokens";w=86400"#
    );
    assert!(String::from_utf8_lossy(&body).contains("\"total_tokens\":50"));
    eventually("settled", Duration::from_secs(5), || {
        r.tokens("charged") == 50
    })
    .await;
    assert_eq!(r.tokens("refunded"), 51);
    // 150 left: 1 + 140 fits; another 1 + 100 no longer does.
    let (status, ..) = send(&c, r.addr, "alice", ask(140, false, false), &[]).await;
    assert_eq!(status, 200);
    eventually("settled", Duration::from_secs(5), || {
        r.tokens("charged") == 100
    })
    .await;
    let (status, headers, body) = send(&c, r.addr, "alice", ask(100, true, true), &[]).await;
    assert_eq!(status, 429, "refused before the stream starts");
    assert_eq!(headers["content-type"], "application/problem+json");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    // 100 used, 101 asked: 1 token short, 432 s a token at 200 a day.
    assert!((431..=432).contains(&retry), "retry-after {retry}");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with(r#""per-user";r=100;"#)
    );
    assert!(!String::from_utf8_lossy(&body).contains("data:"));
    // Another user has a budget of their own.
    let (status, ..) = send(&c, r.addr, "bob", ask(100, true, true), &[]).await;
    assert_eq!(status, 200);
    // A request that could never fit: 429 without Retry-After.
    let (status, headers, _) = send(&c, r.addr, "carol", ask(500, false, false), &[]).await;
    assert_eq!(status, 429);
    assert!(headers.get("retry-after").is_none());
    assert_eq!(r.decisions("refused"), 2);
}

#[tokio::test]
async fn missing_usage_and_cut_streams_are_charged_by_setting() {
    let c = client();
    // Streamed: prompt estimate (1) + streamed text ("word0 " .. "word3 ",
    // 24 characters = 6 tokens).
    let r = replica(
        Store::in_memory(),
        TokenRule::per_day(1000),
        OnMissingUsage::Streamed,
        100,
    )
    .await;
    let (status, ..) = send(&c, r.addr, "u", ask(100, true, false), &[]).await;
    assert_eq!(status, 200);
    eventually("settled", Duration::from_secs(5), || {
        r.tokens("charged") == 7
    })
    .await;
    // Cut after two chunks (12 characters = 3 tokens): 1 + 3.
    let (status, ..) = send(&c, r.addr, "u", ask(100, true, true), &[("x-cut", "2")]).await;
    assert!(matches!(status.as_u16(), 200 | 502), "status {status}");
    eventually("cut settled", Duration::from_secs(5), || {
        r.tokens("charged") == 11
    })
    .await;
    assert_eq!(r.tokens("refunded"), (101 - 7) + (101 - 4));

    // Reservation: the whole reservation is charged.
    let r = replica(
        Store::in_memory(),
        TokenRule::per_day(1000),
        OnMissingUsage::Reservation,
        100,
    )
    .await;
    let (status, ..) = send(&c, r.addr, "u", ask(60, true, true), &[("x-cut", "1")]).await;
    assert!(matches!(status.as_u16(), 200 | 502), "status {status}");
    eventually("cut settled", Duration::from_secs(5), || {
        r.tokens("charged") == 61
    })
    .await;
    assert_eq!(r.tokens("refunded"), 0);
}

/// A client that reads up to `data: [DONE]` and goes away before the
/// stream's very end (as SDKs do) is charged the usage the stream reported,
/// not an estimate of what streamed.
#[tokio::test]
async fn a_client_leaving_after_done_is_charged_the_reported_usage() {
    let r = replica(
        Store::in_memory(),
        TokenRule::per_day(1000),
        OnMissingUsage::Streamed,
        100,
    )
    .await;
    let req = request(r.addr, "u")
        .header("x-linger", "1")
        .header("x-completion", "3")
        .body(Full::new(Bytes::from(ask(100, true, true).to_string())))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: [DONE]") {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a frame in time")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.extend_from_slice(&data);
        }
    }
    drop(body);
    // 10 + 3 reported; the streamed text alone ("word0 " .. "word3 ") would
    // have been estimated at 1 + 6.
    eventually("settled", Duration::from_secs(5), || {
        r.tokens("charged") == 13
    })
    .await;
    assert_eq!(r.tokens("refunded"), 101 - 13);
}

/// Three replicas, one budget on one store, concurrent clients: what the
/// provider reported for admitted requests never exceeds the budget by more
/// than the stated bound. Here every request uses 50 (10 + `x-completion`
/// 40) but reserves only 1 + 20 (no `max_tokens`, default output 20), so
/// each admitted request can overshoot by 29: with 9 clients the bound is
/// 9 × 29.
async fn three_replicas_stay_within_the_bound(stores: [Store; 3]) {
    const QUOTA: u64 = 1000;
    let rule = TokenRule::per_day(QUOTA);
    let mut replicas = Vec::new();
    for store in stores {
        replicas.push(replica(store, rule, OnMissingUsage::Streamed, 20).await);
    }
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let clients = 9;
    let results = futures_util::stream::iter(0..clients)
        .map(|i| {
            let addr = addrs[i % 3];
            async move {
                let c = client();
                let mut used = 0u64;
                let mut refused = false;
                for _ in 0..100 {
                    let body = serde_json::json!({"model": "m", "stream": true,
                        "stream_options": {"include_usage": true},
                        "messages": [{"role": "user", "content": "hi"}]});
                    let (status, _, bytes) = send(&c, addr, "shared", body, &[]).await;
                    match status.as_u16() {
                        200 => {
                            assert!(
                                String::from_utf8_lossy(&bytes).contains("\"total_tokens\":50")
                            );
                            used += 50;
                        }
                        429 => {
                            refused = true;
                            break;
                        }
                        s => panic!("unexpected status {s}"),
                    }
                }
                assert!(refused, "the budget ran out");
                used
            }
        })
        .buffer_unordered(clients)
        .collect::<Vec<u64>>()
        .await;
    let used: u64 = results.iter().sum();
    let bound = clients as u64 * 29;
    // One token a day refills every 86.4 s: none in this test.
    assert!(used <= QUOTA + bound, "charged {used} > {QUOTA} + {bound}");
    assert!(used >= QUOTA / 2, "the budget was mostly used: {used}");
    // Every replica settled what it admitted, and the ledger agrees.
    let charged = || replicas.iter().map(|r| r.tokens("charged")).sum::<u64>();
    eventually("every settle ran", Duration::from_secs(10), || {
        charged() == used
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_in_process() {
    let s = Store::in_memory();
    three_replicas_stay_within_the_bound([s.clone(), s.clone(), s]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut stores = Vec::new();
    for _ in 0..3 {
        let mut cfg = StoreConfig::new(server.url());
        cfg.prefix = format!("t{}", std::process::id());
        stores.push(Store::connect_with(cfg).await.unwrap());
    }
    let stores: [Store; 3] = stores.try_into().unwrap();
    three_replicas_stay_within_the_bound(stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_cluster() {
    let Some(cluster) = palisade_testkit::RedisCluster::start(3) else {
        return;
    };
    let mut stores = Vec::new();
    for _ in 0..3 {
        let mut cfg = StoreConfig::new(cluster.url());
        cfg.prefix = format!("t{}", std::process::id());
        stores.push(Store::connect_with(cfg).await.unwrap());
    }
    let stores: [Store; 3] = stores.try_into().unwrap();
    three_replicas_stay_within_the_bound(stores).await;
}

/// A replica killed mid-stream never settles: its reservation comes back
/// when the lease expires, on the other replicas' shared store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replicas_reservation_returns_after_the_lease() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lease = Duration::from_secs(2);
    let rule = TokenRule::per_day(200).lease(lease);
    let store = |_| async {
        let mut cfg = StoreConfig::new(server.url());
        cfg.prefix = format!("lease{}", std::process::id());
        Store::connect_with(cfg).await.unwrap()
    };
    let doomed = replica(store(0).await, rule, OnMissingUsage::Streamed, 100).await;
    let survivor = replica(store(1).await, rule, OnMissingUsage::Streamed, 100).await;
    // A stream starts on the doomed replica (reserving 1 + 150) and the
    // replica dies before it ends: the settle never runs.
    let c = client();
    let req = request(doomed.addr, "dave")
        .header("x-hang", "1")
        .body(Full::new(Bytes::from(ask(150, true, true).to_string())))
        .unwrap();
    let res = c.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let reserved_at = std::time::Instant::now();
    // The replica "dies": its stream hangs and it never settles (the
    // response is kept open and unread, so no drop settles it either).
    let _open = res;
    let _doomed = doomed;
    // The survivor sees the reservation held...
    let (status, ..) = send(&c, survivor.addr, "dave", ask(100, false, false), &[]).await;
    if reserved_at.elapsed() < lease {
        assert_eq!(status, 429, "151 of 200 held by the dead replica");
    }
    // ...until the lease expires.
    let deadline = std::time::Instant::now() + lease + Duration::from_secs(5);
    loop {
        let (status, ..) = send(&c, survivor.addr, "dave", ask(100, false, false), &[]).await;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        survivor.decisions("admitted") == 1,
        "admitted once the lease expired"
    );
}

/// Log-only counts what it would refuse and sends it on; disabled does
/// nothing at all.
#[tokio::test]
async fn log_only_and_disabled_never_refuse() {
    use tower::{ServiceBuilder, ServiceExt};
    for mode in [palisade_llm::Mode::LogOnly, palisade_llm::Mode::Disabled] {
        let registry = prometheus::Registry::new();
        let layer = TokenBudgetLayer::builder(
            Store::in_memory(),
            HeaderKey::new("x-user"),
            TokenRule::per_day(100),
        )
        .mode(mode)
        .metrics(&TokenMetrics::register(&registry).unwrap())
        .build()
        .unwrap();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(|_req: http::Request<_>| async {
                let reply = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                    reply,
                ))))
            });
        for max in [90u64, 99, 500] {
            let req = http::Request::post("/v1/chat/completions")
                .header("x-user", "u")
                .body(Full::new(Bytes::from(ask(max, false, false).to_string())))
                .unwrap();
            let res = svc.clone().oneshot(req).await.unwrap();
            assert_eq!(res.status(), 200, "{mode:?} never refuses");
            res.into_body().collect().await.unwrap();
        }
        let shadow = metric(
            &registry,
            "palisade_llm_decisions_total",
            "outcome",
            "shadow_refused",
        );
        let admitted = metric(
            &registry,
            "palisade_llm_decisions_total",
            "outcome",
            "admitted",
        );
        match mode {
            palisade_llm::Mode::LogOnly => assert_eq!((admitted, shadow), (1, 2)),
            _ => assert_eq!((admitted, shadow), (0, 0)),
        }
    }
}
