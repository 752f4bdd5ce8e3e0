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
mod demo_llm;
mod forwarding;
mod observe;
mod proxy;
mod serve;
mod stack;
mod strict;
mod trace;

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{Request, Response},
    routing::{get, post},
};
use clap::Parser;
use palisade::admin::AdminRouter;
use palisade::batch::BatchExecutor;
use palisade::config::PalisadeConfig;
use palisade::core::classify::FromTowerHttp;
use prometheus::Registry;
use std::net::SocketAddr;
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
    /// Upstream to front (http:// or https://); without it a demo upstream is started.
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
    /// Require `Authorization: Bearer TOKEN` on the admin listener.
    #[arg(long, env = "ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Only run the demo upstream on this address (for load tests).
    #[arg(long)]
    demo_only: Option<SocketAddr>,
}

use stack::Stack;
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
    let args = Args::parse();
    if let Err(err) = run(args).await {
        eprintln!("gateway: {err}");
        std::process::exit(1);
    }
}

/// Logs go through the PII masker, so no log line carries PII.
fn init_logs(masker: palisade::pii::PiiMasker) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(palisade::pii::MaskingMakeWriter::new(
            masker,
            std::io::stderr,
        ))
        .init();
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = PalisadeConfig::load(args.config.as_deref())?;
    if let Some(url) = &args.redis {
        cfg.store.url = url.clone();
    }
    init_logs(
        palisade::pii::PiiMasker::from_config(&cfg.pii.masking)
            .map_err(|e| format!("pii.masking: {e}"))?,
    );
    if let Some(addr) = args.demo_only {
        let addr = demo::start(addr).await?;
        println!("demo upstream on http://{addr}");
        shutdown_signal().await;
        return Ok(());
    }
    let upstream = match args.upstream.clone() {
        Some(uri) => uri,
        None => {
            let addr = demo::start("127.0.0.1:0".parse()?).await?;
            println!("demo upstream on http://{addr}");
            format!("http://{addr}").parse()?
        }
    };
    let store = cfg
        .store
        .connect()
        .await
        .map_err(|e| format!("store {}: {e}", cfg.store.url))?;
    println!(
        "store: {:?} ({})",
        store.backend(),
        redacted(&cfg.store.url)
    );

    let registry = Registry::new();
    // Requests that reached a per-IP key without a peer address (a setup
    // mistake; the gateway always inserts the peer, so this stays at 0).
    palisade::core::metrics::register_missing_peer(&registry)?;
    let proxy = proxy::Proxy::new(&upstream, &cfg.upstream, &cfg.rate_limit.trusted_proxies)?;
    let (stack, built) = if args.no_layers {
        (stack::bare(proxy), None)
    } else {
        let built = stack::full(&cfg, &store, &registry, proxy)?;
        (built.stack.clone(), Some(built))
    };
    let latency = palisade::core::metrics::register_histogram_vec(
        &registry,
        "palisade_http_request_duration_seconds",
        "Gateway request latency by status class.",
        &["status"],
        None,
    )?;

    // MCP: the upstream's tools, as its `tools/list` replies describe them
    // and `[mcp.tools.NAME]` overrides; shared through the store.
    let tool_catalog = cfg
        .mcp
        .enabled
        .then(|| palisade::mcp::ToolCatalog::new(&cfg.mcp, upstream.to_string(), store.clone()));

    let families = serve::ServerMetricFamilies::register(&registry)?;
    let client_metrics = families.listener("client");
    let state = AppState {
        stack: stack.clone(),
        batch: BatchExecutor::new()
            .classify_with(FromTowerHttp(StatusInRangeAsFailures::new(400..=599))),
    };
    let app = Router::new()
        .route("/_batch", post(batch::handle))
        .fallback_service(stack)
        .with_state(state)
        // MCP / JSON-RPC: the method and the tool are in the body; learn
        // them (read ahead, passed on whole) so limits, breakers and caches
        // can key by tool.
        // The plan the authenticating proxy in front names, for tiered
        // rate limits and token budgets alike.
        .layer(axum::middleware::from_fn_with_state(
            cfg.rate_limit.tiers.header.as_deref().map(|h| {
                palisade::core::tier::TierHeader::new(
                    http::HeaderName::try_from(h).expect("checked by the configuration"),
                    cfg.rate_limit.trusted_proxies.iter().copied(),
                )
            }),
            set_tier,
        ))
        .layer(axum::middleware::from_fn_with_state(
            JsonRpcLearning {
                read_ahead: if tool_catalog.is_some() {
                    usize::try_from(cfg.mcp.max_call_bytes).unwrap_or(usize::MAX)
                } else {
                    JSON_RPC_PEEK
                },
                catalog: tool_catalog,
            },
            learn_json_rpc,
        ))
        // Answers compressed for clients that accept it; the layers inside
        // see (and PII masking decodes) what the upstream sent. Server-sent
        // events, gRPC and images are left as they are.
        .layer(tower_http::compression::CompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            FrontDoor {
                max_uri: cfg.server.max_uri_bytes,
                max_body: cfg.server.max_body_bytes,
                refused_body: client_metrics.refused_body.clone(),
                routes: palisade::routes::RouteTable::new(&cfg.routes),
            },
            front_door,
        ))
        .layer(axum::middleware::from_fn_with_state(
            latency,
            observe::observe,
        ))
        // Outermost: every log line of a request carries its trace id, and
        // the upstream gets a `traceparent` naming the gateway's span.
        .layer(axum::middleware::from_fn(trace::traceparent));

    // The admin routes change breakers and purge caches: off loopback they
    // need a token.
    let admin_token = args.admin_token.filter(|t| !t.is_empty());
    if !args.admin.ip().is_loopback() && admin_token.is_none() {
        return Err(format!(
            "--admin {} is not a loopback address: set --admin-token (or ADMIN_TOKEN) so \
             the admin routes require a bearer token, or listen on 127.0.0.1",
            args.admin
        )
        .into());
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin).await?;
    let addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let mut admin = AdminRouter::new().metrics(registry);
    if let Some(built) = built {
        admin = admin
            .breakers(built.breakers)
            .cache(built.cache)
            .rate_limits(built.limiter)
            .dead_letters(built.dlq);
    }
    if let Some(token) = admin_token {
        admin = admin.bearer_token(token);
    }
    let admin = admin.into_router().route("/health", get(|| async { "ok" }));
    // Peers trusted as proxies are not limited per address.
    let trusted = std::sync::Arc::new(cfg.rate_limit.trusted_proxies.clone());
    let exempt: std::sync::Arc<dyn Fn(std::net::IpAddr) -> bool + Send + Sync> =
        std::sync::Arc::new(move |ip| trusted.iter().any(|net| net.contains(&ip)));
    let admin_how = serve::Listener {
        metrics: families.listener("admin"),
        // Operators and a metrics scraper: a few connections.
        max_connections: ADMIN_MAX_CONNECTIONS,
        exempt: exempt.clone(),
    };
    let admin_cfg = cfg.server.clone();
    tokio::spawn(async move {
        let never = std::future::pending::<()>();
        if let Err(err) = serve::serve(admin_listener, admin, &admin_cfg, admin_how, never).await {
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
        println!(
            "  curl -i http://{addr}/fail                         # 5 of these open the breaker"
        );
        println!("  curl -s http://{admin_addr}/breakers");
        println!("  curl -s http://{admin_addr}/metrics");
    }
    let how = serve::Listener {
        metrics: client_metrics,
        max_connections: 0,
        exempt,
    };
    serve::serve(listener, app, &cfg.server, how, shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Connections the admin listener serves at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The front door's limits.
#[derive(Clone)]
struct FrontDoor {
    max_uri: usize,
    /// 0: no limit.
    max_body: u64,
    refused_body: prometheus::IntCounter,
    /// `[[routes]]`: matched here, once, for every layer below.
    routes: palisade::routes::RouteTable,
}

/// Refuses, before any layer, what must never reach the upstream: a
/// `Transfer-Encoding` other than `chunked` (hyper itself refuses two
/// different `Content-Length`s and obs-folded heads; with both framings it
/// reads the body as chunked and drops the `Content-Length`, as RFC 9112
/// §6.3 says, and the upstream request is re-framed), a request target over
/// `server.max_uri_bytes` (414), a `Content-Length` over
/// `server.max_body_bytes` or its route's `max_body_bytes` (413, before the
/// body is read: a client that sent `Expect: 100-continue` is not told to
/// continue). The upstream request is always re-framed by the client.
///
/// It also matches the request's route (`[[routes]]`), once: the
/// [`Route`](palisade::routes::Route) goes in the request's extensions for
/// the layers below (the proxy's idle limit), with the route's response
/// limit as a [`RouteTimeout`](palisade::retry::timeout::RouteTimeout).
async fn front_door(
    State(door): State<FrontDoor>,
    mut req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    use http::{StatusCode, header};
    let max_uri = door.max_uri;
    let route = door.routes.route(&mut req);
    // The route's body limit, under the global cap (checked at start-up).
    let route_max_body = route.as_ref().and_then(|r| r.section().max_body_bytes);
    let max_body = route_max_body.unwrap_or(door.max_body);
    if let Some(limit) = route.as_ref().and_then(|r| r.section().response_timeout) {
        req.extensions_mut()
            .insert(palisade::retry::timeout::RouteTimeout(if limit.is_zero() {
                // Off, as a limit that never comes (as `upstream.response_timeout`).
                std::time::Duration::from_secs(365 * 24 * 3600)
            } else {
                limit
            }));
    }
    let h = req.headers();
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let refusal = if h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        Some((
            StatusCode::BAD_REQUEST,
            "only `Transfer-Encoding: chunked` is accepted".to_owned(),
        ))
    } else if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        // Two framings: which one a server behind another proxy believes
        // is how requests are smuggled (RFC 9112 §6.3).
        Some((
            StatusCode::BAD_REQUEST,
            "both `Transfer-Encoding` and `Content-Length`".to_owned(),
        ))
    } else if h.get_all(header::CONTENT_LENGTH).iter().nth(1).is_some() {
        Some((
            StatusCode::BAD_REQUEST,
            "more than one `Content-Length`".to_owned(),
        ))
    } else if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > max_uri {
        Some((
            StatusCode::URI_TOO_LONG,
            format!("request target over {max_uri} bytes"),
        ))
    } else if max_body > 0 && declared.is_some_and(|n| n > max_body) {
        door.refused_body.inc();
        Some((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over {max_body} bytes"),
        ))
    } else {
        None
    };
    let Some((status, detail)) = refusal else {
        if http_body::Body::is_end_stream(req.body()) {
            return next.run(req).await;
        }
        if let Some(limit) = route_max_body {
            // A chunked body growing past the route's limit fails the
            // request (413 from the proxy when no answer has begun); the
            // listener already holds it to the global cap.
            use http_body_util::BodyExt;
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let refused = door.refused_body.clone();
            req = req.map(|body| {
                Body::new(
                    http_body_util::Limited::new(body, limit).map_err(move |err| {
                        if err.is::<http_body_util::LengthLimitError>() {
                            refused.inc();
                        }
                        err
                    }),
                )
            });
        }
        // A body still to come: the layers learn when it has ended (the
        // response time limit starts then, and a breaker does not count a
        // call its client gave up on while still sending).
        return next
            .run(palisade::core::body::sent::track(req).map(Body::new))
            .await;
    };
    tracing::info!(%status, %detail, "request refused at the front door");
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut res = Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the stream cannot be trusted to be framed as we
        // think, or is a body not worth reading.
        res.headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    }
    res
}

/// Puts the request's plan (`rate_limit.tiers.header`, from a trusted
/// proxy) in its extensions as a `Tier`, which the layers read.
async fn set_tier(
    State(tiers): State<Option<palisade::core::tier::TierHeader>>,
    mut req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    if let Some(tier) = tiers.as_ref().and_then(|t| t.resolve(&req)) {
        req.extensions_mut().insert(tier);
    }
    next.run(req).await
}

/// Bodies read ahead to learn a JSON-RPC call without `[mcp]` (with it,
/// `mcp.max_call_bytes`); larger ones pass unread.
const JSON_RPC_PEEK: usize = 64 * 1024;

/// What `learn_json_rpc` needs: the MCP tool catalog (with `[mcp]` on) and
/// how much of a JSON body it reads ahead.
#[derive(Clone)]
struct JsonRpcLearning {
    catalog: Option<palisade::mcp::ToolCatalog>,
    read_ahead: usize,
}

/// Learns the JSON-RPC call of a JSON `POST` (see
/// `palisade::core::jsonrpc::peek`): its method and, for MCP's `tools/call`,
/// the tool, as request extensions. With `[mcp]` on, a `tools/call` also
/// gets what the catalog knows of its tool (`ToolFacts`, and the
/// `Idempotency` the retry layer honours), and a `tools/list` reply teaches
/// the catalog its tools' annotations on its way to the client.
async fn learn_json_rpc(
    State(JsonRpcLearning {
        catalog,
        read_ahead,
    }): State<JsonRpcLearning>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    use palisade::core::jsonrpc::{JsonRpcCall, JsonRpcReply, ReplyScan};
    let json = req.method() == http::Method::POST
        && palisade::core::body::media::MediaKind::of(req.headers())
            == palisade::core::body::media::MediaKind::Json;
    if !json {
        return next.run(req).await;
    }
    let mut req = palisade::core::jsonrpc::peek(req, read_ahead).await;
    let Some(catalog) = catalog else {
        return next.run(req.map(Body::new)).await;
    };
    let method = req
        .extensions()
        .get::<JsonRpcCall>()
        .map(|call| (call.method().to_owned(), call.target().map(str::to_owned)));
    match method {
        Some((method, Some(tool))) if method == "tools/call" => {
            let facts = catalog.facts(&tool).await;
            req.extensions_mut().insert(facts.idempotency());
            req.extensions_mut().insert(facts);
            next.run(req.map(Body::new)).await
        }
        Some((method, _)) if method == "tools/list" => {
            let res = next.run(req.map(Body::new)).await;
            let identity = !res.headers().contains_key(http::header::CONTENT_ENCODING);
            let scan = (res.status() == http::StatusCode::OK && identity)
                .then(|| ReplyScan::for_response(res.headers(), TOOLS_LIST_MAX))
                .flatten();
            let Some(scan) = scan else { return res };
            res.map(|body| {
                Body::new(palisade::core::mcp::ReplyTap::new(
                    body,
                    scan,
                    Box::new(move |reply, message| {
                        if reply != JsonRpcReply::Result {
                            return;
                        }
                        // Known here before the client reads the list;
                        // the other replicas learn it through the store.
                        if let Some(tools) = catalog.learn_here(&message) {
                            tokio::spawn(async move { catalog.share(&tools).await });
                        }
                    }),
                ))
            })
        }
        _ => next.run(req.map(Body::new)).await,
    }
}

/// The largest `tools/list` reply read for annotations.
const TOOLS_LIST_MAX: usize = 4 << 20;

/// The URL without its password, for logs.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
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
