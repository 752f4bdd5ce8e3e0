//! The response body of [`ShapeResponse`](crate::ShapeResponse).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use pin_project_lite::pin_project;

pin_project! {
    /// The upstream body as the layer passes it on: untouched, or — when the
    /// layer had started reading it (to shape it) and then let it go (too
    /// large, not JSON, a read error) — the bytes already read followed by the
    /// rest of the stream, its trailers or its error. Nothing is lost.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_shape::ShapeBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let body = ShapeBody::new(Full::new(Bytes::from_static(b"{}")));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "{}");
    /// # }
    /// ```
    pub struct ShapeBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Stream { #[pin] body: B },
        Resumed {
            chunks: VecDeque<Bytes>,
            rest: Option<Pin<Box<B>>>,
            trailers: Option<HeaderMap>,
            error: Option<BoxError>,
        },
    }
}

impl<B> ShapeBody<B> {
    /// Streams `body` untouched.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Stream { body },
        }
    }

    /// Bytes already read, then the rest of the stream.
    pub(crate) fn resumed(
        chunks: Vec<Bytes>,
        rest: Option<Pin<Box<B>>>,
        trailers: Option<HeaderMap>,
        error: Option<BoxError>,
    ) -> Self {
        Self {
            kind: Kind::Resumed {
                chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
                rest,
                trailers,
                error,
            },
        }
    }
}

impl<B> Body for ShapeBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Stream { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Resumed {
                chunks,
                rest,
                trailers,
                error,
            } => {
                if let Some(chunk) = chunks.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                if let Some(body) = rest {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Ready(None) => *rest = None,
                        other => return other.map_err(Into::into),
                    }
                }
                if let Some(err) = error.take() {
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Resumed {
                chunks,
                rest,
                trailers,
                error,
            } => {
                chunks.is_empty()
                    && rest.as_ref().is_none_or(|b| b.is_end_stream())
                    && trailers.is_none()
                    && error.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream { body } => body.size_hint(),
            Kind::Resumed { chunks, rest, .. } => {
                let buffered: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint());
                // Upper first: `set_lower` asserts lower <= upper.
                let mut hint = SizeHint::new();
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint.set_lower(rest.lower() + buffered);
                hint
            }
        }
    }
}

impl<B> fmt::Debug for ShapeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Stream { .. } => f.write_str("ShapeBody::Stream"),
            Kind::Resumed { chunks, rest, .. } => f
                .debug_struct("ShapeBody::Resumed")
                .field("buffered", &chunks.iter().map(Bytes::len).sum::<usize>())
                .field("rest", &rest.is_some())
                .finish(),
        }
    }
}
