//! The body the layer hands on: untouched, masked whole, or masked as a
//! stream.

use crate::stream::StreamMasker;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use pin_project_lite::pin_project;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project! {
    /// A request or response body after [`PiiMask`](crate::PiiMask): the
    /// original body (binary content, or a direction not masked), the masked
    /// bytes, or the original body masked chunk by chunk.
    ///
    /// ```
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_pii::MaskingBody;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let body = MaskingBody::<Full<bytes::Bytes>>::buffered("masked".into(), None);
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "masked");
    /// # }
    /// ```
    pub struct MaskingBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Passthrough { #[pin] body: B },
        Buffered { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Stream {
            body: Pin<Box<B>>,
            masker: Box<StreamMasker>,
            prefix: Option<Bytes>,
            trailers: Option<HeaderMap>,
            done: bool,
        },
    }
}

impl<B> MaskingBody<B> {
    /// The original body, untouched.
    pub fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough { body },
        }
    }

    /// Bytes already masked, with the original trailers if any.
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// `prefix` (already read, not yet masked) then the rest of `body`,
    /// both masked by `masker` as they flow.
    pub fn stream(prefix: Bytes, body: Pin<Box<B>>, masker: StreamMasker) -> Self {
        Self {
            kind: Kind::Stream {
                body,
                masker: Box::new(masker),
                prefix: Some(prefix),
                trailers: None,
                done: false,
            },
        }
    }
}

impl<B> fmt::Debug for MaskingBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match &self.kind {
            Kind::Passthrough { .. } => "passthrough",
            Kind::Buffered { .. } => "buffered",
            Kind::Stream { .. } => "stream",
        };
        f.debug_tuple("MaskingBody").field(&k).finish()
    }
}

impl<B> Body for MaskingBody<B>
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
            KindProj::Passthrough { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Buffered { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            KindProj::Stream {
                body,
                masker,
                prefix,
                trailers,
                done,
            } => loop {
                if *done {
                    return Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))));
                }
                if let Some(p) = prefix.take() {
                    let out = masker.push(&p)?;
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                    }
                    continue;
                }
                match ready!(body.as_mut().poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            let out = masker.push(&data)?;
                            if !out.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                            }
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                *trailers = Some(t);
                            }
                            *done = true;
                            let out = masker.finish();
                            if !out.is_empty() {
                                return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                            }
                        }
                    },
                    Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                    None => {
                        *done = true;
                        let out = masker.finish();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                        }
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Stream { done, trailers, .. } => *done && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}
