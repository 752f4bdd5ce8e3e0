//! The whole palisade stack in front of the proxy, built from one
//! configuration, plus the handles the admin listener needs.

use crate::proxy::Proxy;
use axum::body::Body;
use http::{Request, Response};
use palisade::StackBuilder;
use palisade::adaptive::{AdaptiveLayer, AdaptiveMetrics, PathPrefixKey};
use palisade::breaker::{BreakerRegistry, CircuitBreakerLayer, SharedClassifier};
use palisade::cache::{CacheBuilder, CacheHandle, CacheLayer, CacheMetrics};
use palisade::config::PalisadeConfig;
use palisade::core::BoxError;
use palisade::core::classify::{JsonRpcFailures, ServerErrorsAsFailures};
use palisade::core::jsonrpc::ToolName;
use palisade::core::key::ExtensionKey;
use palisade::core::{PalisadeBody, key::ConstKey};
use palisade::dlq::{DeadLetterLayer, DeadLetterQueue};
use palisade::fault::FaultMetrics;
use palisade::llm::{LimitKey, PacingMetrics, ProviderPacingLayer, TokenBudgetLayer, TokenMetrics};
use palisade::pii::{PiiMaskLayer, PiiMetrics};
use palisade::ratelimit::{RateLimitLayer, RateLimitMetrics, RateLimiter};
use palisade::retry::bulkhead::BulkheadLayer;
use palisade::retry::timeout::TimeoutLayer;
use palisade::retry::{RetryLayerBuilder, RetryMetrics};
use palisade::shape::ShapeResponseLayerBuilder;
use palisade::store::{Backend, Store};
use prometheus::Registry;
use std::convert::Infallible;
use tower::util::{Either, MapResponseLayer};
use tower::{ServiceBuilder, util::BoxCloneSyncService};

/// The stack as the router sees it.
pub type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The stack and the handles the admin listener serves.
pub struct Built {
    pub stack: Stack,
    pub breakers: BreakerRegistry,
    pub cache: CacheHandle,
    pub limiter: RateLimiter,
    pub dlq: DeadLetterQueue,
}

fn to_axum<B>(res: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(Body::new)
}

/// The proxy alone, for a baseline without layers.
pub fn bare(proxy: Proxy) -> Stack {
    BoxCloneSyncService::new(ServiceBuilder::new().map_response(to_axum).service(proxy))
}

/// Builds every layer from `cfg` on `store`, registering metrics on `registry`.
pub fn full(
    cfg: &PalisadeConfig,
    store: &Store,
    registry: &Registry,
    proxy: Proxy,
) -> Result<Built, Box<dyn std::error::Error>> {
    let shared = (store.backend() != Backend::Memory).then(|| store.clone());

    let limiter = cfg
        .rate_limit
        .limiter(shared.clone(), Some(&RateLimitMetrics::register(registry)?))
        .map_err(|e| format!("rate_limit: {e}"))?;
    let rate_limit = RateLimitLayer::new(limiter.clone()).headers(cfg.rate_limit.headers);

    let shape = ShapeResponseLayerBuilder::from_config(cfg.shape.clone())
        .metrics(registry)
        .build()
        .map_err(|e| format!("shape: {e}"))?;

    let mut cache =
        CacheBuilder::from_config(&cfg.cache).metrics(CacheMetrics::register(registry)?);
    if let Some(store) = &shared {
        cache = cache.store(store.clone());
    }
    // MCP: results of read-only tools, cached (the HTTP cache never stores
    // a POST); with `[mcp]` off no call is marked cacheable and it passes
    // every request on as it is.
    let tool_cache = cache.build_tools().map_err(|e| format!("cache: {e}"))?;
    let cache: CacheLayer = cache.build().map_err(|e| format!("cache: {e}"))?;
    let cache_handle = cache.handle();

    // Decoded bodies are answered as identity here: the gateway's
    // compression layer encodes answers for the client (once, outermost).
    let pii = PiiMaskLayer::from_config(&cfg.pii)
        .map_err(|e| format!("pii: {e}"))?
        .reencode(false)
        .metrics(PiiMetrics::register(registry)?);
    let masker = pii.masker().clone();

    let retry_metrics = RetryMetrics::register(registry)?;
    let retry = RetryLayerBuilder::from_config(cfg.retry.clone())
        .metrics(&retry_metrics, "upstream")
        .build()
        .map_err(|e| format!("retry: {e}"))?;

    let breakers = BreakerRegistry::new();
    breakers.register_metrics(registry)?;
    let mut breaker = CircuitBreakerLayer::builder("upstream").config(cfg.circuit_breaker.clone());
    if let Some(store) = &shared {
        // A trip on one replica opens the circuit on all of them.
        breaker = breaker.shared(store);
    }
    let breaker = breaker.http().registry(&breakers);
    let breaker = if cfg.mcp.enabled {
        // One breaker per MCP tool, judging JSON-RPC replies; an open one
        // answers the call with a JSON-RPC error carrying its id.
        let failures = JsonRpcFailures {
            tool_errors: cfg.mcp.tool_errors_fail,
            ..JsonRpcFailures::default()
        };
        let status = http::StatusCode::from_u16(cfg.mcp.open_status)
            .map_err(|e| format!("mcp.open_status: {e}"))?;
        Either::Right(
            breaker
                .classifier(SharedClassifier::new(
                    ServerErrorsAsFailures::default().json_rpc(failures),
                ))
                .json_rpc_answers(status)
                .per_key(ExtensionKey::<ToolName>::new())
                .build()
                .map_err(|e| format!("circuit_breaker: {e}"))?,
        )
    } else {
        Either::Left(
            breaker
                .build()
                .map_err(|e| format!("circuit_breaker: {e}"))?,
        )
    };

    // Off unless `[fault] enabled`; even off, it strips the fault headers
    // so no caller's reaches the upstream.
    let fault = cfg
        .fault
        .builder()
        .map_err(|e| format!("fault: {e}"))?
        .metrics(&FaultMetrics::register(registry)?, "upstream")
        .build()
        .map_err(|e| format!("fault: {e}"))?;

    let masking = masker.clone();
    let dlq = DeadLetterQueue::new(store.clone())
        .mask_with(move |text| masking.mask_str(text).into_owned())
        .register_metrics(registry)?;

    // Token budgets for LLM upstreams (`[[token_limits]]`; none: no layer).
    let token_limits = token_limits(cfg, store, registry)?;
    // The provider's own quota headers, shared on the store (`[llm.pacing]`;
    // on with token limits unless `enabled` says otherwise).
    let pacing = pacing(cfg, store, registry)?;

    let service = StackBuilder::new()
        .layer(tower::util::MapResponseLayer::new(to_axum))
        .rate_limit(rate_limit)
        .shape_response(shape)
        .cache(cache)
        // MCP: tool results cut to their tool's token budget on the way
        // out (outside the tool cache, which keeps them whole).
        .layer(palisade::shape::budget::ToolBudgetLayer::new())
        .layer(tool_cache)
        .mask_pii(pii)
        .layer(DeadLetterLayer::new(dlq.clone()))
        // A provider that said its budget is spent (a 429 with Retry-After,
        // or nothing remaining until a reset) is not called again before
        // then, from any replica: answered 429 here, before any reservation.
        .layer(pacing)
        // Reserve tokens before the upstream (429 before any byte goes out,
        // never mid-stream) and settle the usage the response reports;
        // outside the retry, so a retried call is reserved once.
        .layer(token_limits)
        // Calls in flight to the upstream, each counted once across its
        // retries; the rest are answered 503 at once.
        .layer(max_concurrent(cfg, &retry_metrics))
        // A limit learnt from the upstream's refusals and latency (the
        // timeout's 504s included); off unless `[adaptive_concurrency]`.
        .layer(adaptive(cfg, registry)?)
        // The response-head limit covers every attempt; a timed-out attempt
        // is a failure for the breaker.
        .timeout(response_timeout(cfg))
        .retry(retry)
        .layer(breaker)
        // Innermost: the breaker, retry and timeout see injected faults as
        // the upstream's own.
        .fault(fault)
        .service(proxy);
    Ok(Built {
        stack: BoxCloneSyncService::new(service),
        breakers,
        cache: cache_handle,
        limiter,
        dlq,
    })
}

/// The configured token budgets, each on `store` (in-process, or Redis
/// shared by every replica); the first configured is the outermost.
fn token_limits(
    cfg: &PalisadeConfig,
    store: &Store,
    registry: &Registry,
) -> Result<TokenLimits, Box<dyn std::error::Error>> {
    if cfg.token_limits.is_empty() {
        return Ok(TokenLimits(Vec::new()));
    }
    let metrics = TokenMetrics::register(registry)?;
    let layers = cfg
        .token_limits
        .iter()
        .enumerate()
        .map(|(i, limit)| {
            limit
                .layer(store.clone(), Some(&metrics))
                .map_err(|e| format!("token_limits[{i}]: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(TokenLimits(layers))
}

/// Provider pacing (`[llm.pacing]`), or a pass-through when it is off.
fn pacing<B>(
    cfg: &PalisadeConfig,
    store: &Store,
    registry: &Registry,
) -> Result<Either<ProviderPacingLayer, AsPalisade<B>>, Box<dyn std::error::Error>> {
    let section = &cfg.llm.pacing;
    if !section.is_enabled(!cfg.token_limits.is_empty()) {
        return Ok(Either::Right(MapResponseLayer::new(|res: Response<B>| {
            res.map(PalisadeBody::inner)
        })));
    }
    let layer = section
        .layer(store.clone(), Some(&PacingMetrics::register(registry)?))
        .map_err(|e| match e.field() {
            Some(field) => format!("llm.pacing.{field}: {e}"),
            None => format!("llm.pacing: {e}"),
        })?;
    Ok(Either::Left(layer))
}

/// Any number of token budgets as one layer (each boxed: how many is
/// configuration).
#[derive(Clone)]
struct TokenLimits(Vec<TokenBudgetLayer<LimitKey>>);

type Boxed<E> = BoxCloneSyncService<Request<Body>, Response<Body>, E>;

impl<S, ResBody> tower::Layer<S> for TokenLimits
where
    S: tower::Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Service = Either<
        tower::util::MapRequest<Boxed<S::Error>, fn(Request<PalisadeBody<Body>>) -> Request<Body>>,
        tower::util::MapRequest<
            tower::util::MapResponse<S, fn(Response<ResBody>) -> Response<Body>>,
            fn(Request<PalisadeBody<Body>>) -> Request<Body>,
        >,
    >;

    fn layer(&self, inner: S) -> Self::Service {
        let to_body: fn(Request<PalisadeBody<Body>>) -> Request<Body> = |req| req.map(Body::new);
        if self.0.is_empty() {
            // No budget: no boxed service (cloned, with all below it, for
            // every request) and no boxed future.
            return Either::Right(tower::util::MapRequest::new(
                tower::util::MapResponse::new(inner, to_axum::<ResBody>),
                to_body,
            ));
        }
        let mut service: Boxed<S::Error> =
            BoxCloneSyncService::new(ServiceBuilder::new().map_response(to_axum).service(inner));
        for limit in self.0.iter().rev() {
            service = BoxCloneSyncService::new(
                ServiceBuilder::new()
                    .map_response(to_axum)
                    .layer(limit.clone())
                    .map_request(|req: Request<PalisadeBody<Body>>| req.map(Body::new))
                    .service(service),
            );
        }
        Either::Left(tower::util::MapRequest::new(service, to_body))
    }
}

/// A response body wrapped as the bulkhead wraps it, so both branches of
/// [`max_concurrent`] answer the same type.
type AsPalisade<B> = MapResponseLayer<fn(Response<B>) -> Response<PalisadeBody<B>>>;

/// The upstream bulkhead (`upstream.max_concurrent`; zero: none).
fn max_concurrent<R, B>(
    cfg: &PalisadeConfig,
    metrics: &RetryMetrics,
) -> Either<BulkheadLayer<ConstKey, R>, AsPalisade<B>> {
    match cfg.upstream.max_concurrent {
        0 => Either::Right(MapResponseLayer::new(|res: Response<B>| {
            res.map(PalisadeBody::inner)
        })),
        max => Either::Left(BulkheadLayer::new(max).metrics(metrics, "upstream")),
    }
}

/// The adaptive concurrency limit (`[adaptive_concurrency]`; off: none),
/// one per `routes` prefix and one for the other paths.
fn adaptive<B>(
    cfg: &PalisadeConfig,
    registry: &Registry,
) -> Result<Either<AdaptiveLayer<PathPrefixKey>, AsPalisade<B>>, Box<dyn std::error::Error>> {
    let section = &cfg.adaptive_concurrency;
    if !section.enabled {
        return Ok(Either::Right(MapResponseLayer::new(|res: Response<B>| {
            res.map(PalisadeBody::inner)
        })));
    }
    let metrics = AdaptiveMetrics::register(registry)?;
    let layer = section
        .builder_per_route()
        .metrics(&metrics, "upstream")
        .build()
        .map_err(|e| format!("adaptive_concurrency: {e}"))?;
    Ok(Either::Left(layer))
}

/// The response-head limit (`upstream.response_timeout`; zero: none, as a
/// limit that never comes).
fn response_timeout(cfg: &PalisadeConfig) -> TimeoutLayer {
    let limit = cfg.upstream.response_timeout;
    TimeoutLayer::new(if limit.is_zero() {
        std::time::Duration::from_secs(365 * 24 * 3600)
    } else {
        limit
    })
}
