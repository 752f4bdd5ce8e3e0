//! The service tier (plan) of a request: a [`Tier`] request extension an
//! authentication layer inserts, or a header the authenticating proxy in
//! front sets, believed only from trusted proxies ([`TierHeader`]). The
//! rate limiter's tiered limits and the token budgets read the same one.

use crate::key::peer_of;
use http::{HeaderName, Request};
use ipnet::IpNet;
use std::{
    borrow::Borrow,
    fmt::{self, Display},
    sync::Arc,
};

/// A service tier (`anonymous`, `free`, `standard`, `premium`,
/// `enterprise`, or any name of your own), resolved per request.
///
/// An authentication layer may insert it as a request extension; the
/// default resolver reads it from there.
///
/// ```
/// use palisade_core::tier::Tier;
///
/// assert_eq!(Tier::PREMIUM.as_str(), "premium");
/// assert_eq!(Tier::new("gold"), Tier::new(String::from("gold")));
/// assert_eq!(Tier::new("free"), Tier::FREE);
/// ```
#[derive(Clone, Debug)]
pub struct Tier(TierName);

#[derive(Clone, Debug)]
enum TierName {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Tier {
    /// Unauthenticated callers (default 10/min).
    pub const ANONYMOUS: Tier = Tier(TierName::Static("anonymous"));
    /// The free plan (default 60/min).
    pub const FREE: Tier = Tier(TierName::Static("free"));
    /// The standard plan (default 300/min).
    pub const STANDARD: Tier = Tier(TierName::Static("standard"));
    /// The premium plan (default 1000/min).
    pub const PREMIUM: Tier = Tier(TierName::Static("premium"));
    /// The enterprise plan (default unlimited).
    pub const ENTERPRISE: Tier = Tier(TierName::Static("enterprise"));

    /// A tier by name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Tier(TierName::Shared(name.into()))
    }

    /// The tier's name.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            TierName::Static(s) => s,
            TierName::Shared(s) => s,
        }
    }
}

impl PartialEq for Tier {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Tier {}

impl std::hash::Hash for Tier {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Borrow<str> for Tier {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads a request's tier from a header set by the authenticating proxy
/// in front, believed only on a connection from one of `trusted` (so a
/// client cannot name its own plan); a [`Tier`] extension wins over it.
///
/// ```
/// use palisade_core::{key::PeerAddr, tier::{Tier, TierHeader}};
///
/// let tiers = TierHeader::new(http::HeaderName::from_static("x-plan"), ["10.0.0.0/8".parse().unwrap()]);
/// let from = |peer: &str| {
///     let mut req = http::Request::builder().header("x-plan", "premium").body(()).unwrap();
///     req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
///     req
/// };
/// assert_eq!(tiers.resolve(&from("10.0.0.5:1")), Some(Tier::PREMIUM));
/// assert_eq!(tiers.resolve(&from("203.0.113.9:1")), None, "not a trusted proxy");
/// let mut req = from("10.0.0.5:1");
/// req.extensions_mut().insert(Tier::FREE);
/// assert_eq!(tiers.resolve(&req), Some(Tier::FREE), "the extension wins");
/// ```
#[derive(Clone, Debug)]
pub struct TierHeader {
    name: HeaderName,
    trusted: Arc<[IpNet]>,
}

impl TierHeader {
    /// The tier named in `name`, from peers in `trusted`.
    pub fn new(name: HeaderName, trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            name,
            trusted: trusted.into_iter().collect(),
        }
    }

    /// The request's tier: its [`Tier`] extension, else the header when the
    /// connected peer is trusted; `None` otherwise.
    pub fn resolve<B>(&self, req: &Request<B>) -> Option<Tier> {
        if let Some(tier) = req.extensions().get::<Tier>() {
            return Some(tier.clone());
        }
        let peer = peer_of(req)?.to_canonical();
        if !self.trusted.iter().any(|net| net.contains(&peer)) {
            return None;
        }
        let value = req.headers().get(&self.name)?.to_str().ok()?.trim();
        (!value.is_empty()).then(|| Tier::new(value))
    }
}
