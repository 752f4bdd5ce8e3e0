//! Field selectors: dot paths (`address.city`, `*.id`) and the partial-response
//! syntax of `fields=` (`a,b/c,d(e,f)`), both compiled into one selection tree.

use std::collections::HashMap;
use std::fmt;

/// Limits applied while parsing a selector.
///
/// # Example
///
/// ```
/// use palisade_shape::{FieldSelector, SelectorLimits};
///
/// let limits = SelectorLimits { max_length: 16, max_depth: 2, max_fields: 4 };
/// assert!(FieldSelector::parse_with_limits("a/b/c", &limits).is_err()); // 3 levels deep
/// assert!(FieldSelector::parse_with_limits("a/b", &limits).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectorLimits {
    /// Longest selector accepted, in bytes (default 2048).
    pub max_length: usize,
    /// Deepest nesting accepted, counting every path segment (default 16).
    pub max_depth: usize,
    /// Most field names accepted in one selector (default 256).
    pub max_fields: usize,
}

impl Default for SelectorLimits {
    fn default() -> Self {
        Self {
            max_length: 2048,
            max_depth: 16,
            max_fields: 256,
        }
    }
}

/// What is wrong with a selector; see [`SelectorError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectorErrorKind {
    /// The selector is empty.
    Empty,
    /// A field name was expected (found a separator, a parenthesis or the end).
    ExpectedName,
    /// An unexpected character.
    Unexpected(char),
    /// A `(` was never closed.
    UnclosedParen,
    /// A `)` without a matching `(`.
    UnmatchedParen,
    /// A `\` at the end of a dot path.
    DanglingEscape,
    /// The selector is longer than [`SelectorLimits::max_length`].
    TooLong {
        /// The limit.
        max: usize,
    },
    /// The selector nests deeper than [`SelectorLimits::max_depth`].
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The selector names more fields than [`SelectorLimits::max_fields`].
    TooManyFields {
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for SelectorErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty selector"),
            Self::ExpectedName => f.write_str("expected a field name"),
            Self::Unexpected(c) => write!(f, "unexpected character {c:?}"),
            Self::UnclosedParen => f.write_str("unclosed '('"),
            Self::UnmatchedParen => f.write_str("')' without a matching '('"),
            Self::DanglingEscape => f.write_str("'\\' at the end of the path"),
            Self::TooLong { max } => write!(f, "selector longer than {max} bytes"),
            Self::TooDeep { max } => write!(f, "selector nested deeper than {max} levels"),
            Self::TooManyFields { max } => write!(f, "selector names more than {max} fields"),
        }
    }
}

/// A malformed selector: what is wrong, and the byte offset where it is.
///
/// # Example
///
/// ```
/// use palisade_shape::{FieldSelector, SelectorErrorKind};
///
/// let err = FieldSelector::parse("items(id,,name)").unwrap_err();
/// assert_eq!(err.offset(), 9);
/// assert_eq!(err.kind(), &SelectorErrorKind::ExpectedName);
/// assert_eq!(
///     err.to_string(),
///     "invalid field selector: expected a field name at offset 9"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
// The selector is not echoed: it is user input (it may carry PII), and
// this message reaches HTTP answers and logs.
#[error("invalid field selector: {kind} at offset {offset}")]
pub struct SelectorError {
    kind: SelectorErrorKind,
    offset: usize,
}

impl SelectorError {
    fn new(kind: SelectorErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }

    /// What is wrong.
    pub fn kind(&self) -> &SelectorErrorKind {
        &self.kind
    }

    /// Byte offset of the error in the selector (0-based).
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// One level of the selection tree.
///
/// `all` means the whole subtree is selected; otherwise only `children`
/// (by exact key) and `wildcard` (any other key) are. After [`Node::finish`]
/// the wildcard's selection is merged into every explicit child, so a lookup
/// needs to consult a single node.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Node {
    all: bool,
    children: Vec<(Box<str>, Node)>,
    wildcard: Option<Box<Node>>,
    index: Option<HashMap<Box<str>, usize>>,
}

/// Above this many children a node gets a hash index.
const INDEX_THRESHOLD: usize = 12;

impl Node {
    pub(crate) fn all() -> Self {
        Self {
            all: true,
            ..Self::default()
        }
    }

    #[inline]
    pub(crate) fn is_all(&self) -> bool {
        self.all
    }

    fn set_all(&mut self) {
        *self = Self::all();
    }

    /// The child for `key`, or `None` when `key` is not selected here.
    #[inline]
    pub(crate) fn child(&self, key: &str) -> Option<&Node> {
        if self.all {
            return Some(self);
        }
        let explicit = match &self.index {
            Some(index) => index.get(key).map(|&i| &self.children[i].1),
            None => self
                .children
                .iter()
                .find(|(k, _)| &**k == key)
                .map(|(_, n)| n),
        };
        explicit.or(self.wildcard.as_deref())
    }

    fn child_mut(&mut self, seg: &Seg) -> &mut Node {
        match seg {
            Seg::Wildcard => self.wildcard.get_or_insert_with(Box::default),
            Seg::Name(name) => {
                let pos = match self.children.iter().position(|(k, _)| **k == **name) {
                    Some(pos) => pos,
                    None => {
                        self.children
                            .push((name.clone().into_boxed_str(), Node::default()));
                        self.children.len() - 1
                    }
                };
                &mut self.children[pos].1
            }
        }
    }

    /// Adds a path whose last segment selects a whole subtree.
    fn insert_path(&mut self, segs: &[Seg]) {
        let mut node = self;
        for seg in segs {
            if node.all {
                return;
            }
            node = node.child_mut(seg);
        }
        node.set_all();
    }

    /// Union of two selections.
    pub(crate) fn merge(&mut self, other: &Node) {
        if self.all {
            return;
        }
        if other.all {
            self.set_all();
            return;
        }
        for (k, n) in &other.children {
            self.child_mut(&Seg::Name(k.to_string())).merge(n);
        }
        if let Some(w) = &other.wildcard {
            self.wildcard.get_or_insert_with(Box::default).merge(w);
        }
    }

    /// Folds wildcards into explicit siblings and builds indexes, recursively.
    pub(crate) fn finish(&mut self) {
        if self.all {
            self.children.clear();
            self.wildcard = None;
            self.index = None;
            return;
        }
        if let Some(w) = self.wildcard.as_deref_mut() {
            w.finish();
            if w.all {
                // Any field, whole: the same as everything (scalars included).
                self.set_all();
                return;
            }
        }
        if let Some(w) = self.wildcard.as_deref() {
            for (_, child) in &mut self.children {
                child.merge(w);
            }
        }
        for (_, child) in &mut self.children {
            child.finish();
        }
        self.index = (self.children.len() > INDEX_THRESHOLD).then(|| {
            self.children
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect()
        });
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Name(String),
    Wildcard,
}

/// A compiled field selection: which fields of a JSON document to keep (or drop).
///
/// Build one from dot paths ([`FieldSelector::from_paths`]: `address.city`,
/// `dealers.name`, `*.id`) or from the partial-response syntax of a `fields=`
/// query parameter ([`FieldSelector::parse`]: `a,b` several fields, `a/b`
/// nested, `a(b,c)` sub-selection, `*` any field). Arrays are transparent: a
/// selection applies to each element of an array.
///
/// # Example
///
/// ```
/// use palisade_shape::FieldSelector;
///
/// let a = FieldSelector::parse("dealers(name,address/city)").unwrap();
/// let b = FieldSelector::from_paths(["dealers.name", "dealers.address.city"]).unwrap();
/// assert_eq!(a, b);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSelector {
    pub(crate) root: Node,
}

impl FieldSelector {
    /// Parses a `fields=` selector with the default [`SelectorLimits`].
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        Self::parse_with_limits(input, &SelectorLimits::default())
    }

    /// Parses a `fields=` selector (`a,b/c,d(e,*)`), strictly, within `limits`.
    ///
    /// Spaces around names and separators are ignored; anything else out of
    /// place is an error giving its byte offset.
    pub fn parse_with_limits(input: &str, limits: &SelectorLimits) -> Result<Self, SelectorError> {
        if input.len() > limits.max_length {
            return Err(SelectorError::new(
                SelectorErrorKind::TooLong {
                    max: limits.max_length,
                },
                limits.max_length,
            ));
        }
        let mut parser = Parser {
            input,
            bytes: input.as_bytes(),
            pos: 0,
            limits,
            fields: 0,
        };
        parser.skip_ws();
        if parser.pos == parser.bytes.len() {
            return Err(parser.error(SelectorErrorKind::Empty));
        }
        let mut root = Node::default();
        parser.parse_list(&mut root, 0)?;
        parser.skip_ws();
        if let Some(&b) = parser.bytes.get(parser.pos) {
            let kind = if b == b')' {
                SelectorErrorKind::UnmatchedParen
            } else {
                SelectorErrorKind::Unexpected(parser.peek_char())
            };
            return Err(parser.error(kind));
        }
        root.finish();
        Ok(Self { root })
    }

    /// Compiles dot paths (`address.city`, `dealers.name`, `*.id`).
    ///
    /// `*` alone as a segment matches any key; `\.`, `\*` and `\\` escape.
    pub fn from_paths<I, P>(paths: I) -> Result<Self, SelectorError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<str>,
    {
        let mut root = Node::default();
        for path in paths {
            let segs = parse_dot_path(path.as_ref())?;
            root.insert_path(&segs);
        }
        root.finish();
        Ok(Self { root })
    }

    /// A selector that keeps everything.
    pub fn all() -> Self {
        Self { root: Node::all() }
    }

    /// Whether this selector keeps every field.
    pub fn is_all(&self) -> bool {
        self.root.is_all()
    }

    /// Whether this selector keeps nothing (built from no paths).
    pub fn is_empty(&self) -> bool {
        !self.root.all && self.root.children.is_empty() && self.root.wildcard.is_none()
    }
}

fn parse_dot_path(path: &str) -> Result<Vec<Seg>, SelectorError> {
    let mut segs = Vec::new();
    let mut cur = String::new();
    let mut escaped_any = false;
    let mut seg_start = 0;
    let mut chars = path.char_indices();
    let push = |segs: &mut Vec<Seg>, cur: &mut String, escaped: bool, at: usize| {
        if cur.is_empty() {
            return Err(SelectorError::new(SelectorErrorKind::ExpectedName, at));
        }
        let seg = if cur == "*" && !escaped {
            Seg::Wildcard
        } else {
            Seg::Name(std::mem::take(cur))
        };
        cur.clear();
        segs.push(seg);
        Ok(())
    };
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, e)) => {
                    cur.push(e);
                    escaped_any = true;
                }
                None => {
                    return Err(SelectorError::new(SelectorErrorKind::DanglingEscape, i));
                }
            },
            '.' => {
                push(&mut segs, &mut cur, escaped_any, seg_start)?;
                escaped_any = false;
                seg_start = i + 1;
            }
            c => cur.push(c),
        }
    }
    push(&mut segs, &mut cur, escaped_any, seg_start)?;
    Ok(segs)
}

struct Parser<'a> {
    input: &'a str,
    bytes: &'a [u8],
    pos: usize,
    limits: &'a SelectorLimits,
    fields: usize,
}

impl Parser<'_> {
    fn error(&self, kind: SelectorErrorKind) -> SelectorError {
        SelectorError::new(kind, self.pos)
    }

    fn peek_char(&self) -> char {
        self.input[self.pos..].chars().next().unwrap_or('\0')
    }

    fn skip_ws(&mut self) {
        while self.bytes.get(self.pos).is_some_and(|b| *b == b' ') {
            self.pos += 1;
        }
    }

    /// `list := field (',' field)*`, added to `node` at nesting `depth`.
    fn parse_list(&mut self, node: &mut Node, depth: usize) -> Result<(), SelectorError> {
        loop {
            self.parse_field(node, depth)?;
            self.skip_ws();
            if self.bytes.get(self.pos) == Some(&b',') {
                self.pos += 1;
            } else {
                return Ok(());
            }
        }
    }

    /// `field := name ('/' name)* ('(' list ')')?`
    fn parse_field(&mut self, node: &mut Node, depth: usize) -> Result<(), SelectorError> {
        let mut segs = Vec::new();
        loop {
            self.skip_ws();
            let start = self.pos;
            let seg = self.parse_name()?;
            segs.push(seg);
            if depth + segs.len() > self.limits.max_depth {
                return Err(SelectorError::new(
                    SelectorErrorKind::TooDeep {
                        max: self.limits.max_depth,
                    },
                    start,
                ));
            }
            self.skip_ws();
            if self.bytes.get(self.pos) == Some(&b'/') {
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.bytes.get(self.pos) == Some(&b'(') {
            let open = self.pos;
            self.pos += 1;
            let mut target = &mut *node;
            for seg in &segs {
                if target.all {
                    // Already selected whole: parse the sub-list into a scratch node.
                    break;
                }
                target = target.child_mut(seg);
            }
            if target.all {
                let mut scratch = Node::default();
                self.parse_list(&mut scratch, depth + segs.len())?;
            } else {
                self.parse_list(target, depth + segs.len())?;
            }
            self.skip_ws();
            match self.bytes.get(self.pos) {
                Some(b')') => self.pos += 1,
                Some(_) => {
                    return Err(self.error(SelectorErrorKind::Unexpected(self.peek_char())));
                }
                None => {
                    return Err(SelectorError::new(SelectorErrorKind::UnclosedParen, open));
                }
            }
        } else {
            node.insert_path(&segs);
        }
        Ok(())
    }

    fn parse_name(&mut self) -> Result<Seg, SelectorError> {
        let start = self.pos;
        while let Some(&b) = self.bytes.get(self.pos) {
            if matches!(b, b',' | b'/' | b'(' | b')' | b' ') {
                break;
            }
            if b.is_ascii_control() {
                return Err(self.error(SelectorErrorKind::Unexpected(b as char)));
            }
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.error(SelectorErrorKind::ExpectedName));
        }
        let name = &self.input[start..self.pos];
        if name.contains('*') && name != "*" {
            let at = start + name.find('*').unwrap_or(0);
            return Err(SelectorError::new(SelectorErrorKind::Unexpected('*'), at));
        }
        self.fields += 1;
        if self.fields > self.limits.max_fields {
            return Err(SelectorError::new(
                SelectorErrorKind::TooManyFields {
                    max: self.limits.max_fields,
                },
                start,
            ));
        }
        Ok(if name == "*" {
            Seg::Wildcard
        } else {
            Seg::Name(name.to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> (SelectorErrorKind, usize) {
        let e = FieldSelector::parse(s).unwrap_err();
        (e.kind().clone(), e.offset())
    }

    #[test]
    fn parses_google_syntax() {
        let a = FieldSelector::parse("a,b/c,d(e,f/g),*/id").unwrap();
        let b = FieldSelector::from_paths(["a", "b.c", "d.e", "d.f.g", "*.id"]).unwrap();
        assert_eq!(a, b);
        let n = &a.root;
        assert!(n.child("a").unwrap().is_all());
        // wildcard merged into explicit siblings
        assert!(n.child("b").unwrap().child("id").unwrap().is_all());
        assert!(n.child("b").unwrap().child("c").unwrap().is_all());
        assert!(n.child("zzz").unwrap().child("id").is_some());
        assert!(n.child("zzz").unwrap().child("c").is_none());
    }

    #[test]
    fn whole_field_absorbs_subfields() {
        let a = FieldSelector::parse("a/b,a").unwrap();
        assert!(a.root.child("a").unwrap().is_all());
        let b = FieldSelector::parse("a,a(b)").unwrap();
        assert!(b.root.child("a").unwrap().is_all());
    }

    #[test]
    fn errors_point_at_position() {
        assert_eq!(err(""), (SelectorErrorKind::Empty, 0));
        assert_eq!(err("a,"), (SelectorErrorKind::ExpectedName, 2));
        assert_eq!(err(",a"), (SelectorErrorKind::ExpectedName, 0));
        assert_eq!(err("a//b"), (SelectorErrorKind::ExpectedName, 2));
        assert_eq!(err("a(b"), (SelectorErrorKind::UnclosedParen, 1));
        assert_eq!(err("a)b"), (SelectorErrorKind::UnmatchedParen, 1));
        assert_eq!(err("a()"), (SelectorErrorKind::ExpectedName, 2));
        assert_eq!(err("a(b)c"), (SelectorErrorKind::Unexpected('c'), 4));
        assert_eq!(err("ab*"), (SelectorErrorKind::Unexpected('*'), 2));
        assert_eq!(err("a\tb"), (SelectorErrorKind::Unexpected('\t'), 1));
    }

    #[test]
    fn limits_are_enforced() {
        let limits = SelectorLimits {
            max_length: 10,
            max_depth: 3,
            max_fields: 4,
        };
        let e = FieldSelector::parse_with_limits("abcdefghijk", &limits).unwrap_err();
        assert_eq!(e.kind(), &SelectorErrorKind::TooLong { max: 10 });
        let e = FieldSelector::parse_with_limits("a(b(c(d)))", &limits).unwrap_err();
        assert_eq!(e.kind(), &SelectorErrorKind::TooDeep { max: 3 });
        assert_eq!(e.offset(), 6);
        let e = FieldSelector::parse_with_limits("a,b,c,d,e", &limits).unwrap_err();
        assert_eq!(e.kind(), &SelectorErrorKind::TooManyFields { max: 4 });
        assert_eq!(e.offset(), 8);
        // deep nesting does not overflow the stack: depth is checked first
        let deep = "a(".repeat(100_000);
        let e = FieldSelector::parse_with_limits(
            &deep,
            &SelectorLimits {
                max_length: usize::MAX,
                ..SelectorLimits::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), &SelectorErrorKind::TooDeep { max: 16 });
    }

    #[test]
    fn dot_paths_escape_and_errors() {
        let s = FieldSelector::from_paths([r"a\.b.c", r"\*"]).unwrap();
        assert!(s.root.child("a.b").unwrap().child("c").is_some());
        assert!(s.root.child("*").is_some());
        assert!(s.root.child("x").is_none());
        let e = FieldSelector::from_paths(["a..b"]).unwrap_err();
        assert_eq!(
            (e.kind().clone(), e.offset()),
            (SelectorErrorKind::ExpectedName, 2)
        );
        let e = FieldSelector::from_paths(["a\\"]).unwrap_err();
        assert_eq!(e.kind(), &SelectorErrorKind::DanglingEscape);
    }

    #[test]
    fn large_nodes_are_indexed() {
        let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
        let s = FieldSelector::from_paths(&names).unwrap();
        assert!(s.root.index.is_some());
        for n in &names {
            assert!(s.root.child(n).is_some());
        }
        assert!(s.root.child("f40").is_none());
    }
}
