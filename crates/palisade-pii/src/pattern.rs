//! The built-in patterns: what they match, how a match is validated and how
//! it is partially masked.

use crate::checksum;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A built-in kind of personal or secret data.
///
/// The declaration order is the **priority**: when two patterns match at the
/// same position, the one listed first wins (see the crate docs, "Overlaps").
///
/// ```
/// use palisade_pii::PatternKind;
/// assert_eq!(PatternKind::Card.name(), "card");
/// assert_eq!(PatternKind::ALL.len(), 12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PatternKind {
    /// `Authorization`-style bearer tokens: `Bearer <token>`.
    Bearer,
    /// JSON Web Tokens (`eyJ…​.eyJ…​.sig`).
    Jwt,
    /// Well-known API key shapes (Stripe, OpenAI / Anthropic, AWS access keys,
    /// GitHub, Slack, Google, GitLab).
    ApiKey,
    /// E-mail addresses.
    Email,
    /// IBANs (ISO 7064 mod-97 checked).
    Iban,
    /// Payment card numbers, 13–19 digits, optionally grouped by spaces or
    /// dashes (Luhn checked).
    Card,
    /// Indian Aadhaar numbers, 12 digits (Verhoeff checked).
    Aadhaar,
    /// US social security numbers (`123-45-6789`, area/group/serial rules).
    Ssn,
    /// Phone numbers: international (`+…`, 8–15 digits), Indian mobile
    /// (10 digits starting 6–9) and formatted US numbers.
    Phone,
    /// Indian PAN (`ABCDE1234F`).
    Pan,
    /// IPv6 addresses (validated by parsing).
    Ipv6,
    /// IPv4 addresses.
    Ipv4,
}

impl PatternKind {
    /// Every built-in kind, in priority order.
    pub const ALL: [PatternKind; 12] = [
        PatternKind::Bearer,
        PatternKind::Jwt,
        PatternKind::ApiKey,
        PatternKind::Email,
        PatternKind::Iban,
        PatternKind::Card,
        PatternKind::Aadhaar,
        PatternKind::Ssn,
        PatternKind::Phone,
        PatternKind::Pan,
        PatternKind::Ipv6,
        PatternKind::Ipv4,
    ];

    /// The stable snake_case name, used in configuration and as the
    /// `pattern` metric label.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PatternKind::Bearer => "bearer",
            PatternKind::Jwt => "jwt",
            PatternKind::ApiKey => "api_key",
            PatternKind::Email => "email",
            PatternKind::Iban => "iban",
            PatternKind::Card => "card",
            PatternKind::Aadhaar => "aadhaar",
            PatternKind::Ssn => "ssn",
            PatternKind::Phone => "phone",
            PatternKind::Pan => "pan",
            PatternKind::Ipv6 => "ipv6",
            PatternKind::Ipv4 => "ipv4",
        }
    }
}

impl fmt::Display for PatternKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const IPV4_OCTET: &str = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])";

/// The regular expressions of each kind, in priority order. A kind may have
/// several (phone). All are ASCII-only and use ASCII word boundaries so the
/// lazy DFA never has to give up.
pub(crate) fn builtin_regexes() -> Vec<(PatternKind, String)> {
    const B: &str = r"(?-u:\b)";
    vec![
        (
            PatternKind::Bearer,
            format!(r"{B}(?i:bearer)[ \t]+[A-Za-z0-9._~+/-]{{8,}}=*"),
        ),
        (
            PatternKind::Jwt,
            format!(r"{B}eyJ[A-Za-z0-9_-]{{5,}}\.[A-Za-z0-9_-]{{5,}}\.[A-Za-z0-9_-]*"),
        ),
        (
            PatternKind::ApiKey,
            format!(
                r"{B}(?:(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{{16,}}|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{{20,}}|AKIA[0-9A-Z]{{16}}|gh[pousr]_[A-Za-z0-9]{{36,}}|github_pat_[A-Za-z0-9_]{{22,}}|xox[abprs]-[A-Za-z0-9-]{{10,}}|AIza[0-9A-Za-z_-]{{35}}|glpat-[A-Za-z0-9_-]{{20,}})"
            ),
        ),
        (
            PatternKind::Email,
            format!(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,24}}{B}"),
        ),
        (
            PatternKind::Iban,
            format!(r"{B}[A-Z]{{2}}[0-9]{{2}}(?: ?[A-Z0-9]{{4}}){{2,7}}(?: ?[A-Z0-9]{{1,3}})?{B}"),
        ),
        (
            PatternKind::Card,
            format!(r"{B}[0-9](?:[ -]?[0-9]){{12,18}}{B}"),
        ),
        (
            PatternKind::Aadhaar,
            format!(r"{B}[2-9][0-9]{{3}}[ -]?[0-9]{{4}}[ -]?[0-9]{{4}}{B}"),
        ),
        (
            PatternKind::Ssn,
            format!(r"{B}[0-9]{{3}}-[0-9]{{2}}-[0-9]{{4}}{B}"),
        ),
        (
            PatternKind::Phone,
            format!(
                r"\+[1-9][0-9]{{0,2}}[ .-]?(?:\([0-9]{{1,4}}\)[ .-]?)?[0-9]{{1,5}}(?:[ .-]?[0-9]{{1,5}}){{1,4}}{B}"
            ),
        ),
        (
            PatternKind::Phone,
            format!(r"{B}[6-9][0-9]{{4}}[ -]?[0-9]{{5}}{B}"),
        ),
        (
            PatternKind::Phone,
            format!(r"(?:\([0-9]{{3}}\) ?|{B}[0-9]{{3}}[ .-])[0-9]{{3}}[ .-][0-9]{{4}}{B}"),
        ),
        (
            PatternKind::Pan,
            format!(r"{B}[A-Z]{{5}}[0-9]{{4}}[A-Z]{B}"),
        ),
        (
            PatternKind::Ipv6,
            r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}".to_string(),
        ),
        (
            PatternKind::Ipv4,
            format!(r"{B}{IPV4_OCTET}(?:\.{IPV4_OCTET}){{3}}{B}"),
        ),
    ]
}

fn at(hay: &[u8], i: usize) -> u8 {
    hay.get(i).copied().unwrap_or(0)
}

fn is_sep(b: u8) -> bool {
    b == b' ' || b == b'-'
}

/// Whether `[s, e)` continues into a longer group of digits separated by
/// spaces / dashes (then it is a piece of something bigger).
fn inside_digit_groups(hay: &[u8], s: usize, e: usize) -> bool {
    let before = s >= 2 && is_sep(hay[s - 1]) && hay[s - 2].is_ascii_digit();
    let after = is_sep(at(hay, e)) && at(hay, e + 1).is_ascii_digit();
    before || after
}

fn digit_count(s: &[u8]) -> usize {
    s.iter().filter(|b| b.is_ascii_digit()).count()
}

/// Validates a candidate `[s, e)` of `kind`; returns the accepted end (a
/// validator may shorten a match to its longest valid prefix), or `None`.
pub(crate) fn accept(
    kind: PatternKind,
    hay: &[u8],
    s: usize,
    e: usize,
    checksums: bool,
) -> Option<usize> {
    let m = &hay[s..e];
    match kind {
        PatternKind::Card => {
            if !checksums {
                return Some(e);
            }
            // Longest Luhn-valid prefix that ends at a group boundary.
            let mut end = e;
            loop {
                let cand = &hay[s..end];
                if digit_count(cand) < 13 {
                    return None;
                }
                if checksum::luhn(cand) {
                    return Some(end);
                }
                match cand.iter().rposition(|&b| is_sep(b)) {
                    Some(p) => end = s + p,
                    None => return None,
                }
            }
        }
        PatternKind::Iban => {
            let mut end = e;
            loop {
                let cand = &hay[s..end];
                let n = cand.iter().filter(|b| **b != b' ').count();
                if n < 15 {
                    return None;
                }
                if !checksums || checksum::iban_mod97(cand) {
                    return Some(end);
                }
                match cand.iter().rposition(|&b| b == b' ') {
                    Some(p) => end = s + p,
                    None => return None,
                }
            }
        }
        PatternKind::Aadhaar => {
            if inside_digit_groups(hay, s, e) || (checksums && !checksum::verhoeff(m)) {
                None
            } else {
                Some(e)
            }
        }
        PatternKind::Ssn => {
            let area = &m[0..3];
            let ok = area != b"000"
                && area != b"666"
                && area[0] != b'9'
                && &m[4..6] != b"00"
                && &m[7..11] != b"0000"
                && !inside_digit_groups(hay, s, e);
            ok.then_some(e)
        }
        PatternKind::Phone => {
            let n = digit_count(m);
            let prev = if s == 0 { 0 } else { hay[s - 1] };
            let ok = (8..=15).contains(&n)
                && !prev.is_ascii_alphanumeric()
                && prev != b'+'
                && !(matches!(at(hay, e), b'.' | b'-' | b' ') && at(hay, e + 1).is_ascii_digit());
            ok.then_some(e)
        }
        PatternKind::Ipv4 => {
            let before = s >= 2 && hay[s - 1] == b'.' && hay[s - 2].is_ascii_digit();
            let after = at(hay, e) == b'.' && at(hay, e + 1).is_ascii_digit();
            (!before && !after).then_some(e)
        }
        PatternKind::Ipv6 => {
            let prev = if s == 0 { 0 } else { hay[s - 1] };
            let next = at(hay, e);
            let bad_edge = |b: u8| b.is_ascii_alphanumeric() || b == b':' || b == b'.';
            if bad_edge(prev) || bad_edge(next) || !m.iter().any(u8::is_ascii_hexdigit) {
                return None;
            }
            let text = std::str::from_utf8(m).ok()?;
            text.parse::<std::net::Ipv6Addr>().ok().map(|_| e)
        }
        PatternKind::Bearer
        | PatternKind::Jwt
        | PatternKind::ApiKey
        | PatternKind::Email
        | PatternKind::Pan => Some(e),
    }
}

/// Keeps the first `first` and the last `last` ASCII digits, masks the other
/// digits with `*`, keeps every other character.
fn keep_digits(m: &str, first: usize, last: usize, out: &mut String) {
    let n = digit_count(m.as_bytes());
    let mut i = 0;
    for c in m.chars() {
        if c.is_ascii_digit() {
            if i < first || i + last >= n {
                out.push(c);
            } else {
                out.push('*');
            }
            i += 1;
        } else {
            out.push(c);
        }
    }
}

/// Keeps the first `first` and last `last` alphanumerics, masks the others.
fn keep_alnum(m: &str, first: usize, last: usize, out: &mut String) {
    let n = m.chars().filter(char::is_ascii_alphanumeric).count();
    let mut i = 0;
    for c in m.chars() {
        if c.is_ascii_alphanumeric() {
            if i < first || i + last >= n {
                out.push(c);
            } else {
                out.push('*');
            }
            i += 1;
        } else {
            out.push(c);
        }
    }
}

/// The partial mask users expect for each kind.
pub(crate) fn partial(kind: PatternKind, m: &str, out: &mut String) {
    match kind {
        PatternKind::Phone => keep_digits(m, 2, 2, out),
        PatternKind::Card | PatternKind::Aadhaar => keep_digits(m, 4, 4, out),
        PatternKind::Ssn => keep_digits(m, 0, 4, out),
        PatternKind::Pan => keep_alnum(m, 3, 2, out),
        PatternKind::Iban => keep_alnum(m, 4, 4, out),
        PatternKind::Email => {
            let at = m.rfind('@').unwrap_or(0);
            let local = &m[..at];
            let keep = (local.len() / 2).min(2);
            out.push_str(&local[..keep]);
            out.push_str("***");
            out.push_str(&m[at..]);
        }
        PatternKind::Ipv4 => {
            for (i, part) in m.split('.').enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(if i < 2 { part } else { "*" });
            }
        }
        PatternKind::Ipv6 => {
            for (i, part) in m.split(':').enumerate() {
                if i > 0 {
                    out.push(':');
                }
                if i < 2 || part.is_empty() {
                    out.push_str(part);
                } else {
                    out.push('*');
                }
            }
        }
        PatternKind::Jwt => {
            for (i, _) in m.split('.').enumerate() {
                out.push_str(if i == 0 { "eyJ***" } else { ".***" });
            }
        }
        PatternKind::Bearer => {
            let word_end = m.find([' ', '\t']).unwrap_or(m.len());
            let token_start = m[word_end..]
                .find(|c: char| c != ' ' && c != '\t')
                .map_or(m.len(), |i| word_end + i);
            out.push_str(&m[..token_start]);
            out.push_str("***");
        }
        PatternKind::ApiKey => {
            let prefix = API_KEY_PREFIXES
                .iter()
                .filter(|p| m.starts_with(**p))
                .map(|p| p.len())
                .max()
                .unwrap_or(0);
            out.push_str(&m[..prefix]);
            out.push_str("***");
        }
    }
}

/// The public, non-secret prefixes of the API key shapes, kept by the
/// partial mask so a reader knows which kind of key was there.
const API_KEY_PREFIXES: &[&str] = &[
    "sk_live_",
    "sk_test_",
    "pk_live_",
    "pk_test_",
    "rk_live_",
    "rk_test_",
    "sk-proj-",
    "sk-ant-",
    "sk-",
    "AKIA",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "xoxa-",
    "xoxb-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "AIza",
    "glpat-",
];

/// Partial mask for a custom pattern: keeps two characters at each end of
/// values of 8 characters or more, masks every other alphanumeric.
pub(crate) fn partial_custom(m: &str, out: &mut String) {
    let n = m.chars().count();
    if n >= 8 {
        keep_alnum(m, 2, 2, out);
    } else {
        keep_alnum(m, 0, 0, out);
    }
}
