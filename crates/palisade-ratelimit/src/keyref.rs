//! A key's identity: the bytes of its display form, produced without
//! allocating for the usual key types.

use crate::limit::{ToolName, UserId};
use palisade_core::key::HeaderValueKey;
use std::{
    any::Any,
    fmt::{self, Display, Write},
    net::IpAddr,
    sync::Arc,
};

/// A key, as a string when it already is one.
#[derive(Clone, Copy)]
pub(crate) enum KeyRef<'a> {
    Str(&'a str),
    Display(&'a dyn Display),
}

const BUF: usize = 128;

/// A fixed stack buffer for short display forms.
struct StackBuf {
    buf: [u8; BUF],
    len: usize,
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > BUF {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl StackBuf {
    fn new() -> Self {
        Self {
            buf: [0; BUF],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl KeyRef<'_> {
    /// Calls `f` with the key's display form.
    #[inline]
    pub(crate) fn with_str<R>(self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            KeyRef::Str(s) => f(s),
            KeyRef::Display(d) => {
                let mut buf = StackBuf::new();
                if write!(buf, "{d}").is_ok() {
                    f(buf.as_str())
                } else {
                    f(&d.to_string())
                }
            }
        }
    }
}

impl KeyRef<'_> {
    /// Calls `f` with the bytes of the key's display form (no UTF-8 check:
    /// for hashing).
    #[inline]
    pub(crate) fn with_bytes<R>(self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            KeyRef::Str(s) => f(s.as_bytes()),
            KeyRef::Display(d) => {
                let mut buf = StackBuf::new();
                if write!(buf, "{d}").is_ok() {
                    f(&buf.buf[..buf.len])
                } else {
                    f(d.to_string().as_bytes())
                }
            }
        }
    }
}

/// Calls `f` with a typed key as a [`KeyRef`], formatting IPv4 addresses by
/// hand and passing string-like keys through as they are.
#[inline]
pub(crate) fn visit_key<K: Display + 'static>(key: &K, f: &mut dyn FnMut(KeyRef<'_>)) {
    let any = key as &dyn Any;
    if let Some(ip) = any.downcast_ref::<IpAddr>() {
        if let IpAddr::V4(v4) = ip {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    buf[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    buf[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                buf[len] = b'0' + octet % 10;
                len += 1;
            }
            let s = std::str::from_utf8(&buf[..len]).unwrap_or("");
            return f(KeyRef::Str(s));
        }
        return f(KeyRef::Display(key));
    }
    let s: Option<&str> = if let Some(s) = any.downcast_ref::<String>() {
        Some(s)
    } else if let Some(s) = any.downcast_ref::<&'static str>() {
        Some(s)
    } else if let Some(s) = any.downcast_ref::<Arc<str>>() {
        Some(s)
    } else if let Some(u) = any.downcast_ref::<UserId>() {
        Some(u.as_str())
    } else if let Some(t) = any.downcast_ref::<ToolName>() {
        Some(t.as_str())
    } else if let Some(h) = any.downcast_ref::<HeaderValueKey>() {
        std::str::from_utf8(h.0.as_bytes()).ok()
    } else {
        None
    };
    match s {
        Some(s) => f(KeyRef::Str(s)),
        None => f(KeyRef::Display(key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown<K: Display + 'static>(k: K) -> String {
        let mut out = String::new();
        let mut bytes = Vec::new();
        visit_key(&k, &mut |r| {
            r.with_str(|s| out = s.to_owned());
            r.with_bytes(|b| bytes = b.to_vec());
        });
        assert_eq!(out, k.to_string(), "the identity is the display form");
        assert_eq!(bytes, out.as_bytes(), "hashed bytes are the display form");
        out
    }

    #[test]
    fn fast_paths_match_display() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "1.20.3.199",
            "2001:db8::1",
        ] {
            shown(ip.parse::<IpAddr>().unwrap());
        }
        shown(String::from("alice"));
        shown("static");
        shown(Arc::<str>::from("arc"));
        shown(UserId::new("u"));
        shown(ToolName::new("t"));
        shown(HeaderValueKey(http::HeaderValue::from_static("k-1")));
        shown(42u64);
        shown("x".repeat(500));
    }
}
