//! A real server on loopback that tells the layer nothing about the peer
//! (axum served without `ConnectInfo`): what each `MissingPeer` policy does
//! to a per-IP limit, and the `palisade_missing_peer_total` counter.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use palisade_core::key::{MissingPeer, PeerIp};
use palisade_ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter};
use std::net::{IpAddr, SocketAddr};

type Body = Empty<Bytes>;

/// Serves `limit` over a handler answering 200, with or without connect
/// info; the server task ends with the test's runtime.
async fn serve(limit: Limit, connect_info: bool) -> SocketAddr {
    let limiter = RateLimiter::builder().limit(limit).build().unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(RateLimitLayer::new(limiter));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if connect_info {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        } else {
            axum::serve(listener, app).await
        }
    });
    addr
}

/// A client whose connections come from `from` (any 127.0.0.0/8 address
/// is loopback on Linux), so two clients are two peers.
fn client(from: &str) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from.parse::<IpAddr>().unwrap()));
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

async fn get(
    client: &Client<HttpConnector, Body>,
    addr: SocketAddr,
    grpc: bool,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::builder().uri(format!("http://{addr}/"));
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let res = client
        .request(req.body(Body::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn per_ip(policy: MissingPeer, per_hour: u32) -> Limit {
    Limit::new(
        "ip",
        PeerIp::new().when_missing(policy),
        Quota::per_hour(per_hour),
    )
}

fn missing_peer_total(registry: &prometheus::Registry) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == "palisade_missing_peer_total")
        .expect("registered")
        .get_metric()[0]
        .get_counter()
        .get_value()
}

#[tokio::test]
async fn refuse_answers_500_naming_the_missing_setup_and_counts() {
    let registry = prometheus::Registry::new();
    palisade_core::metrics::register_missing_peer(&registry).unwrap();
    let addr = serve(per_ip(MissingPeer::Refuse, 1000), false).await;
    let client = client("127.0.0.1");
    let before = missing_peer_total(&registry);
    let (status, headers, body) = get(&client, addr, false).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["status"], 500);
    let detail = problem["detail"].as_str().unwrap();
    assert_eq!(detail, palisade_core::key::MISSING_PEER_MESSAGE);
    for setup in [
        "PeerAddr",
        "into_make_service_with_connect_info::<SocketAddr>()",
        "tonic",
    ] {
        assert!(detail.contains(setup), "{setup}: {detail}");
    }
    // gRPC callers get INTERNAL, trailers-only.
    let (status, headers, _) = get(&client, addr, true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "13");
    assert!(
        headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("PeerAddr")
    );
    // Both requests were counted (other tests may add more meanwhile).
    assert!(missing_peer_total(&registry) - before >= 2.0);

    // The same limit on a server that gives the peer lets requests through.
    let addr = serve(per_ip(MissingPeer::Refuse, 1000), true).await;
    assert_eq!(get(&client, addr, false).await.0, StatusCode::OK);
}

#[tokio::test]
async fn shared_key_still_limits_every_client_together_and_counts() {
    let registry = prometheus::Registry::new();
    palisade_core::metrics::register_missing_peer(&registry).unwrap();
    let (a, b) = (client("127.0.0.1"), client("127.0.0.2"));

    // With connect info, two peers have a quota of 2 each.
    let addr = serve(per_ip(MissingPeer::SharedKey, 2), true).await;
    let mut statuses = Vec::new();
    for c in [&a, &b, &a, &b] {
        statuses.push(get(c, addr, false).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200], "two peers, two keys");

    // Without, they share one key: the limit still holds, for both together.
    let addr = serve(per_ip(MissingPeer::SharedKey, 2), false).await;
    let before = missing_peer_total(&registry);
    let mut statuses = Vec::new();
    for c in [&a, &b, &a, &b] {
        statuses.push(get(c, addr, false).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429], "one shared key");
    assert!(missing_peer_total(&registry) - before >= 4.0);
}

#[tokio::test]
async fn skip_lets_every_request_through_and_counts() {
    let registry = prometheus::Registry::new();
    palisade_core::metrics::register_missing_peer(&registry).unwrap();
    let addr = serve(per_ip(MissingPeer::Skip, 1), false).await;
    let client = client("127.0.0.1");
    let before = missing_peer_total(&registry);
    for _ in 0..3 {
        assert_eq!(get(&client, addr, false).await.0, StatusCode::OK);
    }
    assert!(missing_peer_total(&registry) - before >= 3.0);
}

/// The per-call layer honours a refusal too: the inner service is never
/// called, and the error converts back into the 500.
#[tokio::test]
async fn call_layer_refuses_without_calling_the_service() {
    use palisade_ratelimit::{RateLimitCallLayer, RateLimitError};
    use tower::{BoxError, ServiceBuilder, ServiceExt};
    let limiter = RateLimiter::builder()
        .limit(per_ip(MissingPeer::Refuse, 1000))
        .build()
        .unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(RateLimitCallLayer::new(
            limiter,
            "ip",
            PeerIp::new().when_missing(MissingPeer::Refuse),
        ))
        .service_fn(move |_req: Request<()>| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok::<_, BoxError>(()) }
        });
    let err = svc
        .clone()
        .oneshot(Request::new(()))
        .await
        .unwrap_err()
        .downcast::<RateLimitError>()
        .unwrap();
    assert!(matches!(*err, RateLimitError::KeyRefused(_)), "{err:?}");
    let core: palisade_core::Error = (*err).into();
    assert_eq!(core.http_status(), 500);
    assert_eq!(core.message(), palisade_core::key::MISSING_PEER_MESSAGE);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    // With a peer address the call goes through.
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(palisade_core::key::PeerAddr("192.0.2.7:1".parse().unwrap()));
    svc.oneshot(req).await.unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Shadow limits and log-only mode observe only: they never refuse, not
/// even a request without a peer.
#[tokio::test]
async fn shadow_limits_and_log_only_mode_never_refuse() {
    let client = client("127.0.0.1");
    let addr = serve(per_ip(MissingPeer::Refuse, 1000).shadow(true), false).await;
    assert_eq!(get(&client, addr, false).await.0, StatusCode::OK);

    let limiter = RateLimiter::builder()
        .limit(per_ip(MissingPeer::Refuse, 1000))
        .mode(palisade_ratelimit::Mode::LogOnly)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(RateLimitLayer::new(limiter));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(get(&client, addr, false).await.0, StatusCode::OK);
}
