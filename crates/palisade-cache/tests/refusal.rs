//! The caches honour `KeyExtractor::refusal`: a `PeerIp` with
//! `MissingPeer::Refuse` and no peer address on the request answers the
//! extractor's error (HTTP 500 problem+json, gRPC `INTERNAL`, or
//! `CacheError::KeyRefused`) without calling the inner service or storing
//! anything, and counts the request once in `palisade_missing_peer_total`.
//!
//! Every test holds one lock, so the process-wide missing-peer count moves
//! only by what the running test does.

use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use palisade_cache::{CacheBuilder, CacheError, CacheLayer, CacheServiceLayer};
use palisade_core::key::{MISSING_PEER_MESSAGE, MissingPeer, PeerAddr, PeerIp};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
};
use tower::{BoxError, Layer, ServiceExt, service_fn};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn strict() -> PeerIp {
    PeerIp::new().when_missing(MissingPeer::Refuse)
}

fn missing_total(registry: &prometheus::Registry) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == "palisade_missing_peer_total")
        .expect("registered")
        .get_metric()[0]
        .get_counter()
        .get_value()
}

fn with_peer<B>(mut req: Request<B>) -> Request<B> {
    req.extensions_mut()
        .insert(PeerAddr("203.0.113.9:5000".parse().unwrap()));
    req
}

/// A cacheable upstream (`public, max-age=60`) that counts its calls.
fn upstream(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<axum::body::Body>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send {
    service_fn(move |_req: Request<axum::body::Body>| {
        let n = calls.fetch_add(1, SeqCst) + 1;
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "public, max-age=60")
                    .body(Full::new(Bytes::from(format!("call {n}"))))
                    .unwrap(),
            )
        }
    })
}

async fn send(addr: SocketAddr, grpc: bool) -> Response<Bytes> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(format!("http://{addr}/item"));
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let res = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn http_cache_behind_a_server_without_peer_answers_500_and_stores_nothing() {
    let _serial = SERIAL.lock().await;
    let registry = prometheus::Registry::new();
    palisade_core::metrics::register_missing_peer(&registry).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::builder()
        .name("per-client")
        .build()
        .unwrap()
        .key(strict());
    // axum served without connect info: requests carry no peer address.
    let app = Router::new().route_service("/item", layer.layer(upstream(calls.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let before = missing_total(&registry);
    let res = send(addr, false).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(!res.headers().contains_key("x-cache"));
    let problem: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(problem["status"], 500);
    assert_eq!(problem["detail"], MISSING_PEER_MESSAGE);
    assert_eq!(
        missing_total(&registry) - before,
        1.0,
        "counted once: refusal, no extract"
    );

    // gRPC callers get INTERNAL (checked before gRPC's own bypass).
    let res = send(addr, true).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "13");
    assert_eq!(missing_total(&registry) - before, 2.0);
    assert_eq!(calls.load(SeqCst), 0, "the upstream was never called");
    let stats = layer.handle().stats();
    assert_eq!((stats.hits, stats.misses, stats.bypassed), (0, 0, 0));

    // Nothing was stored: the same URI with a peer is a miss, then a hit.
    let svc = layer.layer(upstream(calls.clone()));
    let req = || {
        with_peer(
            Request::get(format!("http://{addr}/item"))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
    };
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert_eq!(
        svc.oneshot(req()).await.unwrap().headers()["x-cache"],
        "HIT"
    );
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test]
async fn http_cache_default_policy_still_serves_and_caches_without_peer() {
    let _serial = SERIAL.lock().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new().key(PeerIp::new());
    let svc = layer.layer(upstream(calls.clone()));
    let req = || {
        Request::get("http://example.com/item")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-cache"], "MISS");
    let res = svc.oneshot(req()).await.unwrap();
    assert_eq!(res.headers()["x-cache"], "HIT", "one shared key");
    assert_eq!(calls.load(SeqCst), 1);
}

fn counted<E>(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<Request<()>, Response = String, Error = E, Future = impl Send> + Clone + Send
{
    service_fn(move |_req: Request<()>| {
        let n = calls.fetch_add(1, SeqCst) + 1;
        async move { Ok::<_, E>(format!("call {n}")) }
    })
}

fn svc_layer(key: PeerIp) -> CacheServiceLayer<String, PeerIp> {
    CacheServiceLayer::new(CacheBuilder::default().name("svc"), key).unwrap()
}

#[tokio::test]
async fn generic_service_returns_key_refused_when_the_error_can_carry_it() {
    let _serial = SERIAL.lock().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = svc_layer(strict());

    // BoxError: a boxed CacheError::KeyRefused.
    let svc = layer.layer(counted::<BoxError>(calls.clone()));
    let before = PeerIp::missing_count();
    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    let err = err.downcast::<CacheError>().unwrap();
    assert!(err.is_key_refused(), "{err:?}");
    let core = palisade_core::Error::from(*err);
    assert_eq!(core.http_status(), 500);
    assert_eq!(core.message(), MISSING_PEER_MESSAGE);
    assert_eq!(PeerIp::missing_count() - before, 1, "counted once");

    // CacheError itself.
    let typed = layer.layer(counted::<CacheError>(calls.clone()));
    let err = typed.oneshot(Request::new(())).await.unwrap_err();
    assert!(matches!(err, CacheError::KeyRefused(_)), "{err:?}");

    // palisade_core::Error: the extractor's error as it is.
    let core = layer.layer(counted::<palisade_core::Error>(calls.clone()));
    let err = core.oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err.http_status(), 500);
    assert_eq!(err.message(), MISSING_PEER_MESSAGE);

    assert_eq!(calls.load(SeqCst), 0, "the inner service was never called");
    let stats = layer.handle().stats();
    assert_eq!((stats.hits, stats.misses, stats.bypassed), (0, 0, 0));

    // Nothing was stored: with a peer, a miss then a hit.
    assert_eq!(
        svc.clone()
            .oneshot(with_peer(Request::new(())))
            .await
            .unwrap(),
        "call 1"
    );
    assert_eq!(
        svc.oneshot(with_peer(Request::new(()))).await.unwrap(),
        "call 1"
    );
    let stats = layer.handle().stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test]
async fn generic_service_passes_through_uncached_when_the_error_cannot_carry_it() {
    let _serial = SERIAL.lock().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = svc_layer(strict());
    let svc = layer.layer(counted::<Infallible>(calls.clone()));
    let before = PeerIp::missing_count();
    for n in 1..=2 {
        let got = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(got, format!("call {n}"), "never cached");
    }
    assert_eq!(PeerIp::missing_count() - before, 2, "once per request");
    let stats = layer.handle().stats();
    assert_eq!((stats.hits, stats.misses, stats.bypassed), (0, 0, 2));

    // The default policy without a peer: one shared key, cached.
    let lenient = svc_layer(PeerIp::new());
    let svc = lenient.layer(counted::<Infallible>(calls.clone()));
    assert_eq!(
        svc.clone().oneshot(Request::new(())).await.unwrap(),
        "call 3"
    );
    assert_eq!(svc.oneshot(Request::new(())).await.unwrap(), "call 3");
}
