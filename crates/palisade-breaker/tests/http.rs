//! The HTTP flavour through a real axum (hyper) server on 127.0.0.1.
//!
//! gRPC is tested at the HTTP level: requests with
//! `content-type: application/grpc` through the same real server, checking
//! the trailers-only `grpc-status` answer (no protoc / codegen needed).

use axum::{Router, http::StatusCode, routing::any};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use palisade_breaker::{BreakerRegistry, CircuitBreakerLayer, State};
use std::net::SocketAddr;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    c: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
    grpc: bool,
) -> http::Response<Bytes> {
    let mut req = http::Request::post(format!("http://{addr}{path}"));
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let res = c.request(req.body(Empty::new()).unwrap()).await.unwrap();
    let (parts, body) = res.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn axum_server_answers_503_with_retry_after_and_grpc_unavailable() {
    let registry = BreakerRegistry::new();
    let breaker = CircuitBreakerLayer::builder("api")
        .http()
        .failure_threshold(2)
        .registry(&registry)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/ok", any(|| async { "fine" }))
        .route("/missing", any(|| async { StatusCode::NOT_FOUND }))
        .route(
            "/broken",
            any(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "down") }),
        )
        .layer(breaker);
    let addr = serve(app).await;
    let c = client();

    // 4xx are not failures.
    for _ in 0..5 {
        assert_eq!(send(&c, addr, "/missing", false).await.status(), 404);
    }
    assert_eq!(registry.get("api").unwrap().state(), State::Closed);

    for _ in 0..2 {
        assert_eq!(send(&c, addr, "/broken", false).await.status(), 500);
    }
    let res = send(&c, addr, "/ok", false).await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "60");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let json: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    assert_eq!(json["status"], 503);

    let res = send(&c, addr, "/ok", true).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["content-type"], "application/grpc");

    registry.reset("api");
    let res = send(&c, addr, "/ok", false).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.body(), "fine");
}

#[tokio::test]
async fn grpc_error_statuses_trip_the_breaker() {
    let breaker = CircuitBreakerLayer::builder("grpc")
        .http()
        .failure_threshold(2)
        .build()
        .unwrap();
    let handle = breaker.breaker().unwrap();
    // A gRPC handler answering UNAVAILABLE (14) in the headers, as tonic
    // does for trailers-only errors; NOT_FOUND (5) blames the caller.
    let app = Router::new()
        .route(
            "/pkg.Svc/Unavailable",
            any(|| async {
                (
                    [("content-type", "application/grpc"), ("grpc-status", "14")],
                    "",
                )
            }),
        )
        .route(
            "/pkg.Svc/NotFound",
            any(|| async {
                (
                    [("content-type", "application/grpc"), ("grpc-status", "5")],
                    "",
                )
            }),
        )
        .layer(breaker);
    let addr = serve(app).await;
    let c = client();
    for _ in 0..3 {
        send(&c, addr, "/pkg.Svc/NotFound", true).await;
    }
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..2 {
        send(&c, addr, "/pkg.Svc/Unavailable", true).await;
    }
    assert_eq!(handle.state(), State::Open);
    let res = send(&c, addr, "/pkg.Svc/NotFound", true).await;
    assert_eq!(res.headers()["grpc-status"], "14");
}
