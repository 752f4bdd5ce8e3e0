//! RFC 9111 rules for a shared cache: what may be stored, for how long, when
//! a stored response may be reused, and how it is revalidated.

use crate::directives::CacheControl;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Flags kept with a stored response.
pub(crate) const NO_CACHE: u8 = 1;
/// Never served stale (must-revalidate, proxy-revalidate, s-maxage).
pub(crate) const NO_STALE: u8 = 2;
/// May answer requests carrying `Authorization` (public, s-maxage, must-revalidate).
pub(crate) const AUTH_OK: u8 = 4;
/// Freshness came from a heuristic or the configured default TTL.
pub(crate) const HEURISTIC: u8 = 8;
/// Carries `Surrogate-Control`, which is not passed on to clients.
pub(crate) const SURROGATE: u8 = 16;

/// Knobs of the HTTP rules that come from configuration.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) heuristic_fraction: f64,
    pub(crate) heuristic_max: Duration,
    pub(crate) store_set_cookie: bool,
}

/// Status codes this cache understands (RFC 9110), minus 206 and 304,
/// which it never stores.
pub(crate) fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=205 | 207 | 208 | 226 | 300..=303 | 305 | 307 | 308 | 400..=418 | 421..=426
            | 428 | 429 | 431 | 451 | 500..=508 | 510 | 511
    )
}

/// Status codes that are heuristically cacheable (RFC 9110 §15.1).
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Hop-by-hop fields, never stored nor forwarded from the cache.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "trailer"
            | "proxy-authenticate"
            | "proxy-authorization"
    )
}

/// Parses an HTTP date; `None` when absent or invalid.
pub(crate) fn http_date(headers: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}

pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs_ms(s: u64) -> u64 {
    s.saturating_mul(1000)
}

/// Whether a response to `method` with these headers may be stored by a
/// shared cache (RFC 9111 §3, §3.5).
pub(crate) fn storable(
    method: &Method,
    req: &HeaderMap,
    req_cc: &CacheControl,
    status: StatusCode,
    res: &HeaderMap,
    res_cc: &CacheControl,
    rules: &Rules,
) -> bool {
    if method != Method::GET || req_cc.no_store {
        return false;
    }
    // RFC 9111 §3: any final status; 206 and 304 never (partial content
    // is not stored); with must-understand only statuses we understand.
    if status.as_u16() < 200
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return false;
    }
    if res_cc.must_understand && !understood(status) {
        return false;
    }
    let surrogate = CacheControl::surrogate(res);
    match &surrogate {
        // Surrogate-Control speaks to reverse proxies and overrides
        // Cache-Control for them.
        Some(sc) if sc.no_store => return false,
        Some(sc) if sc.max_age.is_some() => {}
        _ => {
            if res_cc.no_store && !res_cc.must_understand {
                return false;
            }
        }
    }
    if res_cc.private {
        return false;
    }
    if req.contains_key(header::AUTHORIZATION) && !auth_ok(res_cc) {
        return false;
    }
    if !rules.store_set_cookie && res.contains_key(header::SET_COOKIE) {
        return false;
    }
    if vary_star(res) {
        return false;
    }
    // Explicit freshness (§4.2.1).
    if surrogate.is_some_and(|sc| sc.max_age.is_some())
        || res.contains_key(header::EXPIRES)
        || res_cc.max_age.is_some()
        || res_cc.s_maxage.is_some()
    {
        return true;
    }
    if !(res_cc.public || heuristically_cacheable(status)) {
        return false;
    }
    // Allowed, but only worth keeping when it can be reused: heuristic
    // freshness (the configured default TTL, or Last-Modified, §4.2.2), a
    // validator to revalidate with (§4.3.1), or a stale-* window. A bare
    // `200 ok` (a health check) would be stale at once with nothing to
    // revalidate: storing it only costs.
    rules.default_ttl.is_some()
        || res.contains_key(header::LAST_MODIFIED)
        || res.contains_key(header::ETAG)
        || res_cc.stale_while_revalidate.is_some()
        || res_cc.stale_if_error.is_some()
}

fn auth_ok(res_cc: &CacheControl) -> bool {
    res_cc.public || res_cc.s_maxage.is_some() || res_cc.must_revalidate
}

/// `Vary: *` — never matches a later request.
pub(crate) fn vary_star(res: &HeaderMap) -> bool {
    vary_names(res).any(|n| n == "*")
}

/// The field names listed in `Vary` (lowercase, trimmed, non-empty).
pub(crate) fn vary_names(res: &HeaderMap) -> impl Iterator<Item = &str> {
    res.get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// A response as kept by the cache (in L1, and encoded in L2).
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// When the response was received (unix ms, cache clock).
    pub(crate) response_time: u64,
    /// `corrected_initial_age` (ms).
    pub(crate) initial_age: u64,
    /// Freshness lifetime (ms).
    pub(crate) freshness: u64,
    pub(crate) swr: u64,
    pub(crate) sie: u64,
    pub(crate) flags: u8,
    /// `headers` as served on a hit: with `X-Cache: HIT` and an `Age`
    /// slot, without `Surrogate-Control`; cloning it and setting `Age`
    /// never grows the map.
    pub(crate) hit_headers: HeaderMap,
}

/// What a stored response can do for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Serve it.
    Fresh,
    /// Stale, but the client allows it (`max-stale`): serve it.
    StaleAllowed,
    /// Stale within `stale-while-revalidate`: serve it, refresh behind.
    StaleWhileRevalidate,
    /// Ask the origin (conditionally when validators exist).
    Validate,
    /// It cannot answer this request at all (Authorization rule).
    Unusable,
}

impl Stored {
    /// Builds the stored form of a response received at `response_time`
    /// for a request sent at `request_time` (both unix ms).
    pub(crate) fn new(
        status: StatusCode,
        res_headers: &HeaderMap,
        res_cc: &CacheControl,
        body: Bytes,
        request_time: u64,
        response_time: u64,
        rules: &Rules,
    ) -> Self {
        let headers = strip_for_storage(res_headers);
        let mut s = Self {
            status,
            headers,
            body,
            response_time,
            initial_age: 0,
            freshness: 0,
            swr: 0,
            sie: 0,
            flags: 0,
            hit_headers: HeaderMap::new(),
        };
        s.recompute(res_cc, request_time, rules);
        s
    }

    /// Recomputes ages and freshness from `self.headers` (after a 304 merge too).
    fn recompute(&mut self, res_cc: &CacheControl, request_time: u64, rules: &Rules) {
        let response_time = self.response_time;
        // RFC 9111 §4.2.3
        // A list, or anything but one non-negative integer, is invalid: the
        // response is then treated as stale.
        let mut members = self
            .headers
            .get_all(header::AGE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','));
        let (age_value, age_invalid) = match (members.next(), members.next()) {
            (None, _) => (0, false),
            (Some(m), None) => {
                let m = m.trim_ascii();
                match std::str::from_utf8(m)
                    .ok()
                    .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
                {
                    Some(m) => (m.parse::<u64>().map_or(u64::MAX, secs_ms), false),
                    None => (0, true),
                }
            }
            (Some(_), Some(_)) => (0, true),
        };
        let date = http_date(&self.headers, header::DATE).map(to_ms);
        let date_value = date.unwrap_or(response_time);
        let apparent_age = response_time.saturating_sub(date_value);
        let response_delay = response_time.saturating_sub(request_time);
        let corrected_age_value = age_value.saturating_add(response_delay);
        self.initial_age = apparent_age.max(corrected_age_value);
        self.headers.remove(header::AGE);
        if date.is_none()
            && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(
                UNIX_EPOCH + Duration::from_millis(response_time),
            ))
        {
            self.headers.insert(header::DATE, v);
        }

        let mut flags = 0;
        if res_cc.no_cache {
            flags |= NO_CACHE;
        }
        if res_cc.must_revalidate || res_cc.proxy_revalidate || res_cc.s_maxage.is_some() {
            flags |= NO_STALE;
        }
        if auth_ok(res_cc) {
            flags |= AUTH_OK;
        }
        let surrogate = CacheControl::surrogate(&self.headers);
        if surrogate.is_some() {
            flags |= SURROGATE;
        }
        // §4.2.1, as a shared cache (Surrogate-Control first).
        let freshness = if let Some(s) = surrogate.and_then(|sc| sc.max_age) {
            flags &= !NO_CACHE;
            secs_ms(s)
        } else if let Some(s) = res_cc.s_maxage {
            secs_ms(s)
        } else if let Some(m) = res_cc.max_age {
            secs_ms(m)
        } else if self.headers.contains_key(header::EXPIRES) {
            match http_date(&self.headers, header::EXPIRES) {
                Some(exp) => to_ms(exp).saturating_sub(date_value),
                None => 0, // invalid Expires means already expired
            }
        } else if heuristically_cacheable(self.status) || res_cc.public {
            flags |= HEURISTIC;
            if let Some(ttl) = rules.default_ttl {
                u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
            } else if let Some(lm) = http_date(&self.headers, header::LAST_MODIFIED) {
                // §4.2.2: a fraction of the time since last modification.
                let since = date_value.saturating_sub(to_ms(lm));
                let h = (since as f64 * rules.heuristic_fraction) as u64;
                h.min(u64::try_from(rules.heuristic_max.as_millis()).unwrap_or(u64::MAX))
            } else {
                0
            }
        } else {
            0
        };
        self.freshness = freshness;
        if age_invalid {
            self.initial_age = self.initial_age.max(freshness);
        }
        self.swr = res_cc.stale_while_revalidate.map_or(0, secs_ms);
        self.sie = res_cc.stale_if_error.map_or(0, secs_ms);
        self.flags = flags;
        self.rebuild_hit_headers();
    }

    /// The current age (ms) at `now` (unix ms).
    pub(crate) fn age(&self, now: u64) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_sub(self.response_time))
    }

    /// Whether `Authorization` requests may use it.
    pub(crate) fn auth_ok(&self) -> bool {
        self.flags & AUTH_OK != 0
    }

    /// How this stored response may answer a request (RFC 9111 §4).
    pub(crate) fn decide(&self, req_cc: &CacheControl, has_auth: bool, now: u64) -> Decision {
        if has_auth && !self.auth_ok() {
            return Decision::Unusable;
        }
        let age = self.age(now);
        if req_cc.no_cache || self.flags & NO_CACHE != 0 {
            return Decision::Validate;
        }
        if req_cc.max_age.is_some_and(|m| age > secs_ms(m)) {
            return Decision::Validate;
        }
        let fresh = self.freshness > age;
        if fresh {
            if req_cc
                .min_fresh
                .is_some_and(|m| self.freshness - age < secs_ms(m))
            {
                return Decision::Validate;
            }
            return Decision::Fresh;
        }
        if self.flags & NO_STALE != 0 {
            return Decision::Validate;
        }
        let staleness = age - self.freshness;
        if let Some(max_stale) = req_cc.max_stale
            && max_stale.is_none_or(|m| staleness <= secs_ms(m))
        {
            return Decision::StaleAllowed;
        }
        if staleness < self.swr {
            return Decision::StaleWhileRevalidate;
        }
        Decision::Validate
    }

    /// Whether it may answer in place of an upstream failure at `now`
    /// (`stale-if-error`, from the response or the request).
    pub(crate) fn usable_on_error(&self, req_cc: &CacheControl, now: u64) -> bool {
        if self.flags & (NO_STALE | NO_CACHE) != 0 {
            return false;
        }
        let age = self.age(now);
        if self.freshness > age {
            return true;
        }
        let staleness = age - self.freshness;
        let window = self.sie.max(req_cc.stale_if_error.map_or(0, secs_ms));
        staleness < window
    }

    /// Whether it has a validator (`ETag` or `Last-Modified`).
    pub(crate) fn has_validator(&self) -> bool {
        self.headers.contains_key(header::ETAG) || self.headers.contains_key(header::LAST_MODIFIED)
    }

    /// Sets the conditional headers of a revalidation request.
    pub(crate) fn add_validators(&self, req: &mut HeaderMap) {
        req.remove(header::IF_NONE_MATCH);
        req.remove(header::IF_MODIFIED_SINCE);
        if let Some(etag) = self.headers.get(header::ETAG) {
            req.insert(header::IF_NONE_MATCH, etag.clone());
        }
        if let Some(lm) = self.headers.get(header::LAST_MODIFIED) {
            req.insert(header::IF_MODIFIED_SINCE, lm.clone());
        }
    }

    /// This response, updated with the fields of a 304 received at
    /// `response_time` (RFC 9111 §3.2, §4.3.4).
    pub(crate) fn merge_304(
        &self,
        res: &HeaderMap,
        request_time: u64,
        response_time: u64,
        rules: &Rules,
    ) -> Self {
        let mut headers = self.headers.clone();
        let mut replaced: Vec<&HeaderName> = Vec::new();
        for name in res.keys() {
            if is_hop_by_hop(name)
                || matches!(
                    name.as_str(),
                    "content-length"
                        | "content-encoding"
                        | "content-range"
                        | "content-md5"
                        | "etag"
                        | "x-cache"
                )
            {
                continue;
            }
            replaced.push(name);
        }
        for name in replaced {
            headers.remove(name);
            for v in res.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        // An Age from the 304 is taken into account, not stored.
        let res_cc = CacheControl::parse(&headers);
        let mut s = Self {
            status: self.status,
            headers: strip_for_storage(&headers),
            body: self.body.clone(),
            response_time,
            initial_age: 0,
            freshness: 0,
            swr: 0,
            sie: 0,
            flags: 0,
            hit_headers: HeaderMap::new(),
        };
        if !res.contains_key(header::DATE) {
            s.headers.remove(header::DATE);
        }
        if let Some(age) = res.get(header::AGE) {
            s.headers.insert(header::AGE, age.clone());
        }
        s.recompute(&res_cc, request_time, rules);
        s
    }

    fn rebuild_hit_headers(&mut self) {
        let mut h = HeaderMap::with_capacity(self.headers.len() + 2);
        for (k, v) in &self.headers {
            if k != "surrogate-control" {
                h.append(k.clone(), v.clone());
            }
        }
        h.insert(header::AGE, HeaderValue::from_static("0"));
        h.insert(crate::X_CACHE, HeaderValue::from_static("HIT"));
        self.hit_headers = h;
    }

    /// Approximate memory / wire size.
    pub(crate) fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 8)
            .sum();
        self.body.len() + 2 * headers + 64
    }

    /// Encodes it for L2.
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.put_u16(self.status.as_u16());
        out.put_u64(self.response_time);
        out.put_u64(self.initial_age);
        out.put_u64(self.freshness);
        out.put_u64(self.swr);
        out.put_u64(self.sie);
        out.put_u8(self.flags);
        out.put_u32(u32::try_from(self.headers.len()).unwrap_or(u32::MAX));
        for (k, v) in &self.headers {
            out.put_u16(u16::try_from(k.as_str().len()).unwrap_or(u16::MAX));
            out.put_slice(k.as_str().as_bytes());
            out.put_u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
            out.put_slice(v.as_bytes());
        }
        out.put_slice(&self.body);
    }

    /// Decodes what [`encode`](Self::encode) wrote; `None` on bad data.
    pub(crate) fn decode(mut b: Bytes) -> Option<Self> {
        if b.remaining() < 2 + 8 * 5 + 1 + 4 {
            return None;
        }
        let status = StatusCode::from_u16(b.get_u16()).ok()?;
        let response_time = b.get_u64();
        let initial_age = b.get_u64();
        let freshness = b.get_u64();
        let swr = b.get_u64();
        let sie = b.get_u64();
        let flags = b.get_u8();
        let n = b.get_u32() as usize;
        let mut headers = HeaderMap::with_capacity(n.min(128));
        for _ in 0..n {
            if b.remaining() < 2 {
                return None;
            }
            let kl = b.get_u16() as usize;
            if b.remaining() < kl + 4 {
                return None;
            }
            let k = HeaderName::from_bytes(&b.split_to(kl)).ok()?;
            let vl = b.get_u32() as usize;
            if b.remaining() < vl {
                return None;
            }
            let v = HeaderValue::from_maybe_shared(b.split_to(vl)).ok()?;
            headers.append(k, v);
        }
        let mut s = Self {
            status,
            headers,
            body: b,
            response_time,
            initial_age,
            freshness,
            swr,
            sie,
            flags,
            hit_headers: HeaderMap::new(),
        };
        s.rebuild_hit_headers();
        Some(s)
    }
}

/// The response headers minus hop-by-hop ones and our own `X-Cache`.
pub(crate) fn strip_for_storage(res: &HeaderMap) -> HeaderMap {
    let listed: Vec<HeaderName> = res
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(res.len());
    for (k, v) in res {
        if is_hop_by_hop(k) || k == "x-cache" || listed.contains(k) {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

/// Whether the client's own conditional headers are satisfied by a stored
/// 200 response, so the cache answers 304 (RFC 9110 §13.1.2, §13.1.3).
pub(crate) fn client_not_modified(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let mut inm = req.get_all(header::IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        let Some(etag) = stored.get(header::ETAG) else {
            return false;
        };
        let etag = etag.as_bytes().trim_ascii();
        let etag = etag.strip_prefix(b"W/").unwrap_or(etag);
        return inm.any(|v| {
            v.as_bytes().split(|&b| b == b',').any(|t| {
                let t = t.trim_ascii();
                t == b"*" || t.strip_prefix(b"W/").unwrap_or(t) == etag
            })
        });
    }
    if let Some(ims) = http_date(req, header::IF_MODIFIED_SINCE)
        && let Some(lm) = http_date(stored, header::LAST_MODIFIED)
    {
        return lm <= ims;
    }
    false
}

/// The headers of a 304 built from a stored response (RFC 9110 §15.4.5).
pub(crate) fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in stored {
        if matches!(
            k.as_str(),
            "cache-control"
                | "content-location"
                | "date"
                | "etag"
                | "expires"
                | "vary"
                | "last-modified"
        ) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            default_ttl: None,
            heuristic_fraction: 0.1,
            heuristic_max: Duration::from_secs(86_400),
            store_set_cookie: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn stored(pairs: &[(&str, &str)], t: u64) -> Stored {
        let h = headers(pairs);
        Stored::new(
            StatusCode::OK,
            &h,
            &CacheControl::parse(&h),
            Bytes::from_static(b"x"),
            t,
            t,
            &rules(),
        )
    }

    #[test]
    fn storability_follows_the_rfc() {
        let r = rules();
        let check = |method: Method, req: &[(&str, &str)], status: u16, res: &[(&str, &str)]| {
            let (req, res) = (headers(req), headers(res));
            storable(
                &method,
                &req,
                &CacheControl::parse(&req),
                StatusCode::from_u16(status).unwrap(),
                &res,
                &CacheControl::parse(&res),
                &r,
            )
        };
        assert!(check(
            Method::GET,
            &[],
            200,
            &[("cache-control", "max-age=5")]
        ));
        // Heuristically cacheable, but only kept when it can be reused.
        assert!(!check(Method::GET, &[], 200, &[]));
        assert!(!check(
            Method::GET,
            &[],
            200,
            &[("cache-control", "public")]
        ));
        assert!(check(Method::GET, &[], 200, &[("etag", "\"1\"")]));
        assert!(check(
            Method::GET,
            &[],
            200,
            &[("last-modified", "Mon, 23 Nov 2026 07:00:00 GMT")]
        ));
        assert!(check(
            Method::GET,
            &[],
            200,
            &[("cache-control", "stale-if-error=60")]
        ));
        let with_ttl = Rules {
            default_ttl: Some(Duration::from_secs(5)),
            ..rules()
        };
        assert!(storable(
            &Method::GET,
            &HeaderMap::new(),
            &CacheControl::default(),
            StatusCode::OK,
            &HeaderMap::new(),
            &CacheControl::default(),
            &with_ttl,
        ));
        assert!(!check(Method::GET, &[], 302, &[("etag", "\"1\"")]));
        assert!(check(
            Method::GET,
            &[],
            302,
            &[("cache-control", "max-age=5")]
        ));
        assert!(!check(
            Method::POST,
            &[],
            200,
            &[("cache-control", "max-age=5")]
        ));
        assert!(!check(
            Method::GET,
            &[],
            200,
            &[("cache-control", "private, max-age=5")]
        ));
        assert!(!check(
            Method::GET,
            &[],
            200,
            &[("cache-control", "no-store")]
        ));
        assert!(!check(
            Method::GET,
            &[("cache-control", "no-store")],
            200,
            &[("cache-control", "max-age=5")]
        ));
        assert!(!check(
            Method::GET,
            &[],
            206,
            &[("cache-control", "max-age=5")]
        ));
        assert!(check(
            Method::GET,
            &[],
            299,
            &[("cache-control", "max-age=5")]
        ));
        assert!(!check(
            Method::GET,
            &[],
            299,
            &[("cache-control", "max-age=5, must-understand")]
        ));
        assert!(check(
            Method::GET,
            &[],
            200,
            &[
                ("cache-control", "no-store"),
                ("surrogate-control", "max-age=5")
            ]
        ));
        assert!(!check(
            Method::GET,
            &[],
            200,
            &[
                ("surrogate-control", "no-store"),
                ("cache-control", "max-age=5")
            ]
        ));
        assert!(!check(Method::GET, &[], 200, &[("vary", "accept, *")]));
        assert!(!check(
            Method::GET,
            &[("authorization", "x")],
            200,
            &[("cache-control", "max-age=5")]
        ));
        assert!(check(
            Method::GET,
            &[("authorization", "x")],
            200,
            &[("cache-control", "public, max-age=5")]
        ));
        assert!(check(
            Method::GET,
            &[("authorization", "x")],
            200,
            &[("cache-control", "s-maxage=5")]
        ));
        assert!(!check(
            Method::GET,
            &[],
            200,
            &[("set-cookie", "a=b"), ("cache-control", "max-age=5")]
        ));
        assert!(check(
            Method::GET,
            &[],
            200,
            &[("cache-control", "no-store, must-understand, max-age=5")]
        ));
    }

    #[test]
    fn freshness_and_age() {
        let t = 1_700_000_000_000;
        let s = stored(&[("cache-control", "max-age=10, s-maxage=20")], t);
        assert_eq!(s.freshness, 20_000);
        let s = stored(&[("cache-control", "max-age=10"), ("age", "4")], t);
        assert_eq!(s.initial_age, 4_000);
        assert_eq!(
            s.decide(&CacheControl::default(), false, t + 5_000),
            Decision::Fresh
        );
        assert_eq!(
            s.decide(&CacheControl::default(), false, t + 6_000),
            Decision::Validate
        );
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(t));
        let exp = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(t + 30_000));
        let s = stored(&[("date", &date), ("expires", &exp)], t);
        assert_eq!(s.freshness, 30_000);
        let s = stored(&[("expires", "0")], t);
        assert_eq!(s.freshness, 0);
        let lm = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(t - 100_000));
        let s = stored(&[("date", &date), ("last-modified", &lm)], t);
        assert_eq!(s.freshness, 10_000);
    }

    #[test]
    fn request_directives_and_stale_windows() {
        let t = 1_000_000;
        let s = stored(
            &[(
                "cache-control",
                "max-age=10, stale-while-revalidate=5, stale-if-error=20",
            )],
            t,
        );
        let none = CacheControl::default();
        let mut h = HeaderMap::new();
        let mut req = |v: &'static str| {
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(v));
            CacheControl::parse(&h)
        };
        assert_eq!(s.decide(&req("no-cache"), false, t), Decision::Validate);
        assert_eq!(
            s.decide(&req("max-age=2"), false, t + 3_000),
            Decision::Validate
        );
        assert_eq!(
            s.decide(&req("min-fresh=8"), false, t + 3_000),
            Decision::Validate
        );
        assert_eq!(
            s.decide(&none, false, t + 12_000),
            Decision::StaleWhileRevalidate
        );
        assert_eq!(s.decide(&none, false, t + 16_000), Decision::Validate);
        assert_eq!(
            s.decide(&req("max-stale=30"), false, t + 16_000),
            Decision::StaleAllowed
        );
        assert!(s.usable_on_error(&none, t + 29_000));
        assert!(!s.usable_on_error(&none, t + 31_000));
        assert_eq!(s.decide(&none, true, t), Decision::Unusable);
        let s = stored(
            &[(
                "cache-control",
                "max-age=1, must-revalidate, stale-while-revalidate=50",
            )],
            t,
        );
        assert_eq!(s.decide(&none, false, t + 2_000), Decision::Validate);
        assert!(!s.usable_on_error(&none, t + 2_000));
    }

    #[test]
    fn encode_decode_roundtrip_and_bad_data() {
        let s = stored(
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"a\""),
                ("x-a", "1"),
                ("x-a", "2"),
            ],
            5,
        );
        let mut buf = BytesMut::new();
        s.encode(&mut buf);
        let d = Stored::decode(buf.clone().freeze()).unwrap();
        assert_eq!(d.headers, s.headers);
        assert_eq!(d.body, s.body);
        assert_eq!(d.freshness, s.freshness);
        for cut in 0..buf.len() - 1 {
            // Truncated data never panics; a cut inside the body just shortens it.
            let _ = Stored::decode(buf.clone().freeze().slice(..cut));
        }
        assert!(Stored::decode(Bytes::from_static(b"garbage")).is_none());
    }

    #[test]
    fn conditionals_and_304_merge() {
        let s = stored(
            &[
                ("cache-control", "max-age=10"),
                ("etag", "W/\"v1\""),
                ("x-old", "1"),
            ],
            1_000,
        );
        assert!(client_not_modified(
            &headers(&[("if-none-match", "\"v0\", \"v1\"")]),
            &s.headers
        ));
        assert!(!client_not_modified(
            &headers(&[("if-none-match", "\"v2\"")]),
            &s.headers
        ));
        let res = headers(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=100"),
            ("x-old", "2"),
        ]);
        let m = s.merge_304(&res, 50_000, 50_000, &rules());
        assert_eq!(m.freshness, 100_000);
        assert_eq!(m.headers["x-old"], "2");
        assert_eq!(m.body, s.body);
    }
}
