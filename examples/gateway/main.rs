//! The palisade gateway: an HTTP reverse proxy with the whole stack — rate
//! limit, circuit breaker, retry, cache, PII masking and response shaping —
//! in front of an upstream.
//!
//! Run with `cargo run --release --example gateway`. With no options it also
//! starts a built-in demo upstream and prints commands to try. `REDIS_URL`
//! (or `--redis`) moves every shared feature to Redis (`redis+cluster://h:p,h:p`
//! for a cluster).

mod batch;
mod demo;
mod proxy;

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{Request, Response, StatusCode},
    routing::{get, post},
};
use clap::Parser;
use palisade::batch::BatchExecutor;
use palisade::core::classify::FromTowerHttp;
use prometheus::{Encoder, HistogramVec, Registry, TextEncoder};
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};
use tower::{ServiceBuilder, util::BoxCloneSyncService};
use tower_http::classify::StatusInRangeAsFailures;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    about = "palisade gateway: the whole stack in front of an upstream"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Admin listener (metrics, breakers, cache, rate limits, dead letters).
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// Upstream to front; without it a demo upstream is started.
    #[arg(long)]
    upstream: Option<http::Uri>,
    /// Configuration file (TOML); the environment overrides it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Redis URL for shared state (also REDIS_URL); in-process without it.
    #[arg(long, env = "REDIS_URL")]
    redis: Option<String>,
    /// Serve without any palisade layer (a baseline for load tests).
    #[arg(long)]
    no_layers: bool,
}

type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;
/// Batch statistics count 4xx and 5xx answers as failed calls.
type Classifier = FromTowerHttp<StatusInRangeAsFailures>;

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    stack: Stack,
    batch: BatchExecutor<Classifier>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,palisade=info".into()),
        )
        .init();
    let args = Args::parse();
    if let Err(err) = run(args).await {
        eprintln!("gateway: {err}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let upstream = match args.upstream.clone() {
        Some(uri) => uri,
        None => {
            let addr = demo::start("127.0.0.1:0".parse()?).await?;
            println!("demo upstream on http://{addr}");
            format!("http://{addr}").parse()?
        }
    };
    let registry = Registry::new();
    let proxy = proxy::Proxy::new(&upstream)?;
    let stack: Stack = if args.no_layers {
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_response(|res: Response<_>| res.map(Body::new))
                .service(proxy),
        )
    } else {
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_response(|res: Response<_>| res.map(Body::new))
                .service(proxy),
        )
    };
    let latency = palisade::core::metrics::register_histogram_vec(
        &registry,
        "palisade_http_request_duration_seconds",
        "Gateway request latency by status class.",
        &["status"],
        None,
    )?;

    let state = AppState {
        stack: stack.clone(),
        batch: BatchExecutor::new()
            .classify_with(FromTowerHttp(StatusInRangeAsFailures::new(400..=599))),
    };
    let app = Router::new()
        .route("/_batch", post(batch::handle))
        .fallback_service(stack)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(latency, observe));

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin).await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let registry = Arc::new(registry);
    let admin = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }))
        .with_state(registry);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(admin_listener, admin).await {
            tracing::error!(%err, "admin listener stopped");
        }
    });

    println!("admin on http://{admin_addr}");
    println!("listening on http://{addr}");
    if args.upstream.is_none() {
        println!("try:");
        println!("  curl -i http://{addr}/users/7                      # PII masked");
        println!("  curl -i 'http://{addr}/catalog?fields=dealers(name,city)'  # shaped");
        println!("  curl -i http://{addr}/catalog                      # X-Cache: MISS, then HIT");
        println!("  curl -i http://{addr}/flaky                        # retried");
        println!("  curl -s http://{admin_addr}/metrics");
    }
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("gateway stopped");
    Ok(())
}

async fn observe(
    State(latency): State<HistogramVec>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let started = Instant::now();
    let res = next.run(req).await;
    let class = match res.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    latency
        .with_label_values(&[class])
        .observe(started.elapsed().as_secs_f64());
    res
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Result<String, StatusCode> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    String::from_utf8(out).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

/// Resolves on Ctrl-C or SIGTERM; in-flight requests then finish.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
