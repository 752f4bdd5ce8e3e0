//! The response future both layers of this crate return: one boxed future
//! (each call reads or writes the store before and after the upstream).

use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// A boxed response future answering `Result<T, E>`: see
    /// [`ResponseFuture`](crate::ResponseFuture) and
    /// [`PacingResponseFuture`](crate::PacingResponseFuture).
    ///
    /// ```
    /// use palisade_llm::{BoxedResponse, PacingResponseFuture};
    /// type Body = http_body_util::Empty<bytes::Bytes>;
    /// type Answer = http::Response<palisade_core::PalisadeBody<Body>>;
    /// // The pacing layer's future is a boxed response future.
    /// let same: fn(PacingResponseFuture<Body, ()>) -> BoxedResponse<Answer, ()> = |f| f;
    /// # let _ = same;
    /// ```
    pub struct BoxedResponse<T, E> {
        #[pin]
        inner: Pin<Box<dyn Future<Output = Result<T, E>> + Send>>,
    }
}

impl<T, E> BoxedResponse<T, E> {
    pub(crate) fn new(f: impl Future<Output = Result<T, E>> + Send + 'static) -> Self {
        Self { inner: Box::pin(f) }
    }
}

impl<T, E> fmt::Debug for BoxedResponse<T, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T, E> Future for BoxedResponse<T, E> {
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
