//! The response body of the HTTP cache: cached bytes, or the upstream body
//! streamed through.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// Body of responses from [`Cache`](crate::Cache): bytes from the cache
    /// or a buffered miss, or the upstream body streamed through untouched
    /// (bodies over the size limit, uncacheable responses).
    ///
    /// ```
    /// use http_body_util::{BodyExt, Empty};
    /// use palisade_cache::CacheBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let body: CacheBody<Empty<bytes::Bytes>> = CacheBody::full("hello");
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    /// # }
    /// ```
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes> },
        Inner { #[pin] body: B },
        Prefixed { prefix: Option<Bytes>, trailers: Option<HeaderMap>, body: Pin<Box<B>> },
        Failed { prefix: Option<Bytes>, error: Option<BoxError> },
    }
}

impl<B> CacheBody<B> {
    /// A body of bytes.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// The upstream body, untouched.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    pub(crate) fn prefixed(prefix: Bytes, trailers: Option<HeaderMap>, body: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Prefixed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                trailers,
                body,
            },
        }
    }

    pub(crate) fn failed(prefix: Bytes, error: BoxError) -> Self {
        Self {
            kind: Kind::Failed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                error: Some(error),
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Inner { body } => poll_inner(body, cx),
            KindProj::Prefixed {
                prefix,
                trailers,
                body,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                if let Some(t) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                poll_inner(body.as_mut(), cx)
            }
            KindProj::Failed { prefix, error } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Prefixed {
                prefix,
                trailers,
                body,
            } => prefix.is_none() && trailers.is_none() && body.is_end_stream(),
            Kind::Failed { prefix, error } => prefix.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Inner { body } => body.size_hint(),
            Kind::Prefixed { prefix, body, .. } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let inner = body.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(inner.lower().saturating_add(p));
                if let Some(u) = inner.upper() {
                    h.set_upper(u.saturating_add(p));
                }
                h
            }
            Kind::Failed { .. } => SizeHint::default(),
        }
    }
}

fn poll_inner<B>(
    body: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    match body.poll_frame(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
        Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(
            frame.map_data(|mut d| d.copy_to_bytes(d.remaining()))
        ))),
    }
}

impl<B> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Full { .. } => "Full",
            Kind::Inner { .. } => "Inner",
            Kind::Prefixed { .. } => "Prefixed",
            Kind::Failed { .. } => "Failed",
        };
        f.debug_tuple("CacheBody").field(&kind).finish()
    }
}

/// A body read up to a limit.
pub(crate) enum Collected<B> {
    /// The whole body.
    Complete(Bytes),
    /// Too large, or it had trailers: what was read, then the rest.
    Partial(CacheBody<B>),
}

/// Reads `body` to the end if it is at most `limit` bytes and has no
/// trailers; otherwise hands back a body that replays what was read and
/// streams the rest untouched.
pub(crate) async fn collect_limited<B>(body: B, limit: usize) -> Collected<B>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    if body.size_hint().lower() > limit as u64 {
        return Collected::Partial(CacheBody::inner(body));
    }
    let mut body = Box::pin(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut len = 0usize;
    let take = |first: &mut Option<Bytes>, rest: &mut Option<BytesMut>| -> Bytes {
        match rest.take() {
            Some(r) => r.freeze(),
            None => first.take().unwrap_or_default(),
        }
    };
    loop {
        match body.frame().await {
            None => return Collected::Complete(take(&mut first, &mut rest)),
            Some(Err(e)) => {
                return Collected::Partial(CacheBody::failed(
                    take(&mut first, &mut rest),
                    e.into(),
                ));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    let chunk = data.copy_to_bytes(data.remaining());
                    len += chunk.len();
                    match (&mut first, &mut rest) {
                        (None, None) => first = Some(chunk),
                        (Some(f), None) => {
                            let mut m = BytesMut::with_capacity(f.len() + chunk.len());
                            m.extend_from_slice(f);
                            m.extend_from_slice(&chunk);
                            first = None;
                            rest = Some(m);
                        }
                        (_, Some(m)) => m.extend_from_slice(&chunk),
                    }
                    if len > limit {
                        let prefix = take(&mut first, &mut rest);
                        return Collected::Partial(CacheBody::prefixed(prefix, None, body));
                    }
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    let prefix = take(&mut first, &mut rest);
                    return Collected::Partial(CacheBody::prefixed(prefix, trailers, body));
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn chunks(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn small_bodies_are_collected_large_ones_replayed() {
        match collect_limited(chunks(&["ab", "cd"]), 10).await {
            Collected::Complete(b) => assert_eq!(b, "abcd"),
            Collected::Partial(_) => panic!("should fit"),
        }
        match collect_limited(chunks(&["ab", "cd", "ef"]), 3).await {
            Collected::Complete(_) => panic!("too large"),
            Collected::Partial(b) => assert_eq!(b.collect().await.unwrap().to_bytes(), "abcdef"),
        }
        match collect_limited(Full::new(Bytes::from_static(b"0123456789")), 3).await {
            Collected::Complete(_) => panic!("too large"),
            Collected::Partial(b) => {
                assert_eq!(b.collect().await.unwrap().to_bytes(), "0123456789")
            }
        }
    }

    #[tokio::test]
    async fn errors_are_passed_on_after_the_prefix() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err(std::io::Error::other("reset")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Collected::Partial(mut b) = collect_limited(body, 100).await else {
            panic!("error must not be cached")
        };
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "a");
        assert_eq!(b.frame().await.unwrap().unwrap_err().to_string(), "reset");
    }
}
