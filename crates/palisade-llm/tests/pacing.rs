//! Provider pacing between replicas: once replica A has seen the provider
//! say its budget is spent (`x-ratelimit-remaining-tokens: 0` until a
//! reset, or a 429 with `Retry-After`), replica B answers 429 itself
//! without calling the provider, and calls it again after the reset.
//!
//! On the in-process store with a paused tokio clock (replicas as services
//! over one store, exact), and through real loopback servers on the
//! in-process store and on a real redis-server (short real resets, bounded
//! waits).

use axum::{Router, body::Body};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade_llm::{PacingMetrics, ProviderPacingLayer};
use palisade_store::{Store, StoreConfig};
use palisade_testkit::RedisServer;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tower::{Service, ServiceBuilder, ServiceExt};

/// The fake provider's answer to a request. `x-say` picks it:
/// `tokens-spent:<go duration>` — 200 with `x-ratelimit-remaining-tokens: 0`
/// until that reset; `429:<seconds>` — 429 with `Retry-After`; absent —
/// 200 with budget left.
fn provider_answer(headers: &HeaderMap) -> Response<Full<Bytes>> {
    let say = headers
        .get("x-say")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = r#"{"object":"chat.completion","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
    let b = Response::builder()
        .header("content-type", "application/json")
        .header("x-ratelimit-limit-requests", "500")
        .header("x-ratelimit-remaining-requests", "499")
        .header("x-ratelimit-reset-requests", "120ms");
    if let Some(reset) = say.strip_prefix("tokens-spent:") {
        b.header("x-ratelimit-remaining-tokens", "0")
            .header("x-ratelimit-reset-tokens", reset)
            .body(Full::new(Bytes::from_static(ok.as_bytes())))
            .unwrap()
    } else if let Some(secs) = say.strip_prefix("429:") {
        let err = r#"{"error":{"message":"Rate limit reached","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
        b.status(429)
            .header("x-ratelimit-remaining-tokens", "12")
            .header("x-ratelimit-reset-tokens", "1s")
            .header("retry-after", secs)
            .body(Full::new(Bytes::from_static(err.as_bytes())))
            .unwrap()
    } else {
        b.header("x-ratelimit-remaining-tokens", "30000")
            .header("x-ratelimit-reset-tokens", "2s")
            .body(Full::new(Bytes::from_static(ok.as_bytes())))
            .unwrap()
    }
}

fn metric(registry: &prometheus::Registry, name: &str, label: &str, value: &str) -> i64 {
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
        .map(|m| (m.get_gauge().get_value() + m.get_counter().get_value()) as i64)
        .sum()
}

fn ask(key: &str, say: &str) -> Request<Full<Bytes>> {
    let mut b =
        Request::post("/v1/chat/completions").header("authorization", format!("Bearer {key}"));
    if !say.is_empty() {
        b = b.header("x-say", say);
    }
    b.body(Full::new(Bytes::from_static(b"{}"))).unwrap()
}

/// A replica over an in-process provider counting its calls.
fn service_replica(
    store: &Store,
    calls: &Arc<AtomicUsize>,
    registry: &prometheus::Registry,
    wait: Option<(Duration, usize)>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<palisade_core::PalisadeBody<Full<Bytes>>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    let mut b = ProviderPacingLayer::builder(store.clone())
        .upstream("openai")
        .path_prefix("/v1/")
        .metrics(&PacingMetrics::register(registry).unwrap());
    if let Some((max_wait, n)) = wait {
        b = b.wait(max_wait, n);
    }
    let calls = calls.clone();
    ServiceBuilder::new()
        .layer(b.build().unwrap())
        .service_fn(move |req: Request<Full<Bytes>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let res = provider_answer(req.headers());
            async move { Ok::<_, Infallible>(res) }
        })
}

async fn problem(res: Response<palisade_core::PalisadeBody<Full<Bytes>>>) -> serde_json::Value {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(start_paused = true)]
async fn b_refuses_after_a_saw_tokens_spent_then_calls_after_the_reset() {
    let store = Store::in_memory();
    let calls = Arc::new(AtomicUsize::new(0));
    let (ra, rb) = (prometheus::Registry::new(), prometheus::Registry::new());
    let a = service_replica(&store, &calls, &ra, None);
    let b = service_replica(&store, &calls, &rb, None);

    let res = a
        .clone()
        .oneshot(ask("sk-1", "tokens-spent:6m0s"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the provider's answer passes");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        metric(&ra, "palisade_llm_provider_remaining", "kind", "tokens"),
        0
    );
    assert_eq!(
        metric(&ra, "palisade_llm_provider_remaining", "kind", "requests"),
        499
    );

    let refused = b.clone().oneshot(ask("sk-1", "")).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "B did not call the provider"
    );
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((359..=360).contains(&retry), "{retry}");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let p = problem(refused).await;
    assert_eq!(
        p["type"],
        "https://palisade.invalid/problems/provider-quota"
    );
    assert!(
        p.to_string().contains("x-ratelimit-remaining-tokens"),
        "names the provider's limit: {p}"
    );
    assert_eq!(
        metric(
            &rb,
            "palisade_llm_provider_pacing_total",
            "outcome",
            "refused"
        ),
        1
    );

    // Another credential has its own budget; paths outside the prefix are
    // not paced.
    assert_eq!(
        b.clone().oneshot(ask("sk-2", "")).await.unwrap().status(),
        200
    );
    let other = Request::get("/health")
        .header("authorization", "Bearer sk-1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(b.clone().oneshot(other).await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Just before the reset: still refused. After it: called again.
    tokio::time::advance(Duration::from_secs(359)).await;
    assert_eq!(
        b.clone().oneshot(ask("sk-1", "")).await.unwrap().status(),
        429
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    tokio::time::advance(Duration::from_secs(1) + Duration::from_millis(1)).await;
    assert_eq!(
        b.clone().oneshot(ask("sk-1", "")).await.unwrap().status(),
        200
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        metric(&rb, "palisade_llm_provider_remaining", "kind", "tokens"),
        30000
    );
}

#[tokio::test(start_paused = true)]
async fn b_refuses_after_a_saw_a_429_with_retry_after() {
    let store = Store::in_memory();
    let calls = Arc::new(AtomicUsize::new(0));
    let (ra, rb) = (prometheus::Registry::new(), prometheus::Registry::new());
    let a = service_replica(&store, &calls, &ra, None);
    let b = service_replica(&store, &calls, &rb, None);

    let res = a.clone().oneshot(ask("sk-1", "429:20")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.headers()["content-type"],
        "application/json",
        "the provider's own"
    );
    assert_eq!(
        metric(
            &ra,
            "palisade_llm_provider_pacing_total",
            "outcome",
            "spent"
        ),
        1
    );
    for replica in [&a, &b] {
        let refused = replica.clone().oneshot(ask("sk-1", "")).await.unwrap();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "20");
        assert!(problem(refused).await.to_string().contains("retry-after"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(20) + Duration::from_millis(1)).await;
    assert_eq!(
        b.clone().oneshot(ask("sk-1", "")).await.unwrap().status(),
        200
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn by_setting_b_waits_for_the_reset_in_a_bounded_queue() {
    let store = Store::in_memory();
    let calls = Arc::new(AtomicUsize::new(0));
    let (ra, rb) = (prometheus::Registry::new(), prometheus::Registry::new());
    let a = service_replica(&store, &calls, &ra, None);
    // Waits up to 10 s, one request at a time.
    let b = service_replica(&store, &calls, &rb, Some((Duration::from_secs(10), 1)));

    assert_eq!(
        a.clone()
            .oneshot(ask("sk-1", "429:5"))
            .await
            .unwrap()
            .status(),
        429
    );
    // The wall clock moves on while tokio's is paused: the wait B computes
    // from the shared reset time is now a few milliseconds shorter than the
    // shared entry's life (as between replicas whose clocks tick apart).
    // Waiting it through must still send the call, not take the entry that
    // outlives it by a tick for a new 429.
    std::thread::sleep(Duration::from_millis(3));
    let started = tokio::time::Instant::now();
    let (first, second) = tokio::join!(
        b.clone().oneshot(ask("sk-1", "")),
        b.clone().oneshot(ask("sk-1", ""))
    );
    let mut statuses = [first.unwrap().status(), second.unwrap().status()];
    statuses.sort();
    // One waited and was sent; the queue was full for the other.
    assert_eq!(statuses, [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS]);
    assert!(
        started.elapsed() >= Duration::from_millis(4990),
        "sent after the reset"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        metric(
            &rb,
            "palisade_llm_provider_pacing_total",
            "outcome",
            "waited"
        ),
        1
    );
    assert_eq!(
        metric(
            &rb,
            "palisade_llm_provider_pacing_total",
            "outcome",
            "refused"
        ),
        1
    );

    // A wait longer than the setting is refused at once (once the first
    // entry, living the 3 ms of skew longer, has gone).
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_eq!(
        a.clone()
            .oneshot(ask("sk-1", "429:60"))
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        b.clone().oneshot(ask("sk-1", "")).await.unwrap().status(),
        429
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// A 429 palisade answered itself (a token budget inside the pacing layer)
/// is not taken for the provider's.
#[tokio::test(start_paused = true)]
async fn palisades_own_429s_are_not_the_providers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(
            ProviderPacingLayer::builder(Store::in_memory())
                .build()
                .unwrap(),
        )
        .service_fn(move |_req: Request<Full<Bytes>>| {
            seen.fetch_add(1, Ordering::SeqCst);
            let res = palisade_core::Error::new(palisade_core::ErrorKind::RateLimited, "budget")
                .with_retry_after(Duration::from_secs(3600))
                .into_http_response::<Full<Bytes>>(false);
            async move { Ok::<_, Infallible>(res) }
        });
    for _ in 0..2 {
        assert_eq!(
            svc.clone().oneshot(ask("sk-1", "")).await.unwrap().status(),
            429
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the second call went through"
    );
}

/// A replica on loopback: the pacing layer in front of a forwarder to the
/// provider at `provider`.
struct Replica {
    addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

async fn serve(app: Router) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, server)
}

async fn replica(store: Store, provider: SocketAddr) -> Replica {
    let c = client();
    let forward = tower::service_fn(move |req: Request<Body>| {
        let c = c.clone();
        async move {
            let (mut parts, body) = req.into_parts();
            parts.uri = format!("http://{provider}{}", parts.uri.path())
                .parse()
                .unwrap();
            let res = match c.request(Request::from_parts(parts, body)).await {
                Ok(res) => res.map(Body::new),
                Err(e) => Response::builder()
                    .status(502)
                    .body(Body::from(e.to_string()))
                    .unwrap(),
            };
            Ok::<_, Infallible>(res)
        }
    });
    let svc = ServiceBuilder::new()
        .map_response(|r: Response<palisade_core::PalisadeBody<Body>>| r.map(Body::new))
        .layer(
            ProviderPacingLayer::builder(store)
                .upstream("openai")
                .build()
                .unwrap(),
        )
        .service(forward);
    let (addr, server) = serve(Router::new().fallback_service(svc)).await;
    Replica { addr, server }
}

async fn send(addr: SocketAddr, key: &str, say: &str) -> (StatusCode, HeaderMap) {
    let mut b = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"));
    if !say.is_empty() {
        b = b.header("x-say", say);
    }
    let req = b.body(Body::from("{}")).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client().request(req))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let (parts, body) = res.into_parts();
    tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body within 10 s")
        .unwrap();
    (parts.status, parts.headers)
}

/// Over real servers on `stores` (one per replica, sharing state):
/// credential `sk-long` is spent for minutes (B refuses, deterministically),
/// `sk-short` for one second (B reaches the provider again once it has
/// passed: polled, at most 10 s).
async fn replicas_share_the_providers_budget(stores: [Store; 2]) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let provider = Router::new().fallback(move |headers: HeaderMap| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move { provider_answer(&headers).map(Body::new) }
    });
    let (provider, _provider_server) = serve(provider).await;
    let [sa, sb] = stores;
    let a = replica(sa, provider).await;
    let b = replica(sb, provider).await;

    let (status, _) = send(a.addr, "sk-long", "tokens-spent:10m0s").await;
    assert_eq!(status, 200);
    let (status, _) = send(a.addr, "sk-short", "429:1").await;
    assert_eq!(status, 429);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let (status, headers) = send(b.addr, "sk-long", "").await;
    assert_eq!(status, 429);
    assert_eq!(headers["content-type"], "application/problem+json");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=600).contains(&retry), "{retry}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "B did not call the provider"
    );

    // sk-short: reached again once the second has passed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = calls.load(Ordering::SeqCst);
        let (status, headers) = send(b.addr, "sk-short", "").await;
        if status == 200 {
            assert_eq!(calls.load(Ordering::SeqCst), before + 1);
            break;
        }
        assert_eq!(status, 429);
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            before,
            "refused without a call"
        );
        assert!(Instant::now() < deadline, "still refused after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // sk-long is still spent on both replicas.
    for r in [&a, &b] {
        assert_eq!(send(r.addr, "sk-long", "").await.0, 429);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_replicas_in_process() {
    let s = Store::in_memory();
    replicas_share_the_providers_budget([s.clone(), s]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_replicas_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut stores = Vec::new();
    for _ in 0..2 {
        let mut cfg = StoreConfig::new(server.url());
        cfg.prefix = format!("pace{}", std::process::id());
        stores.push(Store::connect_with(cfg).await.unwrap());
    }
    replicas_share_the_providers_budget(stores.try_into().unwrap()).await;
}
