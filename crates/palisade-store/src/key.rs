//! Key building (with escaping) and Redis-compatible glob matching.

/// Bytes that are escaped in key components: the separator, Redis hash-tag
/// braces, every glob metacharacter, the escape character itself, and
/// whitespace / control bytes.
fn needs_escape(b: u8) -> bool {
    matches!(
        b,
        b':' | b'{' | b'}' | b'*' | b'?' | b'[' | b']' | b'\\' | b'%' | b'^'
    ) || b <= b' '
        || b == 0x7f
}

/// Appends `part` to `out`, percent-escaping every byte that could change the
/// key's structure. Injective: `%` itself is escaped, so distinct inputs give
/// distinct outputs, and no output contains `:` `{` `}` or a glob character.
pub(crate) fn push_escaped(out: &mut String, part: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for ch in part.chars() {
        if ch.is_ascii() && needs_escape(ch as u8) {
            let b = ch as u8;
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xf)] as char);
        } else {
            out.push(ch);
        }
    }
}

/// `<prefix>:<ns>:<entity>:<id>:<version>`, optionally with a `{group}` hash
/// tag after the prefix. The prefix is validated at construction.
pub(crate) fn build(
    prefix: &str,
    group: Option<&str>,
    namespace: &str,
    entity: &str,
    id: &str,
    version: &str,
) -> String {
    let mut out = String::with_capacity(
        prefix.len() + namespace.len() + entity.len() + id.len() + version.len() + 8,
    );
    out.push_str(prefix);
    if let Some(group) = group {
        out.push_str(":{");
        if group.is_empty() {
            // A lone '%' is never the escape of a non-empty string, and an
            // empty tag `{}` would not be a hash tag at all.
            out.push('%');
        } else {
            push_escaped(&mut out, group);
        }
        out.push('}');
    }
    for part in [namespace, entity, id, version] {
        out.push(':');
        push_escaped(&mut out, part);
    }
    out
}

/// Escapes a string so that it matches itself literally inside a glob
/// pattern (for building `delete_matching` patterns from user input).
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Redis `stringmatchlen` semantics: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`,
/// `\x` escapes; byte-wise.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Backtracking point for the last '*': (pattern index after '*', text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pattern, p, text[t])
                        && matched
                    {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[start] == '['`.
/// Returns `(matched, index after the class)`.
fn class_match(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let &b = pattern.get(i)?;
        match b {
            b']' => break,
            b'\\' if i + 1 < pattern.len() => {
                matched |= pattern[i + 1] == c;
                i += 2;
            }
            _ if pattern.get(i + 1) == Some(&b'-')
                && i + 2 < pattern.len()
                && pattern[i + 2] != b']' =>
            {
                let (lo, hi) = (b.min(pattern[i + 2]), b.max(pattern[i + 2]));
                matched |= (lo..=hi).contains(&c);
                i += 3;
            }
            _ => {
                matched |= b == c;
                i += 1;
            }
        }
    }
    Some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_structure() {
        let k = build("p", None, "ns", "user", "a:b{c}*", "v1");
        assert_eq!(k, "p:ns:user:a%3Ab%7Bc%7D%2A:v1");
        assert_eq!(build("p", None, "n", "e", "%", "v"), "p:n:e:%25:v");
        assert_eq!(build("p", Some("g"), "n", "e", "i", "v"), "p:{g}:n:e:i:v");
        assert_eq!(build("p", Some(""), "n", "e", "i", "v"), "p:{%}:n:e:i:v");
    }

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("*", ""));
        assert!(m("a*", "abc"));
        assert!(m("a*c", "abbbc"));
        assert!(!m("a*c", "abbb"));
        assert!(m("a?c", "abc"));
        assert!(m("a[bx]c", "axc"));
        assert!(!m("a[^bx]c", "axc"));
        assert!(m("a[a-c]c", "abc"));
        assert!(m("a\\*c", "a*c"));
        assert!(!m("a\\*c", "abc"));
        assert!(m("p:ns:*:v1", "p:ns:x:y:v1"));
        assert!(m(&glob_escape("a*[b]"), "a*[b]"));
        assert!(!m(&glob_escape("a*"), "ab"));
        assert!(!m("a[bc", "ab"));
    }
}
