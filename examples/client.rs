//! palisade on the client side: a hyper-util client wrapped in a rate limit,
//! a cache, request-body PII masking, retry and a circuit breaker, in the
//! order `palisade::ServiceBuilderExt` recommends.
//!
//! It calls a small axum server it starts on loopback, which fails now and
//! then, serves cacheable JSON and echoes request bodies; the server prints
//! `[server]` for every request that reaches it, so you can see what each
//! layer kept from going over the wire.
//!
//! Run with `cargo run --example client`.

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use palisade::ServiceBuilderExt;
use palisade::breaker::CircuitBreakerLayer;
use palisade::cache::CacheLayer;
use palisade::core::key::ConstKey;
use palisade::pii::{Direction, PiiMaskLayer};
use palisade::ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter};
use palisade::retry::RetryLayer;
use serde_json::json;
use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};
use tower::{ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The upstream: `/flaky` fails every other call, `/catalog` is cacheable,
/// `/echo` sends the request body back, `/down` always fails.
fn upstream() -> Router {
    static FLAKY: AtomicU32 = AtomicU32::new(0);
    Router::new()
        .route(
            "/flaky",
            get(|| async {
                let status = if FLAKY.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                };
                println!("  [server] GET /flaky -> {}", status.as_u16());
                (status, "flaky answer")
            }),
        )
        .route(
            "/catalog",
            get(|| async {
                println!("  [server] GET /catalog -> 200");
                (
                    [("cache-control", "public, max-age=60")],
                    Json(json!({ "items": ["tea", "coffee"] })),
                )
            }),
        )
        .route(
            "/echo",
            post(|body: String| async move {
                println!("  [server] POST /echo received {body}");
                ([("content-type", "application/json")], body)
            }),
        )
        .route(
            "/down",
            get(|| async {
                println!("  [server] GET /down -> 500");
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, upstream()).await });
    println!("upstream on {base}");

    // At most 10 calls a minute leave this client, cache hits included.
    let limiter = RateLimiter::builder()
        .limit(Limit::new(
            "upstream",
            ConstKey("upstream"),
            Quota::per_minute(10),
        ))
        .build()?;
    // Three failures in a row open the circuit for 30 s.
    let breaker = CircuitBreakerLayer::builder("upstream")
        .failure_threshold(3)
        .recovery_timeout(Duration::from_secs(30))
        .http()
        .build()?;
    let hyper = Client::builder(TokioExecutor::new()).build_http();
    let client = ServiceBuilder::new()
        .rate_limit_with(RateLimitLayer::new(limiter))
        .cache(CacheLayer::new())
        .mask_pii(PiiMaskLayer::default().direction(Direction::Request))
        .retry_with(
            RetryLayer::builder()
                .backoff(Duration::from_millis(50), 2.0, Duration::from_secs(1))
                .build()?,
        )
        .circuit_breaker(breaker)
        // The layers wrap the request body (to mask it, to replay it); the
        // hyper client takes one body type, so box it.
        .map_request(|req: Request<_>| req.map(axum::body::Body::new))
        .service(hyper);

    // Sends one request through the stack: status, headers, body.
    let send = |req: Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let (parts, body) = client.oneshot(req).await?.into_parts();
            let body = body.collect().await?.to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            Ok::<_, Error>((parts.status, parts.headers, body))
        }
    };
    let get = |path: &str| Request::get(format!("{base}{path}")).body(Full::default());

    println!("-- retry: the first 503 is retried");
    let (status, _, body) = send(get("/flaky")?).await?;
    println!("GET /flaky -> {} {body}", status.as_u16());

    println!("-- cache: the second GET never reaches the server");
    for _ in 0..2 {
        let (status, headers, _) = send(get("/catalog")?).await?;
        println!(
            "GET /catalog -> {} x-cache: {}",
            status.as_u16(),
            header(&headers, "x-cache")
        );
    }

    println!("-- PII: the request body is masked before it leaves");
    let user = json!({ "name": "Asha", "email": "asha@example.com", "phone": "9876543210", "password": "hunter2" });
    let echo = Request::post(format!("{base}/echo"))
        .header("content-type", "application/json")
        .body(Full::from(user.to_string()))?;
    let (status, _, body) = send(echo).await?;
    println!("POST /echo -> {} echoed {body}", status.as_u16());

    println!("-- breaker: three failures open the circuit");
    for _ in 0..4 {
        let (status, headers, _) = send(get("/down")?).await?;
        match headers.get("retry-after") {
            Some(after) => println!(
                "GET /down -> {} (circuit open, retry-after {after:?})",
                status.as_u16()
            ),
            None => println!("GET /down -> {}", status.as_u16()),
        }
    }

    println!("-- rate limit: the 11th call of the minute is refused locally");
    for _ in 0..20 {
        let (status, headers, _) = send(get("/catalog")?).await?;
        println!(
            "GET /catalog -> {} x-cache: {}, remaining: {}",
            status.as_u16(),
            header(&headers, "x-cache"),
            header(&headers, "x-ratelimit-remaining")
        );
        if status == StatusCode::TOO_MANY_REQUESTS {
            println!("refused, retry-after {}s", header(&headers, "retry-after"));
            break;
        }
    }
    Ok(())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}
