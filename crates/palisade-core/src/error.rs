//! The error every layer's own error converts into.

use crate::{BoxError, GrpcCode, PalisadeBody};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use std::{borrow::Cow, fmt, time::Duration};

/// What went wrong, in the terms a client needs: it decides the HTTP status,
/// the gRPC code and whether a retry may help.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A rate limit refused the call (429, `RESOURCE_EXHAUSTED`).
    RateLimited,
    /// A circuit breaker is open (503, `UNAVAILABLE`).
    CircuitOpen,
    /// A deadline passed (504, `DEADLINE_EXCEEDED`).
    Timeout,
    /// A concurrency limit (bulkhead) is full (503, `UNAVAILABLE`).
    Overloaded,
    /// A dependency such as the store is unreachable (503, `UNAVAILABLE`).
    Unavailable,
    /// The request is malformed (400, `INVALID_ARGUMENT`).
    BadRequest,
    /// The body is larger than a layer may buffer (413, `RESOURCE_EXHAUSTED`).
    PayloadTooLarge,
    /// The body's media type cannot be handled (415, `INVALID_ARGUMENT`).
    UnsupportedMediaType,
    /// The upstream failed (502, `UNAVAILABLE`).
    Upstream,
    /// A bug or an unexpected state (500, `INTERNAL`).
    Internal,
    /// The client was too slow sending its request (408,
    /// `DEADLINE_EXCEEDED`).
    ClientTimeout,
}

impl ErrorKind {
    /// The HTTP status this kind answers with.
    pub const fn http_status(self) -> StatusCode {
        match self {
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::CircuitOpen | Self::Overloaded | Self::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Upstream => StatusCode::BAD_GATEWAY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ClientTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The gRPC code this kind answers with.
    pub const fn grpc_code(self) -> GrpcCode {
        match self {
            Self::RateLimited | Self::PayloadTooLarge => GrpcCode::ResourceExhausted,
            Self::CircuitOpen | Self::Overloaded | Self::Unavailable | Self::Upstream => {
                GrpcCode::Unavailable
            }
            Self::Timeout | Self::ClientTimeout => GrpcCode::DeadlineExceeded,
            Self::BadRequest | Self::UnsupportedMediaType => GrpcCode::InvalidArgument,
            Self::Internal => GrpcCode::Internal,
        }
    }

    /// Whether sending the same call again later may succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::CircuitOpen
                | Self::Timeout
                | Self::Overloaded
                | Self::Unavailable
                | Self::Upstream
        )
    }

    /// A short, stable, snake_case name (for logs, metric labels, problem types).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::CircuitOpen => "circuit_open",
            Self::Timeout => "timeout",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::BadRequest => "bad_request",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
            Self::ClientTimeout => "client_timeout",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error every palisade layer's error converts into.
///
/// It carries what a server needs to answer by itself: the HTTP status and
/// headers (`Retry-After` …), the gRPC code, and whether a retry may help.
/// The message is meant for clients: layers never put secrets or raw user
/// input in it; the cause, if any, stays in [`source`](std::error::Error::source).
///
/// # Example
///
/// ```
/// use palisade_core::{Error, ErrorKind, GrpcCode};
///
/// let err = Error::new(ErrorKind::CircuitOpen, "upstream circuit is open");
/// assert_eq!(err.http_status(), 503);
/// assert_eq!(err.grpc_code(), GrpcCode::Unavailable);
/// assert_eq!(err.to_string(), "upstream circuit is open");
/// ```
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
    headers: HeaderMap,
    problem_type: Option<&'static str>,
    source: Option<BoxError>,
}

impl Error {
    /// A new error of `kind` with a client-facing `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after: None,
            headers: HeaderMap::new(),
            problem_type: None,
            source: None,
        }
    }

    /// Tells the client when trying again may succeed (`Retry-After`).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Keeps the underlying cause (reachable through `source()`).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Adds a header to the rendered response (for gRPC, to its metadata).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the problem type URI of the `application/problem+json` body
    /// (RFC 9457); `about:blank` when unset.
    pub fn with_problem_type(mut self, problem_type: &'static str) -> Self {
        self.problem_type = Some(problem_type);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The client-facing message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status a server answers with.
    pub fn http_status(&self) -> StatusCode {
        self.kind.http_status()
    }

    /// The gRPC code a server answers with.
    pub fn grpc_code(&self) -> GrpcCode {
        self.kind.grpc_code()
    }

    /// Whether sending the same call again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// When trying again may succeed, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Extra headers the rendered response carries.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Renders this error as a response, so a server answers without any
    /// `HandleErrorLayer`.
    ///
    /// HTTP: the status, `Retry-After` (whole seconds, rounded up) and extra
    /// headers, with a small `application/problem+json` body. gRPC (`grpc`
    /// true; see [`is_grpc_request`]): a trailers-only answer, HTTP 200 with
    /// `grpc-status` and a percent-encoded `grpc-message`.
    ///
    /// The response carries the [`ErrorKind`] as an extension, so outer
    /// layers (metrics, a dead-letter queue) can tell a refusal by palisade
    /// from an upstream answer with the same status.
    pub fn into_http_response<B>(self, grpc: bool) -> Response<PalisadeBody<B>> {
        let mut headers = self.headers;
        if let Some(after) = self.retry_after {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(after)),
            );
        }
        let (status, body) = if grpc {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from(self.kind.grpc_code() as i32),
            );
            if let Ok(message) = HeaderValue::from_str(&percent_encode(&self.message)) {
                headers.insert(HeaderName::from_static("grpc-message"), message);
            }
            (StatusCode::OK, PalisadeBody::empty())
        } else {
            let status = self.kind.http_status();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            let body = problem_json(
                self.problem_type.unwrap_or("about:blank"),
                status,
                &self.message,
            );
            (status, PalisadeBody::full(body))
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response.extensions_mut().insert(self.kind);
        response
    }

    /// Renders the error as a JSON-RPC error reply to the call with id `id`
    /// (JSON text, as [`JsonRpcCall::id`](crate::jsonrpc::JsonRpcCall::id)
    /// gives it), so an MCP client sees the failure of its own call: code
    /// `-32000`, the message, and `data` with the HTTP status and the
    /// seconds to wait. `status` is the HTTP status of the answer: 200 for
    /// clients that only read the body, or the error's own status.
    /// `Retry-After` and the error's headers are set as for HTTP.
    ///
    /// ```
    /// use palisade_core::{Error, ErrorKind};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = Error::new(ErrorKind::CircuitOpen, "tool search is failing")
    ///     .with_retry_after(Duration::from_secs(30));
    /// let res = err.into_json_rpc_response::<http_body_util::Empty<bytes::Bytes>>("\"req-1\"", http::StatusCode::OK);
    /// assert_eq!(res.status(), 200);
    /// assert_eq!(res.headers()["retry-after"], "30");
    /// let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
    /// let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(reply["id"], "req-1");
    /// assert_eq!(reply["error"]["code"], -32000);
    /// assert_eq!(reply["error"]["data"]["status"], 503);
    /// # }
    /// ```
    pub fn into_json_rpc_response<B>(
        self,
        id: &str,
        status: StatusCode,
    ) -> Response<PalisadeBody<B>> {
        let mut headers = self.headers;
        let http_status = self.kind.http_status();
        let retry_after = self.retry_after.map(retry_after_secs);
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // The id came from a parsed request, so it is valid JSON; anything
        // else is answered with a null id, as JSON-RPC says.
        let id = if serde_json::from_str::<&serde_json::value::RawValue>(id).is_ok() {
            id
        } else {
            "null"
        };
        let mut out = String::with_capacity(128 + self.message.len());
        out.push_str("{\"jsonrpc\":\"2.0\",\"id\":");
        out.push_str(id);
        out.push_str(",\"error\":{\"code\":-32000,\"message\":");
        push_json_string(&mut out, &self.message);
        out.push_str(",\"data\":{\"status\":");
        out.push_str(http_status.as_str());
        if let Some(secs) = retry_after {
            out.push_str(",\"retryAfter\":");
            out.push_str(&secs.to_string());
        }
        out.push_str("}}}");
        let mut response = Response::new(PalisadeBody::full(out));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response.extensions_mut().insert(self.kind);
        response
    }
}

/// Whether a request speaks gRPC (`content-type: application/grpc…`), so a
/// layer answers with a gRPC status instead of an HTTP one.
///
/// ```
/// let req = http::Request::builder()
///     .header("content-type", "application/grpc+proto")
///     .body(())
///     .unwrap();
/// assert!(palisade_core::is_grpc_request(req.headers()));
/// ```
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn retry_after_secs(after: Duration) -> u64 {
    let secs = after.as_secs();
    if after.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

fn problem_json(problem_type: &str, status: StatusCode, detail: &str) -> Bytes {
    let mut out = String::with_capacity(96 + detail.len());
    out.push_str("{\"type\":");
    push_json_string(&mut out, problem_type);
    out.push_str(",\"title\":");
    push_json_string(&mut out, status.canonical_reason().unwrap_or("Error"));
    out.push_str(",\"status\":");
    out.push_str(status.as_str());
    out.push_str(",\"detail\":");
    push_json_string(&mut out, detail);
    out.push('}');
    Bytes::from(out)
}

fn push_json_string(out: &mut String, s: &str) {
    use fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Percent-encodes a gRPC message as the gRPC HTTP/2 protocol asks
/// (everything outside printable ASCII, and `%`).
fn percent_encode(message: &str) -> Cow<'_, str> {
    use fmt::Write;
    if message
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'%')
    {
        return Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len() + 8);
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(feature = "axum")]
impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        self.into_http_response::<axum::body::Body>(false)
            .map(axum::body::Body::new)
    }
}

#[cfg(feature = "tonic")]
impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let code = tonic::Code::from_i32(err.grpc_code() as i32);
        let mut status = tonic::Status::new(code, err.message.to_string());
        if let Some(Ok(value)) = err.retry_after.map(after_metadata) {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

#[cfg(feature = "tonic")]
fn after_metadata(
    after: Duration,
) -> Result<
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    tonic::metadata::errors::InvalidMetadataValue,
> {
    retry_after_secs(after).to_string().parse()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    #[tokio::test]
    async fn http_rendering_has_status_retry_after_and_problem_body() {
        let err = Error::new(ErrorKind::RateLimited, "slow \"down\"")
            .with_retry_after(Duration::from_millis(1500))
            .with_problem_type("https://iana.org/assignments/http-problem-types#quota-exceeded");
        let res = err.into_http_response::<Empty<Bytes>>(false);
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "2");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(
            res.extensions().get::<ErrorKind>(),
            Some(&ErrorKind::RateLimited)
        );
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 429);
        assert_eq!(json["detail"], "slow \"down\"");
        assert_eq!(json["title"], "Too Many Requests");
        assert_eq!(
            json["type"],
            "https://iana.org/assignments/http-problem-types#quota-exceeded"
        );
    }

    #[tokio::test]
    async fn grpc_rendering_is_trailers_only() {
        let err = Error::new(ErrorKind::Timeout, "deadline 100% gone é");
        let res = err.into_http_response::<Empty<Bytes>>(true);
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        assert_eq!(res.headers()["grpc-status"], "4");
        assert_eq!(res.headers()["grpc-message"], "deadline 100%25 gone %C3%A9");
        assert!(
            res.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty()
        );
    }

    #[test]
    fn every_kind_maps_consistently() {
        use ErrorKind::*;
        for kind in [
            RateLimited,
            CircuitOpen,
            Timeout,
            Overloaded,
            Unavailable,
            BadRequest,
            PayloadTooLarge,
            UnsupportedMediaType,
            Upstream,
            Internal,
            ClientTimeout,
        ] {
            let status = kind.http_status();
            // Client mistakes are never retryable; "come back later" answers are.
            if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                assert!(!kind.is_retryable(), "{kind}");
            }
            if matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                assert!(kind.is_retryable(), "{kind}");
            }
            assert_ne!(kind.grpc_code(), GrpcCode::Ok);
        }
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn source_is_kept_and_display_is_the_message() {
        use std::error::Error as _;
        let err = Error::new(ErrorKind::Unavailable, "store unavailable")
            .with_source(std::io::Error::other("connection refused"));
        assert_eq!(err.to_string(), "store unavailable");
        assert_eq!(err.source().unwrap().to_string(), "connection refused");
    }
}
