//! Which bucket a request belongs to: one extractor trait that the breaker,
//! the rate limiter and the cache all take.
//!
//! # Example
//!
//! ```
//! use palisade_core::key::{ConstKey, HeaderKey, KeyExtractor, PathKey};
//!
//! let req = http::Request::builder()
//!     .uri("/v1/tools/search?q=1")
//!     .header("x-api-key", "k-123")
//!     .body(())
//!     .unwrap();
//! let per_key_and_route = (HeaderKey::new("x-api-key"), PathKey);
//! assert_eq!(per_key_and_route.extract(&req).unwrap().to_string(), "k-123|/v1/tools/search");
//! assert_eq!(ConstKey("global").extract(&req).unwrap(), "global");
//! ```

use http::{HeaderName, HeaderValue, Request};
use ipnet::IpNet;
use std::{
    fmt::{self, Debug, Display},
    hash::Hash,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

/// Extracts a key from a request; `None` when the request has none (no such
/// header, no user id), and the layer then applies its own rule for
/// key-less requests.
pub trait KeyExtractor<Req>: Clone + Send + Sync + 'static {
    /// The key: cheap to clone, hashable for in-process maps, displayable
    /// for store keys (the store escapes it).
    type Key: Hash + Eq + Clone + Send + Sync + Debug + Display + 'static;

    /// The key of `req`, if it has one.
    fn extract(&self, req: &Req) -> Option<Self::Key>;

    /// Why `req` must be refused rather than served without a key.
    ///
    /// A layer that honours refusals consults it before
    /// [`extract`](Self::extract), and answers with the error instead of
    /// extracting when it is `Some`. Most extractors never refuse (the
    /// default). [`PeerIp`] with [`MissingPeer::Refuse`] refuses a request
    /// whose server inserted no peer address, with a 500 naming the missing
    /// setup (and counts it, as `extract` counts the other policies'). Tuples
    /// refuse when any part does.
    ///
    /// ```
    /// use palisade_core::key::{HeaderKey, KeyExtractor, MissingPeer, PeerIp};
    ///
    /// let req = http::Request::new(()); // no peer address, no header
    /// assert!(HeaderKey::new("x-api-key").refusal(&req).is_none());
    /// let strict = PeerIp::new().when_missing(MissingPeer::Refuse);
    /// assert!(strict.extract(&req).is_none());
    /// assert_eq!(strict.refusal(&req).unwrap().http_status(), 500);
    /// ```
    fn refusal(&self, req: &Req) -> Option<crate::Error> {
        let _ = req;
        None
    }
}

/// The address of the directly connected peer, as a request extension.
///
/// A plain hyper server knows the address from its accept loop and inserts
/// it: `req.extensions_mut().insert(PeerAddr(addr))` in the service it
/// builds per connection. `PeerIp` also reads axum's
/// `ConnectInfo<SocketAddr>` (feature `axum`; serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`) and tonic's
/// `TcpConnectInfo` (feature `tonic`), which those servers insert.
///
/// ```
/// use palisade_core::key::{KeyExtractor, PeerAddr, PeerIp};
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(PeerAddr("203.0.113.9:5000".parse().unwrap()));
/// assert_eq!(PeerIp::new().extract(&req).unwrap().to_string(), "203.0.113.9");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The client's IP address: the connected peer, or, when that peer is a
/// trusted proxy, the nearest untrusted address in `X-Forwarded-For` (or
/// `Forwarded: for=`), read from the right.
///
/// An untrusted client cannot choose its own key: forwarding headers are
/// read only when the connected peer is trusted, and only up to the first
/// untrusted hop.
///
/// ```
/// use palisade_core::key::{KeyExtractor, PeerAddr, PeerIp};
///
/// let key = PeerIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
/// let mut req = http::Request::builder()
///     .header("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.2")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(PeerAddr("10.0.0.1:443".parse().unwrap()));
/// // 10.0.0.2 is a trusted hop; 198.51.100.7 is the first untrusted one.
/// assert_eq!(key.extract(&req).unwrap().to_string(), "198.51.100.7");
/// ```
#[derive(Clone, Debug, Default)]
pub struct PeerIp {
    trusted: Arc<[IpNet]>,
    missing: MissingPeer,
}

/// What [`PeerIp`] does when the server told it nothing about the peer (no
/// [`PeerAddr`], axum `ConnectInfo` or tonic connect info on the request):
/// a setup mistake that must not turn a per-IP limit off without a word.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingPeer {
    /// Every such request shares one key, `0.0.0.0` (the default): the limit
    /// still holds, for all of them together. Logged once as a warning and
    /// counted ([`PeerIp::missing_count`]).
    #[default]
    SharedKey,
    /// No key: a limit keyed this way is skipped for the request (logged
    /// once and counted all the same).
    Skip,
    /// No key, and the request is refused: [`KeyExtractor::refusal`] gives
    /// a 500 (gRPC `INTERNAL`) whose message names the missing setup, so the
    /// mistake shows on the first request instead of in production traffic
    /// (logged once and counted all the same).
    Refuse,
}

/// The client-facing message of a [`MissingPeer::Refuse`] refusal.
pub const MISSING_PEER_MESSAGE: &str = "no peer address on the request: insert \
     `palisade_core::key::PeerAddr` into its extensions, serve axum with \
     `into_make_service_with_connect_info::<SocketAddr>()`, or use tonic's server";

/// Requests seen without a peer address, process-wide.
static MISSING_PEERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cold]
fn missing_peer(policy: MissingPeer) -> Option<IpAddr> {
    use std::sync::atomic::Ordering::Relaxed;
    if MISSING_PEERS.fetch_add(1, Relaxed) == 0 {
        // One line, not one per request: it is a setup mistake.
        tracing::warn!(
            fallback = ?policy,
            "a request carried no peer address: insert `palisade_core::key::PeerAddr`, serve \
             axum with `into_make_service_with_connect_info::<SocketAddr>()`, or use tonic's \
             server; per-IP keys fall back meanwhile"
        );
    }
    match policy {
        MissingPeer::SharedKey => Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        MissingPeer::Skip | MissingPeer::Refuse => None,
    }
}

impl PeerIp {
    /// Keys by the connected peer; no proxy is trusted.
    pub fn new() -> Self {
        Self::default()
    }

    /// What to do when no peer address is known (default: one shared key).
    ///
    /// ```
    /// use palisade_core::key::{KeyExtractor, MissingPeer, PeerIp};
    ///
    /// let req = http::Request::new(()); // a server that inserted no peer address
    /// assert_eq!(PeerIp::new().extract(&req).unwrap().to_string(), "0.0.0.0");
    /// assert!(PeerIp::new().when_missing(MissingPeer::Skip).extract(&req).is_none());
    /// assert!(PeerIp::missing_count() >= 2);
    /// ```
    pub fn when_missing(mut self, policy: MissingPeer) -> Self {
        self.missing = policy;
        self
    }

    /// Requests seen so far, in this process, without a peer address
    /// (exported as `palisade_missing_peer_total` by
    /// [`register_missing_peer`](crate::metrics::register_missing_peer)).
    pub fn missing_count() -> u64 {
        MISSING_PEERS.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Trusts these networks as proxies.
    pub fn trust_proxies(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted = nets.into_iter().collect();
        self
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// The client IP given the connected peer and the request headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut hops: Vec<&str> = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            match value.to_str() {
                Ok(s) => hops.extend(s.split(',')),
                Err(_) => return peer,
            }
        }
        if hops.is_empty() {
            for value in headers.get_all("forwarded") {
                match value.to_str() {
                    Ok(s) => hops.extend(s.split(',').filter_map(forwarded_for)),
                    Err(_) => return peer,
                }
            }
        }
        let mut client = peer;
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.is_trusted(ip) {
                        break;
                    }
                }
                // Garbage from a hop we cannot vouch for: stop at the last
                // address a trusted proxy gave us.
                None => break,
            }
        }
        client
    }
}

/// The `for=` value of one `Forwarded` element (RFC 7239).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.eq_ignore_ascii_case("for").then_some(value)
    })
}

/// One hop: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]:80`,
/// optionally quoted (as in `Forwarded`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let inner = hop.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The address of the connected peer (the socket's, not one a proxy
/// claims): [`PeerAddr`], axum `ConnectInfo` or tonic connect info;
/// `None` on a request that carries none.
///
/// ```
/// use palisade_core::key::{PeerAddr, peer_of};
///
/// let mut req = http::Request::new(());
/// assert_eq!(peer_of(&req), None);
/// req.extensions_mut().insert(PeerAddr("10.1.2.3:5000".parse().unwrap()));
/// assert_eq!(peer_of(&req), Some("10.1.2.3".parse().unwrap()));
/// ```
pub fn peer_of<B>(req: &Request<B>) -> Option<IpAddr> {
    if let Some(PeerAddr(addr)) = req.extensions().get::<PeerAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    #[cfg(feature = "tonic")]
    if let Some(addr) = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
    {
        return Some(addr.ip());
    }
    None
}

impl<B> KeyExtractor<Request<B>> for PeerIp {
    type Key = IpAddr;

    fn extract(&self, req: &Request<B>) -> Option<IpAddr> {
        match peer_of(req) {
            Some(peer) => Some(self.client_ip(peer, req.headers())),
            None => missing_peer(self.missing),
        }
    }

    fn refusal(&self, req: &Request<B>) -> Option<crate::Error> {
        if self.missing != MissingPeer::Refuse || peer_of(req).is_some() {
            return None;
        }
        missing_peer(self.missing);
        Some(crate::Error::new(
            crate::ErrorKind::Internal,
            MISSING_PEER_MESSAGE,
        ))
    }
}

/// Keys by the value of a request header (an API key, a tenant id).
///
/// ```
/// use palisade_core::key::{HeaderKey, KeyExtractor};
///
/// let req = http::Request::builder().header("x-tenant", "acme").body(()).unwrap();
/// assert_eq!(HeaderKey::new("x-tenant").extract(&req).unwrap().to_string(), "acme");
/// ```
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by header `name`.
    ///
    /// # Panics
    /// When `name` is not a valid header name (a programming error).
    pub fn new(name: &str) -> Self {
        Self {
            name: HeaderName::try_from(name).expect("HeaderKey: invalid header name"),
        }
    }

    /// Keys by an already parsed header name.
    pub fn from_name(name: HeaderName) -> Self {
        Self { name }
    }
}

/// A header value used as a key (no allocation: it shares the request's bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HeaderValueKey(pub HeaderValue);

impl Display for HeaderValueKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.0.as_bytes()))
    }
}

impl<B> KeyExtractor<Request<B>> for HeaderKey {
    type Key = HeaderValueKey;

    fn extract(&self, req: &Request<B>) -> Option<HeaderValueKey> {
        req.headers()
            .get(&self.name)
            .filter(|v| !v.is_empty())
            .map(|v| HeaderValueKey(v.clone()))
    }
}

/// Keys by a value an earlier layer put in the request extensions (a user id
/// set by an auth layer, a tool name set by a router).
///
/// ```
/// use palisade_core::key::{ExtensionKey, KeyExtractor};
///
/// #[derive(Clone, Debug, PartialEq, Eq, Hash)]
/// struct UserId(u64);
/// impl std::fmt::Display for UserId {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "u{}", self.0) }
/// }
///
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(UserId(42));
/// assert_eq!(ExtensionKey::<UserId>::new().extract(&req), Some(UserId(42)));
/// ```
pub struct ExtensionKey<T>(PhantomData<fn() -> T>);

impl<T> ExtensionKey<T> {
    /// Keys by the extension of type `T`.
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for ExtensionKey<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for ExtensionKey<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> Debug for ExtensionKey<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtensionKey<{}>", std::any::type_name::<T>())
    }
}

impl<B, T> KeyExtractor<Request<B>> for ExtensionKey<T>
where
    T: Hash + Eq + Clone + Send + Sync + Debug + Display + 'static,
{
    type Key = T;

    fn extract(&self, req: &Request<B>) -> Option<T> {
        req.extensions().get::<T>().cloned()
    }
}

/// Keys by the request path (without the query).
///
/// Raw paths are unbounded user input: prefer `MatchedPathKey` under axum
/// (the route template), or a closure that maps paths to route names.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathKey;

impl<B> KeyExtractor<Request<B>> for PathKey {
    type Key = String;

    fn extract(&self, req: &Request<B>) -> Option<String> {
        Some(req.uri().path().to_owned())
    }
}

/// Keys by axum's matched route template (`/users/{id}`), a bounded set.
#[cfg(feature = "axum")]
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchedPathKey;

#[cfg(feature = "axum")]
impl<B> KeyExtractor<Request<B>> for MatchedPathKey {
    type Key = Arc<str>;

    fn extract(&self, req: &Request<B>) -> Option<Arc<str>> {
        req.extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|p| Arc::from(p.as_str()))
    }
}

/// One key for every request (a global limit, a single named breaker).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConstKey(pub &'static str);

impl<Req> KeyExtractor<Req> for ConstKey {
    type Key = &'static str;

    #[inline]
    fn extract(&self, _: &Req) -> Option<&'static str> {
        Some(self.0)
    }
}

/// A key from a closure (see [`key_fn`]).
#[derive(Clone)]
pub struct KeyFn<F>(F);

/// Wraps a closure as a key extractor.
///
/// ```
/// use palisade_core::key::{KeyExtractor, key_fn};
///
/// // The tool name is the last path segment.
/// let tool = key_fn(|req: &http::Request<()>| req.uri().path().rsplit('/').next().map(str::to_owned));
/// let req = http::Request::builder().uri("/tools/search").body(()).unwrap();
/// assert_eq!(tool.extract(&req).as_deref(), Some("search"));
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

impl<F> Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyFn")
    }
}

impl<F, Req, K> KeyExtractor<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + Debug + Display + 'static,
{
    type Key = K;

    #[inline]
    fn extract(&self, req: &Req) -> Option<K> {
        (self.0)(req)
    }
}

/// Two keys combined; displayed joined by `|`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pair<A, B>(pub A, pub B);

impl<A: Display, B: Display> Display for Pair<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.0, self.1)
    }
}

/// Three keys combined; displayed joined by `|`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Triple<A, B, C>(pub A, pub B, pub C);

impl<A: Display, B: Display, C: Display> Display for Triple<A, B, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}|{}", self.0, self.1, self.2)
    }
}

impl<Req, A, B> KeyExtractor<Req> for (A, B)
where
    A: KeyExtractor<Req>,
    B: KeyExtractor<Req>,
{
    type Key = Pair<A::Key, B::Key>;

    fn extract(&self, req: &Req) -> Option<Self::Key> {
        Some(Pair(self.0.extract(req)?, self.1.extract(req)?))
    }

    /// The first part's refusal, else the second's.
    fn refusal(&self, req: &Req) -> Option<crate::Error> {
        self.0.refusal(req).or_else(|| self.1.refusal(req))
    }
}

impl<Req, A, B, C> KeyExtractor<Req> for (A, B, C)
where
    A: KeyExtractor<Req>,
    B: KeyExtractor<Req>,
    C: KeyExtractor<Req>,
{
    type Key = Triple<A::Key, B::Key, C::Key>;

    fn extract(&self, req: &Req) -> Option<Self::Key> {
        Some(Triple(
            self.0.extract(req)?,
            self.1.extract(req)?,
            self.2.extract(req)?,
        ))
    }

    /// The first part's refusal that there is.
    fn refusal(&self, req: &Req) -> Option<crate::Error> {
        self.0
            .refusal(req)
            .or_else(|| self.1.refusal(req))
            .or_else(|| self.2.refusal(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        r
    }

    fn trusted() -> PeerIp {
        PeerIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
    }

    #[test]
    fn untrusted_peer_cannot_spoof_its_key() {
        let r = req("198.51.100.1:1", &[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(trusted().extract(&r).unwrap().to_string(), "198.51.100.1");
        assert_eq!(
            PeerIp::new().extract(&r).unwrap().to_string(),
            "198.51.100.1"
        );
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let r = req(
            "10.0.0.1:1",
            &[("x-forwarded-for", "6.6.6.6, 7.7.7.7, 10.1.1.1")],
        );
        assert_eq!(trusted().extract(&r).unwrap().to_string(), "7.7.7.7");
        // Several header lines are one list.
        let r = req(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "10.2.2.2"),
            ],
        );
        assert_eq!(trusted().extract(&r).unwrap().to_string(), "6.6.6.6");
    }

    #[test]
    fn all_trusted_hops_give_the_leftmost() {
        let r = req("10.0.0.1:1", &[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(trusted().extract(&r).unwrap().to_string(), "10.9.9.9");
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_address() {
        let r = req("10.0.0.1:1", &[("x-forwarded-for", "1.2.3.4, not-an-ip")]);
        assert_eq!(trusted().extract(&r).unwrap().to_string(), "10.0.0.1");
    }

    #[test]
    fn forwarded_header_ports_brackets_and_mapped_addresses() {
        let r = req(
            "[::1]:9",
            &[(
                "forwarded",
                "for=\"[2001:db8::7]:4711\";proto=https, for=10.0.0.5",
            )],
        );
        assert_eq!(trusted().extract(&r).unwrap().to_string(), "2001:db8::7");
        let r = req(
            "[::ffff:10.0.0.1]:9",
            &[("x-forwarded-for", "203.0.113.5:8080")],
        );
        assert_eq!(trusted().extract(&r).unwrap().to_string(), "203.0.113.5");
    }

    #[test]
    fn no_peer_shares_one_key_never_the_forwarded_one() {
        let r = Request::builder()
            .header("x-forwarded-for", "1.1.1.1")
            .body(())
            .unwrap();
        // Without a peer nothing is trusted: no header can pick the key.
        assert_eq!(
            trusted().extract(&r),
            Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
        );
        assert_eq!(trusted().when_missing(MissingPeer::Skip).extract(&r), None);
        assert!(PeerIp::missing_count() >= 2);
    }

    fn no_peer() -> Request<()> {
        Request::builder()
            .header("x-forwarded-for", "1.1.1.1")
            .body(())
            .unwrap()
    }

    #[test]
    fn shared_key_policy_gives_one_key_and_never_refuses() {
        let key = trusted().when_missing(MissingPeer::SharedKey);
        let before = PeerIp::missing_count();
        assert_eq!(
            key.extract(&no_peer()),
            Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
        );
        assert!(PeerIp::missing_count() > before, "counted");
        assert!(key.refusal(&no_peer()).is_none());
    }

    #[test]
    fn skip_policy_gives_no_key_and_never_refuses() {
        let key = trusted().when_missing(MissingPeer::Skip);
        let before = PeerIp::missing_count();
        assert_eq!(key.extract(&no_peer()), None);
        assert!(PeerIp::missing_count() > before, "counted");
        assert!(key.refusal(&no_peer()).is_none());
    }

    #[test]
    fn refuse_policy_gives_no_key_and_a_500_naming_the_setup() {
        let key = trusted().when_missing(MissingPeer::Refuse);
        let before = PeerIp::missing_count();
        assert_eq!(key.extract(&no_peer()), None);
        assert!(PeerIp::missing_count() > before, "counted");
        // A layer consults `refusal` first, and does not extract after a
        // refusal: the refusal is counted too.
        let before = PeerIp::missing_count();
        let err = key.refusal(&no_peer()).expect("refused");
        assert!(PeerIp::missing_count() > before, "counted");
        assert_eq!(err.kind(), crate::ErrorKind::Internal);
        assert_eq!(err.http_status(), 500);
        assert_eq!(err.grpc_code(), crate::GrpcCode::Internal);
        for setup in [
            "PeerAddr",
            "into_make_service_with_connect_info::<SocketAddr>()",
            "tonic",
        ] {
            assert!(err.message().contains(setup), "{setup}: {}", err.message());
        }
        // A request with a peer is keyed, never refused.
        let r = req("198.51.100.1:1", &[]);
        assert_eq!(key.extract(&r).unwrap().to_string(), "198.51.100.1");
        assert!(key.refusal(&r).is_none());
    }

    #[test]
    fn tuples_forward_the_refusal_of_any_part() {
        let strict = PeerIp::new().when_missing(MissingPeer::Refuse);
        let r = Request::builder()
            .header("x-api-key", "abc")
            .body(())
            .unwrap();
        let pair = (HeaderKey::new("x-api-key"), strict.clone());
        assert_eq!(pair.extract(&r), None);
        assert_eq!(pair.refusal(&r).unwrap().http_status(), 500);
        let triple = (ConstKey("a"), HeaderKey::new("x-api-key"), strict);
        assert_eq!(triple.extract(&r), None);
        assert_eq!(triple.refusal(&r).unwrap().http_status(), 500);
        // Parts that merely lack a key do not refuse.
        let lenient = (HeaderKey::new("x-user"), PeerIp::new());
        assert_eq!(lenient.extract(&r), None);
        assert!(lenient.refusal(&r).is_none());
    }

    #[test]
    fn header_and_tuple_keys() {
        let r = req("1.1.1.1:1", &[("x-api-key", "abc")]);
        let k = (HeaderKey::new("x-api-key"), PeerIp::new());
        assert_eq!(k.extract(&r).unwrap().to_string(), "abc|1.1.1.1");
        let missing = (HeaderKey::new("x-user"), PeerIp::new());
        assert_eq!(missing.extract(&r), None);
        let empty = req("1.1.1.1:1", &[("x-api-key", "")]);
        assert_eq!(HeaderKey::new("x-api-key").extract(&empty), None);
    }
}
