//! Is a call's outcome a success, a failure, or neither?
//!
//! One abstraction that the circuit breaker, retry and metrics all consume.
//! HTTP and gRPC classification is built on tower-http's classifiers
//! ([`tower_http::classify`]); generic services use [`ErrorsAsFailures`] or a
//! closure through [`classify_fn`].
//!
//! # Example
//!
//! ```
//! use palisade_core::classify::{Classify, Outcome, ServerErrorsAsFailures};
//!
//! let classifier = ServerErrorsAsFailures::default();
//! let ok = http::Response::builder().status(404).body(()).unwrap();
//! let bad = http::Response::builder().status(503).body(()).unwrap();
//! assert_eq!(classifier.classify(Ok::<_, &std::io::Error>(&ok)), Outcome::Success);
//! assert_eq!(classifier.classify(Ok::<_, &std::io::Error>(&bad)), Outcome::Failure);
//! ```

use crate::GrpcCode;
use crate::jsonrpc::{JsonRpcReply, ReplyScan};
use http::Response;
use std::fmt;
use tower_http::classify::{ClassifiedResponse, ClassifyResponse};

/// What a call's result means to a breaker, a retry policy or a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call worked.
    Success,
    /// The call failed in a way that says something about the callee's health.
    Failure,
    /// Neither: the call is not counted (e.g. a cancelled call).
    Ignored,
}

/// Decides the [`Outcome`] of a call from its result.
///
/// Implemented by the ready-made classifiers here and by closures wrapped in
/// [`classify_fn`].
pub trait Classify<Res, E>: Clone + Send + Sync + 'static {
    /// Classifies one result.
    fn classify(&self, result: Result<&Res, &E>) -> Outcome;

    /// When this response's outcome is known only at the end of its body —
    /// a gRPC response whose status comes in the trailers — how to judge it
    /// then; `None` (the default) when [`classify`](Self::classify) has
    /// judged it already.
    #[inline]
    fn at_end(&self, _res: &Res) -> Option<AtEnd> {
        None
    }
}

/// How a response is judged at the end of its body, from its trailers (see
/// [`Classify::at_end`]): the `grpc-status` there, against the codes that
/// count as failures. A gRPC body that ends without a status, or fails, is
/// a failure.
///
/// ```
/// use palisade_core::classify::{Classify, GrpcErrorsAsFailures, Outcome};
///
/// let streaming = http::Response::builder()
///     .header("content-type", "application/grpc")
///     .body(())
///     .unwrap();
/// let classifier = GrpcErrorsAsFailures::default();
/// let at_end = Classify::<_, ()>::at_end(&classifier, &streaming).unwrap();
/// let mut trailers = http::HeaderMap::new();
/// trailers.insert("grpc-status", "14".parse().unwrap()); // UNAVAILABLE
/// assert_eq!(at_end.classify(Some(&trailers)), Outcome::Failure);
/// trailers.insert("grpc-status", "0".parse().unwrap());
/// assert_eq!(at_end.classify(Some(&trailers)), Outcome::Success);
/// assert_eq!(at_end.classify(None), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtEnd {
    /// Bit `n` set: gRPC code `n` is a failure.
    grpc_failures: u32,
    /// A JSON-RPC reply is judged instead (see
    /// [`ServerErrorsAsFailures::json_rpc`]).
    json_rpc: Option<JsonRpcFailures>,
}

/// Which JSON-RPC replies in a successful HTTP response count as failures
/// (see [`ServerErrorsAsFailures::json_rpc`]): MCP tools answer their errors
/// inside a 200.
///
/// ```
/// use palisade_core::classify::JsonRpcFailures;
///
/// let strict = JsonRpcFailures::default();
/// assert!(strict.errors && strict.tool_errors);
/// let lenient = JsonRpcFailures { tool_errors: false, ..JsonRpcFailures::default() };
/// assert!(!lenient.tool_errors);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonRpcFailures {
    /// A JSON-RPC `error` object fails, unless its code blames the caller
    /// (see [`JsonRpcReply::is_caller_fault`]). Default: on.
    pub errors: bool,
    /// A tool result with `isError: true` fails. Default: on.
    pub tool_errors: bool,
    /// The largest JSON reply (or event) read for its verdict; a larger one
    /// is judged by its status alone. Default: 1 MiB.
    pub limit: usize,
}

impl Default for JsonRpcFailures {
    fn default() -> Self {
        Self {
            errors: true,
            tool_errors: true,
            limit: 1 << 20,
        }
    }
}

impl AtEnd {
    /// The scan that finds the JSON-RPC reply in a body with these
    /// headers, when this response is judged by its reply.
    #[must_use]
    pub fn reply_scan(self, headers: &http::HeaderMap) -> Option<ReplyScan> {
        self.json_rpc
            .and_then(|f| ReplyScan::for_response(headers, f.limit))
    }

    /// The outcome, given the JSON-RPC reply the body carried (`None`: none
    /// was found; the status, a success, stands).
    #[must_use]
    pub fn judge_reply(self, reply: Option<JsonRpcReply>) -> Outcome {
        let Some(f) = self.json_rpc else {
            return Outcome::Success;
        };
        match reply {
            Some(JsonRpcReply::ToolError) if f.tool_errors => Outcome::Failure,
            Some(r @ JsonRpcReply::Error { .. }) if f.errors && !r.is_caller_fault() => {
                Outcome::Failure
            }
            _ => Outcome::Success,
        }
    }

    /// The outcome, given the trailers (`None`: the body ended without).
    #[must_use]
    pub fn classify(self, trailers: Option<&http::HeaderMap>) -> Outcome {
        if self.json_rpc.is_some() {
            return Outcome::Success;
        }
        let code = trailers
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok());
        match code {
            Some(0) => Outcome::Success,
            Some(n) if n < 32 && self.grpc_failures & (1 << n) != 0 => Outcome::Failure,
            Some(_) => Outcome::Success,
            None => Outcome::Failure,
        }
    }
}

/// A gRPC response whose status is not in its head: it will be in the
/// trailers.
fn grpc_status_in_trailers<B>(res: &Response<B>) -> bool {
    res.status() == http::StatusCode::OK
        && !res.headers().contains_key("grpc-status")
        && res
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

/// Generic services: an `Err` is a failure, an `Ok` a success.
///
/// ```
/// use palisade_core::classify::{Classify, ErrorsAsFailures, Outcome};
///
/// let c = ErrorsAsFailures;
/// assert_eq!(c.classify(Ok::<&u8, &()>(&1)), Outcome::Success);
/// assert_eq!(c.classify(Err::<&u8, &()>(&())), Outcome::Failure);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAsFailures;

impl<Res, E> Classify<Res, E> for ErrorsAsFailures {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// HTTP (and gRPC over HTTP): errors and `5xx` fail, `4xx` do not; a
/// `grpc-status` in the headers that says the server is in trouble (see
/// [`GrpcErrorsAsFailures`]) fails too.
///
/// Built on tower-http's `ServerErrorsAsFailures` and `GrpcErrorsAsFailures`.
///
/// ```
/// use palisade_core::classify::{Classify, Outcome, ServerErrorsAsFailures};
///
/// let c = ServerErrorsAsFailures::default();
/// let grpc_unavailable = http::Response::builder()
///     .header("grpc-status", "14")
///     .body(())
///     .unwrap();
/// assert_eq!(c.classify(Ok::<_, &()>(&grpc_unavailable)), Outcome::Failure);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServerErrorsAsFailures {
    grpc: GrpcErrorsAsFailures,
    json_rpc: Option<JsonRpcFailures>,
}

impl ServerErrorsAsFailures {
    /// Also judges a successful JSON or server-sent-event response by the
    /// JSON-RPC reply in its body (MCP over streamable HTTP answers a failed
    /// tool with a 200): the body streams on untouched and the outcome is
    /// known when the reply has been read. An event stream is read only when
    /// the response carries the [`JsonRpcCall`](crate::jsonrpc::JsonRpcCall)
    /// it answers as an extension (a server's long-lived `GET` stream is not
    /// a call); a JSON body always.
    ///
    /// ```
    /// use palisade_core::classify::{Classify, JsonRpcFailures, Outcome, ServerErrorsAsFailures};
    /// use palisade_core::jsonrpc::JsonRpcReply;
    ///
    /// let c = ServerErrorsAsFailures::default().json_rpc(JsonRpcFailures::default());
    /// let res = http::Response::builder()
    ///     .header("content-type", "application/json")
    ///     .body(())
    ///     .unwrap();
    /// let at_end = Classify::<_, ()>::at_end(&c, &res).unwrap();
    /// assert_eq!(at_end.judge_reply(Some(JsonRpcReply::ToolError)), Outcome::Failure);
    /// assert_eq!(at_end.judge_reply(Some(JsonRpcReply::Error { code: -32602 })), Outcome::Success);
    /// assert_eq!(at_end.judge_reply(Some(JsonRpcReply::Result)), Outcome::Success);
    /// ```
    #[must_use]
    pub fn json_rpc(mut self, failures: JsonRpcFailures) -> Self {
        self.json_rpc = Some(failures);
        self
    }
}

impl<B, E> Classify<Response<B>, E> for ServerErrorsAsFailures {
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure,
            Ok(res) if res.status().is_server_error() => Outcome::Failure,
            Ok(res) if res.headers().contains_key("grpc-status") => {
                <GrpcErrorsAsFailures as Classify<Response<B>, E>>::classify(&self.grpc, Ok(res))
            }
            Ok(_) => Outcome::Success,
        }
    }

    #[inline]
    fn at_end(&self, res: &Response<B>) -> Option<AtEnd> {
        if let Some(f) = self.json_rpc
            && res.status().is_success()
        {
            use crate::body::media::MediaKind;
            let judged = match MediaKind::of(res.headers()) {
                MediaKind::Json => true,
                MediaKind::EventStream => res
                    .extensions()
                    .get::<crate::jsonrpc::JsonRpcCall>()
                    .is_some_and(|call| call.id().is_some()),
                _ => false,
            };
            if judged {
                return Some(AtEnd {
                    grpc_failures: 0,
                    json_rpc: Some(f),
                });
            }
        }
        <GrpcErrorsAsFailures as Classify<Response<B>, E>>::at_end(&self.grpc, res)
    }
}

/// gRPC: a `grpc-status` that says the server is in trouble fails
/// (`UNKNOWN`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL`,
/// `UNAVAILABLE`, `DATA_LOSS` by default); codes that blame the caller
/// (`INVALID_ARGUMENT`, `NOT_FOUND`, …) do not.
///
/// A status sent only in trailers is not known when the response head
/// arrives: [`Classify::at_end`] says how to judge it at the end of the
/// body (the circuit breaker does).
///
/// ```
/// use palisade_core::{GrpcCode, classify::{Classify, GrpcErrorsAsFailures, Outcome}};
///
/// let strict = GrpcErrorsAsFailures::default().with_failure(GrpcCode::NotFound);
/// let res = http::Response::builder().header("grpc-status", "5").body(()).unwrap();
/// assert_eq!(strict.classify(Ok::<_, &()>(&res)), Outcome::Failure);
/// ```
#[derive(Clone)]
pub struct GrpcErrorsAsFailures {
    inner: tower_http::classify::GrpcErrorsAsFailures,
    failures: Vec<GrpcCode>,
}

const SERVER_FAULT_CODES: [GrpcCode; 6] = [
    GrpcCode::Unknown,
    GrpcCode::DeadlineExceeded,
    GrpcCode::ResourceExhausted,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
];

const ALL_CODES: [GrpcCode; 16] = [
    GrpcCode::Cancelled,
    GrpcCode::Unknown,
    GrpcCode::InvalidArgument,
    GrpcCode::DeadlineExceeded,
    GrpcCode::NotFound,
    GrpcCode::AlreadyExists,
    GrpcCode::PermissionDenied,
    GrpcCode::ResourceExhausted,
    GrpcCode::FailedPrecondition,
    GrpcCode::Aborted,
    GrpcCode::OutOfRange,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
    GrpcCode::Unauthenticated,
];

impl GrpcErrorsAsFailures {
    /// Fails on the given codes only.
    pub fn failing_on(codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        let failures: Vec<GrpcCode> = codes.into_iter().collect();
        let inner = ALL_CODES
            .into_iter()
            .filter(|c| !failures.contains(c))
            .fold(
                tower_http::classify::GrpcErrorsAsFailures::new(),
                |c, code| c.with_success(code),
            );
        Self { inner, failures }
    }

    /// Also fails on `code`.
    pub fn with_failure(self, code: GrpcCode) -> Self {
        let mut failures = self.failures;
        if !failures.contains(&code) {
            failures.push(code);
        }
        Self::failing_on(failures)
    }

    /// No longer fails on `code`.
    pub fn with_success(self, code: GrpcCode) -> Self {
        Self::failing_on(self.failures.into_iter().filter(|c| *c != code))
    }
}

impl Default for GrpcErrorsAsFailures {
    fn default() -> Self {
        Self::failing_on(SERVER_FAULT_CODES)
    }
}

impl fmt::Debug for GrpcErrorsAsFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcErrorsAsFailures")
            .field("failures", &self.failures)
            .finish()
    }
}

impl<B, E> Classify<Response<B>, E> for GrpcErrorsAsFailures {
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure,
            Ok(res) => match self.inner.clone().classify_response(res) {
                ClassifiedResponse::Ready(Ok(())) | ClassifiedResponse::RequiresEos(_) => {
                    Outcome::Success
                }
                ClassifiedResponse::Ready(Err(_)) => Outcome::Failure,
            },
        }
    }

    #[inline]
    fn at_end(&self, res: &Response<B>) -> Option<AtEnd> {
        grpc_status_in_trailers(res).then(|| AtEnd {
            grpc_failures: self
                .failures
                .iter()
                .fold(0u32, |mask, code| mask | (1 << (*code as u32))),
            json_rpc: None,
        })
    }
}

/// Any tower-http [`ClassifyResponse`] (for instance
/// `StatusInRangeAsFailures`) used as a palisade classifier: its failure
/// class becomes [`Outcome::Failure`]; transport errors fail.
///
/// ```
/// use palisade_core::classify::{Classify, FromTowerHttp, Outcome};
/// use tower_http::classify::StatusInRangeAsFailures;
///
/// let c = FromTowerHttp(StatusInRangeAsFailures::new(400..=599));
/// let res = http::Response::builder().status(404).body(()).unwrap();
/// assert_eq!(c.classify(Ok::<_, &()>(&res)), Outcome::Failure);
/// ```
#[derive(Clone, Debug, Default)]
pub struct FromTowerHttp<C>(pub C);

impl<C, B, E> Classify<Response<B>, E> for FromTowerHttp<C>
where
    C: ClassifyResponse + Clone + Send + Sync + 'static,
{
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>) -> Outcome {
        match result {
            Err(_) => Outcome::Failure,
            Ok(res) => match self.0.clone().classify_response(res) {
                ClassifiedResponse::Ready(Ok(())) | ClassifiedResponse::RequiresEos(_) => {
                    Outcome::Success
                }
                ClassifiedResponse::Ready(Err(_)) => Outcome::Failure,
            },
        }
    }
}

/// A classifier from a closure (see [`classify_fn`]).
#[derive(Clone)]
pub struct ClassifyFn<F>(F);

/// Wraps a closure as a classifier: a user predicate, ignored outcomes, or a
/// mix with the ready-made classifiers.
///
/// ```
/// use palisade_core::classify::{Classify, Outcome, classify_fn};
///
/// // Timeouts are failures, "not found" is ignored, the rest succeeds.
/// let c = classify_fn(|r: Result<&u16, &&str>| match r {
///     Err(_) => Outcome::Failure,
///     Ok(404) => Outcome::Ignored,
///     Ok(_) => Outcome::Success,
/// });
/// assert_eq!(c.classify(Ok(&404)), Outcome::Ignored);
/// ```
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn(f)
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F>
where
    F: Fn(Result<&Res, &E>) -> Outcome + Clone + Send + Sync + 'static,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &E>) -> Outcome {
        (self.0)(result)
    }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClassifyFn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, grpc: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(status);
        if let Some(code) = grpc {
            b = b.header("grpc-status", code);
        }
        b.body(()).unwrap()
    }

    fn http(status: u16, grpc: Option<&str>) -> Outcome {
        ServerErrorsAsFailures::default().classify(Ok::<_, &()>(&res(status, grpc)))
    }

    #[test]
    fn http_status_classes() {
        assert_eq!(http(200, None), Outcome::Success);
        assert_eq!(http(301, None), Outcome::Success);
        for status in [400, 401, 404, 409, 422, 429] {
            assert_eq!(http(status, None), Outcome::Success, "{status}");
        }
        for status in [500, 502, 503, 504] {
            assert_eq!(http(status, None), Outcome::Failure, "{status}");
        }
        let c = ServerErrorsAsFailures::default();
        assert_eq!(
            <ServerErrorsAsFailures as Classify<Response<()>, _>>::classify(&c, Err(&"reset")),
            Outcome::Failure
        );
    }

    #[test]
    fn grpc_codes_split_into_server_faults_and_caller_faults() {
        for code in ["2", "4", "8", "13", "14", "15"] {
            assert_eq!(http(200, Some(code)), Outcome::Failure, "grpc {code}");
        }
        for code in [
            "0", "1", "3", "5", "6", "7", "9", "10", "11", "12", "16", "garbage",
        ] {
            assert_eq!(http(200, Some(code)), Outcome::Success, "grpc {code}");
        }
        let relaxed = GrpcErrorsAsFailures::default().with_success(GrpcCode::ResourceExhausted);
        assert_eq!(
            relaxed.classify(Ok::<_, &()>(&res(200, Some("8")))),
            Outcome::Success
        );
        assert_eq!(
            relaxed.classify(Ok::<_, &()>(&res(200, Some("14")))),
            Outcome::Failure
        );
    }

    #[test]
    fn trailers_only_status_is_not_known_at_the_head() {
        let c = GrpcErrorsAsFailures::default();
        assert_eq!(c.classify(Ok::<_, &()>(&res(200, None))), Outcome::Success);
    }
}
