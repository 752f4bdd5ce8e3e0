//! Strict HTTP/1.1 framing at the front door (`server.strict_http1`).
//!
//! hyper reads a request head leniently, as RFC 9112 allows: a bare LF
//! ends a line, a second `Content-Length` equal to the first is dropped,
//! and with both `Content-Length` and `Transfer-Encoding` the length is
//! dropped and the body read as chunked. By the time a request reaches a
//! service those heads look like any other, so nothing behind hyper can
//! refuse them. Yet these are exactly the shapes request smuggling is made
//! of: a server further along that reads them the other way sees a
//! different request boundary.
//!
//! [`StrictHeads`] sits between the socket and hyper and holds each request
//! head back until it has seen the whole of it. A head with one of these
//! shapes is never given to hyper: in its place hyper reads a request for a
//! path only this process knows ([`refused`] recognises it), which the
//! listener answers `400` with `Connection: close`; then the connection
//! reads as ended. To know where the next head starts it follows the body
//! framing hyper follows (a `Content-Length`, or chunks read with
//! `httparse`); a chunked body it cannot read ends the connection, so a
//! head it has not checked never reaches hyper. After a protocol switch
//! (`101`), and on HTTP/2 connections, bytes pass untouched.

use std::future::Future;
use std::{
    io,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a head was refused: the last part of the stand-in request's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A line ended by LF alone.
    BareLf,
    /// A header line continued on the next (obs-fold).
    ObsFold,
    /// `Content-Length` given more than once (even with one value).
    ContentLengthTwice,
    /// Both `Content-Length` and `Transfer-Encoding`.
    TwoFramings,
    /// Bytes that no request head can start with (garbage, a bad method,
    /// target or header name), refused without waiting for the rest.
    Malformed,
}

impl Refusal {
    const ALL: [Self; 5] = [
        Self::BareLf,
        Self::ObsFold,
        Self::ContentLengthTwice,
        Self::TwoFramings,
        Self::Malformed,
    ];

    fn slug(self) -> &'static str {
        match self {
            Self::BareLf => "bare-lf",
            Self::ObsFold => "obs-fold",
            Self::ContentLengthTwice => "content-length-twice",
            Self::TwoFramings => "content-length-and-transfer-encoding",
            Self::Malformed => "malformed",
        }
    }

    /// What the client is told.
    pub fn detail(self) -> &'static str {
        match self {
            Self::BareLf => "a request head line ended by LF alone (CRLF is required)",
            Self::ObsFold => "a header line folded onto the next (obs-fold)",
            Self::ContentLengthTwice => "more than one `Content-Length`",
            Self::TwoFramings => "both `Transfer-Encoding` and `Content-Length`",
            Self::Malformed => "a malformed request head",
        }
    }
}

/// The path prefix of the stand-in requests: random per process, so a
/// client cannot send one itself.
fn prefix() -> &'static str {
    static PREFIX: OnceLock<String> = OnceLock::new();
    PREFIX.get_or_init(|| format!("/.palisade-refused/{:032x}/", fastrand::u128(..)))
}

/// The refusal a stand-in request stands for, if `path` is one.
pub fn refused(path: &str) -> Option<Refusal> {
    let slug = path.strip_prefix(prefix())?;
    Refusal::ALL.into_iter().find(|r| r.slug() == slug)
}

/// The request hyper reads in place of a refused head.
fn stand_in(why: Refusal) -> Vec<u8> {
    format!(
        "GET {}{} HTTP/1.1\r\nhost: palisade\r\nconnection: close\r\n\r\n",
        prefix(),
        why.slug()
    )
    .into_bytes()
}

/// Where the reader is in the request stream.
#[derive(Debug)]
enum State {
    /// Reading a head (held back until whole).
    Head(HeadScan),
    /// Body bytes of a `Content-Length` still to come.
    Body(u64),
    /// A chunk-size line (held in `line`).
    ChunkSize,
    /// Chunk data still to come, then its CRLF.
    ChunkData(u64),
    /// The CRLF after a chunk's data: how many of its 2 bytes are still due.
    ChunkEnd(u8),
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// Not looked at: HTTP/2, or after a protocol switch.
    Through,
    /// The connection reads as ended once `ready` is given out.
    Ended,
    /// The stand-in request was given out: hyper answers it and closes
    /// (`Connection: close`). Until then nothing more is given to hyper, nor
    /// an end, which would make it drop the request unanswered.
    Refused,
}

/// Progress through a head that is not yet whole, kept so each byte is
/// scanned once however the head arrives.
#[derive(Debug, Default)]
struct HeadScan {
    /// Bytes of `held` already scanned.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    /// Where the request line starts (after leading empty lines), once seen.
    first_line: Option<usize>,
    /// Lines ended so far, the request line included.
    lines: usize,
    bare_lf: bool,
    obs_fold: bool,
    /// The held length at which the unfinished head is next parsed (each
    /// time twice the last, so a head sent a byte at a time costs linear
    /// work).
    next_parse: usize,
}

/// The largest chunk-size or trailer line read; past it the connection ends
/// (hyper's own limits are lower).
const MAX_LINE: usize = 64 * 1024;

/// A socket whose request heads are checked before hyper reads them.
pub struct StrictHeads<S> {
    inner: S,
    state: State,
    /// Bytes read but not yet given to hyper, scanned as far as `state` says.
    held: Vec<u8>,
    /// Bytes ready for hyper (a checked head, the stand-in), given out first.
    ready: Vec<u8>,
    ready_from: usize,
    /// The largest head held (`server.max_head_bytes`); a longer one is
    /// given to hyper as it is, which answers `431`.
    max_head: usize,
    /// Set by the listener when it answers `101`: from then on the bytes
    /// are the new protocol's.
    switched: Arc<AtomicBool>,
    /// `server.header_read_timeout`, timed here rather than by hyper (which
    /// sees no byte of a head until it is whole): the first head from the
    /// accept, each later one from its first byte. An idle keep-alive
    /// connection is not timed here (that is `keep_alive_timeout`).
    header_read: Option<HeadTimer>,
}

/// The deadline of the head being read.
struct HeadTimer {
    limit: std::time::Duration,
    /// Counted here: hyper, which had no byte of the head, closes quietly.
    timed_out: prometheus::IntCounter,
    deadline: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<S> StrictHeads<S> {
    /// Wraps `inner`, checking its heads when `strict` (else bytes pass
    /// untouched); `switched` is set by whoever answers a protocol switch.
    pub fn new(
        inner: S,
        strict: bool,
        max_head: usize,
        header_read_timeout: Option<std::time::Duration>,
        timed_out: prometheus::IntCounter,
        switched: Arc<AtomicBool>,
    ) -> Self {
        Self {
            header_read: header_read_timeout
                .filter(|_| strict)
                .map(|limit| HeadTimer {
                    limit,
                    timed_out,
                    deadline: Box::pin(tokio::time::sleep(limit)),
                    armed: true,
                }),
            inner,
            state: if strict {
                State::Head(HeadScan::default())
            } else {
                State::Through
            },
            held: Vec::new(),
            ready: Vec::new(),
            ready_from: 0,
            max_head,
            switched,
        }
    }

    /// A head was judged: none is being read.
    fn disarm(&mut self) {
        if let Some(timer) = &mut self.header_read {
            timer.armed = false;
        }
    }

    /// Starts the clock when a head has begun to arrive.
    fn arm_if_head_began(&mut self) {
        if let (Some(timer), State::Head(_)) = (&mut self.header_read, &self.state)
            && !timer.armed
            && !self.held.is_empty()
        {
            timer.armed = true;
            let at = tokio::time::Instant::now() + timer.limit;
            timer.deadline.as_mut().reset(at);
        }
    }

    /// Moves `held[..n]` to the bytes ready for hyper.
    fn release(&mut self, n: usize) {
        if self.ready_from == self.ready.len() {
            self.ready.clear();
            self.ready_from = 0;
        }
        self.ready.extend_from_slice(&self.held[..n]);
        self.held.drain(..n);
    }

    /// Runs the held bytes through the framing as far as they go.
    fn advance(&mut self) {
        loop {
            match &mut self.state {
                State::Through => {
                    let n = self.held.len();
                    self.release(n);
                    return;
                }
                State::Ended | State::Refused => {
                    self.held.clear();
                    return;
                }
                State::Body(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(self.held.len());
                    *left -= n as u64;
                    let done = *left == 0;
                    self.release(n);
                    if !done {
                        return;
                    }
                    self.state = State::Head(HeadScan::default());
                }
                State::ChunkData(left) => {
                    let n = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(self.held.len());
                    *left -= n as u64;
                    let done = *left == 0;
                    self.release(n);
                    if !done {
                        return;
                    }
                    self.state = State::ChunkEnd(2);
                }
                State::ChunkEnd(due) => {
                    let want: &[u8] = if *due == 2 { b"\r\n" } else { b"\n" };
                    let n = want.len().min(self.held.len());
                    if n == 0 {
                        return;
                    }
                    if self.held[..n] != want[..n] {
                        // hyper fails the body here too; end before its
                        // reading and ours can differ.
                        self.state = State::Ended;
                        continue;
                    }
                    *due -= n as u8;
                    let done = *due == 0;
                    self.release(n);
                    if !done {
                        return;
                    }
                    self.state = State::ChunkSize;
                }
                State::ChunkSize => {
                    let Some(lf) = memchr::memchr(b'\n', &self.held) else {
                        if self.held.len() > MAX_LINE {
                            self.state = State::Ended;
                            continue;
                        }
                        return;
                    };
                    match httparse::parse_chunk_size(&self.held[..=lf]) {
                        Ok(httparse::Status::Complete((_, size))) => {
                            self.release(lf + 1);
                            self.state = if size == 0 {
                                State::Trailers
                            } else {
                                State::ChunkData(size)
                            };
                        }
                        _ => self.state = State::Ended,
                    }
                }
                State::Trailers => {
                    let Some(lf) = memchr::memchr(b'\n', &self.held) else {
                        if self.held.len() > MAX_LINE {
                            self.state = State::Ended;
                            continue;
                        }
                        return;
                    };
                    if lf == 0 || self.held[lf - 1] != b'\r' {
                        self.state = State::Ended;
                        continue;
                    }
                    let last = lf == 1;
                    self.release(lf + 1);
                    if last {
                        self.state = State::Head(HeadScan::default());
                    }
                }
                State::Head(scan) => {
                    let Some(end) = scan_head(scan, &self.held) else {
                        // Refused without waiting for the rest.
                        let why = if scan.bare_lf {
                            Some(Refusal::BareLf)
                        } else if scan.obs_fold {
                            Some(Refusal::ObsFold)
                        } else if hopeless(scan, &self.held) {
                            Some(Refusal::Malformed)
                        } else {
                            None
                        };
                        if let Some(why) = why {
                            self.state = self.refuse(why);
                        } else if self.held.len() > self.max_head {
                            // More than hyper reads: it answers 431;
                            // nothing after this is given to it.
                            let n = self.held.len();
                            self.release(n);
                            self.disarm();
                            self.state = State::Ended;
                        }
                        return;
                    };
                    let scan = std::mem::take(scan);
                    self.state = self.judge(scan, end);
                }
            }
        }
    }

    /// Gives hyper the stand-in for a refused head, and nothing after it.
    fn refuse(&mut self, why: Refusal) -> State {
        tracing::info!(
            refusal = why.slug(),
            "request head refused (strict HTTP/1.1)"
        );
        self.held.clear();
        self.ready.extend_from_slice(&stand_in(why));
        self.disarm();
        State::Refused
    }

    /// Decides on the whole head `held[..end]`: released with the framing
    /// of its body next, or replaced by the stand-in.
    fn judge(&mut self, scan: HeadScan, end: usize) -> State {
        let start = scan.first_line.unwrap_or(0);
        let head = &self.held[start..end];
        if head.starts_with(b"PRI * HTTP/2.0\r\n") {
            // HTTP/2's preface: none of this applies.
            self.release(end);
            self.disarm();
            return State::Through;
        }
        let mut why = if scan.bare_lf {
            Some(Refusal::BareLf)
        } else if scan.obs_fold {
            Some(Refusal::ObsFold)
        } else {
            None
        };
        let mut next = State::Head(HeadScan::default());
        if why.is_none() {
            let mut headers = [const { std::mem::MaybeUninit::uninit() }; 128];
            let mut req = httparse::Request::new(&mut []);
            match req.parse_with_uninit_headers(head, &mut headers) {
                Ok(httparse::Status::Complete(_)) => {
                    let (mut lengths, mut length, mut chunked) = (0, None, false);
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            // `5, 5` is a second length too.
                            lengths += 1 + h.value.iter().filter(|&&b| b == b',').count();
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<u64>().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            // hyper refuses any but a final `chunked`.
                            chunked = true;
                        }
                    }
                    why = if lengths > 1 {
                        Some(Refusal::ContentLengthTwice)
                    } else if lengths == 1 && chunked {
                        Some(Refusal::TwoFramings)
                    } else {
                        None
                    };
                    next = match (chunked, lengths, length) {
                        (true, _, _) => State::ChunkSize,
                        (false, 0, _) | (false, _, Some(0)) => State::Head(HeadScan::default()),
                        (false, _, Some(n)) => State::Body(n),
                        // An unreadable length: hyper answers 400 and closes.
                        (false, _, None) => State::Ended,
                    };
                }
                // Too many header lines: hyper's 431 (and it closes).
                Err(httparse::Error::TooManyHeaders) | Ok(httparse::Status::Partial) => {
                    next = State::Ended;
                }
                // A whole head that cannot be read (garbage, a bad name):
                // refused like an unfinished one.
                Err(_) => why = Some(Refusal::Malformed),
            }
        }
        match why {
            Some(why) => self.refuse(why),
            None => {
                self.release(end);
                self.disarm();
                if matches!(next, State::Ended) {
                    // Nothing after an unreadable head is given to hyper.
                    self.held.clear();
                }
                next
            }
        }
    }
}

/// Whether the unfinished head in `held` is already invalid whatever
/// follows (garbage, a bad method, target or header name): parsed again
/// only once `held` has doubled since the last time. Too many header lines
/// are left to hyper (`431`) once the head is whole or too long.
fn hopeless(scan: &mut HeadScan, held: &[u8]) -> bool {
    let Some(start) = scan.first_line else {
        return false;
    };
    if held.len() < scan.next_parse {
        return false;
    }
    scan.next_parse = held.len().saturating_mul(2).max(64);
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; 128];
    let mut req = httparse::Request::new(&mut []);
    matches!(
        req.parse_with_uninit_headers(&held[start..], &mut headers),
        Err(e) if e != httparse::Error::TooManyHeaders
    )
}

/// Scans `held` from where `scan` stopped; the end of the head (just past
/// its empty line) once it has come.
fn scan_head(scan: &mut HeadScan, held: &[u8]) -> Option<usize> {
    if scan.first_line.is_none() {
        // Empty lines before the request line are skipped (as hyper does).
        let skip = held.iter().position(|&b| b != b'\r' && b != b'\n');
        let at = skip?;
        scan.first_line = Some(at);
        scan.line_start = at;
        scan.scanned = at;
    }
    while let Some(off) = memchr::memchr(b'\n', &held[scan.scanned..]) {
        let lf = scan.scanned + off;
        scan.scanned = lf + 1;
        if held[lf - 1] != b'\r' {
            scan.bare_lf = true;
        }
        let line = &held[scan.line_start..lf];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if scan.lines > 0 && line.is_empty() {
            return Some(lf + 1);
        }
        if scan.lines > 0 && matches!(line.first(), Some(b' ' | b'\t')) {
            scan.obs_fold = true;
        }
        scan.lines += 1;
        scan.line_start = lf + 1;
    }
    scan.scanned = held.len();
    None
}

impl<S: AsyncRead + Unpin> AsyncRead for StrictHeads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready_from < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.ready_from);
                buf.put_slice(&this.ready[this.ready_from..this.ready_from + n]);
                this.ready_from += n;
                return Poll::Ready(Ok(()));
            }
            if !matches!(this.state, State::Through | State::Ended | State::Refused)
                && this.switched.load(Ordering::Acquire)
            {
                this.state = State::Through;
                this.advance();
                continue;
            }
            this.arm_if_head_began();
            if let Some(timer) = this.header_read.as_mut().filter(|t| t.armed)
                && timer.deadline.as_mut().poll(cx).is_ready()
            {
                timer.timed_out.inc();
                timer.armed = false;
                this.state = State::Ended;
                this.held.clear();
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no whole request head within server.header_read_timeout",
                )));
            }
            match this.state {
                State::Ended => return Poll::Ready(Ok(())),
                State::Refused => {
                    // Read and dropped, so the peer's close is still seen.
                    let mut chunk = [0u8; 1024];
                    let mut read = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                    if read.filled().is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
                State::Through if this.held.is_empty() => {
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                // The bytes of a body go straight to hyper's buffer; only
                // what lies past the body's end is taken back and held.
                State::Body(left) | State::ChunkData(left) if this.held.is_empty() => {
                    let before = buf.filled().len();
                    ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
                    let got = buf.filled().len() - before;
                    if got == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let body = usize::try_from(left).unwrap_or(usize::MAX).min(got);
                    if body < got {
                        this.held.extend_from_slice(&buf.filled()[before + body..]);
                        buf.set_filled(before + body);
                    }
                    let rest = left - body as u64;
                    this.state = match (&this.state, rest) {
                        (State::Body(_), 0) => State::Head(HeadScan::default()),
                        (State::Body(_), n) => State::Body(n),
                        (_, 0) => State::ChunkEnd(2),
                        (_, n) => State::ChunkData(n),
                    };
                    this.advance();
                    if body > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                _ => {
                    let mut chunk = [0u8; 8192];
                    let mut read = ReadBuf::new(&mut chunk);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                    if read.filled().is_empty() {
                        // The peer closed. An unfinished head is dropped (hyper
                        // could not act on it); the rest of a body goes on.
                        if !matches!(this.state, State::Head(_)) {
                            let n = this.held.len();
                            this.release(n);
                        }
                        this.state = State::Ended;
                        continue;
                    }
                    this.held.extend_from_slice(read.filled());
                    this.advance();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StrictHeads<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
