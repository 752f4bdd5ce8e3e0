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

/// A gRPC status that arrives in the trailers, after messages (as grpc-go
/// and grpcio send a streaming call's error), is judged when the body ends.
#[tokio::test]
async fn grpc_statuses_in_trailers_are_judged_at_the_end_of_the_body() {
    use http_body::Frame;
    use http_body_util::StreamBody;
    use tower::{Layer, ServiceExt};

    type Frames = futures_util::stream::Iter<
        std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn grpc_stream(status: &'static str) -> http::Response<StreamBody<Frames>> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", status.parse().unwrap());
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        http::Response::builder()
            .header("content-type", "application/grpc")
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap()
    }

    let layer = CircuitBreakerLayer::builder("grpc-trailers")
        .http()
        .failure_threshold(2)
        .build()
        .unwrap();
    let handle = layer.breaker().unwrap();
    let svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
        let status = if req.uri().path().ends_with("Ok") {
            "0"
        } else {
            "14"
        };
        Ok::<_, std::convert::Infallible>(grpc_stream(status))
    }));
    let call = |path: &'static str| {
        let svc = svc.clone();
        async move {
            let req = http::Request::builder()
                .uri(path)
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            svc.oneshot(req).await.unwrap()
        }
    };
    // OK in the trailers: successes.
    for _ in 0..3 {
        call("/pkg.Svc/Ok")
            .await
            .into_body()
            .collect()
            .await
            .unwrap();
    }
    assert_eq!(handle.snapshot().successful_calls, 3);
    // UNAVAILABLE in the trailers: not known at the head …
    let res = call("/pkg.Svc/Fail").await;
    assert_eq!(handle.snapshot().failed_calls, 0);
    // … but once the body ends.
    let trailers = res.into_body().collect().await.unwrap().trailers().cloned();
    assert_eq!(trailers.unwrap()["grpc-status"], "14");
    assert_eq!(handle.snapshot().failed_calls, 1);
    call("/pkg.Svc/Fail")
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    assert_eq!(handle.state(), State::Open);
}
