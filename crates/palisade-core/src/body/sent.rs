//! Whether a request's body has been read to its end, known to every layer
//! of that request.
//!
//! A response time limit that runs while the client is still sending its
//! body measures the client, not the upstream: an upstream that answers
//! once it has the whole request (an echo, an upload) cannot answer a body
//! that trickles in. Counted as the upstream's failure, a few slow clients
//! would open the circuit for everyone. [`track`] wraps a request's body
//! and puts a [`RequestSent`] in its extensions; the timeout then starts its
//! clock when the body has ended (as Envoy's route timeout does), and a
//! breaker does not count a call given up on before its request was even
//! sent.
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//! use palisade_core::body::sent::{RequestSent, track};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let req = track(http::Request::new(Full::new(Bytes::from("hello"))));
//! let sent = req.extensions().get::<RequestSent>().unwrap().clone();
//! assert!(!sent.is_sent());
//! let body = req.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(body, "hello");
//! assert!(sent.is_sent());
//! sent.wait().await; // ready at once now
//! # }
//! ```

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

#[derive(Debug, Default)]
struct State {
    sent: AtomicBool,
    waker: AtomicWaker,
}

/// A request extension: whether the request's body has ended (see the
/// [module docs](self)). Cloned, it shares the same state.
///
/// ```
/// use palisade_core::body::sent::RequestSent;
///
/// let sent = RequestSent::default();
/// assert!(!sent.is_sent());
/// ```
#[derive(Clone, Debug, Default)]
pub struct RequestSent(Arc<State>);

impl RequestSent {
    /// The body has been read to its end.
    #[inline]
    pub fn is_sent(&self) -> bool {
        self.0.sent.load(Ordering::Acquire)
    }

    /// Ready once the body has ended. One task at a time waits (the
    /// layer that keeps the time limit).
    pub fn poll_sent(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_sent() {
            return Poll::Ready(());
        }
        self.0.waker.register(cx.waker());
        if self.is_sent() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Waits until the body has ended.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| self.poll_sent(cx))
    }

    fn mark(&self) {
        if !self.0.sent.swap(true, Ordering::AcqRel) {
            self.0.waker.wake();
        }
    }
}

/// Wraps `req`'s body so that its end is known, and puts the
/// [`RequestSent`] in its extensions. A body already at its end (a `GET`)
/// counts as sent at once.
///
/// ```
/// use palisade_core::body::sent::{RequestSent, track};
///
/// let req = track(http::Request::new(http_body_util::Empty::<bytes::Bytes>::new()));
/// assert!(req.extensions().get::<RequestSent>().unwrap().is_sent());
/// ```
pub fn track<B: Body>(req: Request<B>) -> Request<SentBody<B>> {
    let sent = RequestSent::default();
    let (mut parts, body) = req.into_parts();
    if body.is_end_stream() {
        sent.mark();
    }
    parts.extensions.insert(sent.clone());
    Request::from_parts(parts, SentBody { body, sent })
}

pin_project! {
    /// A request body that marks its [`RequestSent`] when it ends (see
    /// [`track`]).
    #[derive(Debug)]
    pub struct SentBody<B> {
        #[pin]
        body: B,
        sent: RequestSent,
    }
}

impl<B> Body for SentBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            // An error ends the body too: nothing more is coming.
            None | Some(Err(_)) => this.sent.mark(),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn a_streamed_body_is_sent_once_it_ends_and_the_waiter_wakes() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let req = track(Request::new(body));
        let sent = req.extensions().get::<RequestSent>().unwrap().clone();
        let waiter = tokio::spawn({
            let sent = sent.clone();
            async move { sent.wait().await }
        });
        let reader = tokio::spawn(async move { req.into_body().collect().await.is_ok() });
        tx.send(Ok(Frame::data(Bytes::from("a")))).await.unwrap();
        assert!(!sent.is_sent());
        drop(tx);
        assert!(reader.await.unwrap());
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter woke")
            .unwrap();
        assert!(sent.is_sent());
    }
}
