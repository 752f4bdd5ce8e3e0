//! The one body type a layer returns when it answers by itself or rewrites a
//! body, so short-circuit answers and rewritten bodies stack cleanly.

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// Either the inner service's body, streamed untouched, or bytes a layer
    /// produced (a 429 / 503 answer, a cache hit, a masked or shaped body).
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_core::PalisadeBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let produced: PalisadeBody<Full<Bytes>> = PalisadeBody::full("cached");
    /// assert_eq!(produced.size_hint().exact(), Some(6));
    /// let passed = PalisadeBody::inner(Full::new(Bytes::from_static(b"upstream")));
    /// assert_eq!(passed.collect().await.unwrap().to_bytes(), "upstream");
    /// # }
    /// ```
    pub struct PalisadeBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> PalisadeBody<B> {
    /// Streams the inner service's body untouched.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of bytes the layer produced.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full { data: None },
        }
    }

    /// The inner body, when this body streams one.
    pub fn into_inner(self) -> Option<B> {
        match self.kind {
            Kind::Inner { body } => Some(body),
            Kind::Full { .. } => None,
        }
    }
}

impl<B> Default for PalisadeBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for PalisadeBody<B>
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
            KindProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

impl<B> fmt::Debug for PalisadeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("PalisadeBody::Inner"),
            Kind::Full { data } => f
                .debug_struct("PalisadeBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty, StreamBody};

    #[tokio::test]
    async fn full_yields_its_bytes_once_then_ends() {
        let mut body: PalisadeBody<Empty<Bytes>> = PalisadeBody::full("abc");
        assert!(!body.is_end_stream());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test]
    async fn empty_full_is_end_of_stream() {
        let body: PalisadeBody<Empty<Bytes>> = PalisadeBody::full(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn inner_errors_are_boxed_and_passed_on() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err(std::io::Error::other("reset")),
        ];
        let mut body = PalisadeBody::inner(StreamBody::new(futures_util::stream::iter(chunks)));
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "a"
        );
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "reset");
    }
}
