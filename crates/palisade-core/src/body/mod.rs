//! The body pipeline every layer uses.
//!
//! - [`PalisadeBody`]: the one body type a layer returns when it answers by
//!   itself or rewrites a body, so short-circuit answers and rewritten bodies
//!   stack cleanly.
//! - [`collect`]: the one bounded reader (a clear error over the limit, the
//!   bytes read so far handed back).
//! - [`media`]: what a body is (JSON, server-sent events, NDJSON, text,
//!   binary) from its headers.
//! - [`framing`]: splits a stream into the units it is made of (SSE events,
//!   lines) so a layer can inspect each and forward it at once.
//! - [`codec`]: `Content-Encoding` (gzip, deflate, br, zstd): decoded once,
//!   bounded, and re-encoded for a client that accepts it.
//! - [`idle`]: a stream that stops sending is cut after an idle limit.
//! - [`tee`]: a stream forwarded as it arrives and copied on the side up to
//!   a limit (a cache stores a streamed response this way).

pub mod codec;
pub mod collect;
pub mod framing;
pub mod idle;
pub mod media;
pub mod sent;
pub mod tee;

pub use collect::{Collected, collect_bounded};

use crate::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use pin_project_lite::pin_project;
use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

pin_project! {
    /// The body every palisade layer hands on: the inner service's body
    /// streamed untouched, bytes the layer produced (a 429 / 503 answer, a
    /// cache hit, a masked or shaped body), a body the layer read part of
    /// and now resumes, or a re-framed stream (masked event by event).
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
    /// let resumed = PalisadeBody::resumed("up", Full::new(Bytes::from_static(b"stream")));
    /// assert_eq!(resumed.collect().await.unwrap().to_bytes(), "upstream");
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
        // Trailers boxed: rare, and a `HeaderMap` would make every body
        // (and every response moved through the layers) larger.
        Full { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
        Resumed {
            prefix: Option<Bytes>,
            body: Option<Pin<Box<B>>>,
            trailers: Option<Box<HeaderMap>>,
            error: Option<BoxError>,
        },
        Stream { body: UnsyncBoxBody<Bytes, BoxError> },
        Watched {
            #[pin] body: B,
            on_end: Option<OnEnd>,
            scan: Option<Box<crate::jsonrpc::ReplyScan>>,
        },
    }
}

/// How a watched body ended (see [`PalisadeBody::watched`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyEnd<'a> {
    /// With these trailers.
    Trailers(&'a HeaderMap),
    /// Without trailers.
    Finished,
    /// With an error.
    Failed,
    /// A body watched for its JSON-RPC reply (see
    /// [`PalisadeBody::watched_for_reply`]): the reply, as soon as it was
    /// read (`None`: the body ended without one, or it was too large).
    Replied(Option<crate::jsonrpc::JsonRpcReply>),
}

/// Called once when a watched body ends.
pub type OnEnd = Box<dyn FnOnce(BodyEnd<'_>) + Send>;

impl<B> PalisadeBody<B> {
    /// Streams the inner service's body untouched.
    pub fn inner(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A body of bytes the layer produced.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self::full_with_trailers(data, None)
    }

    /// Bytes the layer produced, then the original trailers (if any).
    pub fn full_with_trailers(data: impl Into<Bytes>, trailers: Option<HeaderMap>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
                trailers: trailers.map(Box::new),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// `prefix` (bytes already read from `body`), then the rest of `body`.
    pub fn resumed(prefix: impl Into<Bytes>, body: B) -> Self {
        Self::resumed_pinned(prefix, Box::pin(body))
    }

    /// [`PalisadeBody::resumed`] for a body already pinned by the reader.
    pub fn resumed_pinned(prefix: impl Into<Bytes>, body: Pin<Box<B>>) -> Self {
        let prefix: Bytes = prefix.into();
        Self {
            kind: Kind::Resumed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body: Some(body),
                trailers: None,
                error: None,
            },
        }
    }

    /// `prefix` (bytes already read), then the error the body failed with,
    /// so the failure reaches the client instead of a truncated success.
    pub fn failed(prefix: impl Into<Bytes>, error: BoxError) -> Self {
        let prefix: Bytes = prefix.into();
        Self {
            kind: Kind::Resumed {
                prefix: (!prefix.is_empty()).then_some(prefix),
                body: None,
                trailers: None,
                error: Some(error),
            },
        }
    }

    /// A re-framed stream: a body a layer builds on top of the inner one
    /// (for example masked event by event).
    pub fn stream<T>(body: T) -> Self
    where
        T: Body<Data = Bytes> + Send + 'static,
        T::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Stream {
                body: UnsyncBoxBody::new(body.map_err(Into::into)),
            },
        }
    }

    /// The inner body, untouched, with `on_end` called once when it ends
    /// (its trailers, its end, or its error) — how a layer judges a call
    /// whose outcome comes at the end of its body, such as a gRPC status in
    /// the trailers. A body dropped before its end never calls it.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_core::body::{BodyEnd, PalisadeBody};
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let ended = Arc::new(AtomicBool::new(false));
    /// let e = ended.clone();
    /// let body = PalisadeBody::watched(
    ///     Full::new(Bytes::from_static(b"x")),
    ///     Box::new(move |end| e.store(matches!(end, BodyEnd::Finished), Ordering::SeqCst)),
    /// );
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "x");
    /// assert!(ended.load(Ordering::SeqCst));
    /// # }
    /// ```
    pub fn watched(body: B, on_end: OnEnd) -> Self {
        Self {
            kind: Kind::Watched {
                body,
                on_end: Some(on_end),
                scan: None,
            },
        }
    }

    /// The inner body, untouched and unheld, read by `scan` as it streams:
    /// `on_end` gets [`BodyEnd::Replied`] as soon as the JSON-RPC reply is
    /// known (an MCP server's event stream may go on after it), or at the
    /// end; [`BodyEnd::Failed`] if the body fails first.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use palisade_core::body::{BodyEnd, PalisadeBody};
    /// use palisade_core::jsonrpc::{JsonRpcReply, ReplyScan};
    /// use std::sync::{Arc, Mutex};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let seen = Arc::new(Mutex::new(None));
    /// let s = seen.clone();
    /// let reply = r#"{"jsonrpc":"2.0","id":1,"result":{"isError":true}}"#;
    /// let body = PalisadeBody::watched_for_reply(
    ///     Full::new(Bytes::from_static(reply.as_bytes())),
    ///     ReplyScan::json(1 << 20),
    ///     Box::new(move |end| {
    ///         if let BodyEnd::Replied(r) = end {
    ///             *s.lock().unwrap() = r;
    ///         }
    ///     }),
    /// );
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), reply);
    /// assert_eq!(*seen.lock().unwrap(), Some(JsonRpcReply::ToolError));
    /// # }
    /// ```
    pub fn watched_for_reply(body: B, scan: crate::jsonrpc::ReplyScan, on_end: OnEnd) -> Self {
        Self {
            kind: Kind::Watched {
                body,
                on_end: Some(on_end),
                scan: Some(Box::new(scan)),
            },
        }
    }

    /// The inner body, when this body streams one untouched.
    pub fn into_inner(self) -> Option<B> {
        match self.kind {
            Kind::Inner { body } => Some(body),
            _ => None,
        }
    }
}

impl<B> From<Collected> for PalisadeBody<B> {
    fn from(c: Collected) -> Self {
        Self::full_with_trailers(c.data, c.trailers)
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
            KindProj::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            KindProj::Resumed {
                prefix,
                body,
                trailers,
                error,
            } => {
                if let Some(p) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                if let Some(b) = body {
                    match b.as_mut().poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(frame)) => {
                            return Poll::Ready(Some(frame.map_err(Into::into)));
                        }
                        Poll::Ready(None) => *body = None,
                    }
                }
                if let Some(t) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(*t))));
                }
                Poll::Ready(error.take().map(Err))
            }
            KindProj::Stream { body } => Pin::new(body).poll_frame(cx),
            KindProj::Watched { body, on_end, scan } => {
                let polled = body.poll_frame(cx);
                if let Poll::Ready(ready) = &polled
                    && let Some(f) = on_end.take()
                {
                    match ready {
                        Some(Ok(frame)) => match (frame.trailers_ref(), scan.as_deref_mut()) {
                            (Some(t), None) => f(BodyEnd::Trailers(t)),
                            (Some(_), Some(_)) => {
                                f(BodyEnd::Replied(scan.take().and_then(|s| s.finish())));
                            }
                            (None, Some(s)) => match frame.data_ref().and_then(|d| s.push(d)) {
                                Some(reply) => {
                                    *scan = None;
                                    f(BodyEnd::Replied(Some(reply)));
                                }
                                None => *on_end = Some(f),
                            },
                            // Not the end yet.
                            (None, None) => *on_end = Some(f),
                        },
                        Some(Err(_)) => f(BodyEnd::Failed),
                        None => match scan.take() {
                            Some(s) => f(BodyEnd::Replied(s.finish())),
                            None => f(BodyEnd::Finished),
                        },
                    }
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Resumed {
                prefix,
                body,
                trailers,
                error,
            } => {
                prefix.is_none()
                    && body.as_ref().is_none_or(|b| b.is_end_stream())
                    && trailers.is_none()
                    && error.is_none()
            }
            Kind::Stream { body } => body.is_end_stream(),
            // The end must be polled so it is seen.
            Kind::Watched { body, on_end, .. } => on_end.is_none() && body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Resumed {
                prefix,
                body,
                error,
                ..
            } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                match body {
                    Some(b) => {
                        let inner = b.size_hint();
                        let mut h = SizeHint::new();
                        h.set_lower(inner.lower().saturating_add(p));
                        if let Some(u) = inner.upper() {
                            h.set_upper(u.saturating_add(p));
                        }
                        h
                    }
                    None if error.is_some() => SizeHint::default(),
                    None => SizeHint::with_exact(p),
                }
            }
            Kind::Stream { body } => body.size_hint(),
            Kind::Watched { body, .. } => body.size_hint(),
        }
    }
}

impl<B> fmt::Debug for PalisadeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { .. } => f.write_str("PalisadeBody::Inner"),
            Kind::Full { data, .. } => f
                .debug_struct("PalisadeBody::Full")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Resumed { prefix, .. } => f
                .debug_struct("PalisadeBody::Resumed")
                .field("prefix", &prefix.as_ref().map_or(0, Bytes::len))
                .finish(),
            Kind::Stream { .. } => f.write_str("PalisadeBody::Stream"),
            Kind::Watched { .. } => f.write_str("PalisadeBody::Watched"),
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
