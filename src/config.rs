//! One configuration for every layer: a TOML file, overridden by the
//! environment, checked at start-up with errors that name the key.
//!
//! Sections: `[store]`, `[server]` (limits on clients), `[upstream]` (time
//! limits, `Host`), `[[routes]]` (path prefixes with their own limits),
//! `[mcp]` (per-tool breakers, retries and result caching for MCP servers,
//! `[mcp.tools.NAME]` overrides), `[circuit_breaker]`,
//! `[retry]`, `[rate_limit]`, `[cache]`, `[pii]`, `[shape]`,
//! `[adaptive_concurrency]`, `[fault]`, `[micro_batch]`, `[[token_limits]]`
//! (token budgets for LLM upstreams, none unless configured), `[llm]`
//! (provider pacing), each the layer
//! crate's own `Config` (the defaults are the ones users know; adaptive
//! concurrency and faults are off unless `enabled = true`; micro-batching
//! needs code — how to combine and split — and takes its sizes from
//! `[micro_batch]`). `examples/gateway.toml` is a commented example.
//!
//! | section | keys (defaults) |
//! |---|---|
//! | `[upstream]` | `response_timeout` (30s), `idle_timeout` (60s), `max_concurrent` (0: no limit), `preserve_host` (false: the upstream's own authority), `http2` (false), `ca_file`, `client_cert_file`, `client_key_file` |
//! | `[[routes]]` | `path_prefix` (required; the longest match wins), `response_timeout`, `idle_timeout`, `max_body_bytes` (each: the top-level value when left out; see [`RouteSection`]) |
//! | `[adaptive_concurrency]` | `enabled` (false), `algorithm` (`aimd` / `gradient`), `min_limit` (1), `initial_limit` (20), `max_limit` (1000), `backoff_ratio` (0.9), `tolerance` (1.5), `smoothing` (0.2), `measure` (`head` / `body`), `max_queue` (0: refuse at once), `queue_timeout` (1s), `routes` ([]: one limit; path prefixes that each learn their own) |
//! | `[micro_batch]` | `max_batch_size` (100), `max_wait` (1s), `max_queue` (1000) |
//! | `[[token_limits]]` | `kind = "tokens"` (required), `name` (`tokens`), `key` (`header` / `api_key` / `peer_ip` / `global`), `key_header` (`header`: required; `api_key`: `x-api-key`), `trusted_proxies` ([]), `path_prefix` (every path), `quota` (required), `period` (1m), `lease` (10m), `mode`, `on_missing_usage` (`streamed` / `reservation`), `on_store_error` (`open` / `closed`), `estimator` (`chars_per_token` 4, `default_output` 4096), `tiers` (quota per plan, from `rate_limit.tiers.header`; none) |
//! | `[llm.pacing]` | `enabled` (unset: on when `[[token_limits]]` are configured), `upstream` (`upstream`), `path_prefix` (every path), `max_wait` (0: refuse at once), `max_waiting` (64) |
//! | `[fault]` | `enabled` (false), `seed`, `trusted_peers` ([]), `header_token`, `key_header`, `[[fault.rules]]` with `path_prefix`, `key` (a `key_header` value), `delay`, `delay_percent` (100), `status`, `grpc_code`, `error_percent` (100), `abort_percent` (0) |
//!
//! # Environment
//!
//! The environment wins over the file. The variables people already use:
//!
//! | variable | sets |
//! |---|---|
//! | `REDIS_URL` | `store.url` |
//! | `UPSTREAM_TIMEOUT` / `UPSTREAM_IDLE_TIMEOUT` | `upstream.response_timeout` / `upstream.idle_timeout` (seconds, or "30s"; 0 turns it off) |
//! | `UPSTREAM_MAX_CONCURRENT` | `upstream.max_concurrent` (calls in flight to the upstream; 0: no limit) |
//! | `CIRCUIT_BREAKER_FAILURE_THRESHOLD` | `circuit_breaker.failure_threshold` |
//! | `CIRCUIT_BREAKER_RECOVERY_TIMEOUT` | `circuit_breaker.recovery_timeout` (seconds, or "90s") |
//! | `CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS` | `circuit_breaker.half_open_max_calls` |
//! | `CIRCUIT_BREAKER_SUCCESS_THRESHOLD` | `circuit_breaker.success_threshold` |
//! | `RETRY_MAX_ATTEMPTS` | `retry.max_attempts` |
//! | `RETRY_INITIAL_DELAY` / `RETRY_MAX_DELAY` | `retry.initial_delay` / `retry.max_delay` |
//! | `RATE_LIMIT_PER_USER` / `RATE_LIMIT_PER_TOOL` / `RATE_LIMIT_PER_IP` | the per-minute `limit` of the `rate_limit.limits` entry keyed by `user` / `tool` / `peer_ip` (added when missing) |
//! | `RATE_LIMIT_MODE` | `rate_limit.mode` (`enforce`, `shadow`, `disabled`) |
//! | `CACHE_TTL` / `CACHE_L1_TTL` | `cache.l2_ttl` / `cache.l1_ttl` (seconds, or "5m") |
//!
//! and any key at all as `PALISADE__<SECTION>__<FIELD>` (double underscores
//! between path parts, e.g. `PALISADE__CACHE__L1_MAX_ENTRIES=5000`). Values
//! are read as TOML values (numbers, booleans, arrays) and otherwise as
//! strings.
//!
//! # Example
//!
//! ```
//! use palisade::config::PalisadeConfig;
//!
//! let file = r#"
//!     [circuit_breaker]
//!     failure_threshold = 3
//! "#;
//! let env = [("RETRY_MAX_ATTEMPTS", "5"), ("CIRCUIT_BREAKER_RECOVERY_TIMEOUT", "30")];
//! let cfg = PalisadeConfig::from_sources(Some(file), env).unwrap();
//! assert_eq!(cfg.circuit_breaker.failure_threshold, 3);
//! assert_eq!(cfg.circuit_breaker.recovery_timeout.as_secs(), 30);
//! assert_eq!(cfg.retry.max_attempts, 5);
//!
//! let err = PalisadeConfig::from_sources(None, [("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "many")])
//!     .unwrap_err();
//! assert_eq!(err.key(), Some("circuit_breaker.failure_threshold"));
//! assert!(err.to_string().contains("CIRCUIT_BREAKER_FAILURE_THRESHOLD"));
//! ```

use serde::{Deserialize, Serialize};
use std::{path::Path, time::Duration};
use toml::{Table, Value};

/// Where shared state lives.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `memory://` (default), `redis://…`, `rediss://…` or
    /// `redis+cluster://h1:p1,h2:p2`.
    pub url: String,
    /// Prefix of every key (default `palisade`).
    pub prefix: String,
    /// Timeout of one store operation (default 250 ms).
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            url: "memory://".into(),
            prefix: "palisade".into(),
            op_timeout: Duration::from_millis(250),
        }
    }
}

impl StoreSection {
    /// Connects the store this section describes.
    pub async fn connect(&self) -> Result<palisade_store::Store, palisade_store::StoreError> {
        palisade_store::Store::connect_with(
            palisade_store::StoreConfig::new(self.url.clone())
                .prefix(self.prefix.clone())
                .op_timeout(self.op_timeout),
        )
        .await
    }
}

/// How long the upstream may take (a proxy such as the gateway applies
/// these; zero turns a limit off).
///
/// ```
/// use palisade::config::UpstreamSection;
/// use std::time::Duration;
///
/// let d = UpstreamSection::default();
/// assert_eq!(d.response_timeout, Duration::from_secs(30));
/// assert_eq!(d.idle_timeout, Duration::from_secs(60));
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamSection {
    /// The most a request waits for the response head, retries included
    /// (default 30 s): past it the client gets 504 with a problem body (gRPC
    /// `DEADLINE_EXCEEDED`). A stream that has started is not cut by it.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// A response stream that sends nothing for this long is cut (default
    /// 60 s); a flowing stream, however long, never is.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// An `https://` upstream's certificate is checked against the system's
    /// roots and, when set, the CA certificates in this PEM file (a private
    /// CA, a self-signed upstream).
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate chain (PEM) to present to an `https://`
    /// upstream that asks for one; needs `client_key_file`.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of `client_cert_file`.
    pub client_key_file: Option<std::path::PathBuf>,
    /// Speak HTTP/2 to the upstream for every request (prior knowledge,
    /// "h2c", on `http://`). gRPC requests always go over HTTP/2; others
    /// default to what the upstream offers (HTTP/1.1, or HTTP/2 by ALPN).
    pub http2: bool,
    /// Calls in flight to the upstream at once (a bulkhead; default 0: no
    /// limit). A call over it is answered 503 with `Retry-After: 1` (gRPC
    /// `UNAVAILABLE`) at once, never queued; a call holds its slot across
    /// its retries, until the response head arrives.
    pub max_concurrent: usize,
    /// Send the client's `Host` to the upstream (default false: the
    /// upstream's own authority, from its URL). For an upstream that serves
    /// several names, or builds links from the name it was asked for. The
    /// connection, TLS name (SNI) and certificate check stay the upstream
    /// URL's.
    pub preserve_host: bool,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            http2: false,
            max_concurrent: 0,
            preserve_host: false,
        }
    }
}

/// One `[[routes]]` entry: requests whose path starts with `path_prefix`
/// (the longest matching prefix wins; a plain string prefix, so `/v1`
/// also matches `/v1beta` — end it with `/` to match a directory) get
/// this entry's policies instead of the top-level ones. Each policy left
/// out is the top-level one; requests matching no route get the top-level
/// values. More policies can join the entry later without changing how
/// routes are matched (see [`RouteTable`](crate::routes::RouteTable)).
///
/// ```
/// use palisade::config::PalisadeConfig;
/// use std::time::Duration;
///
/// let file = r#"
///     [[routes]]
///     path_prefix = "/v1/chat/"
///     response_timeout = "120s"
///     idle_timeout = "5m"
///     [[routes]]
///     path_prefix = "/upload/"
///     max_body_bytes = 1048576
/// "#;
/// let cfg = PalisadeConfig::from_sources(Some(file), [("", ""); 0]).unwrap();
/// assert_eq!(cfg.routes[0].response_timeout, Some(Duration::from_secs(120)));
/// assert_eq!(cfg.routes[1].max_body_bytes, Some(1 << 20));
/// assert_eq!(cfg.routes[1].response_timeout, None, "the top-level one");
///
/// let err = PalisadeConfig::from_sources(Some("[[routes]]\npath_prefix = \"v1\""), [("", ""); 0])
///     .unwrap_err();
/// assert_eq!(err.key(), Some("routes[0].path_prefix"));
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteSection {
    /// The path prefix this route matches (required; starts with `/`).
    pub path_prefix: String,
    /// The most a request on this route waits for the response head,
    /// retries included (as `upstream.response_timeout`; `0s`: no limit).
    #[serde(with = "humantime_serde")]
    pub response_timeout: Option<Duration>,
    /// A response stream on this route that sends nothing for this long is
    /// cut (as `upstream.idle_timeout`; `0s`: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// The largest request body on this route (at least 1, and at most
    /// `server.max_body_bytes`, which stays the cap for every request). A
    /// larger `Content-Length` is answered `413` before anything reaches
    /// the upstream; a chunked body that grows past it fails the request
    /// (`413` when no answer has begun).
    pub max_body_bytes: Option<u64>,
}

impl RouteSection {
    /// A route for requests whose path starts with `path_prefix`, with
    /// every policy the top-level one.
    ///
    /// ```
    /// use palisade::config::RouteSection;
    /// use std::time::Duration;
    ///
    /// let route = RouteSection::new("/slow/").response_timeout(Duration::from_secs(90));
    /// assert_eq!(route.path_prefix, "/slow/");
    /// assert_eq!(route.idle_timeout, None);
    /// ```
    pub fn new(path_prefix: impl Into<String>) -> Self {
        Self {
            path_prefix: path_prefix.into(),
            ..Self::default()
        }
    }

    /// Sets `response_timeout`.
    pub fn response_timeout(mut self, limit: Duration) -> Self {
        self.response_timeout = Some(limit);
        self
    }

    /// Sets `idle_timeout`.
    pub fn idle_timeout(mut self, limit: Duration) -> Self {
        self.idle_timeout = Some(limit);
        self
    }

    /// Sets `max_body_bytes`.
    pub fn max_body_bytes(mut self, limit: u64) -> Self {
        self.max_body_bytes = Some(limit);
        self
    }

    /// The range checks: `(field, what is wrong)`; `server_max_body` is
    /// `server.max_body_bytes` (0: no global cap).
    fn validate(&self, server_max_body: u64) -> Result<(), (&'static str, String)> {
        const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
        if self.path_prefix.is_empty() {
            return Err((
                "path_prefix",
                "is required (a path such as \"/v1/\")".into(),
            ));
        }
        if !self.path_prefix.starts_with('/') {
            return Err(("path_prefix", "must start with `/`".into()));
        }
        for (key, value) in [
            ("response_timeout", self.response_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value.is_some_and(|v| v > LONGEST) {
                return Err((key, "must be at most 365 days (0s turns it off)".into()));
            }
        }
        match self.max_body_bytes {
            Some(0) => Err((
                "max_body_bytes",
                "must be at least 1 (leave it out for `server.max_body_bytes`)".into(),
            )),
            Some(n) if server_max_body > 0 && n > server_max_body => Err((
                "max_body_bytes",
                format!(
                    "must be at most server.max_body_bytes ({server_max_body}), the cap on every request"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// The listener's own limits (the gateway applies these to the
/// connections it accepts).
///
/// ```
/// use palisade::config::ServerSection;
/// use std::time::Duration;
///
/// let d = ServerSection::default();
/// assert_eq!(d.header_read_timeout, Duration::from_secs(30));
/// assert_eq!(d.max_connections, 0); // from the descriptor limit
/// assert_eq!(d.keep_alive_timeout, Duration::from_secs(60));
/// assert_eq!(d.max_body_bytes, 32 * 1024 * 1024);
/// assert_eq!(d.max_concurrent_streams, 100);
/// assert!(d.strict_http1);
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerSection {
    /// A client has this long to send a whole request head: the first from
    /// the accept, a later one from its first byte (default 30 s; `0s`:
    /// never); then the connection is closed. A client that sends half a
    /// head and stops holds nothing longer.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections served at once (default 0: three quarters of the
    /// process's open-file limit). One more is answered `503` with
    /// `Retry-After` and closed at once, never queued.
    pub max_connections: usize,
    /// The largest request head read (default 64 KiB, at least 8 KiB); a
    /// larger one is answered `431`.
    pub max_head_bytes: usize,
    /// The longest request target (path and query, default 8 KiB); a
    /// longer one is answered `414`.
    pub max_uri_bytes: usize,
    /// A request body that sends nothing for this long is cut and answered
    /// `408` (default 30 s; `0s`: never): a client trickling a byte now and
    /// then holds nothing for long.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// A connection with no request in progress is closed after this long
    /// (default 60 s; `0s`: never); HTTP/2 connections get `GOAWAY`. With
    /// `strict_http1 = false`, hyper also closes an HTTP/1.1 keep-alive
    /// connection whose next head has not come within `header_read_timeout`.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// The largest request body (default 32 MiB; `0`: no limit). A larger
    /// `Content-Length` is answered `413` before anything reaches the
    /// upstream; a chunked body that grows past it fails the request
    /// (`413` when no answer has begun).
    pub max_body_bytes: u64,
    /// Connections one client address (IPv6: one /64) may hold at once
    /// (default 0: no limit); one more is answered `503` like the global
    /// limit. Peers in
    /// `rate_limit.trusted_proxies` are not limited by address.
    pub max_connections_per_ip: usize,
    /// HTTP/2 streams one connection may have open at once (default 100,
    /// at least 1), announced in `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub max_concurrent_streams: u32,
    /// The largest HTTP/2 header list (decoded, default 64 KiB, at least
    /// 1 KiB), announced in `SETTINGS_MAX_HEADER_LIST_SIZE`; it also bounds
    /// the `CONTINUATION` frames read for one header block.
    pub max_header_list_size: u32,
    /// HTTP/1.1 request heads that servers read in different ways, the
    /// stuff of request smuggling, are answered `400` and the connection
    /// closed, before any layer or the upstream sees them (default true):
    /// a line ended by a bare LF, an obs-folded header line, `Content-Length`
    /// given twice (even with equal values), or both `Content-Length` and
    /// `Transfer-Encoding`. `false` reads them as RFC 9112 allows (and
    /// re-frames them for the upstream all the same).
    pub strict_http1: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 0,
            max_head_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            body_idle_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(60),
            max_body_bytes: 32 * 1024 * 1024,
            max_connections_per_ip: 0,
            max_concurrent_streams: 100,
            max_header_list_size: 64 * 1024,
            strict_http1: true,
        }
    }
}

impl ServerSection {
    /// The range checks: `(field, what is wrong)`.
    fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        // Past a year a deadline may overflow the clock; no limit is that long.
        const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_idle_timeout", self.body_idle_timeout),
            ("keep_alive_timeout", self.keep_alive_timeout),
        ] {
            if value > LONGEST {
                return Err((key, "must be at most 365 days (0s turns it off)"));
            }
        }
        if self.max_concurrent_streams == 0 {
            return Err((
                "max_concurrent_streams",
                "must be at least 1 (0 would refuse every HTTP/2 request)",
            ));
        }
        if self.max_header_list_size < 1024 {
            return Err(("max_header_list_size", "must be at least 1024 bytes"));
        }
        Ok(())
    }
}

/// MCP awareness (`[mcp]`): for an upstream that is an MCP server (or any
/// JSON-RPC service over HTTP), the circuit breaker is kept per tool and
/// judges replies, not only statuses.
///
/// With `enabled = true`:
/// - each tool called through `tools/call` has its own breaker (other
///   JSON-RPC methods and non-JSON-RPC requests share one), so one failing
///   tool's circuit opens while the others keep answering;
/// - a reply that carries a JSON-RPC `error` (except the codes that blame the
///   caller: -32700, -32600 to -32602) is a failure, and so is a tool result
///   with `isError: true` unless `tool_errors_fail = false`, in a JSON body or
///   in the event stream answering the call;
/// - an open circuit answers a JSON-RPC call with a JSON-RPC error reply to
///   its id (`-32000`, with `data.status` and `data.retryAfter`), with HTTP
///   status `open_status` (default 200, which every MCP client reads; 503
///   for clients that look at statuses).
///
///
/// Tools' annotations (`readOnlyHint`, `idempotentHint`, `destructiveHint`)
/// are learned from the `tools/list` replies passing through (see
/// [`ToolCatalog`](crate::mcp::ToolCatalog)), and `[mcp.tools.NAME]`
/// overrides them (`read_only`, `idempotent`, `destructive`, and the tool's
/// own `cache_ttl`):
/// - a call of a read-only or idempotent tool may be retried (on the
///   `[retry]` statuses and transport failures); any other tool's call is
///   never retried, unless the connection was refused before it was sent;
/// - the results of read-only tools are cached for `cache_ttl` (default
///   60 s; `"0s"` turns it off), keyed by tool and canonical arguments,
///   never an error (see [`palisade_cache::tools`]);
/// - a result over `max_output_tokens` (default 0: off; per tool too) is
///   cut to fit, structure kept, with a marker in its `_meta` (see
///   [`palisade_shape::budget`]); the cache keeps the whole result.
///
/// ```
/// use palisade::config::PalisadeConfig;
/// use std::time::Duration;
///
/// let cfg = PalisadeConfig::from_sources(Some("[mcp]\nenabled = true"), [("", ""); 0]).unwrap();
/// assert!(cfg.mcp.enabled && cfg.mcp.tool_errors_fail && cfg.mcp.learn_annotations);
/// assert_eq!(cfg.mcp.open_status, 200);
/// assert_eq!(cfg.mcp.cache_ttl, Duration::from_secs(60));
/// assert_eq!(cfg.mcp.max_call_bytes, 1 << 20);
/// let err = PalisadeConfig::from_sources(Some("[mcp]\nmax_call_bytes = 0"), [("", ""); 0]).unwrap_err();
/// assert_eq!(err.key(), Some("mcp.max_call_bytes"));
/// let err = PalisadeConfig::from_sources(Some("[mcp]\nopen_status = 42"), [("", ""); 0]).unwrap_err();
/// assert_eq!(err.key(), Some("mcp.open_status"));
///
/// let file = r#"
///     [mcp.tools.lookup]
///     read_only = true
///     cache_ttl = "5m"
/// "#;
/// let cfg = PalisadeConfig::from_sources(Some(file), [("", ""); 0]).unwrap();
/// assert_eq!(cfg.mcp.tools["lookup"].read_only, Some(true));
/// assert_eq!(cfg.mcp.tools["lookup"].cache_ttl, Some(Duration::from_secs(300)));
/// let err = PalisadeConfig::from_sources(Some("[mcp.tools.lookup]\nread_only = true\ndestructive = true"), [("", ""); 0]).unwrap_err();
/// assert_eq!(err.key(), Some("mcp.tools.lookup.destructive"));
/// let err = PalisadeConfig::from_sources(Some("[mcp.tools.lookup]\nreadonly = true"), [("", ""); 0]).unwrap_err();
/// assert!(err.key().unwrap().starts_with("mcp.tools.lookup"), "{err}");
/// ```
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct McpSection {
    /// Per-tool breakers judging JSON-RPC replies, retries and caching by
    /// tool annotations (default off).
    pub enabled: bool,
    /// A tool result with `isError: true` counts as a failure (default on).
    pub tool_errors_fail: bool,
    /// The HTTP status of the JSON-RPC error answering a call to an open
    /// circuit: 200 (default) or 503.
    pub open_status: u16,
    /// Learn tools' annotations from `tools/list` replies (default on; off:
    /// only `[mcp.tools.NAME]` says what a tool is).
    pub learn_annotations: bool,
    /// How long results of read-only tools are cached (default 60 s; zero:
    /// never).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// The most tokens (characters / 4) a tool result may take on its way
    /// to the client; a larger one is cut structure-preserving, with a
    /// marker in its `_meta` (default 0: no limit).
    pub max_output_tokens: u64,
    /// How much of a JSON `POST` body the gateway reads ahead to learn its
    /// JSON-RPC call (method, tool) before passing it on whole (default
    /// 1 MiB; without `[mcp]`, 64 KiB). A larger call passes unlearned:
    /// no per-tool limit, breaker, retry or cache applies to it.
    pub max_call_bytes: u64,
    /// Per-tool settings, overriding what the server says.
    pub tools: std::collections::BTreeMap<String, McpToolSection>,
}

impl Default for McpSection {
    fn default() -> Self {
        Self {
            enabled: false,
            tool_errors_fail: true,
            open_status: 200,
            learn_annotations: true,
            cache_ttl: Duration::from_secs(60),
            max_output_tokens: 0,
            max_call_bytes: 1 << 20,
            tools: std::collections::BTreeMap::new(),
        }
    }
}

/// One tool's settings (`[mcp.tools.NAME]`): each set field overrides the
/// annotation the server gives.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct McpToolSection {
    /// `readOnlyHint`.
    pub read_only: Option<bool>,
    /// `idempotentHint`.
    pub idempotent: Option<bool>,
    /// `destructiveHint`.
    pub destructive: Option<bool>,
    /// This tool's cache TTL (default `mcp.cache_ttl`; zero: never).
    #[serde(with = "humantime_serde::option")]
    pub cache_ttl: Option<Duration>,
    /// This tool's output budget in tokens (default `mcp.max_output_tokens`;
    /// zero: no limit).
    pub max_output_tokens: Option<u64>,
}

impl McpToolSection {
    /// The annotations this section sets.
    pub fn annotations(&self) -> palisade_core::mcp::ToolAnnotations {
        palisade_core::mcp::ToolAnnotations {
            read_only: self.read_only,
            idempotent: self.idempotent,
            destructive: self.destructive,
        }
    }
}

impl McpSection {
    fn validate(&self) -> Result<(), (String, &'static str)> {
        if !matches!(self.open_status, 200 | 503) {
            return Err(("open_status".into(), "must be 200 or 503"));
        }
        if self.max_call_bytes == 0 {
            return Err(("max_call_bytes".into(), "must be at least 1"));
        }
        for (name, tool) in &self.tools {
            if tool.read_only == Some(true) && tool.destructive == Some(true) {
                return Err((
                    format!("tools.{name}.destructive"),
                    "a read-only tool cannot be destructive",
                ));
            }
        }
        Ok(())
    }
}

/// Every layer's configuration (see the [module docs](self)).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PalisadeConfig {
    /// The store.
    pub store: StoreSection,
    /// Time limits on the upstream.
    pub upstream: UpstreamSection,
    /// The listener's limits on clients.
    pub server: ServerSection,
    /// MCP awareness: per-tool breakers judging JSON-RPC replies.
    pub mcp: McpSection,
    /// Routes (`[[routes]]`): path prefixes with their own policies (none
    /// by default: every request gets the top-level ones).
    pub routes: Vec<RouteSection>,
    /// The circuit breaker.
    #[cfg(feature = "breaker")]
    pub circuit_breaker: palisade_breaker::Config,
    /// Retry.
    #[cfg(feature = "retry")]
    pub retry: palisade_retry::Config,
    /// Rate limiting.
    #[cfg(feature = "ratelimit")]
    pub rate_limit: palisade_ratelimit::Config,
    /// The response cache.
    #[cfg(feature = "cache")]
    pub cache: palisade_cache::Config,
    /// PII masking.
    #[cfg(feature = "pii")]
    pub pii: palisade_pii::PiiConfig,
    /// Response shaping.
    #[cfg(feature = "shape")]
    pub shape: palisade_shape::ShapeConfig,
    /// The adaptive concurrency limit on the upstream (off by default).
    #[cfg(feature = "adaptive")]
    pub adaptive_concurrency: palisade_adaptive::AdaptiveConfig,
    /// Fault injection (off by default).
    #[cfg(feature = "fault")]
    pub fault: palisade_fault::FaultConfig,
    /// Micro-batching sizes (for `MicroBatchLayer::from_config`).
    #[cfg(feature = "microbatch")]
    pub micro_batch: palisade_microbatch::MicroBatchConfig,
    /// Token budgets for LLM upstreams (`[[token_limits]]`, each
    /// `kind = "tokens"`; none by default).
    #[cfg(feature = "llm")]
    pub token_limits: Vec<palisade_llm::TokenLimitConfig>,
    /// LLM settings beyond the token limits (`[llm]`).
    #[cfg(feature = "llm")]
    pub llm: LlmSection,
}

/// `[llm]`: settings for LLM upstreams beyond the token limits.
///
/// ```
/// use palisade::config::PalisadeConfig;
///
/// let cfg: PalisadeConfig = toml::from_str("[llm.pacing]\nenabled = true\nmax_wait = \"3s\"").unwrap();
/// assert!(cfg.llm.pacing.is_enabled(false));
/// ```
#[cfg(feature = "llm")]
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LlmSection {
    /// Provider pacing (`[llm.pacing]`): the provider's own quota headers,
    /// shared between replicas; on when token limits are configured unless
    /// `enabled` says otherwise.
    pub pacing: palisade_llm::PacingConfig,
}

/// Configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("configuration file is not valid TOML: {0}")]
    Syntax(String),
    /// A key has a value of the wrong kind, or is unknown.
    #[error("invalid configuration at `{key}`{origin}: {message}")]
    Invalid {
        /// The dotted path of the key.
        key: String,
        /// What is wrong.
        message: String,
        /// ` (set by VAR)` when an environment variable set it.
        origin: String,
    },
}

impl ConfigError {
    /// The dotted key at fault, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Always a string.
    Text,
    /// A TOML value when it parses as one, else a string.
    Auto,
    Number,
    /// A bare number means seconds.
    Duration,
}

/// The variables users know, and where they go.
const KNOWN_VARS: &[(&str, &str, Kind)] = &[
    ("REDIS_URL", "store.url", Kind::Text),
    (
        "UPSTREAM_TIMEOUT",
        "upstream.response_timeout",
        Kind::Duration,
    ),
    (
        "UPSTREAM_IDLE_TIMEOUT",
        "upstream.idle_timeout",
        Kind::Duration,
    ),
    (
        "UPSTREAM_MAX_CONCURRENT",
        "upstream.max_concurrent",
        Kind::Number,
    ),
    (
        "CIRCUIT_BREAKER_FAILURE_THRESHOLD",
        "circuit_breaker.failure_threshold",
        Kind::Number,
    ),
    (
        "CIRCUIT_BREAKER_RECOVERY_TIMEOUT",
        "circuit_breaker.recovery_timeout",
        Kind::Duration,
    ),
    (
        "CIRCUIT_BREAKER_HALF_OPEN_MAX_CALLS",
        "circuit_breaker.half_open_max_calls",
        Kind::Number,
    ),
    (
        "CIRCUIT_BREAKER_SUCCESS_THRESHOLD",
        "circuit_breaker.success_threshold",
        Kind::Number,
    ),
    ("RETRY_MAX_ATTEMPTS", "retry.max_attempts", Kind::Number),
    ("RETRY_INITIAL_DELAY", "retry.initial_delay", Kind::Duration),
    ("RETRY_MAX_DELAY", "retry.max_delay", Kind::Duration),
    ("RATE_LIMIT_MODE", "rate_limit.mode", Kind::Text),
    ("CACHE_TTL", "cache.l2_ttl", Kind::Duration),
    ("CACHE_L1_TTL", "cache.l1_ttl", Kind::Duration),
];

/// Per-key rate limits users set by variable: (variable, key kind).
const RATE_LIMIT_VARS: &[(&str, &str)] = &[
    ("RATE_LIMIT_PER_USER", "user"),
    ("RATE_LIMIT_PER_TOOL", "tool"),
    ("RATE_LIMIT_PER_IP", "peer_ip"),
];

impl PalisadeConfig {
    /// Loads `path` (when given) and overrides it with the process
    /// environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        Self::from_sources(text.as_deref(), std::env::vars())
    }

    /// Builds the configuration from TOML text and environment pairs.
    pub fn from_sources<K, V>(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut root: Table = match toml_text {
            Some(text) => text
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax(e.to_string()))?,
            None => Table::new(),
        };
        // Which variable set which key, to name it in errors.
        let mut origins: Vec<(String, String)> = Vec::new();
        for (name, raw) in env {
            let (name, raw) = (name.as_ref(), raw.as_ref());
            if let Some((_, path, kind)) = KNOWN_VARS.iter().find(|(v, _, _)| *v == name) {
                set_path(&mut root, path, parse_value(raw, *kind));
                origins.push((path.to_string(), name.to_owned()));
            } else if let Some((_, key)) = RATE_LIMIT_VARS.iter().find(|(v, _)| *v == name) {
                let index = set_rate_limit(&mut root, key, parse_value(raw, Kind::Number));
                origins.push((format!("rate_limit.limits[{index}].limit"), name.to_owned()));
            } else if let Some(rest) = name.strip_prefix("PALISADE__") {
                let path = rest.to_ascii_lowercase().replace("__", ".");
                if !path.is_empty() {
                    set_path(&mut root, &path, parse_value(raw, Kind::Auto));
                    origins.push((path, name.to_owned()));
                }
            }
        }
        let origin_of = |key: &str| {
            origins
                .iter()
                .find(|(path, _)| key == *path || key.starts_with(&format!("{path}.")))
                .map(|(_, var)| format!(" (set by {var})"))
                .unwrap_or_default()
        };
        let cfg: Self = serde_path_to_error::deserialize(Value::Table(root)).map_err(|err| {
            let key = err.path().to_string();
            ConfigError::Invalid {
                origin: origin_of(&key),
                key,
                message: err.into_inner().to_string(),
            }
        })?;
        // Values of the right kind can still be out of range: each section
        // checks its own, and the error names the key.
        cfg.check().map_err(|(key, message)| ConfigError::Invalid {
            origin: origin_of(&key),
            key,
            message,
        })?;
        Ok(cfg)
    }

    /// Every section's own range checks: `(dotted key, what is wrong)`.
    fn check(&self) -> Result<(), (String, String)> {
        self.server
            .validate()
            .map_err(|(field, why)| (format!("server.{field}"), why.to_owned()))?;
        self.mcp
            .validate()
            .map_err(|(field, why)| (format!("mcp.{field}"), why.to_owned()))?;
        if let Some(h) = &self.rate_limit.tiers.header {
            if http::HeaderName::try_from(h.as_str()).is_err() {
                return Err((
                    "rate_limit.tiers.header".into(),
                    format!("{h:?} is not a header name"),
                ));
            }
            if self.rate_limit.trusted_proxies.is_empty() {
                return Err((
                    "rate_limit.tiers.header".into(),
                    "needs rate_limit.trusted_proxies (the proxies that set it)".into(),
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            route
                .validate(self.server.max_body_bytes)
                .map_err(|(field, why)| (format!("routes[{i}].{field}"), why))?;
            if let Some(first) = self.routes[..i]
                .iter()
                .position(|r| r.path_prefix == route.path_prefix)
            {
                return Err((
                    format!("routes[{i}].path_prefix"),
                    format!("`{}` is already routes[{first}]'s", route.path_prefix),
                ));
            }
        }
        #[cfg(feature = "breaker")]
        if let Err(e) = self.circuit_breaker.validate() {
            return Err(match e {
                palisade_breaker::ConfigError::Invalid { field, reason } => {
                    (format!("circuit_breaker.{field}"), reason.to_owned())
                }
                other => ("circuit_breaker".to_owned(), other.to_string()),
            });
        }
        #[cfg(feature = "retry")]
        if let Err(e) = self.retry.validate() {
            return Err((format!("retry.{}", e.field()), e.to_string()));
        }
        #[cfg(feature = "cache")]
        if let Err(e) = self.cache.validate() {
            return Err(match &e {
                palisade_cache::CacheError::Invalid(msg) => match msg.split_once(": ") {
                    Some((field, why)) => (format!("cache.{field}"), why.to_owned()),
                    None => ("cache".to_owned(), msg.clone()),
                },
                other => ("cache".to_owned(), other.to_string()),
            });
        }
        #[cfg(feature = "adaptive")]
        if let Err(e) = self.adaptive_concurrency.validate() {
            return Err((format!("adaptive_concurrency.{}", e.field), e.reason));
        }
        #[cfg(feature = "fault")]
        if let Err(e) = self.fault.validate() {
            return Err((format!("fault.{}", e.field), e.reason));
        }
        #[cfg(feature = "microbatch")]
        if let Err((field, why)) = self.micro_batch.validate() {
            return Err((format!("micro_batch.{field}"), why.to_owned()));
        }
        #[cfg(feature = "llm")]
        for (i, limit) in self.token_limits.iter().enumerate() {
            if let Err(e) = limit.validate() {
                return Err(match e {
                    palisade_llm::TokenBudgetError::InvalidField { field, reason } => {
                        (format!("token_limits[{i}].{field}"), reason)
                    }
                    other => (format!("token_limits[{i}]"), other.to_string()),
                });
            }
        }
        #[cfg(feature = "llm")]
        if let Err(e) = self.llm.pacing.validate() {
            return Err(match e.field() {
                Some(field) => (format!("llm.pacing.{field}"), e.to_string()),
                None => ("llm.pacing".into(), e.to_string()),
            });
        }
        Ok(())
    }
}

fn parse_value(raw: &str, kind: Kind) -> Value {
    let raw = raw.trim();
    match kind {
        Kind::Text => Value::String(raw.to_owned()),
        Kind::Auto | Kind::Number => {
            toml_scalar(raw).unwrap_or_else(|| Value::String(raw.to_owned()))
        }
        Kind::Duration if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Value::String(format!("{raw}s"))
        }
        Kind::Duration => Value::String(raw.to_owned()),
    }
}

/// `raw` as a TOML value (number, boolean, array, inline table), if it is one.
fn toml_scalar(raw: &str) -> Option<Value> {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
}

fn set_path(root: &mut Table, path: &str, value: Value) {
    let mut parts = path.split('.').peekable();
    let mut table = root;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_owned(), value);
            return;
        }
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        table = entry.as_table_mut().expect("just made a table");
    }
}

/// Sets the limit of the `rate_limit.limits` entry keyed by `key`, adding
/// the entry when missing; returns its index.
fn set_rate_limit(root: &mut Table, key: &str, limit: Value) -> usize {
    let section = root
        .entry("rate_limit")
        .or_insert_with(|| Value::Table(Table::new()));
    if !section.is_table() {
        *section = Value::Table(Table::new());
    }
    let section = section.as_table_mut().expect("a table");
    let limits = section
        .entry("limits")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !limits.is_array() {
        *limits = Value::Array(Vec::new());
    }
    let limits = limits.as_array_mut().expect("an array");
    let index = limits
        .iter()
        .position(|l| l.get("key").and_then(Value::as_str) == Some(key))
        .unwrap_or_else(|| {
            let mut entry = Table::new();
            entry.insert("key".into(), Value::String(key.into()));
            limits.push(Value::Table(entry));
            limits.len() - 1
        });
    if let Some(entry) = limits[index].as_table_mut() {
        entry.insert("limit".into(), limit);
    }
    index
}

#[cfg(all(
    test,
    feature = "breaker",
    feature = "retry",
    feature = "ratelimit",
    feature = "cache"
))]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_ones_users_know() {
        let cfg = PalisadeConfig::from_sources(None, env(&[])).unwrap();
        assert_eq!(cfg.store.url, "memory://");
        assert_eq!(cfg.circuit_breaker.failure_threshold, 5);
        assert_eq!(
            cfg.circuit_breaker.recovery_timeout,
            Duration::from_secs(60)
        );
        assert_eq!(cfg.circuit_breaker.half_open_max_calls, 3);
        assert_eq!(cfg.circuit_breaker.success_threshold, 2);
        assert_eq!(cfg.retry.max_attempts, 3);
        assert_eq!(cfg.cache.l1_max_entries, 1000);
        assert_eq!(cfg.cache.l1_ttl, Duration::from_secs(60));
        assert_eq!(cfg.cache.l2_ttl, Duration::from_secs(300));
    }

    #[test]
    fn out_of_range_values_are_errors_naming_key_and_variable() {
        for (vars, key) in [
            (&[("RETRY_MAX_ATTEMPTS", "0")][..], "retry.max_attempts"),
            (
                &[("PALISADE__CIRCUIT_BREAKER__MINIMUM_CALLS", "0")][..],
                "circuit_breaker.minimum_calls",
            ),
            (&[("CACHE_L1_TTL", "0")][..], "cache.l1_ttl"),
            (
                &[("PALISADE__SERVER__MAX_CONCURRENT_STREAMS", "0")][..],
                "server.max_concurrent_streams",
            ),
            (
                &[("PALISADE__SERVER__MAX_HEADER_LIST_SIZE", "100")][..],
                "server.max_header_list_size",
            ),
            (
                &[("PALISADE__SERVER__HEADER_READ_TIMEOUT", "\"400days\"")][..],
                "server.header_read_timeout",
            ),
            (
                &[("PALISADE__SERVER__KEEP_ALIVE_TIMEOUT", "\"400days\"")][..],
                "server.keep_alive_timeout",
            ),
        ] {
            let err = PalisadeConfig::from_sources(None, env(vars)).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
            if key.starts_with("server.") {
                // The range check, not a type error.
                assert!(err.to_string().contains("must be"), "{err}");
            }
            assert!(err.to_string().contains(vars[0].0), "{err}");
        }
        let err =
            PalisadeConfig::from_sources(Some("[pii]\nmax_body_byte = 5\n"), env(&[])).unwrap_err();
        assert!(err.to_string().contains("max_body_byte"), "{err}");
    }

    #[test]
    fn listener_limits_can_be_turned_off() {
        let cfg = PalisadeConfig::from_sources(
            Some("[server]\nheader_read_timeout = \"0s\"\nstrict_http1 = false\n"),
            env(&[]),
        )
        .unwrap();
        assert!(cfg.server.header_read_timeout.is_zero());
        assert!(!cfg.server.strict_http1);
        assert!(
            PalisadeConfig::from_sources(None, env(&[]))
                .unwrap()
                .server
                .strict_http1
        );
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let cfg =
            PalisadeConfig::from_sources(Some(include_str!("../examples/gateway.toml")), env(&[]))
                .unwrap();
        assert_eq!(cfg.retry.initial_delay, Duration::from_millis(200));
        cfg.rate_limit.limiter(None, None).unwrap();
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = r#"
            [store]
            url = "redis://file:6379"
            [retry]
            max_attempts = 2
            [cache]
            l1_max_entries = 10
        "#;
        let cfg = PalisadeConfig::from_sources(
            Some(file),
            env(&[
                ("REDIS_URL", "redis://env:6379"),
                ("RETRY_MAX_ATTEMPTS", "4"),
                ("CACHE_TTL", "10m"),
                ("PALISADE__CACHE__L1_MAX_ENTRIES", "2000"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.store.url, "redis://env:6379");
        assert_eq!(cfg.retry.max_attempts, 4);
        assert_eq!(cfg.cache.l2_ttl, Duration::from_secs(600));
        assert_eq!(cfg.cache.l1_max_entries, 2000);
    }

    #[test]
    fn per_key_rate_limits_by_variable() {
        let file = r#"
            [[rate_limit.limits]]
            key = "user"
            limit = 5
        "#;
        let cfg = PalisadeConfig::from_sources(
            Some(file),
            env(&[
                ("RATE_LIMIT_PER_USER", "100"),
                ("RATE_LIMIT_PER_TOOL", "50"),
            ]),
        )
        .unwrap();
        let limits = &cfg.rate_limit.limits;
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].limit, Some(100));
        assert_eq!(limits[1].limit, Some(50));
    }

    #[test]
    fn errors_name_the_key_and_the_variable() {
        let err =
            PalisadeConfig::from_sources(None, env(&[("RETRY_MAX_ATTEMPTS", "lots")])).unwrap_err();
        assert_eq!(err.key(), Some("retry.max_attempts"));
        assert!(
            err.to_string().contains("(set by RETRY_MAX_ATTEMPTS)"),
            "{err}"
        );

        let err =
            PalisadeConfig::from_sources(Some("[retry]\nmax_atempts = 3\n"), env(&[])).unwrap_err();
        assert!(err.to_string().contains("max_atempts"), "{err}");

        let err = PalisadeConfig::from_sources(
            Some("[circuit_breaker]\nrecovery_timeout = \"soon\"\n"),
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("circuit_breaker.recovery_timeout"));

        let err = PalisadeConfig::from_sources(Some("[store\nurl="), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax(_)));

        let err = PalisadeConfig::from_sources(Some("[colour]\nred = 1\n"), env(&[])).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[cfg(all(feature = "adaptive", feature = "fault"))]
    #[test]
    fn adaptive_and_fault_sections_are_off_by_default_and_checked() {
        let cfg = PalisadeConfig::from_sources(None, env(&[])).unwrap();
        assert!(!cfg.adaptive_concurrency.enabled);
        assert!(!cfg.fault.enabled);
        let file = r#"
            [adaptive_concurrency]
            enabled = true
            algorithm = "gradient"
            max_queue = 10
            queue_timeout = "200ms"
            [fault]
            enabled = true
            trusted_peers = ["127.0.0.1/32"]
            [[fault.rules]]
            path_prefix = "/slow"
            delay = "1s"
            delay_percent = 25
        "#;
        let cfg = PalisadeConfig::from_sources(Some(file), env(&[])).unwrap();
        assert_eq!(cfg.adaptive_concurrency.max_queue, 10);
        assert_eq!(cfg.fault.rules[0].delay, Some(Duration::from_secs(1)));
        for (vars, key) in [
            (
                &[("PALISADE__ADAPTIVE_CONCURRENCY__MIN_LIMIT", "0")][..],
                "adaptive_concurrency.min_limit",
            ),
            (
                &[("PALISADE__ADAPTIVE_CONCURRENCY__BACKOFF_RATIO", "2.0")][..],
                "adaptive_concurrency.backoff_ratio",
            ),
            (
                &[("PALISADE__ADAPTIVE_CONCURRENCY__ALGORITHM", "vegas")][..],
                "adaptive_concurrency.algorithm",
            ),
            (
                &[("PALISADE__ADAPTIVE_CONCURRENCY__ROUTES", "[\"v1\"]")][..],
                "adaptive_concurrency.routes",
            ),
        ] {
            let err = PalisadeConfig::from_sources(None, env(vars)).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
            assert!(err.to_string().contains(vars[0].0), "{err}");
        }
        let err = PalisadeConfig::from_sources(Some("[[fault.rules]]\nstatus = 200\n"), env(&[]))
            .unwrap_err();
        assert_eq!(err.key(), Some("fault.rules[0].status"), "{err}");
        let err =
            PalisadeConfig::from_sources(Some("[[fault.rules]]\nabort_percent = 200\n"), env(&[]))
                .unwrap_err();
        assert_eq!(err.key(), Some("fault.rules[0].abort_percent"), "{err}");
        let err =
            PalisadeConfig::from_sources(Some("[fault]\nenable = true\n"), env(&[])).unwrap_err();
        assert!(err.to_string().contains("enable"), "{err}");
        #[cfg(feature = "microbatch")]
        {
            let cfg = PalisadeConfig::from_sources(
                Some("[micro_batch]\nmax_batch_size = 64\nmax_wait = \"20ms\"\n"),
                env(&[]),
            )
            .unwrap();
            assert_eq!(cfg.micro_batch.max_wait, Duration::from_millis(20));
            let err = PalisadeConfig::from_sources(
                None,
                env(&[("PALISADE__MICRO_BATCH__MAX_BATCH_SIZE", "0")]),
            )
            .unwrap_err();
            assert_eq!(err.key(), Some("micro_batch.max_batch_size"), "{err}");
        }
    }

    #[test]
    fn routes_are_checked_naming_the_key() {
        let cfg = PalisadeConfig::from_sources(None, env(&[])).unwrap();
        assert!(cfg.routes.is_empty(), "none unless configured");
        assert!(!cfg.upstream.preserve_host);
        let file = r#"
            [upstream]
            preserve_host = true
            [[routes]]
            path_prefix = "/v1/"
            response_timeout = "2m"
            idle_timeout = "0s"
            [[routes]]
            path_prefix = "/upload/"
            max_body_bytes = 1024
        "#;
        let cfg = PalisadeConfig::from_sources(Some(file), env(&[])).unwrap();
        assert!(cfg.upstream.preserve_host);
        assert_eq!(
            cfg.routes[0],
            RouteSection::new("/v1/")
                .response_timeout(Duration::from_secs(120))
                .idle_timeout(Duration::ZERO)
        );
        assert_eq!(
            cfg.routes[1],
            RouteSection::new("/upload/").max_body_bytes(1024)
        );
        for (file, key) in [
            (
                "[rate_limit.tiers]\nheader = \"x-plan\"\n",
                "rate_limit.tiers.header",
            ),
            (
                "[rate_limit]\ntrusted_proxies = [\"10.0.0.0/8\"]\n[rate_limit.tiers]\nheader = \"x plan\"\n",
                "rate_limit.tiers.header",
            ),
            (
                "[[routes]]\nidle_timeout = \"1s\"\n",
                "routes[0].path_prefix",
            ),
            (
                "[[routes]]\npath_prefix = \"v1\"\n",
                "routes[0].path_prefix",
            ),
            (
                "[[routes]]\npath_prefix = \"/a\"\n[[routes]]\npath_prefix = \"/a\"\n",
                "routes[1].path_prefix",
            ),
            (
                "[[routes]]\npath_prefix = \"/a\"\nresponse_timeout = \"400days\"\n",
                "routes[0].response_timeout",
            ),
            (
                "[[routes]]\npath_prefix = \"/a\"\nmax_body_bytes = 0\n",
                "routes[0].max_body_bytes",
            ),
            (
                "[server]\nmax_body_bytes = 100\n[[routes]]\npath_prefix = \"/a\"\nmax_body_bytes = 101\n",
                "routes[0].max_body_bytes",
            ),
            (
                "[[routes]]\npath_prefix = \"/a\"\nidle_timeout = 5\n",
                "routes[0].idle_timeout",
            ),
        ] {
            let err = PalisadeConfig::from_sources(Some(file), env(&[])).unwrap_err();
            assert_eq!(err.key(), Some(key), "{file}: {err}");
        }
        // No global cap: any route limit.
        let file = "[server]\nmax_body_bytes = 0\n[[routes]]\npath_prefix = \"/a\"\nmax_body_bytes = 99999999999\n";
        PalisadeConfig::from_sources(Some(file), env(&[])).unwrap();
    }

    #[cfg(feature = "llm")]
    #[test]
    fn llm_pacing_is_checked_naming_the_key() {
        let cfg = PalisadeConfig::from_sources(None, env(&[])).unwrap();
        assert_eq!(cfg.llm.pacing.enabled, None, "on with token limits");
        let file = "[llm.pacing]\nenabled = false\nupstream = \"openai\"\nmax_wait = \"2s\"\n";
        let cfg = PalisadeConfig::from_sources(Some(file), env(&[])).unwrap();
        assert!(!cfg.llm.pacing.is_enabled(true));
        assert_eq!(cfg.llm.pacing.max_wait, Duration::from_secs(2));
        for (file, key) in [
            ("[llm.pacing]\nupstream = \"\"\n", "llm.pacing.upstream"),
            (
                "[llm.pacing]\npath_prefix = \"v1\"\n",
                "llm.pacing.path_prefix",
            ),
            (
                "[llm.pacing]\nmax_wait = \"1s\"\nmax_waiting = 0\n",
                "llm.pacing.max_waiting",
            ),
            ("[llm.pacing]\nmax_wait = \"2h\"\n", "llm.pacing.max_wait"),
        ] {
            let err = PalisadeConfig::from_sources(Some(file), env(&[])).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
        }
        let err = PalisadeConfig::from_sources(Some("[llm.pacing]\nmax_wiat = \"1s\"\n"), env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("max_wiat"), "{err}");
    }

    #[cfg(feature = "llm")]
    #[test]
    fn token_limits_are_checked_naming_the_key() {
        let cfg = PalisadeConfig::from_sources(None, env(&[])).unwrap();
        assert!(cfg.token_limits.is_empty(), "off unless configured");
        let file = r#"
            [[token_limits]]
            kind = "tokens"
            name = "per-user"
            key_header = "x-user"
            path_prefix = "/v1/"
            quota = 100000
            [[token_limits]]
            kind = "tokens"
            name = "per-ip"
            key = "peer_ip"
            quota = 2000000
            period = "1d"
        "#;
        let cfg = PalisadeConfig::from_sources(Some(file), env(&[])).unwrap();
        assert_eq!(cfg.token_limits.len(), 2);
        assert_eq!(cfg.token_limits[1].period, Duration::from_secs(86400));
        for (file, key) in [
            (
                "[[token_limits]]\nkind = \"tokens\"\nquota = 10\n",
                "token_limits[0].key_header",
            ),
            (
                "[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 0\n",
                "token_limits[0].quota",
            ),
            (
                "[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 1\nlease = \"0s\"\n",
                "token_limits[0].lease",
            ),
            (
                "[[token_limits]]\nkind = \"tokens\"\nkey = \"api_key\"\nkey_header = \"x y\"\nquota = 1\n",
                "token_limits[0].key_header",
            ),
            (
                "[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 1\npath_prefix = \"v1\"\n",
                "token_limits[0].path_prefix",
            ),
            (
                "[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 1\nestimator = { chars_per_token = 0.0 }\n",
                "token_limits[0].estimator",
            ),
            (
                "[[token_limits]]\nkind = \"requests\"\nkey = \"global\"\nquota = 1\n",
                "token_limits[0].kind",
            ),
            (
                "[[token_limits]]\nkind = \"tokens\"\nkey = \"user\"\nquota = 1\n",
                "token_limits[0].key",
            ),
        ] {
            let err = PalisadeConfig::from_sources(Some(file), env(&[])).unwrap_err();
            assert_eq!(err.key(), Some(key), "{err}");
        }
        let err = PalisadeConfig::from_sources(
            Some("[[token_limits]]\nkind = \"tokens\"\nkey = \"global\"\nquota = 1\n"),
            env(&[("PALISADE__TOKEN_LIMITS", "5")]),
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("token_limits"), "{err}");
    }
}
