//! A token limit as configuration (TOML / JSON), for services that build
//! their stack from a file.

use crate::usage::Estimator;
use crate::{FailPolicy, Mode, OnMissingUsage, TokenBudgetError, TokenBudgetLayer};
use palisade_core::key::{HeaderKey, KeyExtractor, PeerIp};
use palisade_store::{Store, TokenRule};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One token limit (`kind = "tokens"`): `quota` tokens per `period` per
/// key — the value of a request header (a user or an API key), the client
/// address, or one budget for everything — optionally only for paths under
/// `path_prefix`.
///
/// ```
/// use palisade_llm::TokenLimitConfig;
///
/// let cfg: TokenLimitConfig = toml::from_str(r#"
///     kind = "tokens"
///     name = "per-user"
///     key = "header"
///     key_header = "x-user"
///     path_prefix = "/v1/"
///     quota = 100000
///     period = "1m"
///     lease = "10m"
///     on_missing_usage = "reservation"
///     estimator = { chars_per_token = 3.5, default_output = 1024 }
///     tiers = { premium = 2000000 }
/// "#).unwrap();
/// let layer = cfg.layer(palisade_store::Store::in_memory(), None).unwrap();
/// assert_eq!(layer.name(), "per-user");
/// assert_eq!(layer.tiers().collect::<Vec<_>>(), ["premium"]);
/// assert_eq!(layer.path_prefix(), Some("/v1/"));
///
/// let bad: TokenLimitConfig = toml::from_str("kind = \"tokens\"\nkey_header = \"x-user\"\nquota = 0").unwrap();
/// assert!(bad.layer(palisade_store::Store::in_memory(), None).unwrap_err().to_string().contains("quota"));
/// let headless: TokenLimitConfig = toml::from_str("kind = \"tokens\"\nkey = \"header\"\nquota = 10").unwrap();
/// assert!(headless.layer(palisade_store::Store::in_memory(), None).unwrap_err().to_string().contains("key_header"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitConfig {
    /// Always `"tokens"` (what sets this limit apart from request limits).
    pub kind: TokenKind,
    /// The limit's name (metrics label, `RateLimit` policy name).
    #[serde(default = "default_name")]
    pub name: String,
    /// What keys the budget (default `header`).
    #[serde(default)]
    pub key: TokenKeyKind,
    /// The request header of `header` keys (required for them), or of
    /// `api_key` keys (default `x-api-key`).
    #[serde(default)]
    pub key_header: Option<String>,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` is believed by
    /// `peer_ip` keys (default none: the connected peer).
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Budget only requests whose path starts with this (e.g. `/v1/`;
    /// default every request).
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Tokens per `period`.
    pub quota: u64,
    /// The window (default one minute).
    #[serde(default = "minute", with = "humantime_serde")]
    pub period: Duration,
    /// How long a reservation is held unsettled (default 10 minutes).
    #[serde(default = "lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Enforce (default), log-only or disabled.
    #[serde(default)]
    pub mode: Mode,
    /// What a response without usage is charged.
    #[serde(default)]
    pub on_missing_usage: OnMissingUsage,
    /// What to do when the store cannot decide.
    #[serde(default)]
    pub on_store_error: FailPolicy,
    /// How requests are estimated.
    #[serde(default)]
    pub estimator: Estimator,
    /// Tokens per `period` for requests of a tier (plan), by tier name
    /// (e.g. `{ free = 20000, premium = 2000000 }`); `quota` stays the
    /// budget of requests without a tier or of another one. The tier is
    /// the request's [`Tier`](palisade_core::tier::Tier) extension (the
    /// gateway sets it from `rate_limit.tiers.header`). Default none.
    #[serde(default)]
    pub tiers: std::collections::BTreeMap<String, u64>,
}

/// What keys a configured token limit.
///
/// ```
/// use palisade_llm::TokenKeyKind;
///
/// assert_eq!(TokenKeyKind::default(), TokenKeyKind::Header);
/// let k: TokenKeyKind = serde_json::from_str("\"peer_ip\"").unwrap();
/// assert_eq!(k, TokenKeyKind::PeerIp);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenKeyKind {
    /// The value of the `key_header` request header (a user set by an
    /// authentication layer); requests without it are not budgeted.
    #[default]
    Header,
    /// The `key_header` header, `x-api-key` by default; requests without
    /// it are not budgeted.
    ApiKey,
    /// The client address (behind `trusted_proxies`).
    PeerIp,
    /// One budget shared by every request.
    Global,
}

/// The key extractor a [`TokenLimitConfig`] describes (see
/// [`TokenKeyKind`]); its keys are strings.
///
/// ```
/// use palisade_core::key::KeyExtractor;
/// use palisade_llm::LimitKey;
///
/// let req = http::Request::builder().header("x-api-key", "k-1").body(()).unwrap();
/// assert_eq!(LimitKey::header("x-api-key".parse().unwrap()).extract(&req).as_deref(), Some("k-1"));
/// assert_eq!(LimitKey::global().extract(&req).as_deref(), Some("global"));
/// ```
#[derive(Clone, Debug)]
pub struct LimitKey(KeyInner);

#[derive(Clone, Debug)]
enum KeyInner {
    Header(HeaderKey),
    Peer(PeerIp),
    Global,
}

impl LimitKey {
    /// Keyed by the value of `name`.
    pub fn header(name: http::HeaderName) -> Self {
        Self(KeyInner::Header(HeaderKey::from_name(name)))
    }

    /// Keyed by the client address, believing `X-Forwarded-For` /
    /// `Forwarded` from `trusted` proxies.
    pub fn peer_ip(trusted: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        Self(KeyInner::Peer(PeerIp::new().trust_proxies(trusted)))
    }

    /// One key for every request.
    pub fn global() -> Self {
        Self(KeyInner::Global)
    }
}

impl<B> KeyExtractor<http::Request<B>> for LimitKey {
    type Key = String;

    fn extract(&self, req: &http::Request<B>) -> Option<String> {
        match &self.0 {
            KeyInner::Header(h) => h.extract(req).map(|v| v.to_string()),
            KeyInner::Peer(p) => p.extract(req).map(|ip| ip.to_string()),
            KeyInner::Global => Some("global".to_owned()),
        }
    }

    fn refusal(&self, req: &http::Request<B>) -> Option<palisade_core::Error> {
        match &self.0 {
            KeyInner::Peer(p) => p.refusal(req),
            _ => None,
        }
    }
}

/// The `kind` of a token limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenKind {
    /// A token budget.
    Tokens,
}

fn default_name() -> String {
    "tokens".into()
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

fn lease() -> Duration {
    TokenRule::DEFAULT_LEASE
}

fn invalid(field: &str, reason: impl Into<String>) -> TokenBudgetError {
    TokenBudgetError::InvalidField {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl TokenLimitConfig {
    /// Checks every key; the error names the one at fault
    /// ([`TokenBudgetError::field`]).
    ///
    /// # Errors
    /// [`TokenBudgetError::InvalidField`].
    pub fn validate(&self) -> Result<(), TokenBudgetError> {
        if self.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if http::HeaderValue::from_str(&self.name).is_err() {
            return Err(invalid("name", "must be printable ASCII"));
        }
        if self.quota == 0 {
            return Err(invalid("quota", "must be at least 1"));
        }
        if self.period.is_zero() {
            return Err(invalid("period", "must be more than 0s"));
        }
        if self.period.as_micros() / u128::from(self.quota) == 0 {
            return Err(invalid(
                "quota",
                format!(
                    "{} per {:?} is finer than one token a microsecond",
                    self.quota, self.period
                ),
            ));
        }
        if self.lease.is_zero() {
            return Err(invalid("lease", "must be more than 0s"));
        }
        if let Some(p) = &self.path_prefix
            && !p.starts_with('/')
        {
            return Err(invalid("path_prefix", format!("{p:?} must start with '/'")));
        }
        self.estimator
            .validate()
            .map_err(|reason| invalid("estimator", reason))?;
        for (tier, quota) in &self.tiers {
            if tier.is_empty() {
                return Err(invalid("tiers", "a tier name must not be empty"));
            }
            if *quota == 0 || self.period.as_micros() / u128::from(*quota) == 0 {
                return Err(invalid(
                    &format!("tiers.{tier}"),
                    format!(
                        "{quota} per {:?}: must be at least 1 and at most one token a microsecond",
                        self.period
                    ),
                ));
            }
        }
        self.key_extractor().map(drop)
    }

    /// The key extractor `key`, `key_header` and `trusted_proxies`
    /// describe.
    ///
    /// # Errors
    /// [`TokenBudgetError::InvalidField`] naming the bad key.
    pub fn key_extractor(&self) -> Result<LimitKey, TokenBudgetError> {
        let header = |default: Option<&str>| {
            let name =
                self.key_header.as_deref().or(default).ok_or_else(|| {
                    invalid("key_header", "key = \"header\" needs the header's name")
                })?;
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("key_header", format!("{name:?} is not a header name")))
        };
        Ok(match self.key {
            TokenKeyKind::Header => LimitKey::header(header(None)?),
            TokenKeyKind::ApiKey => LimitKey::header(header(Some("x-api-key"))?),
            TokenKeyKind::PeerIp => LimitKey::peer_ip(self.trusted_proxies.iter().copied()),
            TokenKeyKind::Global => LimitKey::global(),
        })
    }

    /// Builds the layer on `store`.
    ///
    /// # Errors
    /// [`TokenBudgetError::InvalidField`] naming the bad key.
    pub fn layer(
        &self,
        store: Store,
        metrics: Option<&crate::TokenMetrics>,
    ) -> Result<TokenBudgetLayer<LimitKey>, TokenBudgetError> {
        self.validate()?;
        let rule = TokenRule::new(self.quota, self.period).lease(self.lease);
        let mut b = TokenBudgetLayer::builder(store, self.key_extractor()?, rule)
            .name(self.name.clone())
            .mode(self.mode)
            .on_missing_usage(self.on_missing_usage)
            .on_store_error(self.on_store_error)
            .estimator(self.estimator);
        if let Some(prefix) = &self.path_prefix {
            b = b.path_prefix(prefix.clone());
        }
        for (tier, quota) in &self.tiers {
            let rule = TokenRule::new(*quota, self.period).lease(self.lease);
            b = b.tier(palisade_core::tier::Tier::new(tier.as_str()), rule);
        }
        if let Some(m) = metrics {
            b = b.metrics(m);
        }
        b.build()
    }
}

/// Provider pacing as configuration: the gateway's `[llm.pacing]` (see
/// [`ProviderPacing`](crate::ProviderPacing)).
///
/// `enabled` is unset by default, which means **on when any token limit is
/// configured** (LLM traffic is then expected) and off otherwise; `true` /
/// `false` decide outright.
///
/// ```
/// use palisade_llm::PacingConfig;
/// use std::time::Duration;
///
/// let cfg: PacingConfig = toml::from_str(r#"
///     enabled = true
///     upstream = "openai"
///     path_prefix = "/v1/"
///     max_wait = "5s"
///     max_waiting = 16
/// "#).unwrap();
/// assert!(cfg.is_enabled(false));
/// let layer = cfg.layer(palisade_store::Store::in_memory(), None).unwrap();
/// assert_eq!(layer.upstream(), "openai");
///
/// let auto = PacingConfig::default();
/// assert!(auto.is_enabled(true) && !auto.is_enabled(false));
/// assert_eq!(auto.max_wait, Duration::ZERO, "refuse at once by default");
///
/// let bad: PacingConfig = toml::from_str("max_wait = \"2s\"\nmax_waiting = 0").unwrap();
/// assert_eq!(bad.validate().unwrap_err().field(), Some("max_waiting"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PacingConfig {
    /// On, off, or unset: on when token limits are configured.
    pub enabled: Option<bool>,
    /// The upstream's name in the shared state's key and the metrics
    /// (default `upstream`).
    pub upstream: String,
    /// Pace only requests whose path starts with this (default every
    /// request).
    pub path_prefix: Option<String>,
    /// Longest a request waits for the provider's reset instead of being
    /// refused (default 0: refuse at once).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Most requests waiting at once (default 64; used when `max_wait` is
    /// set).
    pub max_waiting: usize,
}

impl Default for PacingConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            upstream: "upstream".into(),
            path_prefix: None,
            max_wait: Duration::ZERO,
            max_waiting: 64,
        }
    }
}

impl PacingConfig {
    /// Whether pacing is on, given whether token limits are configured.
    pub fn is_enabled(&self, token_limits: bool) -> bool {
        self.enabled.unwrap_or(token_limits)
    }

    fn builder(
        &self,
        store: Store,
        metrics: Option<&crate::PacingMetrics>,
    ) -> crate::ProviderPacingBuilder {
        let mut b = crate::ProviderPacingLayer::builder(store)
            .upstream(self.upstream.clone())
            .wait(self.max_wait, self.max_waiting);
        if let Some(p) = &self.path_prefix {
            b = b.path_prefix(p.clone());
        }
        if let Some(m) = metrics {
            b = b.metrics(m);
        }
        b
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`PacingError::InvalidField`](crate::PacingError::InvalidField)
    /// naming the key.
    pub fn validate(&self) -> Result<(), crate::PacingError> {
        self.builder(Store::in_memory(), None).build().map(drop)
    }

    /// The layer, keeping the provider's state on `store`.
    ///
    /// # Errors
    /// As [`validate`](Self::validate).
    pub fn layer(
        &self,
        store: Store,
        metrics: Option<&crate::PacingMetrics>,
    ) -> Result<crate::ProviderPacingLayer, crate::PacingError> {
        self.builder(store, metrics).build()
    }
}
