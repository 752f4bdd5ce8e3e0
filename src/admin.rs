//! The admin router: Prometheus metrics and the state of every layer, to
//! mount on a separate listener (loopback by default in the gateway), with
//! an optional bearer token.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /metrics` | Prometheus text of the registry |
//! | `GET /breakers` | every breaker's snapshot |
//! | `POST /breakers/{name}/{reset,force-open,disable,metrics-only}` | change a breaker's state |
//! | `GET /cache/stats` | hits, misses, stale, evictions, hit rate, bytes |
//! | `POST /cache/purge?key=K` / `?prefix=P` / `?pattern=G` | invalidate on L1 and L2 |
//! | `GET /ratelimit/{limit}/{key}` | a key's current state (counts nothing) |
//! | `GET /dlq?count=N` | newest dead letters |
//! | `GET /dlq/stats` | dead letters by route and error class |
//! | `DELETE /dlq` | clear the dead-letter queue |
//!
//! # Example
//!
//! ```
//! use palisade::admin::AdminRouter;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = prometheus::Registry::new();
//! let app = AdminRouter::new()
//!     .metrics(registry)
//!     .bearer_token("s3cret")
//!     .into_router();
//!
//! let req = http::Request::get("/metrics").body(axum::body::Body::empty()).unwrap();
//! assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 401);
//! let req = http::Request::get("/metrics")
//!     .header("authorization", "Bearer s3cret")
//!     .body(axum::body::Body::empty())
//!     .unwrap();
//! assert_eq!(app.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```

use crate::dlq::DeadLetterQueue;
use axum::{
    Json, Router,
    extract::{Query, Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
    routing::get,
};
use palisade_core::{Error, ErrorKind};
use prometheus::{Registry, TextEncoder};
use serde::Deserialize;
use std::{fmt, sync::Arc};

/// Builds the admin [`Router`] from the parts a service has (see the
/// [module docs](self)).
#[derive(Default)]
pub struct AdminRouter {
    registry: Option<Registry>,
    dlq: Option<DeadLetterQueue>,
    token: Option<Arc<str>>,
    extra: Vec<Router>,
}

#[cfg(feature = "breaker")]
impl AdminRouter {
    /// Serves the breakers of `registry` under `/breakers`.
    pub fn breakers(self, registry: palisade_breaker::BreakerRegistry) -> Self {
        self.merge(
            Router::new()
                .route("/breakers", get(breakers::list))
                .route(
                    "/breakers/{name}/{action}",
                    axum::routing::post(breakers::act),
                )
                .with_state(registry),
        )
    }
}

#[cfg(feature = "cache")]
impl AdminRouter {
    /// Serves the cache behind `handle` under `/cache`.
    pub fn cache(self, handle: palisade_cache::CacheHandle) -> Self {
        self.merge(
            Router::new()
                .route("/cache/stats", get(cache::stats))
                .route("/cache/purge", axum::routing::post(cache::purge))
                .with_state(handle),
        )
    }
}

#[cfg(feature = "ratelimit")]
impl AdminRouter {
    /// Serves the state of `limiter`'s keys under `/ratelimit`.
    pub fn rate_limits(self, limiter: palisade_ratelimit::RateLimiter) -> Self {
        self.merge(
            Router::new()
                .route("/ratelimit/{limit}/{key}", get(ratelimit::peek))
                .with_state(limiter),
        )
    }
}

impl fmt::Debug for AdminRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminRouter")
            .field("metrics", &self.registry.is_some())
            .field("dlq", &self.dlq.is_some())
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminRouter {
    /// An admin router with nothing mounted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `registry` at `GET /metrics`.
    pub fn metrics(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Serves the dead-letter queue under `/dlq`.
    pub fn dead_letters(mut self, dlq: DeadLetterQueue) -> Self {
        self.dlq = Some(dlq);
        self
    }

    /// Requires `Authorization: Bearer <token>` on every route.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Arc::from(token.into()));
        self
    }

    /// Merges more routes (another layer's admin routes, or your own).
    pub fn merge(mut self, router: Router) -> Self {
        self.extra.push(router);
        self
    }

    /// The router.
    pub fn into_router(self) -> Router {
        let mut router = Router::new();
        if let Some(registry) = self.registry {
            router = router.merge(
                Router::new()
                    .route("/metrics", get(metrics))
                    .with_state(registry),
            );
        }
        if let Some(dlq) = self.dlq {
            router = router.merge(
                Router::new()
                    .route("/dlq", get(dlq_list).delete(dlq_clear))
                    .route("/dlq/stats", get(dlq_stats))
                    .with_state(dlq),
            );
        }
        for extra in self.extra {
            router = router.merge(extra);
        }
        match self.token {
            Some(token) => router.layer(axum::middleware::from_fn_with_state(token, require_token)),
            None => router,
        }
    }
}

async fn require_token(State(token): State<Arc<str>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "admin token required",
        )
            .into_response(),
    }
}

/// Compares in constant time (`subtle`), over SHA-256 digests so that
/// neither a matching prefix nor the token's length shows in the timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(a).ct_eq(&Sha256::digest(b)).into()
}

async fn metrics(State(registry): State<Registry>) -> Response {
    match TextEncoder::new().encode_to_string(&registry.gather()) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(err) => Error::new(ErrorKind::Internal, "metrics encoding failed")
            .with_source(err)
            .into_response(),
    }
}

#[derive(Deserialize)]
struct CountQuery {
    count: Option<usize>,
}

fn store_error(err: palisade_store::StoreError) -> Response {
    Error::from(err).into_response()
}

async fn dlq_list(State(dlq): State<DeadLetterQueue>, Query(q): Query<CountQuery>) -> Response {
    match dlq.list(q.count.unwrap_or(100).min(10_000)).await {
        Ok(entries) => Json(entries).into_response(),
        Err(err) => store_error(err),
    }
}

async fn dlq_stats(State(dlq): State<DeadLetterQueue>) -> Response {
    match dlq.stats().await {
        Ok(stats) => Json(stats).into_response(),
        Err(err) => store_error(err),
    }
}

async fn dlq_clear(State(dlq): State<DeadLetterQueue>) -> Response {
    match dlq.clear().await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => store_error(err),
    }
}

#[cfg(feature = "breaker")]
mod breakers {
    use super::*;
    use axum::extract::Path;
    use palisade_breaker::BreakerRegistry;

    pub(super) async fn list(State(registry): State<BreakerRegistry>) -> Response {
        Json(registry.snapshots()).into_response()
    }

    pub(super) async fn act(
        State(registry): State<BreakerRegistry>,
        Path((name, action)): Path<(String, String)>,
    ) -> Response {
        let found = match action.as_str() {
            "reset" => registry.reset(&name),
            "force-open" => registry.force_open(&name),
            "disable" => registry.disable(&name),
            "metrics-only" => registry.metrics_only(&name),
            _ => {
                return Error::new(
                    ErrorKind::BadRequest,
                    "action must be reset, force-open, disable or metrics-only",
                )
                .into_response();
            }
        };
        if found {
            Json(registry.snapshot(&name)).into_response()
        } else {
            (StatusCode::NOT_FOUND, "no breaker by that name").into_response()
        }
    }
}

#[cfg(feature = "cache")]
mod cache {
    use super::*;
    use palisade_cache::CacheHandle;

    pub(super) async fn stats(State(cache): State<CacheHandle>) -> Response {
        Json(cache.stats()).into_response()
    }

    #[derive(Deserialize)]
    pub(super) struct Purge {
        key: Option<String>,
        prefix: Option<String>,
        pattern: Option<String>,
    }

    pub(super) async fn purge(
        State(cache): State<CacheHandle>,
        Query(q): Query<Purge>,
    ) -> Response {
        let removed = match (q.key, q.prefix, q.pattern) {
            (Some(key), None, None) => cache.invalidate(&key).await.map(|()| None),
            (None, Some(prefix), None) => cache.invalidate_prefix(&prefix).await.map(Some),
            (None, None, Some(pattern)) => cache.invalidate_matching(&pattern).await.map(Some),
            _ => {
                return Error::new(
                    ErrorKind::BadRequest,
                    "give exactly one of key, prefix or pattern",
                )
                .into_response();
            }
        };
        match removed {
            Ok(n) => Json(serde_json::json!({ "removed": n })).into_response(),
            Err(err) => Error::new(ErrorKind::Unavailable, "cache purge failed")
                .with_source(err)
                .into_response(),
        }
    }
}

#[cfg(feature = "ratelimit")]
mod ratelimit {
    use super::*;
    use axum::extract::Path;
    use palisade_ratelimit::RateLimiter;

    pub(super) async fn peek(
        State(limiter): State<RateLimiter>,
        Path((limit, key)): Path<(String, String)>,
    ) -> Response {
        // Cost 0 peeks: nothing is counted. A zero-cost check always
        // passes, so "allowed" says whether a request costing 1 would.
        match limiter.check_key(&limit, &key, 0).await {
            Ok(verdict) => Json(serde_json::json!({
                "limit": limit,
                "allowed": verdict.remaining() > 0,
                "remaining": verdict.remaining(),
                "reset_after_ms": verdict.reset_after().as_millis() as u64,
                "retry_after_ms": verdict.retry_after().map(|d| d.as_millis() as u64),
            }))
            .into_response(),
            Err(err) => Error::new(ErrorKind::BadRequest, err.to_string()).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::DeadLetter;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, uri: &str) -> (StatusCode, String) {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn dead_letter_routes() {
        let dlq = DeadLetterQueue::new(palisade_store::Store::in_memory());
        dlq.record(DeadLetter::new("GET", "/a", "timeout").status(504))
            .await
            .unwrap();
        let app = AdminRouter::new().dead_letters(dlq).into_router();
        let (status, body) = call(&app, "GET", "/dlq").await;
        assert_eq!(status, 200);
        let list: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(list[0]["route"], "/a");
        assert_eq!(list[0]["status"], 504);
        let (_, body) = call(&app, "GET", "/dlq/stats").await;
        let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(stats["by_error_class"]["timeout"], 1);
        assert_eq!(call(&app, "DELETE", "/dlq").await.0, 204);
        let (_, body) = call(&app, "GET", "/dlq/stats").await;
        assert!(body.contains("\"total\":0"));
        assert_eq!(call(&app, "GET", "/metrics").await.0, 404);
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
