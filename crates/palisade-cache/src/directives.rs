//! `Cache-Control` parsing (RFC 9111 §5.2), tolerant of odd input.

use http::{HeaderMap, HeaderValue, header};

/// The directives the cache acts on, from one message's `Cache-Control`
/// field lines (and `Pragma: no-cache` for requests without `Cache-Control`).
///
/// Deltas are seconds; a present directive with an invalid value counts as
/// `Some(0)` (the most restrictive reading, RFC 9111 §4.2.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    /// `max-stale` present; `Some(None)` = any staleness accepted.
    pub(crate) max_stale: Option<Option<u64>>,
    pub(crate) min_fresh: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) must_understand: bool,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        let mut any = false;
        for value in headers.get_all(header::CACHE_CONTROL) {
            any = true;
            cc.parse_line(value);
        }
        if !any && pragma_no_cache(headers) {
            cc.no_cache = true;
        }
        cc
    }

    /// Parses `Surrogate-Control` (W3C Edge Architecture): `max-age` and
    /// `no-store` aimed at reverse proxies; `None` when absent.
    pub(crate) fn surrogate(headers: &HeaderMap) -> Option<Self> {
        let mut values = headers.get_all("surrogate-control").iter().peekable();
        values.peek()?;
        let mut cc = Self::default();
        for value in values {
            cc.parse_line_with(value, true);
        }
        Some(cc)
    }

    fn parse_line(&mut self, value: &HeaderValue) {
        self.parse_line_with(value, false);
    }

    /// `targeted`: directives may carry a `;target` suffix naming the
    /// surrogate they are for; this cache announces no target, so such
    /// directives are ignored.
    fn parse_line_with(&mut self, value: &HeaderValue, targeted: bool) {
        let bytes = value.as_bytes();
        // A quoted string that swallows a comma (or never ends) makes the
        // line ambiguous: read one way it holds `private`, read another it
        // does not. The cache takes the restrictive reading (below).
        let mut ambiguous = false;
        let mut i = 0;
        while i < bytes.len() {
            // name
            while i < bytes.len() && matches!(bytes[i], b' ' | b'\t' | b',') {
                i += 1;
            }
            let start = i;
            while i < bytes.len() && !matches!(bytes[i], b'=' | b',' | b' ' | b'\t') {
                i += 1;
            }
            let name = &bytes[start..i];
            while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
                i += 1;
            }
            let mut arg: Option<&[u8]> = None;
            if i < bytes.len() && bytes[i] == b'=' {
                i += 1;
                while i < bytes.len() && matches!(bytes[i], b' ' | b'\t') {
                    i += 1;
                }
                if i < bytes.len() && bytes[i] == b'"' {
                    i += 1;
                    let s = i;
                    while i < bytes.len() && bytes[i] != b'"' {
                        if bytes[i] == b'\\' {
                            i += 1;
                        }
                        i += 1;
                    }
                    let quoted = &bytes[s..i.min(bytes.len())];
                    ambiguous |= i >= bytes.len() || quoted.contains(&b',');
                    arg = Some(quoted);
                    i += 1;
                } else {
                    let s = i;
                    while i < bytes.len() && !matches!(bytes[i], b',' | b' ' | b'\t') {
                        i += 1;
                    }
                    arg = Some(&bytes[s..i]);
                }
            }
            // skip to the next comma
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            let aimed_elsewhere =
                targeted && (name.contains(&b';') || arg.is_some_and(|a| a.contains(&b';')));
            if !name.is_empty() && !aimed_elsewhere {
                self.apply(name, arg);
            }
        }
        if ambiguous {
            self.restrict_ambiguous(bytes);
        }
    }

    /// The restrictive reading of an ambiguous line: every comma-separated
    /// piece, quotes ignored, that names `no-store`, `no-cache` or `private`
    /// counts (as nginx reads such lines), so no quoting trick can make a
    /// private response shared.
    fn restrict_ambiguous(&mut self, bytes: &[u8]) {
        for piece in bytes.split(|&b| b == b',') {
            let piece = piece.trim_ascii();
            let name = piece.split(|&b| b == b'=').next().unwrap_or_default();
            let name = name.trim_ascii();
            if name.eq_ignore_ascii_case(b"no-store") {
                self.no_store = true;
            } else if name.eq_ignore_ascii_case(b"private") {
                self.private = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                self.no_cache = true;
            }
        }
    }

    fn apply(&mut self, name: &[u8], arg: Option<&[u8]>) {
        let delta = || arg.map_or(0, parse_delta);
        let eq = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        // First occurrence wins for deltas (RFC 9111 §4.2.1).
        if eq("max-age") {
            self.max_age.get_or_insert_with(delta);
        } else if eq("s-maxage") {
            self.s_maxage.get_or_insert_with(delta);
        } else if eq("max-stale") {
            self.max_stale.get_or_insert_with(|| arg.map(parse_delta));
        } else if eq("min-fresh") {
            self.min_fresh.get_or_insert_with(delta);
        } else if eq("stale-while-revalidate") {
            self.stale_while_revalidate.get_or_insert_with(delta);
        } else if eq("stale-if-error") {
            self.stale_if_error.get_or_insert_with(delta);
        } else if eq("no-cache") {
            // Qualified no-cache="field" is treated as unqualified: the
            // stricter reading RFC 9111 §5.2.2.4 allows.
            self.no_cache = true;
        } else if eq("no-store") {
            self.no_store = true;
        } else if eq("private") {
            self.private = true;
        } else if eq("public") {
            self.public = true;
        } else if eq("must-revalidate") {
            self.must_revalidate = true;
        } else if eq("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if eq("only-if-cached") {
            self.only_if_cached = true;
        } else if eq("must-understand") {
            self.must_understand = true;
        }
    }
}

/// A delta-seconds value; invalid → 0 (stale), overflow → saturates.
fn parse_delta(arg: &[u8]) -> u64 {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    arg.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// `Pragma: no-cache` (honoured only without `Cache-Control`).
pub(crate) fn pragma_no_cache(headers: &HeaderMap) -> bool {
    headers.get_all(header::PRAGMA).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &str) -> CacheControl {
        let mut h = HeaderMap::new();
        h.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        CacheControl::parse(&h)
    }

    #[test]
    fn parses_common_forms() {
        let c = cc("public, max-age=60, s-maxage=\"120\", stale-while-revalidate=30");
        assert!(c.public);
        assert_eq!(c.max_age, Some(60));
        assert_eq!(c.s_maxage, Some(120));
        assert_eq!(c.stale_while_revalidate, Some(30));
        let c = cc("No-Store,PRIVATE ,  must-revalidate");
        assert!(c.no_store && c.private && c.must_revalidate);
        let c = cc("max-stale");
        assert_eq!(c.max_stale, Some(None));
        let c = cc("max-stale=5, min-fresh=2, only-if-cached");
        assert_eq!(c.max_stale, Some(Some(5)));
        assert_eq!(c.min_fresh, Some(2));
        assert!(c.only_if_cached);
    }

    #[test]
    fn invalid_and_duplicate_values_are_restrictive() {
        assert_eq!(cc("max-age=abc").max_age, Some(0));
        assert_eq!(cc("max-age=-5").max_age, Some(0));
        assert_eq!(cc("max-age=10, max-age=99").max_age, Some(10));
        assert_eq!(
            cc("max-age=99999999999999999999999").max_age,
            Some(u64::MAX)
        );
        assert!(cc("no-cache=\"set-cookie, foo\", max-age=5").no_cache);
        assert_eq!(cc("no-cache=\"a,b\", max-age=5").max_age, Some(5));
        assert_eq!(cc(",,, ,=,max-age").max_age, Some(0));
    }

    #[test]
    fn quoting_cannot_hide_private_or_no_store() {
        // Found by the hostile proptest: an unterminated quote once made
        // `private` part of `public`'s argument.
        let c = cc("max-age=18446744073709551616, public=\", private, ");
        assert!(c.private);
        let c = cc("max-age=60, x-ext=\"a, no-store, b\"");
        assert!(c.no_store);
        // A quoted field list without a comma stays precise.
        let c = cc("max-age=60, x-ext=\"private\"");
        assert!(!c.private && !c.no_store);
    }

    #[test]
    fn pragma_only_without_cache_control() {
        let mut h = HeaderMap::new();
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        assert!(CacheControl::parse(&h).no_cache);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=5"));
        assert!(!CacheControl::parse(&h).no_cache);
        assert!(CacheControl::surrogate(&h).is_none());
        h.insert("surrogate-control", HeaderValue::from_static("max-age=9"));
        assert_eq!(CacheControl::surrogate(&h).unwrap().max_age, Some(9));
        h.insert(
            "surrogate-control",
            HeaderValue::from_static("max-age=9;other-cdn, no-store"),
        );
        let sc = CacheControl::surrogate(&h).unwrap();
        assert_eq!((sc.max_age, sc.no_store), (None, true));
    }
}
