//! Response caching for Tower services: an RFC 9111 shared HTTP cache and a
//! generic cache for any request type, each with an in-process L1 and an
//! optional shared L2 on [`palisade_store`] (Redis / Redis Cluster), and
//! request coalescing.
//!
//! # HTTP: [`CacheLayer`]
//!
//! - **Keys**: method, normalized URI (authority from the URI or `Host`,
//!   lowercased, default port dropped) and the request fields the response
//!   names in `Vary`, plus an optional custom part (a
//!   [`KeyExtractor`](palisade_core::key::KeyExtractor): tenant, API
//!   version). The logical key of a URI is `GET <authority><path>[?query][ <custom>]`
//!   ([`CacheHandle::http_key`]); in the store it becomes
//!   `<prefix>:<namespace>:http:<key>:<version>` through [`palisade_store::Store::key`].
//!   A request the extractor refuses
//!   ([`KeyExtractor::refusal`](palisade_core::key::KeyExtractor::refusal):
//!   a [`PeerIp`](palisade_core::key::PeerIp) with
//!   [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse) and
//!   no peer address) is answered with its 500 (gRPC `INTERNAL`) before any
//!   lookup, and never reaches the upstream; [`CacheServiceLayer`] returns
//!   [`CacheError::KeyRefused`] when the service's error type can carry it.
//! - **RFC 9111 as a shared cache**: `Cache-Control` on both sides
//!   (`max-age`, `s-maxage`, `no-store`, `no-cache`, `private`,
//!   `must-revalidate`, `proxy-revalidate`, `public`, `must-understand`;
//!   requests' `max-age`, `min-fresh`, `max-stale`, `only-if-cached`,
//!   `no-cache`, `no-store`), `Expires`, `Age`, `Date`, `Pragma: no-cache`,
//!   heuristic freshness (10 % of the time since `Last-Modified`, for
//!   heuristically cacheable statuses) or a configured default TTL.
//!   Never stores `private` / `no-store` or (by default) `Set-Cookie`
//!   responses, and never answers a request carrying `Authorization` with a
//!   stored response unless it is `public`, `s-maxage` or `must-revalidate`.
//!   A response that could never be reused — no explicit freshness, no
//!   default TTL, no `ETag` / `Last-Modified`, no `stale-*` window (a bare
//!   `200 ok` health check) — is passed through, not stored.
//! - **Revalidation**: stale entries are revalidated with `If-None-Match` /
//!   `If-Modified-Since`; a 304 updates the stored headers and is answered
//!   from the cache (`X-Cache: REVALIDATED`). Clients' own conditional
//!   requests are answered by the cache (304).
//! - **Stale content** (RFC 5861): `stale-while-revalidate` serves stale
//!   and refreshes once in the background; `stale-if-error` serves stale
//!   when the upstream errors or answers 500/502/503/504.
//! - **Invalidation**: a successful `POST` / `PUT` / `DELETE` / `PATCH`
//!   invalidates its target URI and same-origin `Location` /
//!   `Content-Location`; [`CacheHandle`] invalidates by key, prefix or glob.
//! - Bodies over [`Config::max_body_bytes`] are never cached: with a
//!   `Content-Length` over the limit they stream through untouched; without
//!   one, the cache reads up to the limit, then streams what it read and the
//!   rest. `Range` requests pass through, and so do gRPC calls (cache those
//!   with [`CacheServiceLayer`] on the typed service).
//! - Only GET responses are stored (HEAD requests are answered from them);
//!   [`Config::default_ttl`] never applies to other methods.
//!
//! # MCP tool results: [`ToolCacheLayer`]
//!
//! `tools/call` results of read-only tools, keyed by tool and canonical
//! arguments, never errors, a TTL per tool (see [`tools`]).
//!
//! # Any service: [`CacheServiceLayer`]
//!
//! A key extractor and a `Serialize + DeserializeOwned + Clone` response.
//!
//! # Tiers and coalescing
//!
//! L1 is a [moka] cache bounded by entries *and* bytes (1000 entries,
//! 64 MiB, 60 s by default); freshness and L1 age are judged with tokio's
//! clock, so tests on a paused clock control them. L2 (300 s) is shared
//! through the store; an L2 hit fills L1. Concurrent misses for one key
//! make one upstream call; the others wait (up to
//! [`Config::coalesce_timeout`], then go upstream themselves without
//! caching). With Redis, a short-lived lock (`SET NX PX`) extends this
//! across replicas: followers poll L2. A key whose response could not be
//! stored is remembered for 2 s (at most 16 384 keys): its misses go
//! straight upstream — no L2 lookup, no coalescing, no Redis lock — and the
//! first storable response ends that. A failing store is bypassed
//! (counted, logged, skipped for a second) — never an error to the client.
//!
//! Note: L1 of other replicas is not told about invalidations; they see
//! them when their L1 entry expires (`l1_ttl`).
//!
//! # Example
//!
//! ```
//! use palisade_cache::CacheLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cache = CacheLayer::builder().name("api").build().unwrap();
//! let handle = cache.handle();
//! let svc = ServiceBuilder::new().layer(cache).service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, std::convert::Infallible>(
//!         http::Response::builder()
//!             .header("cache-control", "public, max-age=60")
//!             .body(http_body_util::Full::new(bytes::Bytes::from("hello")))
//!             .unwrap(),
//!     )
//! });
//! let get = || http::Request::get("http://example.com/greeting").body(String::new()).unwrap();
//! assert_eq!(svc.clone().oneshot(get()).await.unwrap().headers()["x-cache"], "MISS");
//! assert_eq!(svc.clone().oneshot(get()).await.unwrap().headers()["x-cache"], "HIT");
//! assert_eq!(handle.stats().hits, 1);
//! handle.invalidate_prefix("GET http://example.com/").await.unwrap();
//! assert_eq!(svc.oneshot(get()).await.unwrap().headers()["x-cache"], "MISS");
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod core;
mod directives;
mod error;
mod http;
mod key;
mod metrics;
mod policy;
mod replicas;
mod service;
pub mod tools;

pub use crate::core::CacheStats;
pub use config::{CacheBuilder, Config};
pub use error::CacheError;
pub use http::{Cache, CacheLayer, NoKey, ResponseFuture, X_CACHE};
pub use metrics::CacheMetrics;
pub use service::{CacheService, CacheServiceLayer, SvcFuture};
pub use tools::{ToolCache, ToolCacheBody, ToolCacheFuture, ToolCacheLayer};

use std::{fmt, sync::Arc};

/// Stats and invalidation of one cache (cheap to clone; share it with an
/// admin endpoint).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let handle = palisade_cache::CacheLayer::new().handle();
/// let key = palisade_cache::CacheHandle::http_key(&"http://ex.com/a?b".parse().unwrap(), "");
/// assert_eq!(key, "GET http://ex.com/a?b");
/// handle.invalidate(&key).await.unwrap();
/// assert_eq!(handle.stats().entries, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    ops: Arc<dyn core::Ops>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("name", &self.ops.name())
            .finish()
    }
}

impl CacheHandle {
    pub(crate) fn new(ops: Arc<dyn core::Ops>) -> Self {
        Self { ops }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        self.ops.name()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        self.ops.stats()
    }

    /// Removes one logical key from L1 and L2, with every Vary variant of
    /// an HTTP response stored under it (found with a prefix scan on L2, as
    /// [`invalidate_prefix`](Self::invalidate_prefix) does). Every purge
    /// reaches the other replicas sharing the store (Redis pub/sub), which
    /// drop their L1 copies too; a replica that lost its subscription drops
    /// its whole L1 when it is back.
    pub async fn invalidate(&self, key: &str) -> Result<(), CacheError> {
        self.ops.remove(key).await?;
        self.ops.prefix(&key::variant_prefix(key)).await?;
        Ok(())
    }

    /// Removes every key starting with `prefix` from L1 and L2; returns the
    /// number of L2 keys deleted.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        self.ops.prefix(prefix).await
    }

    /// Removes every key matching the glob `pattern` (`*`, `?`, `\` escapes)
    /// from L1 and L2; returns the number of L2 keys deleted.
    pub async fn invalidate_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        self.ops.matching(pattern).await
    }

    /// Removes every entry of this cache from L1 and L2.
    pub async fn clear(&self) -> Result<u64, CacheError> {
        self.ops.clear().await
    }

    /// Runs L1's pending maintenance now, so `entries` / `bytes` /
    /// `evictions` are exact (they are otherwise updated lazily).
    pub fn run_pending_tasks(&self) {
        self.ops.sync();
    }

    /// The logical key of a GET for `uri` with custom key part `custom`
    /// (empty for none). `uri` needs its authority (`http://host/path`).
    pub fn http_key(uri: &::http::Uri, custom: &str) -> String {
        let mut out = String::new();
        key::write_primary(&mut out, uri, &::http::HeaderMap::new(), &custom);
        out
    }
}
