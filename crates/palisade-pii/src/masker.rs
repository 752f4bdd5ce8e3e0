//! The single-pass masking engine.

use crate::fields::FieldMatcher;
use crate::operator::Operator;
use crate::pattern::{self, PatternKind};
use crate::prefilter::Prefilter;
use hmac::{Hmac, Mac};
use regex_automata::meta::{self, Regex};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The default redaction text.
pub const REDACTED: &str = "***REDACTED***";

/// The field names redacted by default (matched case-insensitively, ignoring
/// `-` / `_` and camelCase word breaks: `apiKey`, `API-KEY`, `api_key` and
/// `x_api_key` all match `apikey`).
pub const DEFAULT_SENSITIVE_FIELDS: &[&str] = &[
    "password",
    "secret",
    "token",
    "apikey",
    "api_key",
    "ssn",
    "social_security",
    "credit_card",
    "cvv",
    "pan",
    "aadhaar",
    "passport",
    "license",
];

/// A pattern added by the user.
///
/// ```
/// use palisade_pii::{CustomPattern, Operator, PiiMasker};
/// let masker = PiiMasker::builder()
///     .custom_pattern(CustomPattern::new("employee_id", r"EMP-[0-9]{6}").operator(Operator::Redact))
///     .build()
///     .unwrap();
/// assert_eq!(masker.mask_str("by EMP-123456"), "by ***REDACTED***");
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CustomPattern {
    /// Name, used in hashes and as the metric label (keep the set small).
    pub name: String,
    /// The regular expression (`regex-automata` syntax; no look-around, no
    /// back-references: every pattern runs in linear time).
    pub regex: String,
    /// What replaces a match (default: partial).
    #[serde(default)]
    pub operator: Operator,
}

impl CustomPattern {
    /// A custom pattern with the partial operator.
    pub fn new(name: impl Into<String>, regex: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            regex: regex.into(),
            operator: Operator::Partial,
        }
    }

    /// Sets the operator.
    #[must_use]
    pub fn operator(mut self, operator: Operator) -> Self {
        self.operator = operator;
        self
    }
}

/// What the masker masks and how (the serde face of [`PiiMaskerBuilder`]).
///
/// ```
/// use palisade_pii::{MaskingConfig, PiiMasker};
/// let config: MaskingConfig = serde_json::from_str(
///     r#"{"disabled": ["ipv4"], "operators": {"email": "redact"}}"#,
/// ).unwrap();
/// let masker = PiiMasker::from_config(&config).unwrap();
/// assert_eq!(masker.mask_str("10.0.0.1 a@bc.io"), "10.0.0.1 ***REDACTED***");
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MaskingConfig {
    /// Built-in patterns switched off.
    pub disabled: Vec<PatternKind>,
    /// Operator per built-in pattern (default: partial).
    pub operators: BTreeMap<PatternKind, Operator>,
    /// Extra patterns, after the built-ins in priority.
    pub custom: Vec<CustomPattern>,
    /// JSON field names whose values are replaced whole.
    pub sensitive_fields: Vec<String>,
    /// Mask card, Aadhaar and IBAN shapes only when their check digits are
    /// valid (default true). Off: every such shape is masked.
    pub validate_checksums: bool,
    /// Scan JSON integers too (a card or phone number sent as a number);
    /// a masked number becomes a string (default true).
    pub mask_numbers: bool,
    /// Text that replaces redacted values (default `***REDACTED***`).
    pub redaction: String,
    /// Key for the `hash` operator (UTF-8 text; use the builder for raw bytes).
    pub hash_key: Option<String>,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            disabled: Vec::new(),
            operators: BTreeMap::new(),
            custom: Vec::new(),
            sensitive_fields: DEFAULT_SENSITIVE_FIELDS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            validate_checksums: true,
            mask_numbers: true,
            redaction: REDACTED.to_owned(),
            hash_key: None,
        }
    }
}

/// Why a masker could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A custom pattern does not compile.
    #[error("pattern `{name}` is invalid: {source}")]
    InvalidPattern {
        /// The pattern's name.
        name: String,
        /// The compiler's error.
        #[source]
        source: Box<meta::BuildError>,
    },
    /// A custom pattern has an empty name or matches the empty string.
    #[error("pattern `{0}` must have a non-empty name and must not match an empty string")]
    BadCustomPattern(String),
    /// The hash operator is used but no key was given.
    #[error("pattern `{0}` uses the hash operator but no hash key is configured")]
    MissingHashKey(String),
}

/// Counts of masked values per pattern, filled by the `*_counted` methods.
///
/// ```
/// use palisade_pii::{MaskStats, PiiMasker};
/// let masker = PiiMasker::new();
/// let mut stats = MaskStats::default();
/// masker.mask_str_counted("a@bc.io and d@ef.io", &mut stats);
/// assert_eq!(stats.total(), 2);
/// assert_eq!(stats.get("email"), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MaskStats {
    counts: Vec<(Arc<str>, u64)>,
    fields: u64,
}

impl MaskStats {
    pub(crate) fn hit_label(&mut self, label: &Arc<str>) {
        self.hit(label);
    }

    fn hit(&mut self, label: &Arc<str>) {
        if let Some(slot) = self.counts.iter_mut().find(|(l, _)| Arc::ptr_eq(l, label)) {
            slot.1 += 1;
        } else {
            self.counts.push((label.clone(), 1));
        }
    }

    /// Values masked by pattern `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> u64 {
        self.counts
            .iter()
            .filter(|(l, _)| &**l == name)
            .map(|(_, n)| n)
            .sum()
    }

    /// JSON fields redacted by name.
    #[must_use]
    pub fn fields(&self) -> u64 {
        self.fields
    }

    /// Every value masked (patterns and fields).
    #[must_use]
    pub fn total(&self) -> u64 {
        self.fields + self.counts.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// `(pattern name, count)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.counts.iter().map(|(l, n)| (&**l, *n))
    }
}

#[derive(Debug, Clone, Copy)]
enum Rule {
    Builtin(PatternKind),
    Custom,
}

struct Slot {
    rule: Rule,
    operator: Operator,
    label: Arc<str>,
}

struct Inner {
    regex: Option<Regex>,
    /// Set when only built-in patterns are enabled.
    prefilter: Option<Prefilter>,
    /// `rests[p]`: the patterns from `p` on, in priority order (so
    /// `rests[0]` is the whole set). An anchored search of `rests[p]` finds
    /// the first pattern from `p` on that matches at a position.
    rests: Vec<Regex>,
    /// Each pattern alone: the reference the tests compare against.
    #[cfg(test)]
    singles: Vec<Regex>,
    slots: Vec<Slot>,
    fields: FieldMatcher,
    checksums: bool,
    mask_numbers: bool,
    redaction: String,
    hmac: Option<Hmac<Sha256>>,
}

/// The masking engine: finds every pattern in **one** scan of the input,
/// validates check digits, and rewrites matches with each pattern's
/// [`Operator`]. Cheap to clone; `Send + Sync`.
///
/// The scan is a byte-class prefilter (word-at-a-time skip to the bytes a
/// value must contain, then a walk of the surrounding segment that no match
/// can straddle) that hands only the segments able to hold an accepted value
/// to a multi-pattern `regex-automata` meta regex (linear time). With custom
/// patterns, which may match anything, the regex scans the whole input.
///
/// ```
/// use palisade_pii::PiiMasker;
///
/// let masker = PiiMasker::new();
/// assert_eq!(masker.mask_str("call 9876543210"), "call 98******10");
/// assert_eq!(masker.mask_str("user@example.com"), "us***@example.com");
/// assert_eq!(masker.mask_str("4111111111111111"), "4111********1111");
/// assert_eq!(masker.mask_str("4111111111111112"), "4111111111111112"); // fails Luhn
///
/// let mut v = serde_json::json!({"password": 1234, "note": "pan ABCDE1234F"});
/// masker.mask_json(&mut v);
/// assert_eq!(v, serde_json::json!({"password": "***REDACTED***", "note": "pan ABC*****4F"}));
/// ```
#[derive(Clone)]
pub struct PiiMasker {
    inner: Arc<Inner>,
}

impl fmt::Debug for PiiMasker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<&str> = self.inner.slots.iter().map(|s| &*s.label).collect();
        f.debug_struct("PiiMasker")
            .field("patterns", &labels)
            .field("validate_checksums", &self.inner.checksums)
            .finish_non_exhaustive()
    }
}

impl Default for PiiMasker {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a [`PiiMasker`]. See [`MaskingConfig`] for what each setting does.
///
/// ```
/// use palisade_pii::{Operator, PatternKind, PiiMasker};
/// let masker = PiiMasker::builder()
///     .disable(PatternKind::Ipv4)
///     .operator(PatternKind::Email, Operator::Hash)
///     .hash_key(b"k3y")
///     .build()
///     .unwrap();
/// let a = masker.mask_str("a@bc.io");
/// assert!(a.starts_with("[email:"));
/// assert_eq!(a, masker.mask_str("a@bc.io")); // stable: correlatable
/// ```
#[derive(Debug, Clone, Default)]
pub struct PiiMaskerBuilder {
    config: MaskingConfig,
    hash_key: Option<Vec<u8>>,
}

impl PiiMaskerBuilder {
    /// Starts from a configuration.
    #[must_use]
    pub fn from_config(config: MaskingConfig) -> Self {
        Self {
            config,
            hash_key: None,
        }
    }

    /// Switches a built-in pattern off.
    #[must_use]
    pub fn disable(mut self, kind: PatternKind) -> Self {
        if !self.config.disabled.contains(&kind) {
            self.config.disabled.push(kind);
        }
        self
    }

    /// Switches a built-in pattern (back) on.
    #[must_use]
    pub fn enable(mut self, kind: PatternKind) -> Self {
        self.config.disabled.retain(|k| *k != kind);
        self
    }

    /// Sets the operator of a built-in pattern.
    #[must_use]
    pub fn operator(mut self, kind: PatternKind, operator: Operator) -> Self {
        self.config.operators.insert(kind, operator);
        self
    }

    /// Adds a custom pattern (lower priority than the built-ins).
    #[must_use]
    pub fn custom_pattern(mut self, pattern: CustomPattern) -> Self {
        self.config.custom.push(pattern);
        self
    }

    /// Replaces the list of sensitive field names.
    #[must_use]
    pub fn sensitive_fields<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.sensitive_fields = names.into_iter().map(Into::into).collect();
        self
    }

    /// Adds one sensitive field name.
    #[must_use]
    pub fn sensitive_field(mut self, name: impl Into<String>) -> Self {
        self.config.sensitive_fields.push(name.into());
        self
    }

    /// Validate check digits (default true).
    #[must_use]
    pub fn validate_checksums(mut self, yes: bool) -> Self {
        self.config.validate_checksums = yes;
        self
    }

    /// Scan JSON integers (default true).
    #[must_use]
    pub fn mask_numbers(mut self, yes: bool) -> Self {
        self.config.mask_numbers = yes;
        self
    }

    /// The text that replaces redacted values.
    #[must_use]
    pub fn redaction(mut self, text: impl Into<String>) -> Self {
        self.config.redaction = text.into();
        self
    }

    /// The key of the `hash` operator.
    #[must_use]
    pub fn hash_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.hash_key = Some(key.as_ref().to_vec());
        self
    }

    /// Compiles the masker.
    ///
    /// # Errors
    /// An invalid custom pattern, or the hash operator without a key.
    pub fn build(self) -> Result<PiiMasker, BuildError> {
        let c = self.config;
        let key = self
            .hash_key
            .or_else(|| c.hash_key.as_ref().map(|k| k.as_bytes().to_vec()));
        let hmac = key.map(|k| {
            <Hmac<Sha256> as Mac>::new_from_slice(&k).expect("HMAC takes keys of any length")
        });
        let mut regexes: Vec<String> = Vec::new();
        let mut slots = Vec::new();
        let mut labels: BTreeMap<String, Arc<str>> = BTreeMap::new();
        let mut label = |name: &str| -> Arc<str> {
            labels
                .entry(name.to_owned())
                .or_insert_with(|| Arc::from(name))
                .clone()
        };
        for (kind, re) in pattern::builtin_regexes() {
            if c.disabled.contains(&kind) {
                continue;
            }
            let operator = c.operators.get(&kind).cloned().unwrap_or_default();
            if matches!(operator, Operator::Hash) && hmac.is_none() {
                return Err(BuildError::MissingHashKey(kind.name().to_owned()));
            }
            regexes.push(re);
            slots.push(Slot {
                rule: Rule::Builtin(kind),
                operator,
                label: label(kind.name()),
            });
        }
        for p in &c.custom {
            if p.name.is_empty() {
                return Err(BuildError::BadCustomPattern(p.name.clone()));
            }
            if matches!(p.operator, Operator::Hash) && hmac.is_none() {
                return Err(BuildError::MissingHashKey(p.name.clone()));
            }
            let single = compile(&[p.regex.as_str()]).map_err(|e| BuildError::InvalidPattern {
                name: p.name.clone(),
                source: e,
            })?;
            if single.is_match("") {
                return Err(BuildError::BadCustomPattern(p.name.clone()));
            }
            regexes.push(p.regex.clone());
            slots.push(Slot {
                rule: Rule::Custom,
                operator: p.operator.clone(),
                label: label(&p.name),
            });
        }
        let rests = (0..regexes.len())
            .map(|p| compile(&regexes[p..]))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BuildError::InvalidPattern {
                name: "<all>".to_owned(),
                source: e,
            })?;
        let regex = rests.first().cloned();
        #[cfg(test)]
        let singles = regexes
            .iter()
            .map(|r| compile(&[r.as_str()]))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BuildError::InvalidPattern {
                name: "<single>".to_owned(),
                source: e,
            })?;
        Ok(PiiMasker {
            inner: Arc::new(Inner {
                prefilter: c.custom.is_empty().then(Prefilter::new),
                regex,
                rests,
                #[cfg(test)]
                singles,
                slots,
                fields: FieldMatcher::new(&c.sensitive_fields),
                checksums: c.validate_checksums,
                mask_numbers: c.mask_numbers,
                redaction: c.redaction,
                hmac,
            }),
        })
    }
}

fn compile<S: AsRef<str>>(patterns: &[S]) -> Result<Regex, Box<meta::BuildError>> {
    Regex::builder()
        .configure(
            meta::Config::new()
                .match_kind(MatchKind::LeftmostFirst)
                .utf8_empty(false)
                // Room for the lazy DFA of all patterns together, so it is
                // not cleared (and the slower engines used) on busy input.
                .hybrid_cache_capacity(32 << 20),
        )
        .syntax(syntax::Config::new().utf8(true))
        .build_many(patterns)
        .map_err(Box::new)
}

/// Where a match was found and which pattern slot accepted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) slot: usize,
}

impl PiiMasker {
    /// A masker with every built-in pattern, partial masks, checksums
    /// validated and the default sensitive field names.
    #[must_use]
    pub fn new() -> Self {
        PiiMaskerBuilder::default()
            .build()
            .expect("the built-in patterns compile")
    }

    /// A builder starting from the defaults.
    #[must_use]
    pub fn builder() -> PiiMaskerBuilder {
        PiiMaskerBuilder::default()
    }

    /// Builds a masker from a configuration.
    ///
    /// # Errors
    /// See [`PiiMaskerBuilder::build`].
    pub fn from_config(config: &MaskingConfig) -> Result<Self, BuildError> {
        PiiMaskerBuilder::from_config(config.clone()).build()
    }

    /// The metric label of every enabled pattern (built-in names, then custom
    /// names), without duplicates.
    #[must_use]
    pub fn pattern_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.inner.slots {
            if !out.contains(&&*s.label) {
                out.push(&s.label);
            }
        }
        out
    }

    /// Whether a JSON field of this name is replaced whole.
    #[must_use]
    pub fn is_sensitive_field(&self, name: &str) -> bool {
        self.inner.fields.is_sensitive(name)
    }

    /// The redaction text.
    #[must_use]
    pub fn redaction(&self) -> &str {
        &self.inner.redaction
    }

    /// Visits every accepted match of `hay`, leftmost first, never
    /// overlapping. The prefilter hands over the few segments where a match
    /// could be accepted (all of `hay` when custom patterns are present);
    /// each is searched with [`find_in`](Self::find_in).
    pub(crate) fn find_all(&self, hay: &[u8], mut on: impl FnMut(Found)) {
        let Some(re) = &self.inner.regex else { return };
        match &self.inner.prefilter {
            Some(pf) => {
                pf.for_each_segment(hay, |s, e| Self::find_in(self, re, hay, s, e, &mut on))
            }
            None => self.find_in(re, hay, 0, hay.len(), &mut on),
        }
    }

    /// Every accepted match inside `hay[from..to]` (`to` must be a place no
    /// match can straddle; look-around still sees the bytes around). One
    /// scan of the multi-pattern regex; when a candidate fails validation,
    /// the lower-priority patterns get an anchored try at the same
    /// position, then the scan resumes one character later.
    fn find_in(&self, re: &Regex, hay: &[u8], from: usize, to: usize, on: &mut impl FnMut(Found)) {
        let mut at = from;
        while at < to {
            let Some(m) = re.search(&Input::new(hay).range(at..to)) else {
                return;
            };
            let (s, e, pid) = (m.start(), m.end(), m.pattern().as_usize());
            if let Some(end) = self.accept(pid, hay, s, e) {
                on(Found {
                    start: s,
                    end,
                    slot: pid,
                });
                at = end;
                continue;
            }
            let mut resumed = false;
            let mut next = pid + 1;
            while let Some(rest) = self.inner.rests.get(next) {
                let input = Input::new(hay).range(s..to).anchored(Anchored::Yes);
                let Some(m2) = rest.search(&input) else { break };
                let p = next + m2.pattern().as_usize();
                if let Some(end) = self.accept(p, hay, s, m2.end()) {
                    on(Found {
                        start: s,
                        end,
                        slot: p,
                    });
                    at = end;
                    resumed = true;
                    break;
                }
                next = p + 1;
            }
            if !resumed {
                at = s + 1;
                while at < to && (hay[at] & 0xC0) == 0x80 {
                    at += 1;
                }
            }
        }
    }

    /// Whether the prefilter is on (only built-in patterns are enabled).
    pub(crate) fn has_prefilter(&self) -> bool {
        self.inner.prefilter.is_some()
    }

    /// `text` with the matches `found` replaced; `found` holds offsets into
    /// a larger haystack in which `text` starts at `base`.
    pub(crate) fn render(
        &self,
        text: &str,
        base: usize,
        found: &[Found],
        stats: &mut MaskStats,
    ) -> String {
        let mut out = String::with_capacity(text.len() + 16);
        let mut last = 0;
        for f in found {
            let (s, e) = (f.start - base, f.end - base);
            out.push_str(&text[last..s]);
            self.replace_into(f.slot, &text[s..e], &mut out);
            last = e;
            stats.hit(self.label(f.slot));
        }
        out.push_str(&text[last..]);
        out
    }

    /// The reference scan, for differential tests: no prefilter, the whole
    /// haystack, and each lower-priority pattern tried alone after a
    /// rejected candidate.
    #[cfg(test)]
    pub(crate) fn find_all_unfiltered(&self, hay: &[u8]) -> Vec<Found> {
        let mut out = Vec::new();
        let Some(re) = &self.inner.regex else {
            return out;
        };
        let mut at = 0;
        while at < hay.len() {
            let Some(m) = re.search(&Input::new(hay).range(at..)) else {
                break;
            };
            let (s, e, pid) = (m.start(), m.end(), m.pattern().as_usize());
            let mut hit = self.accept(pid, hay, s, e).map(|end| (end, pid));
            for p in pid + 1..self.inner.singles.len() {
                if hit.is_some() {
                    break;
                }
                let input = Input::new(hay).range(s..).anchored(Anchored::Yes);
                if let Some(m2) = self.inner.singles[p].search(&input) {
                    hit = self.accept(p, hay, s, m2.end()).map(|end| (end, p));
                }
            }
            if let Some((end, slot)) = hit {
                out.push(Found {
                    start: s,
                    end,
                    slot,
                });
                at = end;
            } else {
                at = s + 1;
                while at < hay.len() && (hay[at] & 0xC0) == 0x80 {
                    at += 1;
                }
            }
        }
        out
    }

    fn accept(&self, slot: usize, hay: &[u8], s: usize, e: usize) -> Option<usize> {
        match self.inner.slots[slot].rule {
            Rule::Builtin(kind) => pattern::accept(kind, hay, s, e, self.inner.checksums),
            Rule::Custom => (e > s).then_some(e),
        }
    }

    /// Writes the replacement of `m` (matched by `slot`) to `out`.
    pub(crate) fn replace_into(&self, slot: usize, m: &str, out: &mut String) {
        let s = &self.inner.slots[slot];
        match &s.operator {
            Operator::Partial => match s.rule {
                Rule::Builtin(kind) => pattern::partial(kind, m, out),
                Rule::Custom => pattern::partial_custom(m, out),
            },
            Operator::Redact => out.push_str(&self.inner.redaction),
            Operator::Hash => {
                let mut mac = self
                    .inner
                    .hmac
                    .clone()
                    .expect("checked at build: hash operator has a key");
                mac.update(m.as_bytes());
                let digest = mac.finalize().into_bytes();
                out.push('[');
                out.push_str(&s.label);
                out.push(':');
                for b in &digest[..8] {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
                out.push(']');
            }
            Operator::Custom(f) => out.push_str(&f(m)),
        }
    }

    pub(crate) fn label(&self, slot: usize) -> &Arc<str> {
        &self.inner.slots[slot].label
    }

    /// Masks every pattern in `text`. Borrows when nothing was found.
    #[must_use]
    pub fn mask_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.mask_str_impl(text, None)
    }

    /// Like [`mask_str`](Self::mask_str), counting what was masked.
    pub fn mask_str_counted<'a>(&self, text: &'a str, stats: &mut MaskStats) -> Cow<'a, str> {
        self.mask_str_impl(text, Some(stats))
    }

    fn mask_str_impl<'a>(&self, text: &'a str, mut stats: Option<&mut MaskStats>) -> Cow<'a, str> {
        let mut out: Option<String> = None;
        let mut last = 0;
        self.find_all(text.as_bytes(), |f| {
            let o = out.get_or_insert_with(|| String::with_capacity(text.len() + 16));
            o.push_str(&text[last..f.start]);
            self.replace_into(f.slot, &text[f.start..f.end], o);
            last = f.end;
            if let Some(st) = stats.as_deref_mut() {
                st.hit(self.label(f.slot));
            }
        });
        match out {
            None => Cow::Borrowed(text),
            Some(mut o) => {
                o.push_str(&text[last..]);
                Cow::Owned(o)
            }
        }
    }

    /// Masks every pattern in arbitrary bytes (need not be UTF-8; the
    /// patterns only ever match ASCII / valid UTF-8). Borrows when nothing was
    /// found.
    #[must_use]
    pub fn mask_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        self.mask_bytes_counted(bytes, &mut MaskStats::default())
    }

    /// Like [`mask_bytes`](Self::mask_bytes), counting what was masked.
    pub fn mask_bytes_counted<'a>(&self, bytes: &'a [u8], stats: &mut MaskStats) -> Cow<'a, [u8]> {
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        let mut scratch = String::new();
        self.find_all(bytes, |f| {
            let o = out.get_or_insert_with(|| Vec::with_capacity(bytes.len() + 16));
            o.extend_from_slice(&bytes[last..f.start]);
            scratch.clear();
            match std::str::from_utf8(&bytes[f.start..f.end]) {
                Ok(m) => self.replace_into(f.slot, m, &mut scratch),
                Err(_) => scratch.push_str(&self.inner.redaction),
            }
            o.extend_from_slice(scratch.as_bytes());
            last = f.end;
            stats.hit(self.label(f.slot));
        });
        match out {
            None => Cow::Borrowed(bytes),
            Some(mut o) => {
                o.extend_from_slice(&bytes[last..]);
                Cow::Owned(o)
            }
        }
    }

    /// Masks a JSON value in place: values of sensitive fields become the
    /// redaction text whatever their type, every other string (and object
    /// key) is scanned, and integers are scanned when `mask_numbers` is on.
    /// Returns how many values were masked.
    pub fn mask_json(&self, value: &mut Value) -> u64 {
        let mut stats = MaskStats::default();
        self.mask_json_counted(value, &mut stats);
        stats.total()
    }

    /// Like [`mask_json`](Self::mask_json), counting what was masked.
    pub fn mask_json_counted(&self, value: &mut Value, stats: &mut MaskStats) {
        let mut stack: Vec<&mut Value> = vec![value];
        while let Some(v) = stack.pop() {
            match v {
                Value::String(s) => {
                    if let Cow::Owned(m) = self.mask_str_counted(s, stats) {
                        *s = m;
                    }
                }
                Value::Number(n) if self.inner.mask_numbers && !n.is_f64() => {
                    let text = n.to_string();
                    if let Cow::Owned(m) = self.mask_str_counted(&text, stats) {
                        *v = Value::String(m);
                    }
                }
                Value::Array(a) => stack.extend(a.iter_mut()),
                Value::Object(map) => {
                    let renamed: Vec<(String, String)> = map
                        .keys()
                        .filter_map(|k| match self.mask_str_counted(k, stats) {
                            Cow::Owned(m) => Some((k.clone(), m)),
                            Cow::Borrowed(_) => None,
                        })
                        .collect();
                    for (old, new) in renamed {
                        if let Some(val) = map.remove(&old) {
                            map.insert(new, val);
                        }
                    }
                    for (k, val) in map.iter_mut() {
                        if self.inner.fields.is_sensitive(k) {
                            *val = Value::String(self.inner.redaction.clone());
                            stats.fields += 1;
                        } else {
                            stack.push(val);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Masks a serialized JSON document structurally, keeping its layout,
    /// key order and number spellings; only masked values change. Returns
    /// an error (and nothing) when `bytes` is not valid JSON, so the caller
    /// can fall back to [`mask_bytes`](Self::mask_bytes).
    ///
    /// # Errors
    /// The parse error when `bytes` is not one valid JSON document.
    pub fn mask_json_bytes<'a>(
        &self,
        bytes: &'a [u8],
        stats: &mut MaskStats,
    ) -> Result<Cow<'a, [u8]>, serde_json::Error> {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)?;
        Ok(crate::json::rewrite(self, bytes, stats))
    }

    pub(crate) fn mask_numbers_enabled(&self) -> bool {
        self.inner.mask_numbers
    }

    pub(crate) fn count_field(stats: &mut MaskStats) {
        stats.fields += 1;
    }
}
