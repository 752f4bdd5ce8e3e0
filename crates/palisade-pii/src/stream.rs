//! Chunk-wise masking of text streams too large to buffer.

use crate::masker::{Found, MaskStats, PiiMasker};
use std::fmt;

/// Bytes that no built-in pattern of unbounded length (e-mail, JWT, bearer
/// token, API key) can contain: a cut right after one never splits such a
/// value.
fn is_cut_safe(b: u8) -> bool {
    !(b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'.' | b'_' | b'%' | b'+' | b'-' | b'@' | b'~' | b'/' | b'=' | b':'
        ))
}

/// A value ran on longer than the stream masker may hold without finding a
/// place where it could be cut safely.
#[derive(Debug, thiserror::Error)]
#[error("a single token of more than {limit} bytes in a streamed body cannot be masked safely")]
#[non_exhaustive]
pub struct TokenTooLong {
    /// The configured limit.
    pub limit: usize,
}

/// Masks a text stream chunk by chunk, keeping an overlap window so a value
/// split across chunks is still caught.
///
/// After each chunk it emits everything up to a cut point that lies at least
/// `window` bytes before the end of what it holds, moved back so that no
/// match (and no run of characters an e-mail / token could be made of)
/// straddles it; the rest waits for the next chunk. A match no longer than
/// `window` is therefore always seen whole.
///
/// ```
/// use palisade_pii::{PiiMasker, StreamMasker};
///
/// let mut s = StreamMasker::new(PiiMasker::new(), 64, 1 << 20);
/// let mut out = Vec::new();
/// for chunk in ["mail user@exa", "mple.com, card 4111 1111 ", "1111 1111 end"] {
///     out.extend(s.push(chunk.as_bytes()).unwrap());
/// }
/// out.extend(s.finish());
/// assert_eq!(String::from_utf8(out).unwrap(), "mail us***@example.com, card 4111 **** **** 1111 end");
/// ```
pub struct StreamMasker {
    masker: PiiMasker,
    carry: Vec<u8>,
    window: usize,
    max_carry: usize,
    found: Vec<Found>,
    stats: MaskStats,
}

impl fmt::Debug for StreamMasker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMasker")
            .field("held", &self.carry.len())
            .field("window", &self.window)
            .field("max_carry", &self.max_carry)
            .finish_non_exhaustive()
    }
}

impl StreamMasker {
    /// `window`: overlap kept between chunks (the longest value that is
    /// guaranteed to be caught across a boundary, whatever its characters);
    /// `max_carry`: the most it may hold while waiting for a safe cut.
    #[must_use]
    pub fn new(masker: PiiMasker, window: usize, max_carry: usize) -> Self {
        Self {
            masker,
            carry: Vec::new(),
            window: window.max(1),
            max_carry: max_carry.max(window.max(1) * 2),
            found: Vec::new(),
            stats: MaskStats::default(),
        }
    }

    /// Bytes held, waiting for more input or the end.
    #[must_use]
    pub fn held(&self) -> usize {
        self.carry.len()
    }

    /// What was masked so far.
    #[must_use]
    pub fn stats(&self) -> &MaskStats {
        &self.stats
    }

    /// Feeds a chunk; returns the masked bytes that can be emitted now
    /// (possibly none).
    ///
    /// # Errors
    /// [`TokenTooLong`] when more than `max_carry` bytes pile up without a
    /// safe cut (one giant token): emitting them could leak a value.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, TokenTooLong> {
        self.carry.extend_from_slice(chunk);
        if self.carry.len() <= self.window {
            return Ok(Vec::new());
        }
        let mut cut = self.carry.len() - self.window;
        // Back to just after a byte no unbounded value can contain.
        match self.carry[..cut].iter().rposition(|&b| is_cut_safe(b)) {
            Some(p) => cut = p + 1,
            None => {
                return if self.carry.len() > self.max_carry {
                    Err(TokenTooLong {
                        limit: self.max_carry,
                    })
                } else {
                    Ok(Vec::new())
                };
            }
        }
        self.found.clear();
        let found = &mut self.found;
        self.masker.find_all(&self.carry, |f| found.push(f));
        if let Some(f) = self.found.iter().find(|f| f.start < cut && f.end > cut) {
            cut = f.start;
        }
        if cut == 0 {
            return if self.carry.len() > self.max_carry {
                Err(TokenTooLong {
                    limit: self.max_carry,
                })
            } else {
                Ok(Vec::new())
            };
        }
        let out = self.render(cut);
        self.carry.drain(..cut);
        Ok(out)
    }

    /// Ends the stream: masks and returns what is still held.
    pub fn finish(&mut self) -> Vec<u8> {
        self.found.clear();
        let found = &mut self.found;
        self.masker.find_all(&self.carry, |f| found.push(f));
        let out = self.render(self.carry.len());
        self.carry.clear();
        out
    }

    /// Masked `carry[..cut]` from the matches in `found` ending by `cut`.
    fn render(&mut self, cut: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(cut + 16);
        let mut last = 0;
        let mut scratch = String::new();
        for f in self.found.iter().filter(|f| f.end <= cut) {
            out.extend_from_slice(&self.carry[last..f.start]);
            scratch.clear();
            match std::str::from_utf8(&self.carry[f.start..f.end]) {
                Ok(m) => self.masker.replace_into(f.slot, m, &mut scratch),
                Err(_) => scratch.push_str(self.masker.redaction()),
            }
            out.extend_from_slice(scratch.as_bytes());
            last = f.end;
            self.stats.hit_label(self.masker.label(f.slot));
        }
        out.extend_from_slice(&self.carry[last..cut]);
        out
    }
}
