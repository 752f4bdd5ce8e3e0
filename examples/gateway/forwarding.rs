//! The headers a proxy owes its upstream (RFC 7239 `Forwarded`, the
//! de-facto `X-Forwarded-*`, RFC 9110 `Via`), trusted-proxy aware: what a
//! client says about earlier hops is kept only when the client is a proxy
//! the gateway trusts (`rate_limit.trusted_proxies`); anyone else's is
//! replaced, so a client cannot forge its address for the upstream.

use http::{HeaderMap, HeaderValue, Version, header};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// What the gateway adds to `Via`.
pub const VIA_NAME: &str = "palisade";

/// Adds the forwarding headers for a request from `peer` that arrived with
/// `version` and the client's `host`.
pub fn add_forwarding(
    headers: &mut HeaderMap,
    peer: Option<SocketAddr>,
    trusted: &[IpNet],
    version: Version,
    host: Option<&HeaderValue>,
) {
    let peer_ip = peer.map(|p| p.ip().to_canonical());
    let from_trusted = peer_ip.is_some_and(|ip| trusted.iter().any(|n| n.contains(&ip)));
    if !from_trusted {
        // An untrusted client's claims about earlier hops are dropped.
        for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
            headers.remove(name);
        }
        headers.remove(header::FORWARDED);
    }
    if let Some(ip) = peer_ip {
        append(headers, "x-forwarded-for", &ip.to_string());
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    if let Some(host) = host
        && !headers.contains_key("x-forwarded-host")
    {
        headers.insert("x-forwarded-host", host.clone());
    }
    let mut element = String::new();
    if let Some(ip) = peer_ip {
        element.push_str("for=");
        element.push_str(&node(ip));
        element.push(';');
    }
    if let Some(host) = host.and_then(|h| h.to_str().ok())
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        element.push_str("host=\"");
        element.push_str(host);
        element.push_str("\";");
    }
    element.push_str("proto=http");
    append(headers, header::FORWARDED.as_str(), &element);
    append(headers, header::VIA.as_str(), &via(version));
}

/// `Via` on a response, as on the request.
pub fn add_via(headers: &mut HeaderMap, version: Version) {
    append(headers, header::VIA.as_str(), &via(version));
}

fn via(version: Version) -> String {
    let v = match version {
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        Version::HTTP_10 => "1.0",
        _ => "1.1",
    };
    format!("{v} {VIA_NAME}")
}

/// A `Forwarded` node: IPv6 in brackets and quoted (RFC 7239 §6).
fn node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// Appends `value` to the one line of `name` (comma-joined).
fn append(headers: &mut HeaderMap, name: &str, value: &str) {
    let joined = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .chain(std::iter::once(value))
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(v) = HeaderValue::from_str(&joined) {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            v,
        );
    }
}
