//! Per-key breakers honour `KeyExtractor::refusal`: a `PeerIp` with
//! `MissingPeer::Refuse` and no peer address on the request answers the
//! extractor's error (HTTP 500 problem+json, gRPC `INTERNAL`, or
//! `BreakerError::Refused`) without calling the inner service, and counts
//! the request once in `palisade_missing_peer_total`.
//!
//! Every test holds one lock, so the process-wide missing-peer count moves
//! only by what the running test does.

use axum::{Router, routing::any};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use palisade_breaker::{BreakerError, CircuitBreakerLayer};
use palisade_core::key::{MISSING_PEER_MESSAGE, MissingPeer, PeerAddr, PeerIp};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

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

/// An axum app behind a per-client-IP HTTP breaker, counting the calls
/// that reach the handler; served with or without connect info.
async fn serve(policy: MissingPeer, connect_info: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let breaker = CircuitBreakerLayer::builder("per-client")
        .http()
        .per_key(PeerIp::new().when_missing(policy))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/",
            any(move || {
                seen.fetch_add(1, SeqCst);
                async { "ok" }
            }),
        )
        .layer(breaker);
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
    (addr, calls)
}

async fn send(addr: SocketAddr, grpc: bool) -> Response<Bytes> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::post(format!("http://{addr}/"));
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
async fn http_server_without_peer_answers_500_and_grpc_internal_without_calling_the_handler() {
    let _serial = SERIAL.lock().await;
    let registry = prometheus::Registry::new();
    palisade_core::metrics::register_missing_peer(&registry).unwrap();
    let (addr, calls) = serve(MissingPeer::Refuse, false).await;

    let before = missing_total(&registry);
    let res = send(addr, false).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(problem["status"], 500);
    assert_eq!(problem["detail"], MISSING_PEER_MESSAGE);
    assert_eq!(
        missing_total(&registry) - before,
        1.0,
        "counted once: refusal, no extract"
    );

    let res = send(addr, true).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "13", "INTERNAL");
    assert!(
        res.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("PeerAddr")
    );
    assert_eq!(missing_total(&registry) - before, 2.0);
    assert_eq!(calls.load(SeqCst), 0, "the handler was never called");

    // The same breaker on a server that gives the peer lets requests through.
    let (addr, calls) = serve(MissingPeer::Refuse, true).await;
    assert_eq!(send(addr, false).await.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 1);
    // And so does the default policy without a peer (one shared key).
    let (addr, calls) = serve(MissingPeer::default(), false).await;
    assert_eq!(send(addr, false).await.status(), StatusCode::OK);
    assert_eq!(calls.load(SeqCst), 1);
}

/// A counting inner service for the in-process tests.
fn counted(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Empty<Bytes>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send {
    service_fn(move |_req: Request<()>| {
        calls.fetch_add(1, SeqCst);
        async { Ok::<_, std::io::Error>(Response::new(Empty::new())) }
    })
}

fn with_peer() -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(PeerAddr("203.0.113.9:5000".parse().unwrap()));
    req
}

#[tokio::test]
async fn typed_flavour_returns_breaker_error_refused() {
    let _serial = SERIAL.lock().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder("typed")
        .per_key(strict())
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(counted(calls.clone()));

    let before = PeerIp::missing_count();
    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    assert!(err.is_refused(), "{err:?}");
    assert!(!err.is_open());
    let BreakerError::Refused(inner) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(inner.message(), MISSING_PEER_MESSAGE);
    let core = palisade_core::Error::from(err);
    assert_eq!(core.http_status(), 500);
    assert_eq!(PeerIp::missing_count() - before, 1, "counted once");
    assert_eq!(calls.load(SeqCst), 0);
    // No breaker was created or charged for the refused request.
    let breakers = layer.breakers().breakers();
    assert_eq!(breakers.len(), 1, "only the key-less one");
    assert_eq!(breakers[0].snapshot().rejected_calls, 0);

    // With a peer address the call goes through its own breaker.
    svc.clone().oneshot(with_peer()).await.unwrap();
    assert_eq!(calls.load(SeqCst), 1);
    let keys: Vec<_> = layer
        .breakers()
        .breakers()
        .iter()
        .filter_map(|b| b.key().map(str::to_owned))
        .collect();
    assert_eq!(keys, ["203.0.113.9"]);

    // The default policy without a peer: one shared key, still served.
    let lenient = ServiceBuilder::new()
        .layer(
            CircuitBreakerLayer::builder("typed-lenient")
                .per_key(PeerIp::new())
                .build()
                .unwrap(),
        )
        .service(counted(calls.clone()));
    lenient.oneshot(Request::new(())).await.unwrap();
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test]
async fn http_fallback_answers_the_refusal_not_the_fallback() {
    let _serial = SERIAL.lock().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let fallbacks = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder("fallback-http")
        .http()
        .per_key(strict())
        .fallback(counted(fallbacks.clone()))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(counted(calls.clone()));

    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let grpc = Request::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "13");
    assert_eq!(calls.load(SeqCst), 0);
    assert_eq!(fallbacks.load(SeqCst), 0);

    assert_eq!(svc.oneshot(with_peer()).await.unwrap().status(), 200);
    assert_eq!(calls.load(SeqCst), 1);
}

#[tokio::test]
async fn typed_fallback_answers_a_refusal_without_calling_the_service() {
    let _serial = SERIAL.lock().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let fallbacks = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder("fallback-typed")
        .per_key(strict())
        .fallback(counted(fallbacks.clone()))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(counted(calls.clone()));
    svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(calls.load(SeqCst), 0, "the inner service is not called");
    assert_eq!(fallbacks.load(SeqCst), 1, "its error type cannot carry it");
    svc.oneshot(with_peer()).await.unwrap();
    assert_eq!(calls.load(SeqCst), 1);
}
