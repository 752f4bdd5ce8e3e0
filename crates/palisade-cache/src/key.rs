//! Cache keys: `GET <authority><path>[?query][ <custom>]`, with Vary
//! variants below it.

use http::{HeaderMap, Uri, header};
use std::{cell::RefCell, fmt::Write};

thread_local! {
    static BUF: RefCell<String> = RefCell::new(String::with_capacity(256));
}

/// Runs `f` with a cleared thread-local key buffer (no allocation per call).
#[inline]
pub(crate) fn with_buf<R>(f: impl FnOnce(&mut String) -> R) -> R {
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut b) => {
            b.clear();
            f(&mut b)
        }
        // Re-entered (never in practice): fall back to a fresh buffer.
        Err(_) => f(&mut String::new()),
    })
}

/// Writes the primary key of a GET for `uri` (authority from the URI or the
/// `Host` header, lowercased, default port dropped; empty path → `/`).
pub(crate) fn write_primary(
    buf: &mut String,
    uri: &Uri,
    headers: &HeaderMap,
    custom: &dyn std::fmt::Display,
) {
    buf.push_str("GET ");
    let scheme = uri.scheme_str();
    if let Some(s) = scheme {
        for c in s.chars() {
            buf.push(c.to_ascii_lowercase());
        }
        buf.push_str("://");
    }
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()));
    if let Some(a) = authority {
        let a = a.rsplit_once('@').map_or(a, |(_, host)| host);
        let a = match scheme {
            Some("http") => a.strip_suffix(":80").unwrap_or(a),
            Some("https") => a.strip_suffix(":443").unwrap_or(a),
            _ => a,
        };
        if a.bytes().any(|b| b.is_ascii_uppercase()) {
            for c in a.chars() {
                buf.push(c.to_ascii_lowercase());
            }
        } else {
            buf.push_str(a);
        }
    }
    let path = uri.path();
    buf.push_str(if path.is_empty() { "/" } else { path });
    if let Some(q) = uri.query() {
        buf.push('?');
        buf.push_str(q);
    }
    let start = buf.len();
    buf.push(' ');
    let _ = write!(buf, "{custom}");
    if buf.len() == start + 1 {
        buf.truncate(start);
    }
}

/// Appends the Vary part of a variant key: a generation, then each
/// nominated field with its length-prefixed value (injective).
/// The start shared by every variant key of `primary` (see
/// [`write_variant`]).
pub(crate) fn variant_prefix(primary: &str) -> String {
    format!("{primary}\u{1e}")
}

pub(crate) fn write_variant<'a>(
    buf: &mut String,
    generation: u64,
    names: impl Iterator<Item = &'a str>,
    headers: &HeaderMap,
) {
    let _ = write!(buf, "\u{1e}{generation:x}");
    for name in names {
        buf.push('\u{1f}');
        buf.push_str(name);
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            buf.push('!');
            continue;
        }
        // Normalized: list members trimmed and joined by ","; the
        // Accept-* negotiation fields compared case-insensitively.
        let fold = name.starts_with("accept");
        let mut joined = String::new();
        for v in values {
            for member in String::from_utf8_lossy(v.as_bytes()).split(',') {
                let member = member.trim();
                if member.is_empty() {
                    continue;
                }
                if !joined.is_empty() {
                    joined.push(',');
                }
                if fold {
                    joined.push_str(&member.to_ascii_lowercase());
                } else {
                    joined.push_str(member);
                }
            }
        }
        let joined = joined.as_str();
        let _ = write!(buf, "={}:{joined}", joined.len());
    }
}

/// The URI a `Location` / `Content-Location` value names, when it is on
/// the same authority as the request (RFC 9111 §4.4).
pub(crate) fn same_origin_target(
    value: &str,
    req_uri: &Uri,
    req_headers: &HeaderMap,
) -> Option<Uri> {
    let value = value.trim();
    if value.starts_with('/') && !value.starts_with("//") {
        return rebase(req_uri, value);
    }
    if value.contains("://") {
        let target: Uri = value.parse().ok()?;
        let auth = target.authority()?;
        let req_auth = req_uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req_headers.get(header::HOST).and_then(|h| h.to_str().ok()))?;
        if !auth.as_str().eq_ignore_ascii_case(req_auth) {
            return None;
        }
        let pq = target.path_and_query().map_or("/", |p| p.as_str());
        return rebase(req_uri, pq);
    }
    if value.starts_with("//") || value.is_empty() {
        return None;
    }
    let dir = req_uri.path().rsplit_once('/').map_or("", |(d, _)| d);
    rebase(req_uri, &format!("{dir}/{value}"))
}

fn rebase(req_uri: &Uri, path_and_query: &str) -> Option<Uri> {
    let mut parts = req_uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(uri: &str, host: Option<&str>, custom: &str) -> String {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        let mut b = String::new();
        write_primary(&mut b, &uri.parse().unwrap(), &h, &custom);
        b
    }

    #[test]
    fn primary_keys_are_normalized() {
        assert_eq!(
            key("/a?b=1", Some("Example.COM"), ""),
            "GET example.com/a?b=1"
        );
        assert_eq!(key("HTTP://Ex.com:80", None, ""), "GET http://ex.com/");
        assert_eq!(
            key("https://ex.com:443/x", None, "t1"),
            "GET https://ex.com/x t1"
        );
        assert_ne!(key("/a", Some("h"), ""), key("/a", Some("h"), "t"));
    }

    #[test]
    fn variants_are_injective() {
        let mut h1 = HeaderMap::new();
        h1.insert("accept", HeaderValue::from_static("a=1:b"));
        let mut h2 = HeaderMap::new();
        h2.insert("accept", HeaderValue::from_static("a"));
        let (mut a, mut b, mut c) = (String::new(), String::new(), String::new());
        write_variant(&mut a, 1, ["accept"].into_iter(), &h1);
        write_variant(&mut b, 1, ["accept"].into_iter(), &h2);
        write_variant(&mut c, 1, ["accept"].into_iter(), &HeaderMap::new());
        assert_ne!(a, b);
        assert_ne!(b, c);
    }

    #[test]
    fn location_targets() {
        let req: Uri = "/a/b".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("ex.com"));
        assert_eq!(same_origin_target("/c", &req, &h).unwrap(), "/c");
        assert_eq!(same_origin_target("d", &req, &h).unwrap(), "/a/d");
        assert_eq!(
            same_origin_target("http://ex.com/e", &req, &h).unwrap(),
            "/e"
        );
        assert!(same_origin_target("http://other.com/e", &req, &h).is_none());
    }
}
