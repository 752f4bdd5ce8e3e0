//! The one bounded reader: reads a body up to a limit, and hands back what
//! it read (and the rest, still streaming) when the body is larger or fails.

use crate::BoxError;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::Body;
use http_body_util::BodyExt;
use std::{fmt, pin::Pin};

/// A whole body: its bytes and its trailers.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Collected {
    /// Every data frame, concatenated.
    pub data: Bytes,
    /// The trailers, if the body had any.
    pub trailers: Option<HeaderMap>,
}

/// What [`read_bounded`] found.
pub enum Read<B> {
    /// The whole body, within the limit.
    Complete(Collected),
    /// Over the limit: the bytes read so far (more than `limit` of them, or
    /// none when the body's size hint was already over), and the rest of the
    /// body, still streaming.
    Over {
        /// Bytes read before the limit was passed.
        prefix: Bytes,
        /// The rest of the body.
        rest: Pin<Box<B>>,
    },
    /// The body failed after `prefix`.
    Failed {
        /// Bytes read before the failure.
        prefix: Bytes,
        /// The body's error.
        error: BoxError,
    },
}

impl<B> fmt::Debug for Read<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Read::Complete(c) => f.debug_tuple("Complete").field(&c.data.len()).finish(),
            Read::Over { prefix, .. } => f.debug_tuple("Over").field(&prefix.len()).finish(),
            Read::Failed { prefix, error } => f
                .debug_struct("Failed")
                .field("prefix", &prefix.len())
                .field("error", error)
                .finish(),
        }
    }
}

/// Why [`collect_bounded`] gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectError {
    /// The body is larger than the limit.
    #[error("body of more than {limit} bytes is over the limit")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body failed while being read.
    #[error("body failed while being read")]
    Body(#[source] BoxError),
}

/// Reads `body` to its end if it holds at most `limit` bytes.
///
/// A body whose size hint is already over the limit is not read at all. A
/// single-frame body is returned without a copy.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade_core::body::collect::{Read, read_bounded};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let Read::Complete(c) = read_bounded(Full::new(Bytes::from_static(b"small")), 10).await else {
///     panic!("fits");
/// };
/// assert_eq!(c.data, "small");
/// let Read::Over { prefix, .. } = read_bounded(Full::new(Bytes::from_static(b"too large")), 3).await
/// else {
///     panic!("over");
/// };
/// assert!(prefix.is_empty()); // known from the size hint: nothing read
/// # }
/// ```
pub async fn read_bounded<B>(body: B, limit: usize) -> Read<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = Box::pin(body);
    if body.size_hint().lower() > limit as u64 {
        return Read::Over {
            prefix: Bytes::new(),
            rest: body,
        };
    }
    let mut acc = Accumulator::default();
    let mut trailers: Option<HeaderMap> = None;
    loop {
        match body.frame().await {
            None => {
                return Read::Complete(Collected {
                    data: acc.take(),
                    trailers,
                });
            }
            Some(Err(e)) => {
                return Read::Failed {
                    prefix: acc.take(),
                    error: e.into(),
                };
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    acc.push(data);
                    if acc.len > limit {
                        return Read::Over {
                            prefix: acc.take(),
                            rest: body,
                        };
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers.get_or_insert_with(HeaderMap::new).extend(t);
                    }
                }
            },
        }
    }
}

/// Reads a whole body of at most `limit` bytes, or says why not.
///
/// # Errors
/// [`CollectError::TooLarge`] over the limit, [`CollectError::Body`] when
/// the body fails.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade_core::body::{collect::CollectError, collect_bounded};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let c = collect_bounded(Full::new(Bytes::from_static(b"{}")), 1024).await.unwrap();
/// assert_eq!(c.data, "{}");
/// let err = collect_bounded(Full::new(Bytes::from_static(b"0123456789")), 4).await.unwrap_err();
/// assert!(matches!(err, CollectError::TooLarge { limit: 4 }));
/// # }
/// ```
pub async fn collect_bounded<B>(body: B, limit: usize) -> Result<Collected, CollectError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match read_bounded(body, limit).await {
        Read::Complete(c) => Ok(c),
        Read::Over { .. } => Err(CollectError::TooLarge { limit }),
        Read::Failed { error, .. } => Err(CollectError::Body(error)),
    }
}

/// Chunks joined without a copy while there is only one.
#[derive(Default)]
struct Accumulator {
    first: Option<Bytes>,
    rest: Option<BytesMut>,
    len: usize,
}

impl Accumulator {
    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        match (&mut self.first, &mut self.rest) {
            (None, None) => self.first = Some(chunk),
            (Some(f), None) => {
                let mut m = BytesMut::with_capacity((f.len() + chunk.len()) * 2);
                m.extend_from_slice(f);
                m.extend_from_slice(&chunk);
                self.first = None;
                self.rest = Some(m);
            }
            (_, Some(m)) => m.extend_from_slice(&chunk),
        }
    }

    fn take(&mut self) -> Bytes {
        match self.rest.take() {
            Some(r) => r.freeze(),
            None => self.first.take().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Frame;
    use http_body_util::StreamBody;

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
    >;

    fn chunks(parts: &[&'static str]) -> Chunks {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn small_bodies_are_whole_large_ones_resume() {
        let Read::Complete(c) = read_bounded(chunks(&["ab", "cd"]), 4).await else {
            panic!("fits exactly");
        };
        assert_eq!(c.data, "abcd");
        let Read::Over { prefix, rest } = read_bounded(chunks(&["ab", "cd", "ef"]), 3).await else {
            panic!("over");
        };
        assert_eq!(prefix, "abcd");
        let tail = rest.collect().await.unwrap().to_bytes();
        assert_eq!(tail, "ef");
    }

    #[tokio::test]
    async fn failures_keep_what_was_read() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Err(std::io::Error::other("reset")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let Read::Failed { prefix, error } = read_bounded(body, 100).await else {
            panic!("failed");
        };
        assert_eq!(prefix, "a");
        assert_eq!(error.to_string(), "reset");
    }

    #[tokio::test]
    async fn trailers_are_kept() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(t)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let c = collect_bounded(body, 10).await.unwrap();
        assert_eq!(c.data, "x");
        assert_eq!(c.trailers.unwrap()["grpc-status"], "0");
    }
}
