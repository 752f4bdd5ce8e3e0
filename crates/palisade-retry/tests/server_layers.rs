//! The timeout and bulkhead layers on a real axum server: they answer 504 /
//! 503 themselves, so the router needs no `HandleErrorLayer`.

mod support;

use axum::{Router, routing::get};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use palisade_core::key::PathKey;
use palisade_retry::{bulkhead::BulkheadLayer, timeout::TimeoutLayer};
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt};

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(start_paused = true)]
async fn axum_router_answers_504_and_503_by_itself() {
    let app = Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "slow"
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(
            ServiceBuilder::new()
                .layer(TimeoutLayer::new(Duration::from_secs(1)))
                .layer(BulkheadLayer::per_key(1, PathKey)),
        );
    let addr = serve(app).await;
    let client = support::client::<Full<Bytes>>();
    let call = |path: &str| {
        client.clone().oneshot(
            Request::get(format!("http://{addr}{path}"))
                .body(Full::default())
                .unwrap(),
        )
    };

    let res = call("/fast").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "fast");

    // Two slow calls at once: the bulkhead of /slow holds one; the other is
    // answered 503 at once; the first one times out with 504.
    let (a, b) = tokio::join!(call("/slow"), call("/slow"));
    let mut statuses = [a.unwrap().status(), b.unwrap().status()];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::SERVICE_UNAVAILABLE, StatusCode::GATEWAY_TIMEOUT]
    );
    // /fast has its own bulkhead.
    assert_eq!(call("/fast").await.unwrap().status(), StatusCode::OK);
}
