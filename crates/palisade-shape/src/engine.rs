//! The streaming shaper: a `DeserializeSeed` driven by the compiled selection
//! that writes kept values straight to the output and skips the rest
//! (`IgnoredAny`) without building them.

use std::borrow::Cow;
use std::fmt;

use serde::Serializer as _;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::selector::Node;

/// Deepest nesting the shaper follows: serde_json's own parser accepts 127
/// nested arrays / objects, so shaped output always parses back.
pub(crate) const MAX_DEPTH: usize = 127;

/// Rules after compilation.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    /// `None`: keep every field.
    pub(crate) include: Option<Node>,
    /// `None`: drop no field.
    pub(crate) exclude: Option<Node>,
    pub(crate) max_array: usize,
    pub(crate) marker: bool,
    pub(crate) max_str: usize,
    pub(crate) compact: bool,
}

/// Normalises an include node: "everything below" is `None`.
#[inline]
fn inc_of(node: &Node) -> Option<&Node> {
    if node.is_all() { None } else { Some(node) }
}

/// Shapes one document from `de` into `out`, with `include` overriding the
/// compiled include list when given.
pub(crate) fn shape_into<'de, D>(
    rules: &Compiled,
    include: Option<&Node>,
    de: D,
    out: &mut Vec<u8>,
) -> Result<(), D::Error>
where
    D: de::Deserializer<'de>,
{
    let inc = match include {
        Some(node) => inc_of(node),
        None => rules.include.as_ref().and_then(inc_of),
    };
    let mut ctx = Ctx {
        rules,
        out,
        depth: 0,
    };
    Seed {
        ctx: &mut ctx,
        inc,
        exc: rules.exclude.as_ref(),
        root: true,
    }
    .deserialize(de)?;
    Ok(())
}

struct Ctx<'r, 'o> {
    rules: &'r Compiled,
    out: &'o mut Vec<u8>,
    depth: usize,
}

impl Ctx<'_, '_> {
    #[inline]
    fn write_str(&mut self, s: &str) {
        // Writing into a Vec cannot fail.
        let _ = serde_json::Serializer::new(&mut *self.out).serialize_str(s);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Kept,
    Dropped,
}

struct Seed<'a, 'r, 'o> {
    ctx: &'a mut Ctx<'r, 'o>,
    /// `None`: everything below is included.
    inc: Option<&'r Node>,
    /// `None`: nothing below is excluded.
    exc: Option<&'r Node>,
    root: bool,
}

impl<'de> DeserializeSeed<'de> for Seed<'_, '_, '_> {
    type Value = Out;

    #[inline]
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Out, D::Error> {
        de.deserialize_any(self)
    }
}

impl Seed<'_, '_, '_> {
    /// Scalars survive unless a sub-selection was asked of them.
    #[inline]
    fn keep_scalar(&self) -> bool {
        self.root || self.inc.is_none()
    }

    #[inline]
    fn scalar(self, write: impl FnOnce(&mut Vec<u8>)) -> Out {
        if self.keep_scalar() {
            write(self.ctx.out);
            Out::Kept
        } else {
            Out::Dropped
        }
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    #[inline]
    fn deserialize<D: de::Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

impl<'de> Visitor<'de> for Seed<'_, '_, '_> {
    type Value = Out;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Out, E> {
        if !self.root && self.ctx.rules.compact {
            return Ok(Out::Dropped);
        }
        Ok(self.scalar(|out| out.extend_from_slice(b"null")))
    }

    fn visit_none<E: de::Error>(self) -> Result<Out, E> {
        self.visit_unit()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Out, E> {
        Ok(self.scalar(|out| out.extend_from_slice(if v { b"true" } else { b"false" })))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Out, E> {
        Ok(self.scalar(|out| {
            let _ = serde_json::Serializer::new(out).serialize_i64(v);
        }))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Out, E> {
        Ok(self.scalar(|out| {
            let _ = serde_json::Serializer::new(out).serialize_u64(v);
        }))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Out, E> {
        // Non-finite floats cannot come from JSON; serde_json writes them as null.
        Ok(self.scalar(|out| {
            let _ = serde_json::Serializer::new(out).serialize_f64(v);
        }))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Out, E> {
        if !self.keep_scalar() {
            return Ok(Out::Dropped);
        }
        let max = self.ctx.rules.max_str;
        // A string can only be too long when it has more than `max` bytes.
        if v.len() > max
            && let Some((cut, _)) = v.char_indices().nth(max)
        {
            let mut s = String::with_capacity(cut + 3);
            s.push_str(&v[..cut]);
            s.push('…');
            self.ctx.write_str(&s);
            return Ok(Out::Kept);
        }
        self.ctx.write_str(v);
        Ok(Out::Kept)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Out, A::Error> {
        let Seed {
            ctx,
            inc,
            exc,
            root,
        } = self;
        ctx.depth += 1;
        if ctx.depth > MAX_DEPTH {
            return Err(de::Error::custom("JSON nested too deep"));
        }
        let start = ctx.out.len();
        ctx.out.push(b'[');
        let max = ctx.rules.max_array;
        let mut kept = 0usize;
        loop {
            if kept >= max {
                let mut dropped = 0u64;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    dropped += 1;
                }
                if dropped > 0 && ctx.rules.marker {
                    if kept > 0 {
                        ctx.out.push(b',');
                    }
                    ctx.write_str(&format!("... {dropped} more"));
                    kept += 1;
                }
                break;
            }
            let mark = ctx.out.len();
            if kept > 0 {
                ctx.out.push(b',');
            }
            let seed = Seed {
                ctx: &mut *ctx,
                inc,
                exc,
                root: false,
            };
            match seq.next_element_seed(seed)? {
                Some(Out::Kept) => kept += 1,
                Some(Out::Dropped) => ctx.out.truncate(mark),
                None => {
                    ctx.out.truncate(mark);
                    break;
                }
            }
        }
        ctx.depth -= 1;
        if kept == 0 && !root && (ctx.rules.compact) {
            ctx.out.truncate(start);
            return Ok(Out::Dropped);
        }
        ctx.out.push(b']');
        Ok(Out::Kept)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Out, A::Error> {
        let Seed {
            ctx,
            inc,
            exc,
            root,
        } = self;
        ctx.depth += 1;
        if ctx.depth > MAX_DEPTH {
            return Err(de::Error::custom("JSON nested too deep"));
        }
        let start = ctx.out.len();
        ctx.out.push(b'{');
        let mut kept = 0usize;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let child_inc = match inc {
                None => None,
                Some(node) => match node.child(&key) {
                    Some(child) => inc_of(child),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                },
            };
            let child_exc = match exc.and_then(|node| node.child(&key)) {
                Some(child) if child.is_all() => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                other => other,
            };
            let mark = ctx.out.len();
            if kept > 0 {
                ctx.out.push(b',');
            }
            ctx.write_str(&key);
            ctx.out.push(b':');
            let seed = Seed {
                ctx: &mut *ctx,
                inc: child_inc,
                exc: child_exc,
                root: false,
            };
            match map.next_value_seed(seed)? {
                Out::Kept => kept += 1,
                Out::Dropped => ctx.out.truncate(mark),
            }
        }
        ctx.depth -= 1;
        if kept == 0 && !root && ctx.rules.compact {
            ctx.out.truncate(start);
            return Ok(Out::Dropped);
        }
        ctx.out.push(b'}');
        Ok(Out::Kept)
    }
}
