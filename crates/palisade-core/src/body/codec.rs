//! `Content-Encoding`: a compressed body a layer must see is decoded once,
//! with a bound on what it expands to, and the answer is re-encoded for a
//! client that accepts the coding. The codecs are async-compression's.
//!
//! - [`content_coding`] reads a message's coding (`gzip`, `deflate`, `br`,
//!   `zstd`; anything else, or several stacked, is refused by name).
//! - [`DecodedBody`] decodes a body as it streams, in bounded frames: memory
//!   stays bounded whatever the body expands to, and past the limit it fails
//!   with [`DecodeError::TooLarge`].
//! - [`Accepted`] reads a request's `Accept-Encoding`; [`encode_all`] and
//!   [`StreamEncoder`] re-encode (a stream is flushed after every unit, so
//!   events are not held back by the compressor).

use crate::BoxError;
use async_compression::tokio::{bufread, write};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    fmt, io,
    pin::Pin,
    task::{Context, Poll, Waker},
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::StreamReader;

/// A content coding palisade decodes and encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Coding {
    /// `gzip` (and `x-gzip`).
    Gzip,
    /// `deflate`: zlib-wrapped deflate, as HTTP defines it.
    Deflate,
    /// `br`: Brotli.
    Brotli,
    /// `zstd`: Zstandard.
    Zstd,
}

impl Coding {
    /// The coding's token, as in `Content-Encoding`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
        }
    }

    /// The token as a header value.
    #[must_use]
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    fn parse(token: &str) -> Option<Self> {
        let t = token.trim();
        let eq = |s: &str| t.eq_ignore_ascii_case(s);
        if eq("gzip") || eq("x-gzip") {
            Some(Coding::Gzip)
        } else if eq("deflate") {
            Some(Coding::Deflate)
        } else if eq("br") {
            Some(Coding::Brotli)
        } else if eq("zstd") {
            Some(Coding::Zstd)
        } else {
            None
        }
    }
}

impl fmt::Display for Coding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `Content-Encoding` palisade cannot decode (unknown, or several codings
/// stacked): the body cannot be inspected.
#[derive(Debug, Clone, thiserror::Error)]
#[error("content-encoding `{0}` is not supported")]
pub struct UnsupportedCoding(pub String);

/// The coding of a message body: `Ok(None)` for none or `identity`.
///
/// # Errors
/// [`UnsupportedCoding`] for any other value, naming it.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::CONTENT_ENCODING};
/// use palisade_core::body::codec::{Coding, content_coding};
///
/// let mut h = HeaderMap::new();
/// assert_eq!(content_coding(&h).unwrap(), None);
/// h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
/// assert_eq!(content_coding(&h).unwrap(), Some(Coding::Gzip));
/// h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip, br"));
/// assert!(content_coding(&h).is_err());
/// ```
pub fn content_coding(headers: &HeaderMap) -> Result<Option<Coding>, UnsupportedCoding> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value
            .to_str()
            .map_err(|_| UnsupportedCoding(String::from_utf8_lossy(value.as_bytes()).into()))?;
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("identity") {
                continue;
            }
            match (found, Coding::parse(token)) {
                (None, Some(c)) => found = Some(c),
                _ => return Err(UnsupportedCoding(text.to_owned())),
            }
        }
    }
    Ok(found)
}

/// The codings a request's `Accept-Encoding` accepts (listed, or `*`, with
/// a non-zero q-value), read once when the request comes in so the answer
/// can be encoded for it later without keeping the request's headers.
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::ACCEPT_ENCODING};
/// use palisade_core::body::codec::{Accepted, Coding};
///
/// let mut h = HeaderMap::new();
/// assert!(!Accepted::from_headers(&h).contains(Coding::Gzip));
/// h.insert(ACCEPT_ENCODING, HeaderValue::from_static("br;q=0.9, gzip;q=0"));
/// let accepted = Accepted::from_headers(&h);
/// assert!(accepted.contains(Coding::Brotli));
/// assert!(!accepted.contains(Coding::Gzip));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accepted(u8);

impl Accepted {
    fn bit(coding: Coding) -> u8 {
        match coding {
            Coding::Gzip => 1,
            Coding::Deflate => 2,
            Coding::Brotli => 4,
            Coding::Zstd => 8,
        }
    }

    /// Reads `Accept-Encoding` from a request's headers.
    #[must_use]
    pub fn from_headers(request_headers: &HeaderMap) -> Self {
        let mut listed = 0u8;
        let mut accepted = 0u8;
        let mut star = None;
        for value in request_headers.get_all(header::ACCEPT_ENCODING) {
            let Ok(text) = value.to_str() else { continue };
            for item in text.split(',') {
                let mut parts = item.split(';');
                let token = parts.next().unwrap_or("").trim();
                let q = parts
                    .filter_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        k.trim()
                            .eq_ignore_ascii_case("q")
                            .then(|| v.trim().parse::<f32>().ok())
                            .flatten()
                    })
                    .next()
                    .unwrap_or(1.0);
                if token == "*" {
                    star = Some(q > 0.0);
                } else if let Some(c) = Coding::parse(token) {
                    listed |= Self::bit(c);
                    if q > 0.0 {
                        accepted |= Self::bit(c);
                    }
                }
            }
        }
        if star == Some(true) {
            accepted |= !listed & 0x0f;
        }
        Self(accepted)
    }

    /// Whether `coding` is accepted.
    #[must_use]
    pub fn contains(self, coding: Coding) -> bool {
        self.0 & Self::bit(coding) != 0
    }
}

/// Whether a request's `Accept-Encoding` accepts `coding`; see [`Accepted`].
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::ACCEPT_ENCODING};
/// use palisade_core::body::codec::{Coding, accepts};
/// let mut h = HeaderMap::new();
/// h.insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip, deflate"));
/// assert!(accepts(&h, Coding::Gzip));
/// assert!(!accepts(&h, Coding::Zstd));
/// ```
#[must_use]
pub fn accepts(request_headers: &HeaderMap, coding: Coding) -> bool {
    Accepted::from_headers(request_headers).contains(coding)
}

/// Why a [`DecodedBody`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body expands to more than the limit (a decompression bomb, or
    /// simply too large to inspect).
    #[error("{coding} body expands to more than {limit} bytes")]
    TooLarge {
        /// The coding.
        coding: Coding,
        /// The limit on decoded bytes.
        limit: u64,
    },
    /// The body is not valid for its coding.
    #[error("{coding} body cannot be decoded")]
    Corrupt {
        /// The coding.
        coding: Coding,
        /// The codec's error.
        #[source]
        source: io::Error,
    },
    /// The body itself failed while being read.
    #[error("body failed while being read")]
    Body(#[source] BoxError),
}

/// The inner body's own failure, carried through the decoder's `io::Error`.
#[derive(Debug)]
struct InnerFailure(BoxError);

impl fmt::Display for InnerFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for InnerFailure {}

pin_project! {
    /// A body's data frames as a stream of `io::Result<Bytes>` (trailers
    /// are dropped: a content-coded body has none that matter).
    struct DataStream<B> {
        #[pin]
        body: B,
    }
}

impl<B> futures_util::Stream for DataStream<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut body = self.project().body;
        loop {
            return match body.as_mut().poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    Poll::Ready(Some(Err(io::Error::other(InnerFailure(e.into())))))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(d) => Poll::Ready(Some(Ok(d))),
                    Err(_) => continue,
                },
            };
        }
    }
}

type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// How much a decoded frame holds at most.
const FRAME: usize = 16 * 1024;

/// A content-coded body, decoded as it streams.
///
/// Each frame it yields holds at most 16 KiB, and it fails with
/// [`DecodeError::TooLarge`] once more than the limit has come out, so a
/// decompression bomb costs bounded memory and stops early. Decoded bytes
/// are yielded as soon as the compressed bytes that hold them arrive.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade_core::body::codec::{Coding, DecodedBody, encode_all};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let gz = encode_all(b"hello, world", Coding::Gzip).unwrap();
/// let body = DecodedBody::new(Full::new(gz), Coding::Gzip, Some(1 << 20));
/// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello, world");
/// # }
/// ```
pub struct DecodedBody {
    reader: Reader,
    coding: Coding,
    buf: BytesMut,
    limit: Option<u64>,
    total: u64,
    done: bool,
}

impl fmt::Debug for DecodedBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodedBody")
            .field("coding", &self.coding)
            .field("decoded", &self.total)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl DecodedBody {
    /// Decodes `body`, coded with `coding`, failing past `limit` decoded
    /// bytes (`None`: no limit; memory stays bounded either way).
    pub fn new<B>(body: B, coding: Coding, limit: Option<u64>) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let input = StreamReader::new(DataStream { body });
        let reader: Reader = match coding {
            Coding::Gzip => {
                let mut d = bufread::GzipDecoder::new(input);
                d.multiple_members(true);
                Box::pin(d)
            }
            Coding::Deflate => Box::pin(bufread::ZlibDecoder::new(input)),
            Coding::Brotli => Box::pin(bufread::BrotliDecoder::new(input)),
            Coding::Zstd => Box::pin(bufread::ZstdDecoder::new(input)),
        };
        Self {
            reader,
            coding,
            buf: BytesMut::new(),
            limit,
            total: 0,
            done: false,
        }
    }

    fn failure(&self, e: io::Error) -> DecodeError {
        if e.get_ref().is_some_and(|r| r.is::<InnerFailure>()) {
            match e.into_inner().map(|b| b.downcast::<InnerFailure>()) {
                Some(Ok(inner)) => return DecodeError::Body(inner.0),
                Some(Err(other)) => return DecodeError::Body(other),
                None => unreachable!("checked above"),
            }
        }
        DecodeError::Corrupt {
            coding: self.coding,
            source: e,
        }
    }
}

impl Body for DecodedBody {
    type Data = Bytes;
    type Error = DecodeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DecodeError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.buf.capacity() < FRAME {
            this.buf.reserve(FRAME);
        }
        match tokio_util::io::poll_read_buf(this.reader.as_mut(), cx, &mut this.buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.done = true;
                Poll::Ready(Some(Err(this.failure(e))))
            }
            Poll::Ready(Ok(0)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Ok(n)) => {
                this.total += n as u64;
                if let Some(limit) = this.limit
                    && this.total > limit
                {
                    this.done = true;
                    return Poll::Ready(Some(Err(DecodeError::TooLarge {
                        coding: this.coding,
                        limit,
                    })));
                }
                let data = this.buf.split().freeze();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Something written to a `Vec`, which is always ready: poll it once.
fn now<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>) -> io::Result<T> {
    match f(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::Error::other("in-memory encoder was not ready")),
    }
}

trait VecSink: AsyncWrite + Unpin + Send {
    fn out(&mut self) -> &mut Vec<u8>;
}

macro_rules! vec_sink {
    ($($t:ident),*) => {$(
        impl VecSink for write::$t<Vec<u8>> {
            fn out(&mut self) -> &mut Vec<u8> {
                self.get_mut()
            }
        }
    )*};
}
vec_sink!(GzipEncoder, ZlibEncoder, BrotliEncoder, ZstdEncoder);

/// Encodes a stream unit by unit, flushing after each so that the client's
/// decoder can hand every unit on as soon as it arrives.
///
/// ```
/// use palisade_core::body::codec::{Coding, StreamEncoder};
///
/// let mut enc = StreamEncoder::new(Coding::Gzip);
/// let first = enc.push(b"data: one\n\n").unwrap();
/// assert!(!first.is_empty()); // flushed: decodable on its own
/// let rest = enc.finish().unwrap();
/// assert!(!rest.is_empty());
/// ```
pub struct StreamEncoder {
    sink: Box<dyn VecSink>,
    coding: Coding,
}

impl fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamEncoder")
            .field("coding", &self.coding)
            .finish_non_exhaustive()
    }
}

impl StreamEncoder {
    /// An encoder for `coding` (Brotli at quality 4 and the codecs' default
    /// levels otherwise: the speed-for-size trade-off of web servers).
    #[must_use]
    pub fn new(coding: Coding) -> Self {
        let v = Vec::new();
        let sink: Box<dyn VecSink> = match coding {
            Coding::Gzip => Box::new(write::GzipEncoder::new(v)),
            Coding::Deflate => Box::new(write::ZlibEncoder::new(v)),
            Coding::Brotli => Box::new(write::BrotliEncoder::with_quality(
                v,
                async_compression::Level::Precise(4),
            )),
            Coding::Zstd => Box::new(write::ZstdEncoder::new(v)),
        };
        Self { sink, coding }
    }

    /// The coding.
    #[must_use]
    pub fn coding(&self) -> Coding {
        self.coding
    }

    /// Encodes `data` and flushes: the bytes to send now.
    ///
    /// # Errors
    /// When the codec fails.
    pub fn push(&mut self, data: &[u8]) -> io::Result<Bytes> {
        self.write(data)?;
        now(|cx| Pin::new(&mut *self.sink).poll_flush(cx))?;
        Ok(self.take())
    }

    /// Ends the stream: the last bytes to send.
    ///
    /// # Errors
    /// When the codec fails.
    pub fn finish(&mut self) -> io::Result<Bytes> {
        now(|cx| Pin::new(&mut *self.sink).poll_shutdown(cx))?;
        Ok(self.take())
    }

    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = now(|cx| Pin::new(&mut *self.sink).poll_write(cx, data))?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    fn take(&mut self) -> Bytes {
        Bytes::from(std::mem::take(self.sink.out()))
    }
}

/// Encodes a whole body.
///
/// # Errors
/// When the codec fails.
///
/// ```
/// use palisade_core::body::codec::{Coding, encode_all};
/// let zs = encode_all(&[b'a'; 4096], Coding::Zstd).unwrap();
/// assert!(zs.len() < 100);
/// ```
pub fn encode_all(data: &[u8], coding: Coding) -> io::Result<Bytes> {
    let mut enc = StreamEncoder::new(coding);
    enc.write(data)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    const ALL: [Coding; 4] = [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd];

    #[tokio::test]
    async fn round_trips_in_every_coding() {
        let text: Vec<u8> = (0..50_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for coding in ALL {
            let enc = encode_all(&text, coding).unwrap();
            assert!(enc.len() < text.len() / 2, "{coding}");
            let body = DecodedBody::new(Full::new(enc), coding, None);
            let out = body.collect().await.unwrap().to_bytes();
            assert_eq!(out, text, "{coding}");
        }
    }

    #[tokio::test]
    async fn stream_units_decode_as_they_arrive() {
        for coding in ALL {
            let mut enc = StreamEncoder::new(coding);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
            let stream = tokio_stream_from(rx);
            let mut body = DecodedBody::new(StreamBody::new(stream), coding, None);
            for i in 0..3 {
                let unit = format!("data: {i}\n\n");
                tx.send(Ok(Frame::data(enc.push(unit.as_bytes()).unwrap())))
                    .await
                    .unwrap();
                // The unit comes out before anything else is sent.
                let mut got = Vec::new();
                while got.len() < unit.len() {
                    let f = body.frame().await.unwrap().unwrap();
                    got.extend_from_slice(&f.into_data().unwrap());
                }
                assert_eq!(got, unit.as_bytes(), "{coding}");
            }
            tx.send(Ok(Frame::data(enc.finish().unwrap())))
                .await
                .unwrap();
            drop(tx);
            assert!(body.frame().await.is_none(), "{coding}");
        }
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    #[tokio::test]
    async fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 8 << 20];
        for coding in ALL {
            let enc = encode_all(&zeros, coding).unwrap();
            let mut body = DecodedBody::new(Full::new(enc), coding, Some(1 << 20));
            let mut seen = 0usize;
            let err = loop {
                match body.frame().await {
                    Some(Ok(f)) => {
                        let d = f.into_data().unwrap();
                        assert!(d.len() <= FRAME);
                        seen += d.len();
                    }
                    Some(Err(e)) => break e,
                    None => panic!("{coding}: no error past the limit"),
                }
            };
            assert!(
                matches!(err, DecodeError::TooLarge { .. }),
                "{coding}: {err}"
            );
            assert!(seen <= 1 << 20, "{coding}");
        }
    }

    #[tokio::test]
    async fn corrupt_bodies_and_body_failures_are_told_apart() {
        let garbage = Bytes::from_static(b"this is not gzip at all user@example.com");
        let err = DecodedBody::new(Full::new(garbage), Coding::Gzip, None)
            .collect()
            .await
            .unwrap_err();
        assert!(matches!(err, DecodeError::Corrupt { .. }), "{err}");

        let frames: Vec<Result<Frame<Bytes>, io::Error>> = vec![Err(io::Error::other("reset"))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let err = DecodedBody::new(body, Coding::Gzip, None)
            .collect()
            .await
            .unwrap_err();
        assert!(matches!(err, DecodeError::Body(_)), "{err}");
    }

    #[test]
    fn codings_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("compress"),
        );
        assert_eq!(content_coding(&h).unwrap_err().0, "compress");
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert_eq!(content_coding(&h).unwrap(), None);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("X-Gzip"));
        assert_eq!(content_coding(&h).unwrap(), Some(Coding::Gzip));
        let mut a = HeaderMap::new();
        a.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("*"));
        assert!(accepts(&a, Coding::Zstd));
        a.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, deflate, br, zstd"),
        );
        assert!(ALL.iter().all(|c| accepts(&a, *c)));
        a.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip;q=0, *;q=0.5"),
        );
        assert!(!accepts(&a, Coding::Gzip));
        assert!(accepts(&a, Coding::Brotli));
    }
}
