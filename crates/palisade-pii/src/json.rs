//! Structural masking of serialized JSON that keeps everything it does not
//! mask byte for byte (layout, key order, number spellings).
//!
//! serde_json validates the document first (and handles escapes); this
//! module only walks the already-valid bytes to find string tokens, keys and
//! value extents, so it never has to recover from bad input.

use crate::masker::{MaskStats, PiiMasker};
use memchr::memchr2;
use std::borrow::Cow;

/// Index just past the closing quote of the string starting at `i` (a `"`).
fn string_end(b: &[u8], i: usize) -> usize {
    let mut p = i + 1;
    while let Some(off) = memchr2(b'"', b'\\', &b[p..]) {
        let q = p + off;
        if b[q] == b'\\' {
            p = q + 2;
        } else {
            return q + 1;
        }
    }
    b.len()
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
    let mut w = Out {
        src: b,
        out: None,
        copied: 0,
    };
    let redacted = json_string(masker.redaction());
    let numbers = masker.mask_numbers_enabled();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = string_end(b, i);
                let j = skip_ws(b, end);
                let is_key = b.get(j) == Some(&b':');
                if is_key && is_sensitive_key(masker, &b[i..end]) {
                    if let Some(rep) = mask_string_token(masker, &b[i..end], stats) {
                        w.replace(i, end, &rep);
                    }
                    let vs = skip_ws(b, j + 1);
                    let ve = value_end(b, vs);
                    w.replace(vs, ve, &redacted);
                    PiiMasker::count_field(stats);
                    i = ve;
                    continue;
                }
                if let Some(rep) = mask_string_token(masker, &b[i..end], stats) {
                    w.replace(i, end, &rep);
                }
                i = if is_key { j + 1 } else { end };
            }
            b'-' | b'0'..=b'9' => {
                let end = value_end(b, i);
                let tok = &b[i..end];
                if numbers && !tok.iter().any(|c| matches!(c, b'.' | b'e' | b'E')) {
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
