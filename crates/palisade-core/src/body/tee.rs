//! A body forwarded as it arrives and copied on the side, up to a limit:
//! how a layer keeps a streamed response (to cache it, to read its usage)
//! without holding it back from the client.

use super::Collected;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// Forwards every frame of `body` at once and keeps a copy of the data
    /// up to `limit` bytes. When the body ends within the limit,
    /// `on_complete` gets the whole copy (and the trailers); past the limit,
    /// on an error or when the body is dropped early, the copy is dropped
    /// and `on_complete` is never called. The client's stream is never
    /// changed or delayed.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_core::body::tee::TeeBody;
    /// use std::sync::{Arc, Mutex};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let kept = Arc::new(Mutex::new(None));
    /// let k = kept.clone();
    /// let body = TeeBody::new(Full::new(Bytes::from_static(b"event")), 1024, move |c: palisade_core::body::Collected| {
    ///     *k.lock().unwrap() = Some(c.data);
    /// });
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "event");
    /// assert_eq!(kept.lock().unwrap().as_deref(), Some(&b"event"[..]));
    /// # }
    /// ```
    pub struct TeeBody<B, F> {
        #[pin]
        body: B,
        copy: Option<BytesMut>,
        trailers: Option<HeaderMap>,
        limit: usize,
        on_complete: Option<F>,
    }
}

impl<B, F> TeeBody<B, F> {
    /// Tees `body`, keeping at most `limit` bytes.
    pub fn new(body: B, limit: usize, on_complete: F) -> Self {
        Self {
            body,
            copy: Some(BytesMut::new()),
            trailers: None,
            limit,
            on_complete: Some(on_complete),
        }
    }
}

impl<B, F> fmt::Debug for TeeBody<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TeeBody")
            .field("kept", &self.copy.as_ref().map(BytesMut::len))
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<B, F> Body for TeeBody<B, F>
where
    B: Body<Data = Bytes>,
    F: FnOnce(Collected),
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(copy) = this.copy {
                        if copy.len() + data.len() > *this.limit {
                            // Over the limit: stop copying, keep streaming.
                            *this.copy = None;
                            *this.on_complete = None;
                        } else {
                            copy.extend_from_slice(data);
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    this.trailers
                        .get_or_insert_with(HeaderMap::new)
                        .extend(t.clone());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.copy = None;
                *this.on_complete = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let (Some(copy), Some(f)) = (this.copy.take(), this.on_complete.take()) {
                    f(Collected {
                        data: copy.freeze(),
                        trailers: this.trailers.take(),
                    });
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // The end must be polled so the copy is handed over.
        self.on_complete.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    fn body(parts: &[&'static str]) -> impl Body<Data = Bytes, Error = std::io::Error> {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn over_the_limit_the_stream_goes_on_and_nothing_is_kept() {
        for (limit, expect_kept) in [(6, true), (5, false)] {
            let kept = Arc::new(Mutex::new(Vec::new()));
            let k = kept.clone();
            let tee = TeeBody::new(body(&["abc", "def"]), limit, move |c: Collected| {
                k.lock().unwrap().push(c.data);
            });
            assert_eq!(tee.collect().await.unwrap().to_bytes(), "abcdef");
            assert_eq!(kept.lock().unwrap().len(), usize::from(expect_kept));
        }
    }

    #[tokio::test]
    async fn a_body_dropped_early_is_not_kept() {
        let kept = Arc::new(Mutex::new(0));
        let k = kept.clone();
        let mut tee = TeeBody::new(body(&["abc", "def"]), 100, move |_c: Collected| {
            *k.lock().unwrap() += 1;
        });
        let first = tee.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        drop(tee);
        assert_eq!(*kept.lock().unwrap(), 0);
    }
}
