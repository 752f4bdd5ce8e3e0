//! What a failed call's error says about the call, read from its types.
//!
//! One walk of the error's source chain, by type — [`crate::Error`],
//! [`std::io::Error`] kinds, `hyper::Error`, hyper-util's client error,
//! tokio's `Elapsed` — never by message text. Retry uses it to know whether
//! a request may be sent again; breakers and metrics to name the failure.
//!
//! # Example
//!
//! ```
//! use palisade_core::error_class::{ErrorClass, classify_error};
//!
//! let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
//! assert_eq!(classify_error(&refused), ErrorClass::Connect);
//! let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
//! assert_eq!(classify_error(&reset), ErrorClass::Transport);
//! ```

use crate::{Error, ErrorKind};
use std::{error::Error as StdError, io, time::Duration};

/// What kind of failure an error is (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The request never left: the connection was refused or could not be
    /// made, the name did not resolve, or the client gave up before writing
    /// the request. Sending it again is safe for every method.
    Connect,
    /// The call timed out; the request may have reached the upstream.
    Timeout,
    /// The connection failed after the request may have been sent (reset,
    /// closed before the response, a protocol error).
    Transport,
    /// A palisade layer's own [`Error`] (a refusal, an open circuit …),
    /// which says itself whether another attempt may help and when.
    Palisade {
        /// Whether another attempt may help ([`Error::is_retryable`]).
        retryable: bool,
        /// Whether it is a timeout.
        timeout: bool,
        /// When to try again, if the layer said.
        retry_after: Option<Duration>,
    },
}

/// Classifies `err` by walking its source chain (see the [module
/// docs](self)): the first decisive error wins; a chain with nothing
/// decisive is [`ErrorClass::Transport`], or [`ErrorClass::Timeout`] when a
/// timeout was seen on the way.
///
/// ```
/// use palisade_core::error_class::{ErrorClass, classify_error};
/// use palisade_core::{Error, ErrorKind};
/// use std::time::Duration;
///
/// let open = Error::new(ErrorKind::CircuitOpen, "open").with_retry_after(Duration::from_secs(3));
/// assert_eq!(
///     classify_error(&open),
///     ErrorClass::Palisade { retryable: true, timeout: false, retry_after: Some(Duration::from_secs(3)) }
/// );
/// let timed_out = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
/// assert_eq!(classify_error(&timed_out), ErrorClass::Timeout);
/// ```
pub fn classify_error(err: &(dyn StdError + 'static)) -> ErrorClass {
    let mut class = ErrorClass::Transport;
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(p) = e.downcast_ref::<Error>() {
            return ErrorClass::Palisade {
                retryable: p.is_retryable(),
                timeout: p.kind() == ErrorKind::Timeout,
                retry_after: p.retry_after(),
            };
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::NotFound => return ErrorClass::Connect,
                io::ErrorKind::TimedOut => class = ErrorClass::Timeout,
                _ => {}
            }
            // An io::Error's `source()` skips the error it wraps.
            if let Some(inner) = io.get_ref() {
                cur = Some(inner);
                continue;
            }
        }
        #[cfg(feature = "hyper")]
        {
            if let Some(h) = e.downcast_ref::<hyper::Error>() {
                if h.is_canceled() {
                    // hyper gave up on the request before writing it.
                    return ErrorClass::Connect;
                }
                if h.is_timeout() {
                    class = ErrorClass::Timeout;
                }
            }
            if let Some(c) = e.downcast_ref::<hyper_util::client::legacy::Error>()
                && c.is_connect()
            {
                return ErrorClass::Connect;
            }
        }
        if e.is::<tokio::time::error::Elapsed>() {
            class = ErrorClass::Timeout;
        }
        cur = e.source();
    }
    class
}

/// The gRPC status code in `headers` (a trailers-only response's head, or
/// the trailers), if there is a readable one.
///
/// ```
/// let mut h = http::HeaderMap::new();
/// assert_eq!(palisade_core::error_class::grpc_status(&h), None);
/// h.insert("grpc-status", " 14".parse().unwrap());
/// assert_eq!(palisade_core::error_class::grpc_status(&h), Some(14));
/// ```
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(Box<dyn StdError + Send + Sync>);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn the_chain_is_walked_by_type() {
        let deep = Wrapper(Box::new(io::Error::other(io::Error::from(
            io::ErrorKind::ConnectionRefused,
        ))));
        assert_eq!(classify_error(&deep), ErrorClass::Connect);
        // A message that reads like a connect error is not one.
        let liar = io::Error::other("tcp connect error: but not really");
        assert_eq!(classify_error(&liar), ErrorClass::Transport);
        let not_retryable = Error::new(ErrorKind::BadRequest, "no");
        assert!(matches!(
            classify_error(&Wrapper(Box::new(not_retryable))),
            ErrorClass::Palisade {
                retryable: false,
                ..
            }
        ));
    }

    #[cfg(feature = "hyper")]
    #[tokio::test]
    async fn a_refused_hyper_util_connection_is_a_connect_error() {
        use hyper_util::{client::legacy::Client, rt::TokioExecutor};
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let err = client
            .get(format!("http://127.0.0.1:{port}/").parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(classify_error(&err), ErrorClass::Connect);
    }
}
