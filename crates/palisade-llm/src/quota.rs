//! The providers' own quota headers, parsed.
//!
//! LLM providers say on every response how much of *their* budget is left
//! for the credential that called them:
//!
//! - OpenAI: `x-ratelimit-remaining-requests` / `x-ratelimit-remaining-tokens`
//!   (integers) and `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens`,
//!   the time until that budget is whole again as a Go-style duration
//!   (`1s`, `6m0s`, `20ms`, `7.66s`, `1h2m3s`) — see [`parse_go_duration`];
//! - Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-remaining`
//!   and `…-reset`, the instant it is whole again as an RFC 3339 time
//!   (`2025-08-21T12:40:59Z`) — see [`parse_rfc3339`];
//! - on a 429, `Retry-After`: seconds, or an HTTP date — see
//!   [`parse_retry_after`].
//!
//! [`ProviderQuota::from_headers`] reads them all into windows and says
//! whether the provider is spent ([`ProviderQuota::spent`]), which
//! [`ProviderPacing`](crate::ProviderPacing) shares between replicas.
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use palisade_llm::quota::{ProviderQuota, QuotaKind};
//! use std::time::{Duration, SystemTime};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("x-ratelimit-remaining-requests", "59".parse().unwrap());
//! headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
//! headers.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
//! headers.insert("x-ratelimit-reset-tokens", "6m0s".parse().unwrap());
//! let quota = ProviderQuota::from_headers(StatusCode::OK, &headers, SystemTime::now());
//! assert_eq!(quota.remaining(QuotaKind::Tokens), Some(0));
//! let spent = quota.spent().unwrap();
//! assert_eq!(spent.wait, Duration::from_secs(360));
//! assert_eq!(spent.limit, "x-ratelimit-remaining-tokens");
//! ```

use http::{HeaderMap, StatusCode, header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a provider's window counts (the `kind` label of the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaKind {
    /// Requests.
    Requests,
    /// Tokens (input and output together).
    Tokens,
    /// Input tokens (Anthropic).
    InputTokens,
    /// Output tokens (Anthropic).
    OutputTokens,
}

impl QuotaKind {
    /// Every kind, in label order.
    pub const ALL: [QuotaKind; 4] = [
        QuotaKind::Requests,
        QuotaKind::Tokens,
        QuotaKind::InputTokens,
        QuotaKind::OutputTokens,
    ];

    /// The metric label: `requests`, `tokens`, `input_tokens`, `output_tokens`.
    ///
    /// ```
    /// assert_eq!(palisade_llm::quota::QuotaKind::InputTokens.as_str(), "input_tokens");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Requests => "requests",
            QuotaKind::Tokens => "tokens",
            QuotaKind::InputTokens => "input_tokens",
            QuotaKind::OutputTokens => "output_tokens",
        }
    }
}

/// One of the provider's budgets, as a response reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// What it counts.
    pub kind: QuotaKind,
    /// The header that gave `remaining` (names the limit in refusals).
    pub header: &'static str,
    /// What is left, when the provider said.
    pub remaining: Option<u64>,
    /// How long until it is whole again, when the provider said (an
    /// instant in the past reads as zero).
    pub reset: Option<Duration>,
}

/// The provider is spent: nothing should be sent before `wait` has passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spent {
    /// How long from the response until the provider takes calls again.
    pub wait: Duration,
    /// The provider's limit that is spent: a `…-remaining-…` header, or
    /// `retry-after` for a 429.
    pub limit: &'static str,
    /// Its kind, when it is a window (not a bare 429).
    pub kind: Option<QuotaKind>,
}

/// What one response said of the provider's budget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderQuota {
    /// The windows the response reported (at least a `remaining` or a
    /// `reset`), OpenAI's then Anthropic's.
    pub windows: Vec<Window>,
    /// `Retry-After` of a 429 (of any other status it is ignored: a 503's
    /// is about the server, not the quota).
    pub retry_after: Option<Duration>,
}

/// (kind, remaining header, reset header, reset is an RFC 3339 instant).
const FAMILIES: [(QuotaKind, &str, &str, bool); 6] = [
    (
        QuotaKind::Requests,
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        false,
    ),
    (
        QuotaKind::Tokens,
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        false,
    ),
    (
        QuotaKind::Requests,
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        true,
    ),
    (
        QuotaKind::Tokens,
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-tokens-reset",
        true,
    ),
    (
        QuotaKind::InputTokens,
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
        true,
    ),
    (
        QuotaKind::OutputTokens,
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
        true,
    ),
];

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

impl ProviderQuota {
    /// Reads the quota headers of a response with `status`, received at
    /// `now` (the wall clock: Anthropic's resets and HTTP dates are
    /// instants). Malformed values are ignored, one by one.
    pub fn from_headers(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Self {
        let mut windows = Vec::new();
        for (kind, remaining_name, reset_name, instant) in FAMILIES {
            let remaining = text(headers, remaining_name).and_then(|v| v.parse::<u64>().ok());
            let reset = text(headers, reset_name).and_then(|v| {
                if instant {
                    parse_rfc3339(v).map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
                } else {
                    parse_go_duration(v)
                }
            });
            if remaining.is_some() || reset.is_some() {
                windows.push(Window {
                    kind,
                    header: remaining_name,
                    remaining,
                    reset,
                });
            }
        }
        let retry_after = (status == StatusCode::TOO_MANY_REQUESTS)
            .then(|| text(headers, header::RETRY_AFTER.as_str()))
            .flatten()
            .and_then(|v| parse_retry_after(v, now));
        Self {
            windows,
            retry_after,
        }
    }

    /// What is left of `kind`, the least any window of it reported.
    pub fn remaining(&self, kind: QuotaKind) -> Option<u64> {
        self.windows
            .iter()
            .filter(|w| w.kind == kind)
            .filter_map(|w| w.remaining)
            .min()
    }

    /// Whether the provider said it takes nothing more for a while, and
    /// for how long: the longest of a 429's `Retry-After` and the resets
    /// of the windows with nothing remaining. A window at zero without a
    /// reset, or whose reset has passed, does not count (nothing says how
    /// long to wait).
    pub fn spent(&self) -> Option<Spent> {
        let mut spent: Option<Spent> = self.retry_after.map(|wait| Spent {
            wait,
            limit: "retry-after",
            kind: None,
        });
        for w in &self.windows {
            if let (Some(0), Some(reset)) = (w.remaining, w.reset)
                && spent.as_ref().is_none_or(|s| reset > s.wait)
            {
                spent = Some(Spent {
                    wait: reset,
                    limit: w.header,
                    kind: Some(w.kind),
                });
            }
        }
        spent.filter(|s| !s.wait.is_zero())
    }
}

/// A Go `time.Duration` as OpenAI writes its resets: one or more
/// `<number><unit>`, the number possibly with a fraction, the unit one of
/// `h`, `m`, `s`, `ms`, `us` / `µs`, `ns`; or a bare `0`.
///
/// ```
/// use palisade_llm::quota::parse_go_duration;
/// use std::time::Duration;
///
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("20ms"), Some(Duration::from_millis(20)));
/// assert_eq!(parse_go_duration("7.66s"), Some(Duration::from_millis(7660)));
/// assert_eq!(parse_go_duration("1h2m3s"), Some(Duration::from_secs(3723)));
/// assert_eq!(parse_go_duration("soon"), None);
/// assert_eq!(parse_go_duration("-1s"), None);
/// ```
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    let mut total: u128 = 0; // nanoseconds
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let int = &s[start..i];
        let mut frac = "";
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let f = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            frac = &s[f..i];
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let u = i;
        while i < b.len() && !b[i].is_ascii_digit() && b[i] != b'.' {
            i += 1;
        }
        let unit: u128 = match &s[u..i] {
            "h" => 3_600_000_000_000,
            "m" => 60_000_000_000,
            "s" => 1_000_000_000,
            "ms" => 1_000_000,
            "us" | "µs" | "μs" => 1_000,
            "ns" => 1,
            _ => return None,
        };
        let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
        total = total.checked_add(whole.checked_mul(unit)?)?;
        // The fraction, to the nanosecond (further digits are dropped).
        let mut scale = unit;
        for d in frac.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            total += u128::from(d - b'0') * scale;
        }
    }
    let secs = u64::try_from(total / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Days from 1970-01-01 to `y-m-d` (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// An RFC 3339 date-time (`2025-08-21T12:40:59Z`,
/// `2025-08-21T14:40:59.25+02:00`) as Anthropic writes its resets. `T` may
/// be `t` or a space; the offset is `Z` / `z` or `±hh:mm`. Instants before
/// 1970 are refused.
///
/// ```
/// use palisade_llm::quota::parse_rfc3339;
/// use std::time::{Duration, UNIX_EPOCH};
///
/// let at = parse_rfc3339("2025-08-21T12:40:59Z").unwrap();
/// assert_eq!(at, UNIX_EPOCH + Duration::from_secs(1_755_780_059));
/// assert_eq!(parse_rfc3339("2025-08-21T14:40:59.5+02:00"), Some(at + Duration::from_millis(500)));
/// assert_eq!(parse_rfc3339("2025-02-30T00:00:00Z"), None);
/// ```
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (i64::from(num(0..4)?), num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset: i64 = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let h = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let m = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' { off } else { -off }
        }
        _ => return None,
    };
    let secs = days_from_civil(year, month, day) * 86_400
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second)
        - offset;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `Retry-After` (RFC 9110): whole seconds, or an HTTP date, as a wait from
/// `now` (a date in the past is zero).
///
/// ```
/// use palisade_llm::quota::parse_retry_after;
/// use std::time::{Duration, UNIX_EPOCH};
///
/// let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
/// assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
/// assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now), Some(Duration::from_secs(60)));
/// assert_eq!(parse_retry_after("1.5", now), None);
/// ```
pub fn parse_retry_after(s: &str, now: SystemTime) -> Option<Duration> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        return s.parse().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(s).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn go_durations() {
        for (s, want) in [
            ("1s", Duration::from_secs(1)),
            ("0s", Duration::ZERO),
            ("0", Duration::ZERO),
            ("12ms", Duration::from_millis(12)),
            ("1m30.5s", Duration::from_millis(90_500)),
            ("2h", Duration::from_secs(7200)),
            ("1.5h", Duration::from_secs(5400)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("3ns", Duration::from_nanos(3)),
            (".5s", Duration::from_millis(500)),
        ] {
            assert_eq!(parse_go_duration(s), Some(want), "{s}");
        }
        for bad in [
            "",
            "s",
            "1",
            "1x",
            "1s2",
            "1..5s",
            "-3s",
            "1 s",
            "1.s.",
            "9999999999999999999h",
        ] {
            assert_eq!(parse_go_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn rfc3339_times() {
        let base = parse_rfc3339("1970-01-01T00:00:00Z").unwrap();
        assert_eq!(base, UNIX_EPOCH);
        assert_eq!(
            parse_rfc3339("2024-02-29T23:59:59.123456789123z"),
            Some(UNIX_EPOCH + Duration::new(1_709_251_199, 123_456_789))
        );
        assert_eq!(
            parse_rfc3339("2025-08-21 12:40:59-01:30"),
            Some(UNIX_EPOCH + Duration::from_secs(1_755_780_059 + 5400))
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-08-21T24:00:00Z",
            "2025-08-21T12:40:59",
            "2025-08-21T12:40:59.Z",
            "2025-08-21T12:40:59+0200",
            "1969-12-31T23:59:59Z",
            "2025-08-21T12:40:59Zjunk",
            "+025-08-21T12:40:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn openai_headers_and_a_429() {
        let now = SystemTime::now();
        let q = ProviderQuota::from_headers(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("x-ratelimit-remaining-requests", "4999"),
                ("x-ratelimit-reset-requests", "12ms"),
                ("x-ratelimit-remaining-tokens", "159976"),
                ("x-ratelimit-reset-tokens", "9ms"),
                ("retry-after", "20"),
            ]),
            now,
        );
        assert_eq!(q.remaining(QuotaKind::Requests), Some(4999));
        assert_eq!(q.remaining(QuotaKind::Tokens), Some(159_976));
        assert_eq!(q.remaining(QuotaKind::InputTokens), None);
        assert_eq!(
            q.spent(),
            Some(Spent {
                wait: Duration::from_secs(20),
                limit: "retry-after",
                kind: None
            })
        );
        // A 503's Retry-After is not about the quota.
        let q = ProviderQuota::from_headers(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[("retry-after", "20")]),
            now,
        );
        assert_eq!(q.spent(), None);
    }

    #[test]
    fn anthropic_headers() {
        let now = UNIX_EPOCH + Duration::from_secs(1_755_780_000);
        let q = ProviderQuota::from_headers(
            StatusCode::OK,
            &headers(&[
                ("anthropic-ratelimit-requests-remaining", "999"),
                ("anthropic-ratelimit-requests-reset", "2025-08-21T12:40:59Z"),
                ("anthropic-ratelimit-input-tokens-remaining", "0"),
                (
                    "anthropic-ratelimit-input-tokens-reset",
                    "2025-08-21T12:41:30Z",
                ),
                ("anthropic-ratelimit-output-tokens-remaining", "0"),
                // In the past: nothing says how long to wait.
                (
                    "anthropic-ratelimit-output-tokens-reset",
                    "2025-08-21T12:39:00Z",
                ),
                ("anthropic-ratelimit-tokens-remaining", "not a number"),
            ]),
            now,
        );
        assert_eq!(q.remaining(QuotaKind::Requests), Some(999));
        assert_eq!(q.remaining(QuotaKind::InputTokens), Some(0));
        assert_eq!(q.remaining(QuotaKind::Tokens), None);
        assert_eq!(
            q.spent(),
            Some(Spent {
                wait: Duration::from_secs(90),
                limit: "anthropic-ratelimit-input-tokens-remaining",
                kind: Some(QuotaKind::InputTokens)
            })
        );
    }

    #[test]
    fn nothing_spent_without_a_reset_or_with_budget_left() {
        let now = SystemTime::now();
        for pairs in [
            &[("x-ratelimit-remaining-tokens", "0")][..],
            &[
                ("x-ratelimit-remaining-tokens", "1"),
                ("x-ratelimit-reset-tokens", "1m"),
            ],
            &[
                ("x-ratelimit-remaining-tokens", "0"),
                ("x-ratelimit-reset-tokens", "0s"),
            ],
            &[],
        ] {
            let q = ProviderQuota::from_headers(StatusCode::OK, &headers(pairs), now);
            assert_eq!(q.spent(), None, "{pairs:?}");
        }
    }

    /// `d` written as Go's `Duration.String` writes it (`1h2m3.5s`, `20ms`).
    fn go_string(d: Duration) -> String {
        let ns = d.as_nanos();
        if ns == 0 {
            return "0s".into();
        }
        if ns < 1_000_000_000 {
            let (unit, div) = if ns < 1_000 {
                ("ns", 1)
            } else if ns < 1_000_000 {
                ("µs", 1_000)
            } else {
                ("ms", 1_000_000)
            };
            return format!("{}{unit}", decimal(ns, div));
        }
        let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
        let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
        let s = decimal(rest, 1_000_000_000);
        match (h, m) {
            (0, 0) => format!("{s}s"),
            (0, m) => format!("{m}m{s}s"),
            (h, m) => format!("{h}h{m}m{s}s"),
        }
    }

    fn decimal(n: u128, div: u128) -> String {
        let (int, frac) = (n / div, n % div);
        if frac == 0 {
            return int.to_string();
        }
        let width = div.ilog10() as usize;
        let f = format!("{frac:0width$}");
        format!("{int}.{}", f.trim_end_matches('0'))
    }

    fn rfc3339_string(secs: u64, nanos: u32, offset_min: i64) -> String {
        let local = secs as i64 + offset_min * 60;
        let (days, sod) = (local.div_euclid(86_400), local.rem_euclid(86_400));
        // civil_from_days
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        let off = if offset_min == 0 {
            "Z".to_owned()
        } else {
            let a = offset_min.abs();
            format!(
                "{}{:02}:{:02}",
                if offset_min > 0 { '+' } else { '-' },
                a / 60,
                a % 60
            )
        };
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}{off}",
            sod / 3600,
            sod % 3600 / 60,
            sod % 60
        )
    }

    proptest! {
        #[test]
        fn go_durations_round_trip(ns in 0u64..(1u64 << 50)) {
            let d = Duration::from_nanos(ns);
            prop_assert_eq!(parse_go_duration(&go_string(d)), Some(d));
        }

        #[test]
        fn rfc3339_round_trips(
            secs in 86_400u64..253_402_214_400u64 - 86_400,
            nanos in 0u32..1_000_000_000,
            offset in -(23 * 60 + 59i64)..=(23 * 60 + 59),
        ) {
            let s = rfc3339_string(secs, nanos, offset);
            prop_assert_eq!(parse_rfc3339(&s), Some(UNIX_EPOCH + Duration::new(secs, nanos)), "{}", s);
        }

        #[test]
        fn retry_after_dates_round_trip(secs in 0u64..4_000_000_000, wait in 0u64..100_000) {
            let now = UNIX_EPOCH + Duration::from_secs(secs);
            let date = httpdate::fmt_http_date(now + Duration::from_secs(wait));
            prop_assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(wait)));
            prop_assert_eq!(parse_retry_after(&wait.to_string(), now), Some(Duration::from_secs(wait)));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = parse_go_duration(&s);
            let _ = parse_rfc3339(&s);
            let _ = parse_retry_after(&s, SystemTime::now());
        }
    }
}
