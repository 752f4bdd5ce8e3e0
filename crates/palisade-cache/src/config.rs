//! serde configuration and the builder.

use crate::{CacheError, CacheMetrics};
use palisade_store::Store;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Cache settings (serde; `Default` = the SPEC defaults). Durations are
/// written like `"60s"`, `"250ms"`.
///
/// ```
/// let cfg: palisade_cache::Config =
///     serde_json::from_str(r#"{"l1_ttl": "30s", "default_ttl": "5s"}"#).unwrap();
/// assert_eq!(cfg.l1_max_entries, 1000);
/// assert_eq!(cfg.l1_ttl, std::time::Duration::from_secs(30));
/// let layer = palisade_cache::CacheLayer::from_config(&cfg).unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `false` turns the cache off: every request passes straight through
    /// (default `true`).
    pub enabled: bool,
    /// Name of this cache in metrics and logs (bounded label).
    pub name: String,
    /// L1 bound on entries (default 1000).
    pub l1_max_entries: u64,
    /// L1 bound on bytes (default 64 MiB).
    pub l1_max_bytes: u64,
    /// Longest time an entry stays in L1 (default 60 s).
    #[serde(with = "humantime_serde")]
    pub l1_ttl: Duration,
    /// Longest time an entry stays in L2 (default 300 s).
    #[serde(with = "humantime_serde")]
    pub l2_ttl: Duration,
    /// Key namespace in the store (default `cache`).
    pub namespace: String,
    /// Key version; changing it abandons every stored entry (default `v1`).
    pub version: String,
    /// Bodies larger than this are never cached, only streamed (default 1 MiB).
    pub max_body_bytes: usize,
    /// Freshness for cacheable GET responses that carry no freshness
    /// information of their own (none by default: RFC heuristics apply).
    /// For the generic service cache, the TTL of every entry (default:
    /// `l2_ttl`).
    #[serde(with = "humantime_serde")]
    pub default_ttl: Option<Duration>,
    /// Coalesce concurrent misses for one key into one upstream call.
    pub coalesce: bool,
    /// How long a coalesced request waits before going upstream itself
    /// (default 5 s); also the TTL of the cross-replica fill lock.
    #[serde(with = "humantime_serde")]
    pub coalesce_timeout: Duration,
    /// How often a follower of another replica's fill polls L2 (default 20 ms).
    #[serde(with = "humantime_serde")]
    pub l2_poll_interval: Duration,
    /// Adds `X-Cache: HIT | MISS | STALE | REVALIDATED` (default true).
    pub x_cache_header: bool,
    /// Stores responses that carry `Set-Cookie` (default false, as nginx
    /// and Varnish do: a shared cache must not hand one user's cookie to another).
    pub store_set_cookie: bool,
    /// Heuristic freshness as a fraction of the time since `Last-Modified`
    /// (RFC 9111 §4.2.2; default 0.1).
    pub heuristic_fraction: f64,
    /// Cap of heuristic freshness (default 24 h).
    #[serde(with = "humantime_serde")]
    pub heuristic_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "http".into(),
            l1_max_entries: 1000,
            l1_max_bytes: 64 << 20,
            l1_ttl: Duration::from_secs(60),
            l2_ttl: Duration::from_secs(300),
            namespace: "cache".into(),
            version: "v1".into(),
            max_body_bytes: 1 << 20,
            default_ttl: None,
            coalesce: true,
            coalesce_timeout: Duration::from_secs(5),
            l2_poll_interval: Duration::from_millis(20),
            x_cache_header: true,
            store_set_cookie: false,
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
        }
    }
}

impl Config {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), CacheError> {
        let bad = |k: &str, why: &str| Err(CacheError::Invalid(format!("{k}: {why}")));
        if self.name.is_empty() {
            return bad("name", "must not be empty");
        }
        if self.l1_max_entries == 0 {
            return bad("l1_max_entries", "must be > 0");
        }
        if self.l1_max_bytes == 0 {
            return bad("l1_max_bytes", "must be > 0");
        }
        if self.l1_ttl.is_zero() {
            return bad("l1_ttl", "must be > 0");
        }
        if self.l2_ttl.is_zero() {
            return bad("l2_ttl", "must be > 0");
        }
        if self.namespace.is_empty() {
            return bad("namespace", "must not be empty");
        }
        if self.version.is_empty() {
            return bad("version", "must not be empty");
        }
        if self.default_ttl.is_some_and(|d| d.is_zero()) {
            return bad("default_ttl", "must be > 0 when set");
        }
        if self.coalesce_timeout.is_zero() {
            return bad("coalesce_timeout", "must be > 0");
        }
        if self.l2_poll_interval.is_zero() {
            return bad("l2_poll_interval", "must be > 0");
        }
        if !(0.0..=1.0).contains(&self.heuristic_fraction) {
            return bad("heuristic_fraction", "must be within 0..=1");
        }
        Ok(())
    }
}

/// Builds a [`CacheLayer`](crate::CacheLayer) or a
/// [`CacheServiceLayer`](crate::CacheServiceLayer); every setting has the
/// [`Config`] default.
///
/// ```
/// use palisade_cache::CacheLayer;
/// use std::time::Duration;
///
/// let layer = CacheLayer::builder()
///     .l1_max_entries(10_000)
///     .l1_ttl(Duration::from_secs(30))
///     .default_ttl(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert_eq!(layer.handle().stats().hits, 0);
///
/// // An invalid setting is an error naming it, never silently replaced.
/// let err = CacheLayer::builder().l1_max_entries(0).build().unwrap_err();
/// assert!(err.to_string().contains("l1_max_entries"), "{err}");
/// ```
#[derive(Clone, Debug, Default)]
pub struct CacheBuilder {
    pub(crate) cfg: Config,
    pub(crate) store: Option<Store>,
    pub(crate) metrics: Option<CacheMetrics>,
}

macro_rules! setters {
    ($($(#[$m:meta])* $name:ident: $ty:ty),* $(,)?) => {$(
        $(#[$m])*
        pub fn $name(mut self, value: $ty) -> Self {
            self.cfg.$name = value.into();
            self
        }
    )*};
}

impl CacheBuilder {
    /// A builder with the settings of `cfg`.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            cfg: cfg.clone(),
            ..Self::default()
        }
    }

    setters! {
        /// See [`Config::enabled`].
        enabled: bool,
        /// See [`Config::name`].
        name: &str,
        /// See [`Config::l1_max_entries`].
        l1_max_entries: u64,
        /// See [`Config::l1_max_bytes`].
        l1_max_bytes: u64,
        /// See [`Config::l1_ttl`].
        l1_ttl: Duration,
        /// See [`Config::l2_ttl`].
        l2_ttl: Duration,
        /// See [`Config::namespace`].
        namespace: &str,
        /// See [`Config::version`].
        version: &str,
        /// See [`Config::max_body_bytes`].
        max_body_bytes: usize,
        /// See [`Config::default_ttl`].
        default_ttl: Duration,
        /// See [`Config::coalesce`].
        coalesce: bool,
        /// See [`Config::coalesce_timeout`].
        coalesce_timeout: Duration,
        /// See [`Config::l2_poll_interval`].
        l2_poll_interval: Duration,
        /// See [`Config::x_cache_header`].
        x_cache_header: bool,
        /// See [`Config::store_set_cookie`].
        store_set_cookie: bool,
    }

    /// Adds the shared L2 tier on `store` (Redis / Redis Cluster, or
    /// in-process for tests).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Records Prometheus metrics (labelled with this cache's name).
    pub fn metrics(mut self, metrics: CacheMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The cache of MCP tool results ([`ToolCacheLayer`](crate::ToolCacheLayer)),
    /// with these tiers (named `<name>-tools`, its keys under the `tool`
    /// entity in the store); `max_body_bytes` bounds a stored reply.
    pub fn build_tools(&self) -> Result<crate::ToolCacheLayer, CacheError> {
        let mut cfg = self.validated()?;
        cfg.name = format!("{}-tools", cfg.name);
        let core = crate::core::Core::new(self.tier_settings(&cfg, "tool"));
        Ok(crate::ToolCacheLayer::new(
            core,
            cfg.max_body_bytes,
            cfg.x_cache_header,
        ))
    }

    /// The settings, checked: an invalid value is an error naming it,
    /// never silently replaced.
    pub(crate) fn validated(&self) -> Result<Config, CacheError> {
        self.cfg.validate()?;
        Ok(self.cfg.clone())
    }

    pub(crate) fn tier_settings(
        &self,
        cfg: &Config,
        entity: &'static str,
    ) -> crate::core::TierSettings {
        crate::core::TierSettings {
            name: cfg.name.clone(),
            l1_max_entries: cfg.l1_max_entries,
            l1_max_bytes: cfg.l1_max_bytes,
            l1_ttl: cfg.l1_ttl,
            store: self.store.clone(),
            l2_ttl: cfg.l2_ttl,
            namespace: cfg.namespace.clone(),
            version: cfg.version.clone(),
            entity,
            coalesce: cfg.coalesce,
            coalesce_timeout: cfg.coalesce_timeout,
            poll_interval: cfg.l2_poll_interval,
            metrics: self.metrics.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec_and_bad_keys_are_named() {
        let c = Config::default();
        assert_eq!(
            (c.l1_max_entries, c.l1_ttl, c.l2_ttl),
            (1000, Duration::from_secs(60), Duration::from_secs(300))
        );
        assert!(c.validate().is_ok());
        let c: Config = serde_json::from_str(r#"{"l1_max_entries": 0}"#).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("l1_max_entries")
        );
        let err = serde_json::from_str::<Config>(r#"{"l1_ttll": "1s"}"#).unwrap_err();
        assert!(err.to_string().contains("l1_ttll"));
        let c: Config = toml::from_str("default_ttl = \"90s\"\ncoalesce = false").unwrap();
        assert_eq!(c.default_ttl, Some(Duration::from_secs(90)));
        assert!(!c.coalesce);
    }
}
