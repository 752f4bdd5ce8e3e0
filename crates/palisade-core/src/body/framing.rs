//! Splits a byte stream into the units it is made of, so a layer can
//! inspect each unit whole and forward it as soon as it is complete.
//!
//! - [`Framing::Events`]: server-sent events, each ended by a blank line
//!   (`\n\n`, `\r\n\r\n` or `\r\r`). Comments (`: keep-alive`) are units of
//!   their own.
//! - [`Framing::Lines`]: NDJSON / JSON Lines, each ended by `\n`.
//!
//! The bytes are never changed: the units, joined, are the input.

use bytes::{Bytes, BytesMut};

/// How a stream is cut into units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Framing {
    /// Server-sent events, blank-line delimited.
    Events,
    /// One unit a line (`\n`-terminated).
    Lines,
}

/// Collects the bytes of a stream and hands out each unit once complete.
///
/// # Example
///
/// ```
/// use palisade_core::body::framing::{Framing, Splitter};
///
/// let mut s = Splitter::new(Framing::Events);
/// s.push(b"data: one\n\ndata: t");
/// assert_eq!(s.next_unit().unwrap(), "data: one\n\n");
/// assert!(s.next_unit().is_none()); // the second event is not complete yet
/// s.push(b"wo\r\n\r\n: keep-alive\n\n");
/// assert_eq!(s.next_unit().unwrap(), "data: two\r\n\r\n");
/// assert_eq!(s.next_unit().unwrap(), ": keep-alive\n\n");
/// assert_eq!(s.pending(), 0);
/// ```
#[derive(Debug)]
pub struct Splitter {
    framing: Framing,
    buf: BytesMut,
    /// Bytes of `buf` already scanned without finding the end of a unit.
    scanned: usize,
    /// The line being scanned is empty so far (events only).
    line_empty: bool,
    /// The last byte scanned was a `\r` (events only: a `\n` after it
    /// belongs to the same line ending).
    after_cr: bool,
}

impl Splitter {
    /// An empty splitter.
    #[must_use]
    pub fn new(framing: Framing) -> Self {
        Self {
            framing,
            buf: BytesMut::new(),
            scanned: 0,
            line_empty: true,
            after_cr: false,
        }
    }

    /// The framing.
    #[must_use]
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held that do not yet make a complete unit.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next complete unit, with its terminator.
    pub fn next_unit(&mut self) -> Option<Bytes> {
        let end = match self.framing {
            Framing::Lines => {
                let at = memchr::memchr(b'\n', &self.buf[self.scanned..]);
                match at {
                    Some(i) => self.scanned + i + 1,
                    None => {
                        self.scanned = self.buf.len();
                        return None;
                    }
                }
            }
            Framing::Events => self.scan_events()?,
        };
        self.scanned = 0;
        Some(self.buf.split_to(end).freeze())
    }

    /// Everything held, complete or not: at the end of the stream, or when a
    /// unit grew past the caller's bound and must be handled in parts.
    pub fn take_pending(&mut self) -> Bytes {
        self.scanned = 0;
        self.buf.split().freeze()
    }

    /// The end of the first event in `buf`, scanning from `scanned`.
    fn scan_events(&mut self) -> Option<usize> {
        let mut i = self.scanned;
        let len = self.buf.len();
        while i < len {
            if self.after_cr {
                self.after_cr = false;
                if self.buf[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match memchr::memchr2(b'\n', b'\r', &self.buf[i..]) {
                None => {
                    self.line_empty = false;
                    i = len;
                }
                Some(off) => {
                    if off > 0 {
                        self.line_empty = false;
                    }
                    let at = i + off;
                    self.after_cr = self.buf[at] == b'\r';
                    let mut end = at + 1;
                    if self.line_empty {
                        // A blank line: the event ends here (with the `\n`
                        // of a `\r\n` when it has arrived).
                        if self.after_cr && end < len && self.buf[end] == b'\n' {
                            end += 1;
                            self.after_cr = false;
                        }
                        self.line_empty = true;
                        return Some(end);
                    }
                    self.line_empty = true;
                    i = end;
                }
            }
        }
        self.scanned = len;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(framing: Framing, input: &[u8], chunk: usize) -> Vec<Bytes> {
        let mut s = Splitter::new(framing);
        let mut out = Vec::new();
        for c in input.chunks(chunk.max(1)) {
            s.push(c);
            while let Some(u) = s.next_unit() {
                out.push(u);
            }
        }
        let rest = s.take_pending();
        if !rest.is_empty() {
            out.push(rest);
        }
        out
    }

    #[test]
    fn events_in_any_chunking() {
        let input =
            b"data: a\n\n: ping\n\nevent: x\r\ndata: b\r\n\r\ndata: c\r\rdata: {\"d\":1}\ndata: e\n\ntail";
        let whole = split_all(Framing::Events, input, input.len());
        assert_eq!(
            whole,
            vec![
                Bytes::from_static(b"data: a\n\n"),
                Bytes::from_static(b": ping\n\n"),
                Bytes::from_static(b"event: x\r\ndata: b\r\n\r\n"),
                Bytes::from_static(b"data: c\r\r"),
                Bytes::from_static(b"data: {\"d\":1}\ndata: e\n\n"),
                Bytes::from_static(b"tail"),
            ]
        );
        for chunk in 1..input.len() {
            let parts = split_all(Framing::Events, input, chunk);
            let joined: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
            assert_eq!(joined, input, "chunk {chunk}");
            // The same number of events: a chunk boundary inside a final
            // `\r\n` can only move that `\n` to the next event.
            assert_eq!(parts.len(), whole.len(), "chunk {chunk}: {parts:?}");
        }
    }

    #[test]
    fn lines() {
        let input = b"{\"a\":1}\n{\"b\":2}\n{\"c\"";
        for chunk in 1..=input.len() {
            let parts = split_all(Framing::Lines, input, chunk);
            assert_eq!(
                parts,
                vec![
                    Bytes::from_static(b"{\"a\":1}\n"),
                    Bytes::from_static(b"{\"b\":2}\n"),
                    Bytes::from_static(b"{\"c\""),
                ]
            );
        }
    }
}
