//! serde configuration.

use crate::{
    Algorithm, Clock, FailPolicy, HeaderStyle, Limit, Mode, Quota, RateLimitError, RateLimitLayer,
    RateLimitMetrics, RateLimiter, Tier, Tiers,
};
use ipnet::IpNet;
use palisade_core::key::{ConstKey, HeaderKey, PathKey};
use palisade_store::Store;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};

/// What a limit is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum KeyKind {
    /// The client IP (behind `trusted_proxies`); default 60/min.
    PeerIp,
    /// The value of the header named by `header`; default 100/min.
    Header,
    /// The `X-API-Key` header (or the one named by `header`); default 100/min.
    ApiKey,
    /// The [`UserId`](crate::UserId) extension; default 100/min.
    User,
    /// The [`ToolName`](crate::ToolName) extension (an MCP `tools/call`'s
    /// tool, learned from the body by `palisade_core::jsonrpc::peek`);
    /// default 50/min.
    Tool,
    /// The JSON-RPC method (`tools/call`, `resources/read` …) of the
    /// [`JsonRpcCall`](palisade_core::jsonrpc::JsonRpcCall) extension;
    /// default 100/min.
    Method,
    /// The request path; default 1000/min.
    Route,
    /// One bucket for every request; default 1000/min.
    Global,
}

impl KeyKind {
    fn default_limit(self) -> u32 {
        match self {
            KeyKind::PeerIp => 60,
            KeyKind::Header | KeyKind::ApiKey | KeyKind::User | KeyKind::Method => 100,
            KeyKind::Tool => 50,
            KeyKind::Route | KeyKind::Global => 1000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::PeerIp => "ip",
            KeyKind::Header => "header",
            KeyKind::ApiKey => "api_key",
            KeyKind::User => "user",
            KeyKind::Tool => "tool",
            KeyKind::Method => "method",
            KeyKind::Route => "route",
            KeyKind::Global => "global",
        }
    }
}

/// One limit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The name (headers, metrics, store keys); defaults to the key kind's
    /// (`ip`, `user`, `tool`, …).
    #[serde(default)]
    pub name: Option<String>,
    /// What the limit is keyed by.
    pub key: KeyKind,
    /// The header of `header` / `api_key` keys.
    #[serde(default)]
    pub header: Option<String>,
    /// Requests per period; defaults to the key kind's (60 per IP, 100 per
    /// user, 50 per tool …). Ignored when `tiered`.
    #[serde(default)]
    pub limit: Option<u32>,
    /// The period (default `1m`).
    #[serde(default = "minute", with = "humantime_serde")]
    pub period: Duration,
    /// The algorithm (default: the configuration's `algorithm`).
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// Take the quota from the tier table instead.
    #[serde(default)]
    pub tiered: bool,
    /// The cost of a request (default 1).
    #[serde(default = "one")]
    pub cost: u32,
    /// Decide and count, never reject.
    #[serde(default)]
    pub shadow: bool,
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

fn one() -> u32 {
    1
}

impl LimitConfig {
    /// A limit keyed by `key` with its defaults.
    pub fn new(key: KeyKind) -> Self {
        Self {
            name: None,
            key,
            header: None,
            limit: None,
            period: minute(),
            algorithm: None,
            tiered: false,
            cost: 1,
            shadow: false,
        }
    }
}

/// A tier's quota: a number of requests per period, or `"unlimited"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TierLimit {
    /// Requests per period.
    Limit(u32),
    /// `"unlimited"`.
    Word(String),
}

/// The tier table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TiersConfig {
    /// The tier of requests without one (default `anonymous`).
    pub default: String,
    /// The period of every tier's limit (default `1m`).
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Tier limits, over the built-in ones (anonymous 10, free 60,
    /// standard 300, premium 1000, enterprise unlimited): name a tier to
    /// change it or to add one.
    pub limits: BTreeMap<String, TierLimit>,
    /// A header naming the request's tier, set by the authenticating proxy
    /// in front (default: none — the tier comes from a [`Tier`] request
    /// extension an authentication layer inserts). Believed only on a
    /// connection from one of `trusted_proxies` (required with it); from
    /// any other peer it is ignored and the request gets the default tier,
    /// so a client cannot name its own plan. A [`Tier`] extension still
    /// wins over it.
    pub header: Option<String>,
}

impl Default for TiersConfig {
    fn default() -> Self {
        Self {
            default: "anonymous".into(),
            period: minute(),
            limits: BTreeMap::new(),
            header: None,
        }
    }
}

/// The built-in tier table, under `tiers.limits`.
fn default_tier_limits() -> BTreeMap<String, TierLimit> {
    [
        ("anonymous", TierLimit::Limit(10)),
        ("free", TierLimit::Limit(60)),
        ("standard", TierLimit::Limit(300)),
        ("premium", TierLimit::Limit(1000)),
        ("enterprise", TierLimit::Word("unlimited".into())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The rate limiter's configuration; `Default` is what users know: 60
/// requests per minute per client IP, GCRA, enforced, every header, fail
/// open.
///
/// ```
/// use palisade_ratelimit::{Config, RateLimitLayer};
///
/// let cfg: Config = toml::from_str(r#"
///     mode = "log_only"
///     trusted_proxies = ["10.0.0.0/8"]
///     [[limits]]
///     key = "user"
///     tiered = true
///     [[limits]]
///     key = "tool"
///     limit = 20
///     period = "30s"
///     [tiers.limits]
///     free = 100
/// "#).unwrap();
/// let layer = RateLimitLayer::from_config(&cfg, None, None).unwrap();
/// let names: Vec<_> = layer.limiter().limits().map(|l| l.name().to_owned()).collect();
/// assert_eq!(names, ["user", "tool"]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `false` is `mode = "disabled"`: nothing is limited or counted
    /// (default `true`).
    pub enabled: bool,
    /// enforce (default), log_only or disabled.
    pub mode: Mode,
    /// The default algorithm (GCRA).
    pub algorithm: Algorithm,
    /// What to do when the store fails: open (default) or closed.
    pub on_store_error: FailPolicy,
    /// Which headers responses carry.
    pub headers: HeaderStyle,
    /// Most keys tracked in-process per limit (default 100 000).
    pub max_keys: usize,
    /// The in-process clock: tokio (default; follows a paused test clock)
    /// or tsc (the CPU counter, cheaper to read).
    pub clock: Clock,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The limits (default: 60/min per IP).
    pub limits: Vec<LimitConfig>,
    /// The tier table of tiered limits.
    pub tiers: TiersConfig,
    /// A Redis Cluster hash tag for every counter (see
    /// [`RateLimiterBuilder::hash_tag`](crate::RateLimiterBuilder::hash_tag)):
    /// one round trip per decision on a cluster, all counters on one master.
    /// Default: none.
    pub hash_tag: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Enforce,
            algorithm: Algorithm::Gcra,
            on_store_error: FailPolicy::Open,
            headers: HeaderStyle::default(),
            max_keys: crate::local::DEFAULT_MAX_KEYS,
            clock: Clock::Tokio,
            trusted_proxies: Vec::new(),
            limits: vec![LimitConfig::new(KeyKind::PeerIp)],
            tiers: TiersConfig::default(),
            hash_tag: None,
        }
    }
}

impl Config {
    /// The limiter this configuration describes, sharing `store` when given.
    ///
    /// # Errors
    /// [`RateLimitError::InvalidConfig`] naming the bad field.
    pub fn limiter(
        &self,
        store: Option<Store>,
        metrics: Option<&RateLimitMetrics>,
    ) -> Result<RateLimiter, RateLimitError> {
        let bad = RateLimitError::InvalidConfig;
        let default_tier = Tier::new(self.tiers.default.as_str());
        let tier_quota = |name: &str, v: &TierLimit| match v {
            TierLimit::Limit(n) => Ok(Some(
                Quota::new(*n, self.tiers.period).with_algorithm(self.algorithm),
            )),
            TierLimit::Word(w) if w == "unlimited" => Ok(None),
            TierLimit::Word(w) => Err(bad(format!(
                "tiers.limits.{name}: {w:?} is neither a number nor \"unlimited\""
            ))),
        };
        let mut limits = default_tier_limits();
        limits.extend(
            self.tiers
                .limits
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let Some(default_limit) = limits.get(&self.tiers.default) else {
            return Err(bad(format!(
                "tiers.default: {:?} is not in tiers.limits",
                self.tiers.default
            )));
        };
        let mut table = Tiers::empty(
            default_tier.clone(),
            tier_quota(&self.tiers.default, default_limit)?,
        );
        for (name, v) in &limits {
            table = table.tier(Tier::new(name.as_str()), tier_quota(name, v)?);
        }
        let mut b = RateLimiter::builder()
            .mode(if self.enabled {
                self.mode
            } else {
                Mode::Disabled
            })
            .on_store_error(self.on_store_error)
            .max_keys(self.max_keys)
            .clock(self.clock)
            .tiers(table);
        if let Some(h) = &self.tiers.header {
            let name = http::HeaderName::try_from(h.as_str())
                .map_err(|_| bad(format!("tiers.header: {h:?} is not a header name")))?;
            if self.trusted_proxies.is_empty() {
                return Err(bad(
                    "tiers.header: needs trusted_proxies (the proxies that set it); \
                     a tier header from any other peer is ignored"
                        .into(),
                ));
            }
            let tiers = palisade_core::tier::TierHeader::new(name, self.trusted_proxies.clone());
            b = b.tier_resolver(move |req| tiers.resolve(req));
        }
        for (i, l) in self.limits.iter().enumerate() {
            let name = l.name.clone().unwrap_or_else(|| l.key.name().to_owned());
            let quota = Quota::new(l.limit.unwrap_or(l.key.default_limit()), l.period)
                .with_algorithm(l.algorithm.unwrap_or(self.algorithm));
            let header = |default: Option<&str>| {
                let h = l.header.as_deref().or(default).ok_or_else(|| {
                    bad(format!(
                        "limits[{i}] ({name}): key \"header\" needs `header`"
                    ))
                })?;
                http::HeaderName::try_from(h)
                    .map(HeaderKey::from_name)
                    .map_err(|_| bad(format!("limits[{i}] ({name}): {h:?} is not a header name")))
            };
            let limit = match l.key {
                KeyKind::PeerIp => {
                    Limit::per_ip_behind(self.trusted_proxies.iter().copied()).with_quota(quota)
                }
                KeyKind::Header => Limit::new(name.clone(), header(None)?, quota),
                KeyKind::ApiKey => Limit::new(name.clone(), header(Some("x-api-key"))?, quota),
                KeyKind::User => Limit::per_user().with_quota(quota),
                KeyKind::Tool => Limit::per_tool().with_quota(quota),
                KeyKind::Method => Limit::new(
                    name.clone(),
                    palisade_core::key::key_fn(|req: &http::Request<()>| {
                        req.extensions()
                            .get::<palisade_core::jsonrpc::JsonRpcCall>()
                            .map(|c| c.method().to_owned())
                    }),
                    quota,
                ),
                KeyKind::Route => Limit::new(name.clone(), PathKey, quota),
                KeyKind::Global => Limit::new(name.clone(), ConstKey("global"), quota),
            };
            let limit = if l.tiered {
                let mut t = limit;
                t.quota = crate::limit::QuotaSource::Tiered;
                t
            } else {
                limit
            };
            b = b.limit(limit.named(name).cost(l.cost).shadow(l.shadow));
        }
        if let Some(s) = store {
            b = b.store(s);
        }
        if let Some(tag) = &self.hash_tag {
            if tag.is_empty() {
                return Err(bad("hash_tag: must not be empty".into()));
            }
            b = b.hash_tag(tag.clone());
        }
        if let Some(m) = metrics {
            b = b.metrics(m);
        }
        b.build()
    }
}

impl RateLimitLayer {
    /// The layer this configuration describes, sharing `store` when given
    /// (Redis / Redis Cluster: GCRA limits only).
    ///
    /// # Errors
    /// [`RateLimitError::InvalidConfig`] naming the bad field.
    pub fn from_config(
        config: &Config,
        store: Option<Store>,
        metrics: Option<&RateLimitMetrics>,
    ) -> Result<Self, RateLimitError> {
        Ok(RateLimitLayer::new(config.limiter(store, metrics)?).headers(config.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_what_users_know() {
        let layer = RateLimitLayer::from_config(&Config::default(), None, None).unwrap();
        let limits: Vec<_> = layer.limiter().limits().collect();
        assert_eq!(limits.len(), 1);
        assert_eq!(limits[0].name(), "ip");
        assert_eq!(limits[0].quota().unwrap(), Quota::per_minute(60));
        let cfg: Config =
            toml::from_str("[[limits]]\nkey = \"user\"\n[[limits]]\nkey = \"tool\"").unwrap();
        let l = cfg.limiter(None, None).unwrap();
        let q: Vec<_> = l.limits().map(|l| l.quota().unwrap().limit()).collect();
        assert_eq!(q, [100, 50]);
    }

    #[test]
    fn bad_config_is_named() {
        let e = |s: &str| {
            let cfg: Config = toml::from_str(s).unwrap();
            cfg.limiter(None, None).unwrap_err().to_string()
        };
        assert!(e("[[limits]]\nkey = \"header\"").contains("needs `header`"));
        assert!(e("[[limits]]\nkey = \"user\"\nlimit = 0").contains("limit \"user\""));
        assert!(e("[tiers.limits]\nfree = \"lots\"").contains("tiers.limits.free"));
        assert!(e("[tiers]\ndefault = \"gold\"").contains("tiers.default"));
        assert!(e("[tiers]\nheader = \"x-tier\"").contains("tiers.header: needs trusted_proxies"));
        assert!(
            e("trusted_proxies = [\"10.0.0.0/8\"]\n[tiers]\nheader = \"x tier\"")
                .contains("tiers.header: \"x tier\" is not a header name")
        );
        assert!(
            toml::from_str::<Config>("mod = \"enforce\"").is_err(),
            "unknown keys are refused"
        );
    }

    /// The tier header is believed from a trusted proxy only; a `Tier`
    /// extension wins over it; an unknown tier is the default one.
    #[tokio::test]
    async fn the_tier_header_counts_only_from_a_trusted_proxy() {
        use futures_util::FutureExt;
        use palisade_core::key::PeerAddr;
        use tower::{Service, ServiceExt};
        let cfg: Config = toml::from_str(
            r#"
            trusted_proxies = ["10.0.0.0/8"]
            [[limits]]
            key = "global"
            tiered = true
            [tiers]
            header = "x-tier"
            [tiers.limits]
            anonymous = 1
            premium = 3
            "#,
        )
        .unwrap();
        let layer = RateLimitLayer::from_config(&cfg, None, None).unwrap();
        let mut svc = tower::ServiceBuilder::new().layer(layer).service_fn(
            |_req: http::Request<String>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            },
        );
        // One counter per tier slot: `global` is shared by every request.
        let mut admitted = |peer: &str, tier: Option<&str>, ext: Option<Tier>| {
            let mut req = http::Request::new(String::new());
            req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
            if let Some(t) = tier {
                req.headers_mut().insert("x-tier", t.parse().unwrap());
            }
            if let Some(t) = ext {
                req.extensions_mut().insert(t);
            }
            let fut = svc.ready().now_or_never().unwrap().unwrap().call(req);
            async move { fut.await.unwrap().status() == http::StatusCode::OK }
        };
        // From a client (not a proxy) the header is ignored: anonymous, 1.
        assert!(admitted("203.0.113.9:1", Some("premium"), None).await);
        assert!(!admitted("203.0.113.9:1", Some("premium"), None).await);
        // From the proxy: premium, 3.
        for _ in 0..3 {
            assert!(admitted("10.0.0.5:1", Some("premium"), None).await);
        }
        assert!(!admitted("10.0.0.5:1", Some("premium"), None).await);
        // An unknown tier is the default one (spent above).
        assert!(!admitted("10.0.0.5:1", Some("gold"), None).await);
        // The extension wins over the header: anonymous, spent.
        assert!(!admitted("10.0.0.5:1", Some("enterprise"), Some(Tier::ANONYMOUS)).await);
        // The header from the proxy: enterprise, unlimited.
        assert!(admitted("10.0.0.5:1", Some("enterprise"), None).await);
    }
}
