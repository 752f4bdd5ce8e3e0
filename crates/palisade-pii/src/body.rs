//! A body masked as it streams: event by event, line by line, or as text
//! with an overlap window flushed when the source pauses.

use crate::fieldstream::FieldRedactor;
use crate::masker::{MaskStats, PiiMasker};
use crate::metrics::PiiMetrics;
use crate::stream::StreamMasker;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use palisade_core::body::codec::StreamEncoder;
use palisade_core::body::framing::{Framing, Splitter};
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The source a stream is masked from (the inner body, maybe decoded).
pub(crate) type Source = Pin<Box<dyn Body<Data = Bytes, Error = BoxError> + Send>>;

/// How the stream is cut before masking.
pub(crate) enum Mode {
    /// Units (SSE events, NDJSON lines), each masked whole and sent at once;
    /// a unit over `max_unit` bytes is masked as text with the overlap
    /// window until it ends.
    Units {
        splitter: Splitter,
        max_unit: usize,
        /// Inside a unit too large to hold.
        oversize: bool,
    },
    /// Text with an overlap window, flushed when the source is idle for
    /// `idle` (zero: never).
    Text { idle: Duration },
}

/// Masks a body as it streams; see [`Mode`].
pub(crate) struct MaskStream {
    source: Source,
    mode: Mode,
    masker: PiiMasker,
    text: StreamMasker,
    /// Redacts sensitive field values before the text masker, for JSON too
    /// large to parse whole (and SSE events / NDJSON lines over the unit
    /// limit).
    fields: Option<FieldRedactor>,
    encoder: Option<StreamEncoder>,
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: MaskStats,
    metrics: Option<(PiiMetrics, &'static str)>,
    trailers: Option<HeaderMap>,
    /// The source ended; what is left is the tail, the trailers and the end.
    ended: bool,
    finished: bool,
}

impl fmt::Debug for MaskStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            Mode::Units { splitter, .. } => match splitter.framing() {
                Framing::Events => "events",
                _ => "lines",
            },
            Mode::Text { .. } => "text",
        };
        f.debug_struct("MaskStream")
            .field("mode", &mode)
            .field("text", &self.text)
            .finish_non_exhaustive()
    }
}

impl MaskStream {
    pub(crate) fn new(
        source: Source,
        mode: Mode,
        masker: PiiMasker,
        text: StreamMasker,
        fields: Option<FieldRedactor>,
        encoder: Option<StreamEncoder>,
        metrics: Option<(PiiMetrics, &'static str)>,
    ) -> Self {
        Self {
            source,
            mode,
            masker,
            text,
            fields,
            encoder,
            idle_timer: None,
            stats: MaskStats::default(),
            metrics,
            trailers: None,
            ended: false,
            finished: false,
        }
    }

    /// Bytes to send for `data`, just read from the source.
    fn on_data(&mut self, data: &[u8]) -> Result<Vec<u8>, BoxError> {
        match &mut self.mode {
            Mode::Text { .. } => {
                let data = redact_fields(&mut self.fields, data, &mut self.stats);
                Ok(self.text.push(&data)?)
            }
            Mode::Units {
                splitter,
                max_unit,
                oversize,
            } => {
                splitter.push(data);
                let mut out = Vec::new();
                while let Some(unit) = splitter.next_unit() {
                    if *oversize {
                        // The end of a unit that was too large to hold.
                        let unit = redact_fields(&mut self.fields, &unit, &mut self.stats);
                        out.extend(self.text.push(&unit)?);
                        out.extend(self.text.finish());
                        if let Some(f) = &mut self.fields {
                            f.reset();
                        }
                        *oversize = false;
                    } else {
                        mask_unit(
                            &self.masker,
                            splitter.framing(),
                            &unit,
                            &mut self.stats,
                            &mut out,
                        );
                    }
                }
                if *oversize || splitter.pending() > *max_unit {
                    // Never sent unmasked: masked as text as it comes.
                    *oversize = true;
                    let part = splitter.take_pending();
                    let part = redact_fields(&mut self.fields, &part, &mut self.stats);
                    out.extend(self.text.push(&part)?);
                }
                Ok(out)
            }
        }
    }

    /// Bytes to send once the source has ended.
    fn on_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Mode::Units {
            splitter, oversize, ..
        } = &mut self.mode
        {
            let rest = splitter.take_pending();
            if *oversize {
                let rest = redact_fields(&mut self.fields, &rest, &mut self.stats);
                // Cannot fail: `finish` masks whatever is held.
                if let Ok(v) = self.text.push(&rest) {
                    out.extend(v);
                }
            } else if !rest.is_empty() {
                mask_unit(
                    &self.masker,
                    splitter.framing(),
                    &rest,
                    &mut self.stats,
                    &mut out,
                );
            }
        }
        out.extend(self.text.finish());
        if let Some((m, direction)) = &self.metrics {
            m.record(direction, &self.stats);
            m.record(direction, self.text.stats());
        }
        out
    }

    /// `out`, encoded when the answer is re-encoded; `None` when there is
    /// nothing to send.
    fn emit(&mut self, out: Vec<u8>) -> Result<Option<Bytes>, BoxError> {
        if out.is_empty() {
            return Ok(None);
        }
        let bytes = match &mut self.encoder {
            None => Bytes::from(out),
            Some(enc) => enc.push(&out)?,
        };
        Ok((!bytes.is_empty()).then_some(bytes))
    }
}

/// `data` with sensitive field values redacted, when there is a redactor.
fn redact_fields<'a>(
    fields: &mut Option<FieldRedactor>,
    data: &'a [u8],
    stats: &mut MaskStats,
) -> Cow<'a, [u8]> {
    match fields {
        Some(f) => Cow::Owned(f.push(data, stats)),
        None => Cow::Borrowed(data),
    }
}

/// Masks one SSE event or NDJSON line into `out`. JSON in an NDJSON line or
/// in an event's `data:` line is masked structurally (sensitive field names
/// too); anything else as text.
fn mask_unit(
    masker: &PiiMasker,
    framing: Framing,
    unit: &[u8],
    stats: &mut MaskStats,
    out: &mut Vec<u8>,
) {
    match framing {
        Framing::Lines => {
            let (body, end) = split_line_end(unit);
            let masked = masker
                .mask_json_bytes(body, stats)
                .unwrap_or_else(|_| masker.mask_bytes_counted(body, stats));
            out.extend_from_slice(&masked);
            out.extend_from_slice(end);
        }
        _ => {
            for line in unit.split_inclusive(|&b| b == b'\n') {
                let (body, end) = split_line_end(line);
                let json = body
                    .strip_prefix(b"data:")
                    .map(|rest| rest.strip_prefix(b" ").unwrap_or(rest))
                    .filter(|v| matches!(v.first(), Some(b'{' | b'[')));
                let masked: Cow<'_, [u8]> = match json {
                    Some(value) => match masker.mask_json_bytes(value, stats) {
                        Ok(Cow::Borrowed(_)) => Cow::Borrowed(body),
                        Ok(Cow::Owned(v)) => {
                            let mut line = body[..body.len() - value.len()].to_vec();
                            line.extend_from_slice(&v);
                            Cow::Owned(line)
                        }
                        Err(_) => masker.mask_bytes_counted(body, stats),
                    },
                    None => masker.mask_bytes_counted(body, stats),
                };
                out.extend_from_slice(&masked);
                out.extend_from_slice(end);
            }
        }
    }
}

/// A line and its terminator (`\n`, `\r\n`, or none).
fn split_line_end(line: &[u8]) -> (&[u8], &[u8]) {
    let n = line.len();
    if line.ends_with(b"\r\n") {
        (&line[..n - 2], &line[n - 2..])
    } else if line.ends_with(b"\n") || line.ends_with(b"\r") {
        (&line[..n - 1], &line[n - 1..])
    } else {
        (line, &[])
    }
}

impl Body for MaskStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.finished {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            if this.ended {
                this.finished = true;
                let mut out = this.on_end();
                let bytes = match &mut this.encoder {
                    None => Bytes::from(out),
                    Some(enc) => {
                        let mut all = enc.push(&out)?.to_vec();
                        all.extend_from_slice(&enc.finish()?);
                        out = all;
                        Bytes::from(out)
                    }
                };
                if !bytes.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                continue;
            }
            match this.source.as_mut().poll_frame(cx) {
                Poll::Pending => {
                    let Mode::Text { idle } = this.mode else {
                        return Poll::Pending;
                    };
                    if idle.is_zero() || this.text.held() == 0 {
                        return Poll::Pending;
                    }
                    let timer = this
                        .idle_timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The source paused: send what is held rather than
                    // keep a slow trickle waiting.
                    this.idle_timer = None;
                    let out = this.text.finish();
                    if let Some(bytes) = this.emit(out)? {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Ready(Some(Err(e))) => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    this.idle_timer = None;
                    match frame.into_data() {
                        Ok(data) => {
                            let out = this.on_data(&data)?;
                            if let Some(bytes) = this.emit(out)? {
                                return Poll::Ready(Some(Ok(Frame::data(bytes))));
                            }
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                this.trailers.get_or_insert_with(HeaderMap::new).extend(t);
                            }
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_mask_json_data_lines_structurally() {
        let masker = PiiMasker::new();
        let mut out = Vec::new();
        let mut stats = MaskStats::default();
        mask_unit(
            &masker,
            Framing::Events,
            b"event: msg\r\ndata: {\"password\":\"hunter2\",\"mail\":\"user@example.com\"}\r\n\r\n",
            &mut stats,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: msg\r\ndata: {\"password\":\"***REDACTED***\",\"mail\":\"us***@example.com\"}\r\n\r\n"
        );
        let mut out = Vec::new();
        mask_unit(
            &masker,
            Framing::Lines,
            b"{\"token\":\"abc\"}\n",
            &mut stats,
            &mut out,
        );
        assert_eq!(out, b"{\"token\":\"***REDACTED***\"}\n");
        let mut out = Vec::new();
        mask_unit(
            &masker,
            Framing::Lines,
            b"not json 9876543210",
            &mut stats,
            &mut out,
        );
        assert_eq!(out, b"not json 98******10");
    }
}
