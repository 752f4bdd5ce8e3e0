//! The layer over HTTP and gRPC, in-process backend.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use palisade_core::key::{ConstKey, HeaderKey, PeerAddr};
use palisade_ratelimit::{
    Algorithm, Limit, Mode, Quota, RateLimitLayer, RateLimitMetrics, RateLimiter, Tier, ToolName,
    UserId,
};
use std::{convert::Infallible, time::Duration};
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = Empty<Bytes>;

fn service(
    limiter: RateLimiter,
) -> impl Service<
    Request<Body>,
    Response = Response<palisade_core::PalisadeBody<Body>>,
    Error = Infallible,
    Future: Send,
> + Clone {
    ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service_fn(|_req: Request<Body>| async { Ok::<_, Infallible>(Response::new(Body::new())) })
}

fn header(res: &Response<impl Sized>, name: &str) -> String {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(start_paused = true)]
async fn exactly_n_then_429_then_refill_with_matching_headers() {
    let limiter = RateLimiter::builder()
        .limit(Limit::new("global", ConstKey("all"), Quota::per_minute(5)))
        .build()
        .unwrap();
    let svc = service(limiter);
    for i in 0..5u64 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
        // GCRA: emission interval 12 s; after i+1 requests the bucket is whole
        // again in 12 (i+1) s.
        assert_eq!(header(&res, "x-ratelimit-limit"), "5");
        assert_eq!(header(&res, "x-ratelimit-remaining"), (4 - i).to_string());
        assert_eq!(
            header(&res, "x-ratelimit-reset"),
            (12 * (i + 1)).to_string()
        );
        assert_eq!(header(&res, "ratelimit-policy"), "\"global\";q=5;w=60");
        assert_eq!(
            header(&res, "ratelimit"),
            format!("\"global\";r={};t={}", 4 - i, 12 * (i + 1))
        );
        assert!(res.headers().get("retry-after").is_none());
    }
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "12");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    assert_eq!(header(&res, "x-ratelimit-reset"), "60");
    assert_eq!(header(&res, "ratelimit"), "\"global\";r=0;t=60");
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["status"], 429);
    assert_eq!(json["type"], palisade_ratelimit::QUOTA_EXCEEDED);

    // One emission interval later exactly one more fits.
    tokio::time::advance(Duration::from_secs(12)).await;
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // After a whole period the whole burst is back.
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc.oneshot(Request::new(Body::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn fixed_window_through_the_layer() {
    let q = Quota::per_second(2).with_algorithm(Algorithm::FixedWindow);
    let limiter = RateLimiter::builder()
        .limit(Limit::new("w", ConstKey("all"), q))
        .build()
        .unwrap();
    let svc = service(limiter);
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1");
    tokio::time::advance(Duration::from_secs(1)).await;
    let res = svc.oneshot(Request::new(Body::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn strictest_limit_wins_and_refusals_count_nothing() {
    let limiter = RateLimiter::builder()
        .limit(Limit::per_user().with_quota(Quota::per_minute(3)))
        .limit(Limit::per_tool().with_quota(Quota::per_minute(2)))
        .build()
        .unwrap();
    let svc = service(limiter.clone());
    let req = |tool: &str| {
        let mut r = Request::new(Body::new());
        r.extensions_mut().insert(UserId::new("alice"));
        r.extensions_mut().insert(ToolName::new(tool));
        r
    };
    let res = svc.clone().oneshot(req("search")).await.unwrap();
    assert_eq!(header(&res, "ratelimit-policy"), "\"tool\";q=2;w=60");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "1");
    let res = svc.clone().oneshot(req("search")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The tool limit refuses: the user's count must not move.
    for _ in 0..3 {
        let res = svc.clone().oneshot(req("search")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&res, "ratelimit-policy"), "\"tool\";q=2;w=60");
    }
    // alice has 1 left: another tool passes once, then the user limit refuses.
    let res = svc.clone().oneshot(req("fetch")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "ratelimit-policy"), "\"user\";q=3;w=60");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    let res = svc.clone().oneshot(req("other")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "ratelimit-policy"), "\"user\";q=3;w=60");
    // The refused "other" call was not counted on its tool.
    let v = limiter.check_key("tool", &"other", 0).await.unwrap();
    assert_eq!(v.remaining(), 2);
    // A request without the keys skips those limits.
    let res = svc.oneshot(Request::new(Body::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("x-ratelimit-limit").is_none());
}

#[tokio::test(start_paused = true)]
async fn tiers_pick_the_quota_and_enterprise_is_unlimited() {
    let limiter = RateLimiter::builder()
        .limit(Limit::tiered("api_key", HeaderKey::new("x-api-key")))
        .tier_resolver(|req| {
            let key = req.headers().get("x-api-key")?.to_str().ok()?;
            Some(match key {
                k if k.starts_with("ent-") => Tier::ENTERPRISE,
                k if k.starts_with("pro-") => Tier::PREMIUM,
                _ => Tier::FREE,
            })
        })
        .build()
        .unwrap();
    let svc = service(limiter);
    let req = |key: Option<&str>| {
        let mut b = Request::builder();
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        b.body(Body::new()).unwrap()
    };
    let res = svc.clone().oneshot(req(Some("pro-1"))).await.unwrap();
    assert_eq!(header(&res, "x-ratelimit-limit"), "1000");
    let res = svc.clone().oneshot(req(Some("k-1"))).await.unwrap();
    assert_eq!(header(&res, "x-ratelimit-limit"), "60");
    for _ in 0..59 {
        let res = svc.clone().oneshot(req(Some("k-1"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc.clone().oneshot(req(Some("k-1"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    for _ in 0..2000 {
        let res = svc.clone().oneshot(req(Some("ent-1"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn default_tier_is_anonymous_ten_per_minute() {
    let limiter = RateLimiter::builder()
        .limit(Limit::tiered("ip", palisade_core::key::PeerIp::new()))
        .build()
        .unwrap();
    let svc = service(limiter);
    let req = || {
        let mut r = Request::new(Body::new());
        r.extensions_mut()
            .insert(PeerAddr("198.51.100.4:1".parse().unwrap()));
        r
    };
    for _ in 0..10 {
        assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), 200);
    }
    assert_eq!(svc.oneshot(req()).await.unwrap().status(), 429);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_never_rejects_but_counts() {
    let registry = prometheus::Registry::new();
    let metrics = RateLimitMetrics::register(&registry).unwrap();
    let limiter = RateLimiter::builder()
        .limit(Limit::new("global", ConstKey("all"), Quota::per_minute(3)))
        .mode(Mode::LogOnly)
        .metrics(&metrics)
        .build()
        .unwrap();
    let svc = service(limiter);
    for _ in 0..10 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
    let count = |outcome: &str| {
        registry
            .gather()
            .iter()
            .find(|f| f.name() == "palisade_ratelimit_decisions_total")
            .unwrap()
            .get_metric()
            .iter()
            .find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "outcome" && l.value() == outcome)
            })
            .map_or(0.0, |m| m.get_counter().get_value())
    };
    assert_eq!(count("allowed"), 3.0);
    assert_eq!(count("shadow_rejected"), 7.0);
    assert_eq!(count("rejected"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_shadow_limit_beside_an_enforced_one() {
    let limiter = RateLimiter::builder()
        .limit(Limit::new("strict", ConstKey("all"), Quota::per_minute(1)).shadow(true))
        .limit(Limit::new("loose", ConstKey("all"), Quota::per_minute(3)))
        .build()
        .unwrap();
    let svc = service(limiter);
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit-policy"), "\"loose\";q=3;w=60");
    }
    let res = svc.oneshot(Request::new(Body::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(start_paused = true)]
async fn disabled_mode_passes_everything_without_headers() {
    let limiter = RateLimiter::builder()
        .limit(Limit::new("g", ConstKey("all"), Quota::per_minute(1)))
        .mode(Mode::Disabled)
        .build()
        .unwrap();
    let svc = service(limiter);
    for _ in 0..5 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("x-ratelimit-limit").is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_requests_get_resource_exhausted_with_metadata() {
    let limiter = RateLimiter::builder()
        .limit(Limit::new("g", ConstKey("all"), Quota::per_minute(1)))
        .build()
        .unwrap();
    let svc = service(limiter);
    let req = || {
        Request::builder()
            .header("content-type", "application/grpc")
            .body(Body::new())
            .unwrap()
    };
    assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), 200);
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "gRPC errors are trailers-only 200s"
    );
    assert_eq!(header(&res, "grpc-status"), "8");
    assert_eq!(header(&res, "retry-after"), "60");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
}

#[tokio::test(start_paused = true)]
async fn weighted_costs_from_the_request() {
    let limiter = RateLimiter::builder()
        .limit(
            Limit::new("tokens", ConstKey("all"), Quota::per_minute(10)).cost_fn(|req| {
                req.headers()
                    .get("x-cost")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(1)
            }),
        )
        .build()
        .unwrap();
    let svc = service(limiter);
    let req = |cost: u32| {
        Request::builder()
            .header("x-cost", cost.to_string())
            .body(Body::new())
            .unwrap()
    };
    let res = svc.clone().oneshot(req(7)).await.unwrap();
    assert_eq!(header(&res, "x-ratelimit-remaining"), "3");
    let res = svc.clone().oneshot(req(4)).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(
        header(&res, "retry-after"),
        "6",
        "one 6 s emission interval"
    );
    let res = svc.clone().oneshot(req(3)).await.unwrap();
    assert_eq!(res.status(), 200);
    let res = svc.oneshot(req(11)).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_none(), "can never pass");
}

/// A real axum server: `ConnectInfo` gives the peer, and an untrusted
/// client's `X-Forwarded-For` does not change its key.
#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let limiter = RateLimiter::builder()
        .limit(Limit::per_ip_behind(["10.0.0.0/8".parse().unwrap()]).with_quota(Quota::per_hour(2)))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(RateLimitLayer::new(limiter));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let req = Request::builder()
            .uri(format!("http://{addr}/"))
            .header("x-forwarded-for", format!("1.2.3.{i}"))
            .body(Body::new())
            .unwrap();
        let res = client.request(req).await.unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429], "one key: 127.0.0.1");
    server.abort();
}

/// On a store, a refused key is remembered in-process until its
/// retry-after, and not a moment longer.
#[tokio::test(start_paused = true)]
async fn store_memo_refuses_until_retry_after_then_lets_through() {
    let limiter = RateLimiter::builder()
        .limit(Limit::new("g", ConstKey("all"), Quota::per_minute(2)))
        .store(palisade_store::Store::in_memory())
        .build()
        .unwrap();
    let svc = service(limiter);
    for _ in 0..2 {
        let res = svc
            .clone()
            .oneshot(Request::new(Body::new()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "30");
    // Answered from the memo: same refusal, shrinking wait.
    tokio::time::advance(Duration::from_secs(20)).await;
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "10");
    tokio::time::advance(Duration::from_secs(10)).await;
    let res = svc
        .clone()
        .oneshot(Request::new(Body::new()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    let res = svc.oneshot(Request::new(Body::new())).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[test]
fn traits() {
    fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<RateLimitLayer>();
    send_sync::<RateLimiter>();
    send_sync::<
        palisade_ratelimit::RateLimit<
            tower::util::BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>,
        >,
    >();
    let limiter = RateLimiter::builder().build().unwrap();
    send(&limiter.check_key("ip", &"1.2.3.4", 1));
}
