//! The prefilter: a fast pre-scan that finds the few spans of a haystack in
//! which a built-in pattern could be **accepted**, so that the multi-pattern
//! regex only ever runs there.
//!
//! # Why it is exact
//!
//! 1. **Segments.** Every built-in pattern is made of ASCII bytes, and only
//!    some pairs of bytes can stand next to each other inside a match of
//!    any of them (see [`crossable`]). A position between two bytes that no
//!    match can straddle is a *cut*; the haystack splits at its cuts into
//!    segments, and every match lies inside one segment. Searching a
//!    segment alone (`Input::range`, which still lets `\b` see the bytes
//!    around it) therefore finds exactly what the whole-haystack search
//!    finds there.
//! 2. **Triggers.** Every accepted match contains an ASCII digit, an upper
//!    case letter, `@`, `_` or `-` — except a bearer token spelled in lower
//!    case, found with `memmem("bearer")`, and an IPv6 address of lower-case
//!    hex letters only, which holds `::` or a `:` between two of them
//!    (`memchr(':')` and a look at its neighbours). A word-at-a-time (SWAR)
//!    scan skips everything else.
//! 3. **Necessary conditions.** A segment holding a trigger is searched
//!    only when it could hold an accepted match of some pattern: a run of
//!    phone / card characters with 9 digits (8 after a `+`), 4 digits and 3
//!    dots (IPv4), two capitals then two digits (IBAN, PAN), `@` (e-mail),
//!    `::` or 7 colons (IPv6: a valid address has one or the other), `eyJ`
//!    (JWT), an API key prefix, or `bearer` in any case. The dates, order
//!    numbers, prices and times of ordinary text fail all of these.
//!
//! Custom patterns can contain anything, so a masker with custom patterns
//! does not use the prefilter.

use memchr::memmem;

/// Byte classes (one `u16` per byte: how it may join its neighbours, and
/// what it tells about a segment).
const TOK: u16 = 1 << 0; // may stand next to another TOK byte in a match
const PHN: u16 = 1 << 1; // phone / card / IPv4 characters
const SPU: u16 = 1 << 2; // space, capital, digit: IBAN groups
const WSP: u16 = 1 << 3; // space or tab (bearer)
/// Bytes that never join through [`JOIN`] but may inside a bearer token.
const BTK: u16 = 1 << 4; // bearer token characters
const LR: u16 = 1 << 5; // `r` / `R`, the last letter of "bearer"
const DIG: u16 = 1 << 6;
const F_AT: u16 = 1 << 7;
const F_COLON: u16 = 1 << 8;
const F_PLUS: u16 = 1 << 9;
const F_DOT: u16 = 1 << 10;
const F_UPPER: u16 = 1 << 11;
/// `_`, `-`, `J`, `b`, `B`: API keys, JWTs and bearer tokens, which are
/// all at least [`MIN_TOKEN`] bytes long.
const F_TOKEN: u16 = 1 << 12;
const F_LOWER: u16 = 1 << 13;
/// `A` (`AKIA`, `AIza`) and `B` (`BEARER`): token starts without a lower
/// case letter.
const F_AB: u16 = 1 << 14;
/// Two neighbours sharing one of these bits may stand side by side in a
/// match (besides bearer white space).
const JOIN: u16 = TOK | PHN | SPU | WSP;

/// The shortest API key (`xoxb-` and 10 characters), JWT (`eyJ`, 5, `.`, 5,
/// `.`) or bearer token (`bearer`, a space, 8 characters).
const MIN_TOKEN: usize = 15;

/// The pairs of neighbours any built-in match can hold, as shared bits
/// (over-approximating is safe: segments only grow):
///
/// - e-mail, JWT, API keys, IPv6, IPv4, PAN and the letters / digits of
///   everything: pairs of `[A-Za-z0-9._%+~/=@:-]` (TOK);
/// - phone, card, Aadhaar, SSN, IPv4: pairs of `[0-9 .()+-]` (PHN);
/// - IBAN groups: a space next to a capital or digit (SPU);
/// - white space next to white space (WSP); the rest of a bearer token is
///   [`bearer_joins`].
const fn classes() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let mut k = 0u16;
        let digit = c.is_ascii_digit();
        let upper = c.is_ascii_uppercase();
        let alnum = c.is_ascii_alphanumeric();
        if alnum
            || matches!(
                c,
                b'.' | b'_' | b'%' | b'+' | b'-' | b'~' | b'/' | b'=' | b'@' | b':'
            )
        {
            k |= TOK;
        }
        if digit || matches!(c, b' ' | b'.' | b'-' | b'(' | b')' | b'+') {
            k |= PHN;
        }
        if digit || upper || c == b' ' {
            k |= SPU;
        }
        if matches!(c, b' ' | b'\t') {
            k |= WSP;
        }
        if alnum || matches!(c, b'.' | b'_' | b'~' | b'+' | b'/' | b'-') {
            k |= BTK;
        }
        if c == b'r' || c == b'R' {
            k |= LR;
        }
        if digit {
            k |= DIG;
        }
        if upper {
            k |= F_UPPER;
        }
        if c.is_ascii_lowercase() {
            k |= F_LOWER;
        }
        if c == b'A' || c == b'B' {
            k |= F_AB;
        }
        k |= match c {
            b'@' => F_AT,
            b':' => F_COLON,
            b'+' => F_PLUS,
            b'.' => F_DOT,
            b'_' | b'-' | b'J' | b'b' | b'B' => F_TOKEN,
            _ => 0,
        };
        t[b] = k;
        b += 1;
    }
    t
}

static CLASS: [u16; 256] = classes();

#[inline(always)]
fn class(b: u8) -> u16 {
    CLASS[usize::from(b)]
}

/// `hay[at..at + 6]` is "bearer" in any case.
#[inline]
fn is_bearer_at(hay: &[u8], at: usize) -> bool {
    hay.get(at..at + 6)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"bearer"))
}

/// Whether the neighbours `hay[c - 1]` (class `cx`) and `hay[c]` (class
/// `cy`), which share no [`JOIN`] bit, still lie inside
/// `bearer<white space><token>`: right after the word, or after the white
/// space.
#[inline(always)]
fn bearer_joins(hay: &[u8], c: usize, cx: u16, cy: u16) -> bool {
    if cy & WSP != 0 && cx & LR != 0 {
        return c >= 6 && is_bearer_at(hay, c - 6);
    }
    // Cheap test first: the byte before the white space must be `r` or
    // more white space.
    cx & WSP != 0 && cy & BTK != 0 && c >= 2 && class(hay[c - 2]) & (WSP | LR) != 0 && {
        let mut w = c - 1;
        while w > 0 && class(hay[w - 1]) & WSP != 0 {
            w -= 1;
        }
        w >= 6 && is_bearer_at(hay, w - 6)
    }
}

/// Whether position `c` (`1..hay.len()`) is not a cut.
#[inline(always)]
fn joined(hay: &[u8], c: usize) -> bool {
    let (cx, cy) = (class(hay[c - 1]), class(hay[c]));
    cx & cy & JOIN != 0 || bearer_joins(hay, c, cx, cy)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// One bit (the high bit of the byte) per byte of `w` that is a trigger
/// candidate: `-`, `0`..=`Z` but `:` (digits, `@`, capitals and a few
/// harmless extras) or `_`. Exact per byte (no carries between bytes).
#[inline]
fn trigger_bits(w: u64) -> u64 {
    let x = w & !HIGH; // 7-bit values; non-ASCII bytes are excluded below
    let ge_30 = x + ONES * (0x80 - 0x30);
    let le_5a = !(x + ONES * (0x7F - 0x5A));
    let eq = |v: u64| !((x ^ (ONES * v)) + ONES * 0x7F);
    ((ge_30 & le_5a & !eq(0x3A)) | eq(0x2D) | eq(0x5F)) & !w & HIGH
}

#[inline]
fn is_trigger(b: u8) -> bool {
    b != b':' && matches!(b, b'-' | b'0'..=b'Z' | b'_')
}

/// Whether a 32-byte block holds a trigger candidate; written without
/// branches or table lookups so that it compiles to SIMD compares.
#[inline(always)]
fn block_has_trigger(block: &[u8; 32]) -> bool {
    block.iter().fold(false, |acc, &b| {
        acc | ((b.wrapping_sub(b'0') < 43) & (b != b':')) | (b == b'-') | (b == b'_')
    })
}

/// The first trigger candidate at or after `i`.
#[inline]
fn next_trigger(hay: &[u8], mut i: usize) -> Option<usize> {
    while let Some(block) = hay.get(i..i + 32) {
        let block: &[u8; 32] = block.try_into().ok()?;
        if block_has_trigger(block) {
            break;
        }
        i += 32;
    }
    while i + 16 <= hay.len() {
        let a = u64::from_le_bytes(hay[i..i + 8].try_into().unwrap_or([0; 8]));
        let b = u64::from_le_bytes(hay[i + 8..i + 16].try_into().unwrap_or([0; 8]));
        let (ta, tb) = (trigger_bits(a), trigger_bits(b));
        if ta != 0 {
            return Some(i + (ta.trailing_zeros() / 8) as usize);
        }
        if tb != 0 {
            return Some(i + 8 + (tb.trailing_zeros() / 8) as usize);
        }
        i += 16;
    }
    hay[i..].iter().position(|&b| is_trigger(b)).map(|p| p + i)
}

/// The next `:` at or after `from` that may belong to an IPv6 address with
/// neither a digit nor a capital in it (those have their own trigger): the
/// first of `::`, or one between two lower-case hex letters (`a:b:c:d:e:f:a:b`).
fn next_colon(hay: &[u8], mut from: usize) -> usize {
    let lower_hex = |b: Option<&u8>| b.is_some_and(|b| matches!(b, b'a'..=b'f'));
    while let Some(p) = memchr::memchr(b':', &hay[from..]) {
        let c = from + p;
        if hay.get(c + 1) == Some(&b':')
            || (c > 0 && lower_hex(hay.get(c - 1)) && lower_hex(hay.get(c + 1)))
        {
            return c;
        }
        from = c + 1;
    }
    usize::MAX
}

/// Whether the API key alternatives' fixed part ends at the `_` / `-` at
/// `i` (`sk_`, `pk_`, `rk_`, `sk-`, `gh?_`, `github_pat_`, `xox?-`,
/// `glpat-`).
fn api_key_stem(hay: &[u8], i: usize) -> bool {
    let before = |n: usize| i.checked_sub(n).map(|s| &hay[s..i]);
    if hay[i] == b'_' {
        matches!(before(2), Some(b"sk" | b"pk" | b"rk"))
            || before(3).is_some_and(|p| p.starts_with(b"gh") && b"pousr".contains(&p[2]))
            || before(10) == Some(b"github_pat")
    } else {
        before(2) == Some(b"sk")
            || before(4).is_some_and(|p| p.starts_with(b"xox") && b"abprs".contains(&p[3]))
            || before(5) == Some(b"glpat")
    }
}

/// The multi-literal and byte-class pre-scan. Cheap to build.
#[derive(Debug, Clone)]
pub(crate) struct Prefilter {
    bearer: memmem::Finder<'static>,
}

impl Prefilter {
    pub(crate) fn new() -> Self {
        Self {
            bearer: memmem::Finder::new(b"bearer").into_owned(),
        }
    }

    /// Calls `on(start, end)` for each segment of `hay` that could hold an
    /// accepted match, in order; the segments are disjoint and every
    /// accepted match lies inside one of them.
    pub(crate) fn for_each_segment(&self, hay: &[u8], mut on: impl FnMut(usize, usize)) {
        let n = hay.len();
        let mut pos = 0;
        let mut bearer = self.find_bearer(hay, 0);
        let mut colon = next_colon(hay, 0);
        while pos < n {
            if bearer < pos {
                bearer = self.find_bearer(hay, pos);
            }
            if colon < pos {
                colon = next_colon(hay, pos);
            }
            let t = next_trigger(hay, pos).unwrap_or(n).min(bearer).min(colon);
            if t >= n {
                return;
            }
            // Fast path for the commonest trigger: a short run of phone /
            // card characters (an order number, a date) standing alone.
            // Such a segment is a candidate only through its digits.
            if class(hay[t]) & DIG != 0 {
                let mut a = t;
                while a > pos && class(hay[a - 1]) & PHN != 0 {
                    a -= 1;
                }
                let (mut e, mut d, mut dots, mut plus) = (a, 0u32, 0u32, false);
                while e < n && class(hay[e]) & PHN != 0 {
                    let b = hay[e];
                    d += u32::from(b.is_ascii_digit());
                    dots += u32::from(b == b'.');
                    plus |= b == b'+';
                    e += 1;
                }
                // The digit conditions of `scan_segment`, for one run.
                if !(d >= 9 || (d >= 8 && plus) || (d >= 4 && dots >= 3))
                    && (a == pos || !joined(hay, a))
                    && (e == n || !joined(hay, e))
                {
                    pos = e;
                    continue;
                }
            }
            let mut start = t;
            while start > pos && joined(hay, start) {
                start -= 1;
            }
            let (end, candidate) = scan_segment(hay, start);

            if candidate {
                on(start, end);
            }
            pos = end.max(t + 1);
        }
    }

    fn find_bearer(&self, hay: &[u8], from: usize) -> usize {
        self.bearer
            .find(&hay[from..])
            .map_or(usize::MAX, |p| p + from)
    }
}

/// Walks the segment starting at `start` (a cut) to its end, and tells
/// whether it could hold an accepted match. `digits` is the most digits in
/// one run of phone / card characters (every numeric pattern lies inside
/// such a run); the other counts are over the whole segment, which only
/// over-approximates what each pattern needs.
#[inline]
fn scan_segment(hay: &[u8], start: usize) -> (usize, bool) {
    let n = hay.len();
    let mut cp = class(hay[start]);
    let mut seen = cp;
    let mut run = u32::from(cp & DIG != 0);
    let mut digits = run;
    let mut i = start + 1;
    while i < n {
        let c = class(hay[i]);
        if cp & c & JOIN == 0 && !bearer_joins(hay, i, cp, c) {
            break;
        }
        seen |= c;
        // Branch-free: count digits, back to 0 outside phone characters.
        let keep = 0u32.wrapping_sub(u32::from(c & PHN != 0));
        run = (run + u32::from(c & DIG != 0)) & keep;
        digits = digits.max(run);
        cp = c;
        i += 1;
    }
    let seg = &hay[start..i];
    let count = |b: u8| seg.iter().filter(|&&x| x == b).count();
    let candidate = seen & F_AT != 0
        || digits >= 9
        || (digits >= 8 && seen & F_PLUS != 0)
        || (digits >= 4 && seen & F_DOT != 0 && count(b'.') >= 3)
        || (seen & F_COLON != 0 && ipv6_shape(seg, count(b':')))
        || (seen & F_UPPER != 0 && iban_pan_shape(seg))
        // Every API key stem, `eyJ` and `bearer` has a lower-case letter
        // and one of `_-JbB`, or is `AKIA`, `AIza` or `BEARER`.
        || (seg.len() >= MIN_TOKEN
            && ((seen & F_LOWER != 0 && seen & F_TOKEN != 0) || seen & F_AB != 0)
            && token_shape(hay, start, i));
    (i, candidate)
}

/// `::` or 7 colons: what every valid IPv6 address without dots has.
fn ipv6_shape(seg: &[u8], colons: usize) -> bool {
    colons >= 7 || (colons >= 2 && seg.windows(2).any(|w| w == b"::"))
}

/// Two capitals, then two digits (IBAN `DE89`, PAN `ABCDE1234F`).
fn iban_pan_shape(seg: &[u8]) -> bool {
    seg.windows(4).any(|w| {
        w[0].is_ascii_uppercase()
            && w[1].is_ascii_uppercase()
            && w[2].is_ascii_digit()
            && w[3].is_ascii_digit()
    })
}

/// An API key prefix, `eyJ` or `bearer` (any case) in `hay[start..end]`.
fn token_shape(hay: &[u8], start: usize, end: usize) -> bool {
    (start..end).any(|i| match hay[i] {
        b'_' | b'-' => api_key_stem(hay, i),
        b'J' => i >= 2 && &hay[i - 2..i] == b"ey",
        b'A' => hay
            .get(i..i + 4)
            .is_some_and(|w| w == b"AKIA" || w == b"AIza"),
        b'b' | b'B' => is_bearer_at(hay, i),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(s: &str) -> Vec<&str> {
        let mut out = Vec::new();
        Prefilter::new().for_each_segment(s.as_bytes(), |a, b| out.push(&s[a..b]));
        out
    }

    #[test]
    fn trigger_bits_are_exact() {
        for b in 0..=255u8 {
            for lane in 0..8 {
                let mut w = [b'a'; 8];
                w[lane] = b;
                let bits = trigger_bits(u64::from_le_bytes(w));
                let want = if is_trigger(b) {
                    0x80u64 << (lane * 8)
                } else {
                    0
                };
                assert_eq!(bits, want, "byte {b:#x} in lane {lane}");
            }
        }
    }

    #[test]
    fn clean_text_has_no_segments() {
        assert!(segments("the order #12345 shipped 2024-05-13 at 10:00:00 for 12.5").is_empty());
        assert!(
            segments(r#"{"id":123456,"created":"2024-05-01T10:00:00Z","x":"well-known"}"#)
                .is_empty()
        );
        assert!(segments("std::io is not an address, a:b:c neither").len() == 1);
    }

    #[test]
    fn segments_hold_whole_values() {
        assert_eq!(segments("call 98765 43210 now"), vec![" 98765 43210 "]);
        assert_eq!(
            segments("x user.name@example.com."),
            vec!["user.name@example.com."]
        );
        assert_eq!(
            segments("auth: Bearer abc.def-123== next"),
            vec![" Bearer abc.def-123=="]
        );
        assert_eq!(
            segments("auth bearer\t abcdefgh!"),
            vec!["bearer\t abcdefgh"]
        );
        assert_eq!(
            segments("IBAN DE89 3704 0044 0532 0130 00 x"),
            vec!["IBAN DE89 3704 0044 0532 0130 00 "]
        );
        assert_eq!(segments("é4111111111111111é"), vec!["4111111111111111"]);
        // The `+` before the first trigger digit counts (8 digits after a
        // `+` may be a phone number).
        assert_eq!(segments("+2024-05-13#12345"), vec!["+2024-05-13"]);
        assert!(segments("2024-05-13#12345").is_empty());
        // Lower-case-only IPv6 has no trigger byte but its colons.
        assert_eq!(segments("x a:b:c:d:e:f:a:b y"), vec!["a:b:c:d:e:f:a:b"]);
        assert_eq!(segments("x ::ab y"), vec!["::ab"]);
    }

    /// Real values, near misses and the bytes around them.
    const PIECES: &[&str] = &[
        "user.name@example.com",
        "a@bc.io",
        "x@y",
        "9876543210",
        "98765 43210",
        "+91 98765 43210",
        "+1 (415) 555-2671",
        "(415) 555-2671",
        "415-555-2671",
        "+44 20 7946 0958",
        "4111 1111 1111 1111",
        "4111111111111111",
        "5500-0000-0000-0004",
        "378282246310005",
        "4111111111111112",
        "ABCDE1234F",
        "2345 6789 0124",
        "234567890124",
        "2345-6789-0124",
        "123-45-6789",
        "192.168.10.23",
        "10.0.0.1",
        "1.2.3.4.5",
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "GB82WEST12345698765432",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
        "Bearer abc123def456ghi",
        "bearer\t tok_1234567890",
        "BeArEr  x.y~z/w+v-u==",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "sk-proj-abcdefghijklmnopqrstuvwxyz123456",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij",
        "github_pat_ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "xoxb-1234567890-abc",
        "AIzaSyA-1234567890abcdefghijklmnopqrstu",
        "glpat-abcdefghijklmnopqrst",
        "2001:db8:85a3::8a2e:370:7334",
        "fe80::1",
        "::1",
        "1:2:3:4:5:6:7:8",
        "2024-05-13",
        "2024-05-01T10:00:00Z",
        "#12345",
        "12.5",
        "ö",
        "é",
        "\"",
        ",",
        " ",
        "  ",
        "\t",
        "\n",
        "-",
        ".",
        "@",
        ":",
        "_",
        "+",
        "(",
        ")",
        "=",
        "/",
    ];

    fn text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            3 => prop::sample::select(PIECES).prop_map(str::to_owned),
            2 => "[0-9a-zA-Z .:@+()_=/\t-]{0,4}",
        ];
        prop_oneof![
            prop::collection::vec(piece, 0..24).prop_map(|v| v.concat()),
            "[0-9A-Fa-z .:@+()_=/\t#\"é-]{0,200}",
        ]
    }

    /// Every piece at the very start / end of the haystack, alone, and
    /// glued to non-ASCII text (multi-byte characters are not word bytes).
    #[test]
    fn values_at_edges_and_next_to_non_ascii() {
        let m = crate::PiiMasker::new();
        for p in PIECES {
            for s in [
                (*p).to_owned(),
                format!("{p}é"),
                format!("é{p}"),
                format!("日本{p}日本"),
                format!("x {p}"),
                format!("{p} x"),
                format!("\u{feff}{p}\u{2028}"),
            ] {
                let mut fast = Vec::new();
                m.find_all(s.as_bytes(), |f| fast.push(f));
                assert_eq!(fast, m.find_all_unfiltered(s.as_bytes()), "{s:?}");
            }
        }
        assert_eq!(m.mask_str("é9876543210é"), "é98******10é");
        assert_eq!(m.mask_str("日本user@example.com"), "日本us***@example.com");
        assert_eq!(m.mask_str("4111111111111111"), "4111********1111");
    }

    fn same(masker: &crate::PiiMasker, s: &str) -> Result<(), TestCaseError> {
        let mut fast = Vec::new();
        masker.find_all(s.as_bytes(), |f| fast.push(f));
        prop_assert_eq!(fast, masker.find_all_unfiltered(s.as_bytes()), "{:?}", s);
        Ok(())
    }

    use proptest::prelude::*;

    /// Default, no checksums, some patterns off.
    static MASKERS: std::sync::LazyLock<[crate::PiiMasker; 3]> = std::sync::LazyLock::new(|| {
        use crate::PatternKind;
        [
            crate::PiiMasker::new(),
            crate::PiiMasker::builder()
                .validate_checksums(false)
                .build()
                .unwrap(),
            crate::PiiMasker::builder()
                .disable(PatternKind::Card)
                .disable(PatternKind::Email)
                .disable(PatternKind::Bearer)
                .build()
                .unwrap(),
        ]
    });

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// The prefilter never changes what is found.
        #[test]
        fn prefilter_finds_what_the_full_scan_finds(s in text()) {
            for m in MASKERS.iter() {
                same(m, &s)?;
            }
        }
    }
}
