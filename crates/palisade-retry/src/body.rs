//! The request body the inner service receives: the buffered bytes (which
//! can be sent again), or — when the body was larger than the replay limit —
//! the part read so far followed by the rest of the original stream.

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

/// The request body a retried service sends.
///
/// Either a buffered copy (cheap to clone: [`Bytes`]), or the original body
/// streamed through after the part that was read while trying to buffer it.
/// Nothing is ever cut: a body over the limit is sent whole, once.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade_retry::ReplayBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let body: ReplayBody<Full<Bytes>> = ReplayBody::buffered(Bytes::from_static(b"hello"), None);
/// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
/// # }
/// ```
pub struct ReplayBody<B: Body> {
    kind: Kind<B>,
}

enum Kind<B: Body> {
    Buffered {
        data: Bytes,
        trailers: Option<Box<HeaderMap>>,
    },
    Streamed {
        prefix: VecDeque<Frame<Bytes>>,
        /// The rest of the original body (none when it ended in an error).
        rest: Option<Pin<Box<B>>>,
        /// An error met while reading the prefix: passed on after it.
        error: Option<B::Error>,
        /// The error was passed on: the body is over.
        failed: bool,
    },
}

impl<B: Body> ReplayBody<B> {
    /// A buffered body (data, then trailers if any).
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self::buffered_boxed(data, trailers.map(Box::new))
    }

    pub(crate) fn buffered_boxed(data: Bytes, trailers: Option<Box<HeaderMap>>) -> Self {
        Self {
            kind: Kind::Buffered { data, trailers },
        }
    }

    pub(crate) fn streamed(
        prefix: VecDeque<Frame<Bytes>>,
        rest: Option<Pin<Box<B>>>,
        error: Option<B::Error>,
    ) -> Self {
        Self {
            kind: Kind::Streamed {
                prefix,
                rest,
                error,
                failed: false,
            },
        }
    }

    /// Whether this body is a buffered copy (so the request can be sent
    /// again).
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }
}

// The original body is boxed and pinned there; nothing else is structurally
// pinned.
impl<B: Body> Unpin for ReplayBody<B> {}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        // `ReplayBody` is `Unpin`: the original body is boxed.
        match &mut self.get_mut().kind {
            Kind::Buffered { data, trailers } => {
                if data.has_remaining() {
                    return Poll::Ready(Some(Ok(Frame::data(std::mem::take(data)))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            Kind::Streamed {
                prefix,
                rest,
                error,
                failed,
            } => {
                if let Some(frame) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    *failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
                match rest {
                    Some(rest) if !*failed => rest.as_mut().poll_frame(cx),
                    _ => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => data.is_empty() && trailers.is_none(),
            Kind::Streamed {
                prefix,
                rest,
                error,
                failed,
            } => {
                *failed
                    || (prefix.is_empty()
                        && error.is_none()
                        && rest.as_ref().is_none_or(|r| r.is_end_stream()))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data, .. } => SizeHint::with_exact(data.len() as u64),
            Kind::Streamed {
                prefix,
                rest,
                error,
                failed,
            } => {
                let read: u64 = prefix
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                if error.is_some() || *failed {
                    // It ends in an error, not after `read` bytes: an exact
                    // size would let a client frame it by length, and the
                    // receiver take the part read for a whole body.
                    let mut hint = SizeHint::new();
                    hint.set_lower(read);
                    return hint;
                }
                let Some(rest) = rest else {
                    return SizeHint::with_exact(read);
                };
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower().saturating_add(read));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}

impl<B: Body> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Buffered { data, trailers } => f
                .debug_struct("ReplayBody::Buffered")
                .field("len", &data.len())
                .field("trailers", &trailers.is_some())
                .finish(),
            Kind::Streamed { prefix, .. } => f
                .debug_struct("ReplayBody::Streamed")
                .field("prefix_frames", &prefix.len())
                .finish_non_exhaustive(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    type Failing = http_body_util::StreamBody<
        futures_util::stream::Empty<Result<Frame<Bytes>, std::io::Error>>,
    >;

    #[tokio::test]
    async fn a_body_that_ended_in_an_error_claims_no_exact_size() {
        let prefix = VecDeque::from([Frame::data(Bytes::from_static(b"0123456789"))]);
        let body: ReplayBody<Failing> =
            ReplayBody::streamed(prefix, None, Some(std::io::Error::other("too large")));
        let hint = body.size_hint();
        assert_eq!(
            hint.exact(),
            None,
            "framed by length, the part read looks whole"
        );
        assert_eq!(hint.lower(), 10);
        let err = body.collect().await.unwrap_err();
        assert_eq!(err.to_string(), "too large");
        // Read whole without an error: exact.
        let prefix = VecDeque::from([Frame::data(Bytes::from_static(b"0123456789"))]);
        let body: ReplayBody<Failing> = ReplayBody::streamed(prefix, None, None);
        assert_eq!(body.size_hint().exact(), Some(10));
    }
}
