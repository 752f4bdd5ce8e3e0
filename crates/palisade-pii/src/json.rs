//! Structural masking of serialized JSON that keeps everything it does not
//! mask byte for byte (layout, key order, number spellings).
//!
//! serde_json validates the document first (and handles escapes); this
//! module only walks the already-valid bytes to find string tokens, keys and
//! value extents, so it never has to recover from bad input.
//!
//! With built-in patterns only, the whole document is scanned **once**: `"`
//! and `\\` are bytes no built-in match can hold or straddle, so every match
//! of the raw document lies inside one string token, and is exactly what
//! masking that string alone would find (a `"` neighbour looks, to every
//! pattern and check, like the edge of the text). The walk then hands each
//! string token its matches. Strings with escapes (whose raw bytes are not
//! their text), integers (scanned as text of their own) and documents with
//! custom patterns (which may match anything) are masked token by token.

use crate::masker::{Found, MaskStats, PiiMasker};
use memchr::memchr2;
use std::borrow::Cow;

/// Index just past the closing quote of the string starting at `i` (a `"`).
fn string_end(b: &[u8], i: usize) -> usize {
    string_end_escaped(b, i).0
}

/// [`string_end`], and whether the string holds an escape.
fn string_end_escaped(b: &[u8], i: usize) -> (usize, bool) {
    let mut p = i + 1;
    let mut escaped = false;
    while let Some(off) = memchr2(b'"', b'\\', &b[p..]) {
        let q = p + off;
        if b[q] == b'\\' {
            escaped = true;
            p = q + 2;
        } else {
            return (q + 1, escaped);
        }
    }
    (b.len(), escaped)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index just past the value starting at `i`.
fn value_end(b: &[u8], i: usize) -> usize {
    match b.get(i) {
        Some(b'"') => string_end(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut p = i;
            while p < b.len() {
                match b[p] {
                    b'"' => {
                        p = string_end(b, p);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return p + 1;
                        }
                    }
                    _ => {}
                }
                p += 1;
            }
            b.len()
        }
        _ => {
            let mut p = i;
            while p < b.len() && !matches!(b[p], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                p += 1;
            }
            p
        }
    }
}

struct Out<'a> {
    src: &'a [u8],
    out: Option<Vec<u8>>,
    copied: usize,
}

impl Out<'_> {
    fn replace(&mut self, start: usize, end: usize, with: &[u8]) {
        let src = self.src;
        let o = self
            .out
            .get_or_insert_with(|| Vec::with_capacity(src.len() + 64));
        o.extend_from_slice(&src[self.copied..start]);
        o.extend_from_slice(with);
        self.copied = end;
    }
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

/// Masks the string token `b[start..end]` (quotes included); returns the
/// replacement token when something changed.
fn mask_string_token(masker: &PiiMasker, tok: &[u8], stats: &mut MaskStats) -> Option<Vec<u8>> {
    let inner = &tok[1..tok.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        let text = std::str::from_utf8(inner).ok()?;
        match masker.mask_str_counted(text, stats) {
            Cow::Borrowed(_) => None,
            Cow::Owned(m) => Some(json_string(&m)),
        }
    } else {
        let text: String = serde_json::from_slice(tok).ok()?;
        match masker.mask_str_counted(&text, stats) {
            Cow::Borrowed(_) => None,
            Cow::Owned(m) => Some(json_string(&m)),
        }
    }
}

/// The matches of the document-wide scan, handed out token by token.
struct Matches {
    found: Vec<Found>,
    next: usize,
}

impl Matches {
    /// The matches inside `[start, end)`, dropping the ones before `start`
    /// (inside integers or redacted values, which are handled otherwise).
    fn take(&mut self, start: usize, end: usize) -> &[Found] {
        while self.next < self.found.len() && self.found[self.next].start < start {
            self.next += 1;
        }
        let from = self.next;
        while self.next < self.found.len() && self.found[self.next].end <= end {
            self.next += 1;
        }
        &self.found[from..self.next]
    }
}

/// Masks the escape-free string token `b[start..end]` (quotes included)
/// with the matches of the document-wide scan.
fn mask_plain_token(
    masker: &PiiMasker,
    b: &[u8],
    start: usize,
    end: usize,
    found: &[Found],
    stats: &mut MaskStats,
) -> Option<Vec<u8>> {
    if found.is_empty() {
        return None;
    }
    // Valid JSON: the content of a string token is UTF-8.
    let text = std::str::from_utf8(&b[start + 1..end - 1]).ok()?;
    let masked = masker.render(text, start + 1, found, stats);
    Some(json_string(&masked))
}

/// Remembers whether recent keys are sensitive: documents repeat a few
/// keys many times.
struct KeyCache<'a> {
    entries: Vec<(&'a [u8], bool)>,
}

impl<'a> KeyCache<'a> {
    const SIZE: usize = 32;

    fn is_sensitive(&mut self, masker: &PiiMasker, tok: &'a [u8]) -> bool {
        // Length and last byte first: most keys differ there.
        let last = tok.len().wrapping_sub(2);
        if let Some((_, s)) = self
            .entries
            .iter()
            .find(|(k, _)| k.len() == tok.len() && k.get(last) == tok.get(last) && *k == tok)
        {
            return *s;
        }
        let s = is_sensitive_key(masker, tok);
        if self.entries.len() < Self::SIZE {
            self.entries.push((tok, s));
        }
        s
    }
}

fn is_sensitive_key(masker: &PiiMasker, tok: &[u8]) -> bool {
    let inner = &tok[1..tok.len() - 1];
    if memchr::memchr(b'\\', inner).is_none() {
        std::str::from_utf8(inner).is_ok_and(|k| masker.is_sensitive_field(k))
    } else {
        serde_json::from_slice::<String>(tok).is_ok_and(|k| masker.is_sensitive_field(&k))
    }
}

/// Rewrites valid JSON `b`. Must only be called on valid JSON.
pub(crate) fn rewrite<'a>(masker: &PiiMasker, b: &'a [u8], stats: &mut MaskStats) -> Cow<'a, [u8]> {
    rewrite_with(masker, b, stats, masker.has_prefilter())
}

fn rewrite_with<'a>(
    masker: &PiiMasker,
    b: &'a [u8],
    stats: &mut MaskStats,
    doc_scan: bool,
) -> Cow<'a, [u8]> {
    let mut w = Out {
        src: b,
        out: None,
        copied: 0,
    };
    let redacted = json_string(masker.redaction());
    let numbers = masker.mask_numbers_enabled();
    // One scan of the whole document when only built-in patterns are on.
    let mut matches = doc_scan.then(|| {
        let mut found = Vec::new();
        masker.find_all(b, |f| found.push(f));
        Matches { found, next: 0 }
    });
    let mut keys = KeyCache {
        entries: Vec::new(),
    };
    let mut mask_token =
        |i: usize, end: usize, escaped: bool, stats: &mut MaskStats| match &mut matches {
            Some(m) if !escaped => {
                let found = m.take(i + 1, end - 1);
                mask_plain_token(masker, b, i, end, found, stats)
            }
            _ => mask_string_token(masker, &b[i..end], stats),
        };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let (end, escaped) = string_end_escaped(b, i);
                let j = skip_ws(b, end);
                let is_key = b.get(j) == Some(&b':');
                if is_key && keys.is_sensitive(masker, &b[i..end]) {
                    if let Some(rep) = mask_token(i, end, escaped, stats) {
                        w.replace(i, end, &rep);
                    }
                    let vs = skip_ws(b, j + 1);
                    let ve = value_end(b, vs);
                    w.replace(vs, ve, &redacted);
                    PiiMasker::count_field(stats);
                    i = ve;
                    continue;
                }
                if let Some(rep) = mask_token(i, end, escaped, stats) {
                    w.replace(i, end, &rep);
                }
                i = if is_key { j + 1 } else { end };
            }
            b'-' | b'0'..=b'9' => {
                let end = value_end(b, i);
                let tok = &b[i..end];
                // Every numeric pattern needs at least 8 digits.
                if numbers && tok.len() >= 8 && !tok.iter().any(|c| matches!(c, b'.' | b'e' | b'E'))
                {
                    // Valid JSON: an integer token is ASCII.
                    let text = std::str::from_utf8(tok).unwrap_or_default();
                    if let Cow::Owned(m) = masker.mask_str_counted(text, stats) {
                        w.replace(i, end, &json_string(&m));
                    }
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    match w.out {
        None => Cow::Borrowed(b),
        Some(mut o) => {
            o.extend_from_slice(&b[w.copied..]);
            Cow::Owned(o)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TEXTS: &[&str] = &[
        "user.name@example.com",
        "call 9876543210 now",
        "4111 1111 1111 1111",
        "2345 6789 0124",
        "ABCDE1234F",
        "192.168.1.2",
        "fe80::1",
        "Bearer abcdefgh1234",
        "DE89370400440532013000",
        "plain words",
        "2024-05-01T10:00:00Z",
        "é9876543210é",
        "a\\\"b 9876543210",
        "x\\u0040y.com u@v.io",
        "",
    ];

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            prop::sample::select(TEXTS).prop_map(|t| format!("\"{t}\"")),
            prop_oneof![
                Just("9876543210".to_owned()),
                Just("4111111111111111".to_owned()),
                Just("-12".to_owned()),
                Just("1.5e3".to_owned()),
                Just("true".to_owned()),
                Just("null".to_owned()),
            ],
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                prop::collection::vec(
                    (
                        prop_oneof![
                            prop::sample::select(TEXTS).prop_map(str::to_owned),
                            Just("password".to_owned()),
                            Just("apiKey".to_owned()),
                            Just("note".to_owned()),
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|v| {
                    let fields: Vec<String> = v
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\" : {v}"))
                        .collect();
                    format!("{{{}}}", fields.join(",\n "))
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// The one document-wide scan masks exactly like masking each
        /// string on its own.
        #[test]
        fn document_scan_equals_per_token(doc in value()) {
            static MASKER: std::sync::LazyLock<PiiMasker> = std::sync::LazyLock::new(PiiMasker::new);
            let masker = &*MASKER;
            prop_assume!(serde_json::from_str::<serde::de::IgnoredAny>(&doc).is_ok());
            let (mut a, mut b) = (MaskStats::default(), MaskStats::default());
            let one = rewrite_with(masker, doc.as_bytes(), &mut a, true);
            let each = rewrite_with(masker, doc.as_bytes(), &mut b, false);
            prop_assert_eq!(&one, &each, "{}", doc);
            prop_assert_eq!(a.total(), b.total());
            prop_assert_eq!(a.fields(), b.fields());
        }
    }
}
