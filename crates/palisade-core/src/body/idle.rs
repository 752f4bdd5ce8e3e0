//! A stream that stops sending is cut after an idle limit, so a client is
//! never left waiting on an upstream that hangs mid-body. A flowing stream,
//! however long, is never cut.

use crate::BoxError;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};

/// A body that sent nothing for longer than its idle limit.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("stream idle for more than {0:?}: cut")]
pub struct IdleTimeout(pub Duration);

pin_project! {
    /// Fails with [`IdleTimeout`] when `body` yields no frame for `idle`;
    /// the timer restarts at every frame.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, StreamBody};
    /// use palisade_core::body::idle::IdleTimeoutBody;
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // A stream that never sends anything.
    /// let silent = StreamBody::new(futures_util::stream::pending::<
    ///     Result<http_body::Frame<Bytes>, std::io::Error>,
    /// >());
    /// let body = IdleTimeoutBody::new(silent, Duration::from_secs(60));
    /// let err = body.collect().await.unwrap_err();
    /// assert!(err.to_string().contains("idle"));
    /// # }
    /// ```
    pub struct IdleTimeoutBody<B> {
        #[pin]
        body: B,
        #[pin]
        timer: Sleep,
        idle: Duration,
        done: bool,
    }
}

/// Far enough that it never fires (a year).
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);

impl<B> IdleTimeoutBody<B> {
    /// Cuts `body` after `idle` without a frame; a zero `idle` never cuts.
    pub fn new(body: B, idle: Duration) -> Self {
        Self {
            body,
            timer: tokio::time::sleep(if idle.is_zero() { NEVER } else { idle }),
            idle,
            done: false,
        }
    }
}

impl<B> fmt::Debug for IdleTimeoutBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeoutBody")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl<B> Body for IdleTimeoutBody<B>
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
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.body.poll_frame(cx) {
            Poll::Ready(Some(frame)) => {
                if !this.idle.is_zero() {
                    let idle = *this.idle;
                    this.timer.as_mut().reset(Instant::now() + idle);
                }
                Poll::Ready(Some(frame.map_err(Into::into)))
            }
            Poll::Ready(None) => {
                *this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending if this.idle.is_zero() => Poll::Pending,
            Poll::Pending => match this.timer.poll(cx) {
                Poll::Ready(()) => {
                    *this.done = true;
                    Poll::Ready(Some(Err(IdleTimeout(*this.idle).into())))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    #[tokio::test(start_paused = true)]
    async fn a_flowing_stream_is_never_cut_an_idle_one_is() {
        let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut body = std::pin::pin!(IdleTimeoutBody::new(
            StreamBody::new(stream),
            Duration::from_secs(60)
        ));
        // Ten minutes of frames 50 s apart: never idle for 60 s.
        for i in 0..12 {
            tokio::time::advance(Duration::from_secs(50)).await;
            tx.send(Ok(Frame::data(Bytes::from(format!("{i}")))))
                .await
                .unwrap();
            let f = body.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), format!("{i}"));
        }
        // Then silence: cut after 60 s.
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<IdleTimeout>());
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        assert!(body.frame().await.is_none());
        drop(tx);
    }
}
