//! Limits (a name, a key, a quota or a tier table, a cost) and tiers.

use crate::keyref::{KeyRef, visit_key};
use crate::quota::Quota;
use http::Request;
use palisade_core::key::{ExtensionKey, HeaderKey, KeyExtractor, PathKey, PeerIp};
use std::{
    fmt::{self, Display},
    sync::Arc,
};

/// A user id, set as a request extension by an authentication layer; the
/// key of [`Limit::per_user`].
///
/// ```
/// use palisade_ratelimit::UserId;
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(UserId::new("alice"));
/// assert_eq!(req.extensions().get::<UserId>().unwrap().as_str(), "alice");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserId(pub Arc<str>);

impl UserId {
    /// A user id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The tool a request calls (an MCP `tools/call`'s name, learned by
/// [`palisade_core::jsonrpc::peek`], or an extension an authentication layer
/// sets); the key of [`Limit::per_tool`]. Defined in `palisade-core`, so
/// every layer keys by the same type.
pub use palisade_core::jsonrpc::ToolName;

/// A service tier, resolved per request; defined in `palisade-core` (see
/// [`palisade_core::tier`]) so every layer reads the same one.
pub use palisade_core::tier::Tier;

/// The quota of each tier, and the tier of requests that resolve to none
/// (or to a tier not in the table).
///
/// ```
/// use palisade_ratelimit::{Tier, Tiers};
///
/// let tiers = Tiers::default();
/// assert_eq!(tiers.quota(&Tier::FREE).unwrap().limit(), 60);
/// assert!(tiers.quota(&Tier::ENTERPRISE).is_none(), "unlimited");
/// assert_eq!(tiers.quota(&Tier::new("nope")).unwrap().limit(), 10, "falls back to anonymous");
/// ```
#[derive(Clone, Debug)]
pub struct Tiers {
    entries: Vec<(Tier, Option<Quota>)>,
    default: usize,
}

impl Default for Tiers {
    /// anonymous 10/min (the default tier), free 60/min, standard 300/min,
    /// premium 1000/min, enterprise unlimited.
    fn default() -> Self {
        Tiers::empty(Tier::ANONYMOUS, Some(Quota::per_minute(10)))
            .tier(Tier::FREE, Some(Quota::per_minute(60)))
            .tier(Tier::STANDARD, Some(Quota::per_minute(300)))
            .tier(Tier::PREMIUM, Some(Quota::per_minute(1000)))
            .tier(Tier::ENTERPRISE, None)
    }
}

impl Tiers {
    /// A table holding only the default tier (`None` = unlimited).
    pub fn empty(default: Tier, quota: Option<Quota>) -> Self {
        Self {
            entries: vec![(default, quota)],
            default: 0,
        }
    }

    /// Adds or replaces a tier (`None` = unlimited).
    pub fn tier(mut self, tier: Tier, quota: Option<Quota>) -> Self {
        match self.entries.iter_mut().find(|(t, _)| *t == tier) {
            Some(entry) => entry.1 = quota,
            None => self.entries.push((tier, quota)),
        }
        self
    }

    /// Makes `tier` (which must be in the table) the fallback tier.
    pub fn default_tier(mut self, tier: &Tier) -> Self {
        if let Some(i) = self.entries.iter().position(|(t, _)| t == tier) {
            self.default = i;
        }
        self
    }

    /// The quota of `tier` (the default tier's when unknown); `None` =
    /// unlimited.
    pub fn quota(&self, tier: &Tier) -> Option<Quota> {
        self.entries[self.index(Some(tier))].1
    }

    /// Every tier in the table.
    pub fn iter(&self) -> impl Iterator<Item = (&Tier, Option<Quota>)> {
        self.entries.iter().map(|(t, q)| (t, *q))
    }

    pub(crate) fn index(&self, tier: Option<&Tier>) -> usize {
        tier.and_then(|tier| {
            self.entries
                .iter()
                .position(|(t, _)| t.as_str() == tier.as_str())
        })
        .unwrap_or(self.default)
    }
}

/// A key extractor with its key type erased, reading a body-less request.
pub(crate) trait DynKey: Send + Sync + 'static {
    fn visit(&self, req: &Request<()>, f: &mut dyn FnMut(KeyRef<'_>));
    /// [`KeyExtractor::refusal`]: why a key-less request must be refused.
    fn refusal(&self, req: &Request<()>) -> Option<palisade_core::Error>;
}

impl<E: KeyExtractor<Request<()>>> DynKey for E {
    #[inline]
    fn visit(&self, req: &Request<()>, f: &mut dyn FnMut(KeyRef<'_>)) {
        if let Some(key) = self.extract(req) {
            visit_key(&key, f);
        }
    }

    #[inline]
    fn refusal(&self, req: &Request<()>) -> Option<palisade_core::Error> {
        KeyExtractor::refusal(self, req)
    }
}

pub(crate) type CostFn = Arc<dyn Fn(&Request<()>) -> u32 + Send + Sync>;

/// Where a limit's quota comes from.
#[derive(Clone, Debug)]
pub(crate) enum QuotaSource {
    Fixed(Quota),
    Tiered,
}

/// One limit a request is checked against: a name (for headers, metrics
/// and store keys), a key, a quota (or the tier table), a cost and whether
/// it only observes (shadow).
///
/// Key extractors come from [`palisade_core::key`] and read the request
/// without its body (`Request<()>`); requests without a key (no user id,
/// no such header) skip the limit, unless the extractor refuses them (see
/// [`KeyExtractor::refusal`]: a [`PeerIp`] with
/// [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse)), in
/// which case the layer answers with that error (500) when the limit is
/// enforced; shadow limits and log-only mode never refuse.
///
/// ```
/// use palisade_core::key::HeaderKey;
/// use palisade_ratelimit::{Limit, Quota};
///
/// let per_tenant = Limit::new("tenant", HeaderKey::new("x-tenant"), Quota::per_minute(500))
///     .cost(2)
///     .shadow(true);
/// assert_eq!(per_tenant.name(), "tenant");
/// assert_eq!(Limit::per_user().quota().unwrap().limit(), 100);
/// assert!(Limit::tiered("user", palisade_core::key::ExtensionKey::<palisade_ratelimit::UserId>::new()).quota().is_none());
/// ```
#[derive(Clone)]
pub struct Limit {
    pub(crate) name: Arc<str>,
    pub(crate) key: Arc<dyn DynKey>,
    pub(crate) quota: QuotaSource,
    pub(crate) cost: u32,
    pub(crate) cost_fn: Option<CostFn>,
    pub(crate) shadow: bool,
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("cost", &self.cost)
            .field("shadow", &self.shadow)
            .finish_non_exhaustive()
    }
}

impl Limit {
    /// A limit named `name`, keyed by `key`, enforcing `quota`.
    pub fn new<K>(name: impl Into<Arc<str>>, key: K, quota: Quota) -> Self
    where
        K: KeyExtractor<Request<()>>,
    {
        Self {
            name: name.into(),
            key: Arc::new(key),
            quota: QuotaSource::Fixed(quota),
            cost: 1,
            cost_fn: None,
            shadow: false,
        }
    }

    /// A limit whose quota is the request's tier's (see [`Tiers`]).
    pub fn tiered<K>(name: impl Into<Arc<str>>, key: K) -> Self
    where
        K: KeyExtractor<Request<()>>,
    {
        let mut limit = Self::new(name, key, Quota::per_minute(1));
        limit.quota = QuotaSource::Tiered;
        limit
    }

    /// `ip`: 60 requests per minute per client IP (the connected peer; use
    /// [`Limit::per_ip_behind`] behind proxies).
    pub fn per_ip() -> Self {
        Self::new("ip", PeerIp::new(), Quota::per_minute(60))
    }

    /// `ip` behind trusted proxies: `X-Forwarded-For` / `Forwarded` are read
    /// only when the connected peer is one of `proxies`, so a client cannot
    /// choose its own key.
    pub fn per_ip_behind(proxies: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        Self::new(
            "ip",
            PeerIp::new().trust_proxies(proxies),
            Quota::per_minute(60),
        )
    }

    /// `user`: 100 requests per minute per [`UserId`] extension.
    pub fn per_user() -> Self {
        Self::new(
            "user",
            ExtensionKey::<UserId>::new(),
            Quota::per_minute(100),
        )
    }

    /// `tool`: 50 requests per minute per [`ToolName`] extension.
    pub fn per_tool() -> Self {
        Self::new(
            "tool",
            ExtensionKey::<ToolName>::new(),
            Quota::per_minute(50),
        )
    }

    /// `api_key`: 100 requests per minute per `X-API-Key` header value.
    pub fn per_api_key() -> Self {
        Self::new(
            "api_key",
            HeaderKey::new("x-api-key"),
            Quota::per_minute(100),
        )
    }

    /// `route`: 1000 requests per minute per request path. Paths are client
    /// input: prefer a key of route templates for unbounded paths.
    pub fn per_route() -> Self {
        Self::new("route", PathKey, Quota::per_minute(1000))
    }

    /// Renames the limit.
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Replaces the quota.
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = QuotaSource::Fixed(quota);
        self
    }

    /// Every request costs `cost` (default 1).
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self.cost_fn = None;
        self
    }

    /// A request's cost is computed from it (e.g. from a header or the
    /// tool called).
    pub fn cost_fn(mut self, f: impl Fn(&Request<()>) -> u32 + Send + Sync + 'static) -> Self {
        self.cost_fn = Some(Arc::new(f));
        self
    }

    /// A shadow limit decides and counts but never rejects.
    pub fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fixed quota, or `None` for a tiered limit.
    pub fn quota(&self) -> Option<Quota> {
        match self.quota {
            QuotaSource::Fixed(q) => Some(q),
            QuotaSource::Tiered => None,
        }
    }

    /// Whether the limit is a shadow limit.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Why this limit's key extractor refuses `req`, which has no key (see
    /// [`KeyExtractor::refusal`]); `None` when it has a key or is merely
    /// skipped.
    ///
    /// ```
    /// use palisade_core::key::{MissingPeer, PeerIp};
    /// use palisade_ratelimit::{Limit, Quota};
    ///
    /// let strict = Limit::new("ip", PeerIp::new().when_missing(MissingPeer::Refuse), Quota::per_minute(60));
    /// let req = http::Request::new(()); // the server inserted no peer address
    /// assert_eq!(strict.refusal(&req).unwrap().http_status(), 500);
    /// assert!(Limit::per_ip().refusal(&req).is_none(), "shares one key instead");
    /// ```
    pub fn refusal(&self, req: &Request<()>) -> Option<palisade_core::Error> {
        self.key.refusal(req)
    }
}
