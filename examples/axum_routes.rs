//! palisade layers on chosen axum routes only:
//!
//! - `/tools/{name}`: a rate limit per tool (3 calls a minute) and JSON
//!   shaping, so a model reads fewer tokens;
//! - `/catalog`: the response cache (the handler says `max-age=60`);
//! - `/users/{id}`: PII masking of the response;
//! - `/weather`: a circuit breaker in front of a proxied upstream that is down;
//! - `/health`: nothing at all.
//!
//! Each layer is added with `MethodRouter::layer`, so it wraps that one route
//! and answers HTTP itself (429, 503): no `HandleErrorLayer` is needed.
//!
//! Run with `cargo run --example axum_routes`. It serves on a free loopback
//! port, calls every route to show what the layers do, and exits; add
//! `-- --serve` to keep it serving for `curl`.

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, Method, Request, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use palisade::ServiceBuilderExt;
use palisade::breaker::CircuitBreakerLayer;
use palisade::cache::CacheLayer;
use palisade::pii::PiiMaskLayer;
use palisade::ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter};
use palisade::shape::{ShapeResponseLayer, ShapeRules};
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often the `/catalog` handler and the upstream really ran.
static CATALOG_RUNS: AtomicUsize = AtomicUsize::new(0);
static UPSTREAM_CALLS: AtomicUsize = AtomicUsize::new(0);

/// The application: each layer sits on the route that needs it.
fn app(upstream: SocketAddr) -> Result<Router, Error> {
    // Each path under /tools/ gets its own 3-a-minute budget (the limiter
    // bounds its key space, so made-up tool names cannot exhaust memory).
    let per_tool = RateLimiter::builder()
        .limit(
            Limit::per_route()
                .named("tool")
                .with_quota(Quota::per_minute(3)),
        )
        .build()?;
    // Tool output for a model: no debug block, at most 3 results, no nulls.
    let shape = ShapeResponseLayer::new(ShapeRules::new().exclude(["debug"]).max_array_size(3))?;
    // Three upstream failures in a row open the circuit for 30 s.
    let breaker = CircuitBreakerLayer::builder("weather")
        .failure_threshold(3)
        .recovery_timeout(Duration::from_secs(30))
        .http()
        .build()?;

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    Ok(Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/tools/{name}",
            post(run_tool).layer(
                ServiceBuilder::new()
                    .rate_limit_with(RateLimitLayer::new(per_tool))
                    .shape_response(shape),
            ),
        )
        .route("/catalog", get(catalog).layer(CacheLayer::new()))
        .route("/users/{id}", get(user).layer(PiiMaskLayer::default()))
        .route("/weather", get(weather).layer(breaker))
        .with_state((client, upstream)))
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A tool call: verbose JSON, as tools tend to return.
async fn run_tool(Path(name): Path<String>, Json(args): Json<Value>) -> Json<Value> {
    let results: Vec<Value> = (1..=10)
        .map(|i| json!({ "id": i, "title": format!("{name} result {i}"), "note": null }))
        .collect();
    Json(json!({ "tool": name, "args": args, "results": results, "debug": { "took_ms": 12 } }))
}

async fn catalog() -> impl IntoResponse {
    CATALOG_RUNS.fetch_add(1, Ordering::SeqCst);
    (
        [("cache-control", "public, max-age=60")],
        Json(json!({ "items": ["tea", "coffee"] })),
    )
}

async fn user(Path(id): Path<u32>) -> Json<Value> {
    Json(json!({
        "id": id,
        "email": "asha@example.com",
        "phone": "9876543210",
        "password": "hunter2",
        "note": "card 4111111111111111 on file",
    }))
}

/// Proxies to the upstream; its 5xx answers are what the breaker counts.
async fn weather(State((client, upstream)): State<(HttpClient, SocketAddr)>) -> Response {
    let uri = format!("http://{upstream}/forecast")
        .parse()
        .expect("valid URI");
    match client.get(uri).await {
        Ok(res) => res.map(Body::new),
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Serves `router` on a free loopback port.
async fn serve(router: Router) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // A stand-in upstream that is down: every call fails.
    let upstream = serve(Router::new().fallback(|| async {
        UPSTREAM_CALLS.fetch_add(1, Ordering::SeqCst);
        (StatusCode::INTERNAL_SERVER_ERROR, "upstream down")
    }))
    .await?;
    let addr = serve(app(upstream)?).await?;
    let base = format!("http://{addr}");
    println!("listening on {base}");

    let tool_args = br#"{"query": "tea"}"#;
    for n in 1..=4 {
        let (status, headers, body) =
            send(Method::POST, &format!("{base}/tools/search"), tool_args).await?;
        match status {
            StatusCode::OK => println!(
                "POST /tools/search #{n} -> 200, remaining {}, {}% fewer tokens",
                header(&headers, "x-ratelimit-remaining"),
                header(&headers, "x-tokens-saved-percent"),
            ),
            _ => println!(
                "POST /tools/search #{n} -> {}, retry-after {}s",
                status.as_u16(),
                header(&headers, "retry-after")
            ),
        }
        if n == 1 {
            println!("  shaped: {body}");
        }
    }
    let (status, ..) = send(Method::POST, &format!("{base}/tools/lookup"), tool_args).await?;
    println!(
        "POST /tools/lookup -> {} (another tool, another budget)",
        status.as_u16()
    );

    for _ in 0..2 {
        let (status, headers, _) = send(Method::GET, &format!("{base}/catalog"), b"").await?;
        println!(
            "GET /catalog -> {}, x-cache {}",
            status.as_u16(),
            header(&headers, "x-cache")
        );
    }
    println!(
        "catalog handler ran {} time(s)",
        CATALOG_RUNS.load(Ordering::SeqCst)
    );

    let (_, _, body) = send(Method::GET, &format!("{base}/users/7"), b"").await?;
    println!("GET /users/7 -> {body}");

    for _ in 0..4 {
        let (status, headers, _) = send(Method::GET, &format!("{base}/weather"), b"").await?;
        match headers.get("retry-after") {
            Some(after) => println!(
                "GET /weather -> {} (circuit open, retry-after {after:?})",
                status.as_u16()
            ),
            None => println!("GET /weather -> {} (from the upstream)", status.as_u16()),
        }
    }
    println!(
        "upstream called {} time(s)",
        UPSTREAM_CALLS.load(Ordering::SeqCst)
    );

    let (status, ..) = send(Method::GET, &format!("{base}/health"), b"").await?;
    println!("GET /health -> {} (no layers)", status.as_u16());

    if std::env::args().any(|arg| arg == "--serve") {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

/// One request through a plain hyper-util client.
async fn send(
    method: Method,
    url: &str,
    body: &'static [u8],
) -> Result<(StatusCode, HeaderMap, String), Error> {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body)))?;
    let (parts, body) = client.request(req).await?.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}
