//! Sensitive field values redacted in a JSON stream too large to parse
//! whole: a byte-at-a-time state machine that carries its state across
//! chunks, so a value is redacted however the stream is cut and however
//! long it is, and nothing is held back.
//!
//! It reads any text as JSON-ish: a string followed by `:` is a key; when
//! the key is sensitive, the value after it (a string, a number, a literal,
//! or a whole object or array) is replaced by the redaction as a JSON
//! string, as the structural masker does for a whole document.

use crate::masker::{MaskStats, PiiMasker};

/// Keys longer than this are not read as keys (no field name is).
const MAX_KEY: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside strings and skipped values.
    Scan,
    /// Inside a string that may be a key.
    Str { escape: bool },
    /// After a sensitive key's `:`, before its value.
    ValueStart,
    /// Skipping a redacted string value.
    SkipStr { escape: bool },
    /// Skipping a redacted object or array value.
    SkipNested {
        depth: usize,
        in_str: bool,
        escape: bool,
    },
    /// Skipping a redacted number or literal.
    SkipScalar,
}

/// See the [module docs](self).
pub(crate) struct FieldRedactor {
    masker: PiiMasker,
    redacted: Vec<u8>,
    state: State,
    /// The raw bytes of the string being read (up to [`MAX_KEY`]).
    key: Vec<u8>,
    key_too_long: bool,
    /// The last string ended a key candidate: only whitespace since.
    /// `Some(true)` when that string names a sensitive field.
    pending: Option<bool>,
}

impl FieldRedactor {
    pub(crate) fn new(masker: PiiMasker) -> Self {
        let redacted = serde_json::to_vec(masker.redaction()).unwrap_or_else(|_| b"\"\"".to_vec());
        Self {
            masker,
            redacted,
            state: State::Scan,
            key: Vec::new(),
            key_too_long: false,
            pending: None,
        }
    }

    /// Forgets the state: the next byte starts a new document.
    pub(crate) fn reset(&mut self) {
        self.state = State::Scan;
        self.pending = None;
        self.key.clear();
    }

    /// `chunk` with sensitive values redacted (counted in `stats`).
    pub(crate) fn push(&mut self, chunk: &[u8], stats: &mut MaskStats) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        for &b in chunk {
            self.step(b, &mut out, stats);
        }
        out
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>, stats: &mut MaskStats) {
        match self.state {
            State::Scan => {
                match b {
                    b'"' => {
                        self.pending = None;
                        self.key.clear();
                        self.key_too_long = false;
                        self.state = State::Str { escape: false };
                    }
                    b':' if self.pending == Some(true) => {
                        self.pending = None;
                        self.state = State::ValueStart;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {}
                    _ => self.pending = None,
                }
                out.push(b);
            }
            State::Str { escape } => {
                out.push(b);
                if escape {
                    self.state = State::Str { escape: false };
                    self.remember(b);
                } else if b == b'\\' {
                    self.state = State::Str { escape: true };
                    self.remember(b);
                } else if b == b'"' {
                    self.state = State::Scan;
                    self.pending = Some(!self.key_too_long && self.is_sensitive());
                } else {
                    self.remember(b);
                }
            }
            State::ValueStart => match b {
                b' ' | b'\t' | b'\r' | b'\n' => out.push(b),
                _ => {
                    out.extend_from_slice(&self.redacted);
                    PiiMasker::count_field(stats);
                    self.state = match b {
                        b'"' => State::SkipStr { escape: false },
                        b'{' | b'[' => State::SkipNested {
                            depth: 1,
                            in_str: false,
                            escape: false,
                        },
                        _ => State::SkipScalar,
                    };
                }
            },
            State::SkipStr { escape } => {
                self.state = match (escape, b) {
                    (true, _) => State::SkipStr { escape: false },
                    (false, b'\\') => State::SkipStr { escape: true },
                    (false, b'"') => State::Scan,
                    _ => State::SkipStr { escape: false },
                };
            }
            State::SkipNested {
                depth,
                in_str,
                escape,
            } => {
                self.state = if in_str {
                    match (escape, b) {
                        (true, _) => State::SkipNested {
                            depth,
                            in_str,
                            escape: false,
                        },
                        (false, b'\\') => State::SkipNested {
                            depth,
                            in_str,
                            escape: true,
                        },
                        (false, b'"') => State::SkipNested {
                            depth,
                            in_str: false,
                            escape: false,
                        },
                        _ => self.state,
                    }
                } else {
                    match b {
                        b'"' => State::SkipNested {
                            depth,
                            in_str: true,
                            escape: false,
                        },
                        b'{' | b'[' => State::SkipNested {
                            depth: depth + 1,
                            in_str,
                            escape,
                        },
                        b'}' | b']' if depth == 1 => State::Scan,
                        b'}' | b']' => State::SkipNested {
                            depth: depth - 1,
                            in_str,
                            escape,
                        },
                        _ => self.state,
                    }
                };
            }
            State::SkipScalar => match b {
                b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' => {
                    self.state = State::Scan;
                    self.step(b, out, stats);
                }
                _ => {}
            },
        }
    }

    fn remember(&mut self, b: u8) {
        if self.key.len() < MAX_KEY {
            self.key.push(b);
        } else {
            self.key_too_long = true;
        }
    }

    fn is_sensitive(&self) -> bool {
        if self.key.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(self.key.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(&self.key);
            quoted.push(b'"');
            serde_json::from_slice::<String>(&quoted)
                .is_ok_and(|k| self.masker.is_sensitive_field(&k))
        } else {
            std::str::from_utf8(&self.key).is_ok_and(|k| self.masker.is_sensitive_field(k))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    static MASKER: std::sync::LazyLock<PiiMasker> = std::sync::LazyLock::new(PiiMasker::default);

    fn redact_in_chunks(doc: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut r = FieldRedactor::new(MASKER.clone());
        let mut stats = MaskStats::default();
        let mut out = Vec::new();
        let mut start = 0;
        for &c in cuts {
            let c = c.min(doc.len()).max(start);
            out.extend(r.push(&doc[start..c], &mut stats));
            start = c;
        }
        out.extend(r.push(&doc[start..], &mut stats));
        out
    }

    #[test]
    fn every_kind_of_value_is_redacted_and_the_rest_kept() {
        let doc = br#"{"user":"ann","password" : "hunter2","n":1,"apiKey":12345,"token":{"a":["}",1]},"secret":[1,{"x":"]"}],"ok":true,"ssn":null}"#;
        let out = redact_in_chunks(doc, &[]);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(
            v,
            serde_json::json!({"user":"ann","password":"***REDACTED***","n":1,"apiKey":"***REDACTED***",
                "token":"***REDACTED***","secret":"***REDACTED***","ok":true,"ssn":"***REDACTED***"})
        );
    }

    #[test]
    fn escaped_keys_and_values_are_read_as_json() {
        let doc = br#"{"pass\u0077ord":"a\"b\\","note":"password"}"#;
        let v: serde_json::Value = serde_json::from_slice(&redact_in_chunks(doc, &[])).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"password":"***REDACTED***","note":"password"})
        );
    }

    proptest! {
        /// However the stream is cut, the output is the same, is JSON, and
        /// holds no sensitive value.
        #[test]
        fn cuts_change_nothing(
            secret in "[a-zA-Z0-9 ]{0,300}",
            a in 0usize..400, b in 0usize..400, c in 0usize..400,
        ) {
            let doc = serde_json::to_vec(&serde_json::json!({
                "items": [{"id": 1, "password": secret, "name": "x"}, {"token": {"deep": [secret]}}],
                "after": "kept"
            })).unwrap();
            let whole = redact_in_chunks(&doc, &[]);
            let mut cuts = [a, b, c];
            cuts.sort_unstable();
            let cut = redact_in_chunks(&doc, &cuts);
            prop_assert_eq!(&whole, &cut);
            let v: serde_json::Value = serde_json::from_slice(&cut).unwrap();
            prop_assert_eq!(&v["items"][0]["password"], "***REDACTED***");
            prop_assert_eq!(&v["items"][1]["token"], "***REDACTED***");
            prop_assert_eq!(&v["after"], "kept");
        }
    }
}
