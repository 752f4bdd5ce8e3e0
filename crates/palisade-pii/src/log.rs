//! Masking for logs: a `tracing-subscriber` [`MakeWriter`] wrapper that masks
//! every formatted event (message, fields, error text) before it is written.

use crate::masker::PiiMasker;
use std::fmt;
use std::io::{self, Write};
use tracing_subscriber::fmt::MakeWriter;

/// Wraps any [`MakeWriter`] (stdout, a file, a non-blocking appender) so
/// that what the `fmt` layer writes is masked first. Each event is buffered
/// whole and masked once, so a value is never split across writes.
///
/// ```
/// use palisade_pii::{MaskingMakeWriter, PiiMasker};
///
/// let writer = MaskingMakeWriter::new(PiiMasker::new(), std::io::stderr);
/// let subscriber = tracing_subscriber::fmt().with_writer(writer).finish();
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::info!(user = "user@example.com", "login"); // logged as us***@example.com
/// });
/// ```
#[derive(Clone)]
pub struct MaskingMakeWriter<M> {
    masker: PiiMasker,
    inner: M,
}

impl<M> fmt::Debug for MaskingMakeWriter<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskingMakeWriter")
            .field("masker", &self.masker)
            .finish_non_exhaustive()
    }
}

impl<M> MaskingMakeWriter<M> {
    /// Masks with `masker`, then writes to the writers `inner` makes.
    pub fn new(masker: PiiMasker, inner: M) -> Self {
        Self { masker, inner }
    }
}

impl<'a, M> MakeWriter<'a> for MaskingMakeWriter<M>
where
    M: MakeWriter<'a>,
{
    type Writer = MaskingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskingWriter::new(self.masker.clone(), self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        MaskingWriter::new(self.masker.clone(), self.inner.make_writer_for(meta))
    }
}

/// An [`io::Write`] that buffers what it is given and writes it masked on
/// `flush` and on drop.
///
/// ```
/// use palisade_pii::{MaskingWriter, PiiMasker};
/// use std::io::Write;
///
/// let mut out = Vec::new();
/// {
///     let mut w = MaskingWriter::new(PiiMasker::new(), &mut out);
///     write!(w, "card 4111111111111111").unwrap();
/// }
/// assert_eq!(out, b"card 4111********1111");
/// ```
pub struct MaskingWriter<W: Write> {
    masker: PiiMasker,
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> fmt::Debug for MaskingWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskingWriter")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl<W: Write> MaskingWriter<W> {
    /// Masks with `masker` into `inner`.
    pub fn new(masker: PiiMasker, inner: W) -> Self {
        Self {
            masker,
            inner,
            buf: Vec::new(),
        }
    }

    fn write_out(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let masked = self.masker.mask_bytes(&self.buf);
        let r = self.inner.write_all(&masked);
        self.buf.clear();
        r
    }
}

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for MaskingWriter<W> {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; the fmt layer ignores write
        // errors the same way.
        let _ = self.write_out();
    }
}
