//! [`PiiMaskLayer`], [`PiiMask`] and their [`ResponseFuture`].

use crate::body::{MaskStream, Mode, Source};
use crate::config::{Direction, Oversize, PiiConfig};
use crate::error::PiiError;
use crate::fieldstream::FieldRedactor;
use crate::masker::{BuildError, MaskStats, PiiMasker};
use crate::metrics::PiiMetrics;
use crate::stream::StreamMasker;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body::Body;
use http_body_util::BodyExt;
use palisade_core::body::codec::{Accepted, Coding, DecodedBody, StreamEncoder, content_coding};
use palisade_core::body::collect::{Collected, Read, read_bounded};
use palisade_core::body::framing::{Framing, Splitter};
use palisade_core::body::media::{MediaKind, content_length};
use palisade_core::{BoxError, PalisadeBody};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tower_layer::Layer;
use tower_service::Service;

#[derive(Clone)]
struct Shared {
    masker: PiiMasker,
    /// `false`: bodies pass untouched.
    enabled: bool,
    direction: Direction,
    limit: usize,
    oversize: Oversize,
    window: usize,
    idle_flush: Duration,
    max_event: usize,
    reencode: bool,
    metrics: Option<PiiMetrics>,
}

/// Masks PII in request and/or response bodies (see the [crate docs](crate)).
///
/// - JSON (`application/json`, `*+json`) is masked structurally; JSON that
///   does not parse, `text/*` and any other non-binary type are masked as
///   text; images, audio, video, fonts, `application/octet-stream`, PDF,
///   archives, protobuf and gRPC pass untouched, frame for frame.
///   Content-Length is fixed up.
/// - Streams stay streams. Server-sent events are masked event by event and
///   each is sent as soon as it is complete (a `data:` line holding JSON is
///   masked structurally); NDJSON line by line; other text without a
///   `Content-Length` as a text stream with an overlap window that is
///   flushed when the upstream pauses (`stream_idle_flush`).
/// - A body over `max_body_bytes` is refused (413) or streamed, never passed
///   through unmasked.
/// - A compressed body (`gzip`, `deflate`, `br`, `zstd`) is decoded once,
///   bounded, masked, and answered in the same coding when the client
///   accepts it (`reencode`), identity otherwise, with `Vary:
///   Accept-Encoding`. A body that does not decode is refused (502 for a
///   response), never passed on; any other coding is refused (415 / 502).
/// - A refused request never reaches the inner service; a refused response is
///   replaced by the error answer. gRPC requests get a gRPC status.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::{BodyExt, Full};
/// use palisade_pii::PiiMaskLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(PiiMaskLayer::default())
///     .service_fn(|_req: Request<_>| async {
///         let body = r#"{"email":"user@example.com","password":"hunter2"}"#;
///         Ok::<_, std::convert::Infallible>(
///             Response::builder()
///                 .header("content-type", "application/json")
///                 .body(Full::new(Bytes::from(body)))
///                 .unwrap(),
///         )
///     });
/// let req = Request::new(Full::new(Bytes::new()));
/// let res = svc.oneshot(req).await.unwrap();
/// let body = res.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, r#"{"email":"us***@example.com","password":"***REDACTED***"}"#);
/// # }
/// ```
#[derive(Clone)]
pub struct PiiMaskLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for PiiMaskLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiiMaskLayer")
            .field("masker", &self.shared.masker)
            .field("direction", &self.shared.direction)
            .field("max_body_bytes", &self.shared.limit)
            .field("oversize", &self.shared.oversize)
            .finish_non_exhaustive()
    }
}

impl Default for PiiMaskLayer {
    fn default() -> Self {
        Self::new(PiiMasker::new())
    }
}

impl PiiMaskLayer {
    /// A layer with this masker and the default settings (responses, 1 MiB,
    /// refuse over the limit).
    #[must_use]
    pub fn new(masker: PiiMasker) -> Self {
        let d = PiiConfig::default();
        Self {
            shared: Arc::new(Shared {
                masker,
                enabled: d.enabled,
                direction: d.direction,
                limit: d.max_body_bytes,
                oversize: d.oversize,
                window: d.stream_window,
                idle_flush: d.stream_idle_flush,
                max_event: d.max_event_bytes,
                reencode: d.reencode,
                metrics: None,
            }),
        }
    }

    /// A layer from a configuration.
    ///
    /// # Errors
    /// When the masking configuration does not build (see
    /// [`PiiMaskerBuilder::build`](crate::PiiMaskerBuilder::build)).
    pub fn from_config(config: &PiiConfig) -> Result<Self, BuildError> {
        let masker = PiiMasker::from_config(&config.masking)?;
        Ok(Self::new(masker)
            .enabled(config.enabled)
            .direction(config.direction)
            .max_body_bytes(config.max_body_bytes)
            .oversize(config.oversize)
            .stream_window(config.stream_window)
            .stream_idle_flush(config.stream_idle_flush)
            .max_event_bytes(config.max_event_bytes)
            .reencode(config.reencode))
    }

    fn update(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// `false` turns masking off: bodies pass untouched (default `true`).
    ///
    /// ```
    /// use palisade_pii::PiiMaskLayer;
    ///
    /// let off = PiiMaskLayer::default().enabled(false);
    /// # let _ = off;
    /// ```
    #[must_use]
    pub fn enabled(self, enabled: bool) -> Self {
        self.update(|s| s.enabled = enabled)
    }

    /// Which bodies are masked.
    #[must_use]
    pub fn direction(self, direction: Direction) -> Self {
        self.update(|s| s.direction = direction)
    }

    /// The buffering limit.
    #[must_use]
    pub fn max_body_bytes(self, limit: usize) -> Self {
        self.update(|s| s.limit = limit)
    }

    /// What happens over the limit.
    #[must_use]
    pub fn oversize(self, oversize: Oversize) -> Self {
        self.update(|s| s.oversize = oversize)
    }

    /// Overlap between chunks when streaming.
    #[must_use]
    pub fn stream_window(self, window: usize) -> Self {
        self.update(|s| s.window = window)
    }

    /// How long a text stream may pause before what is held is masked and
    /// sent (zero: never).
    #[must_use]
    pub fn stream_idle_flush(self, gap: Duration) -> Self {
        self.update(|s| s.idle_flush = gap)
    }

    /// The largest SSE event or NDJSON line held to be masked whole.
    #[must_use]
    pub fn max_event_bytes(self, max: usize) -> Self {
        self.update(|s| s.max_event = max)
    }

    /// Whether a decoded body is answered in its coding when the client
    /// accepts it (otherwise identity).
    #[must_use]
    pub fn reencode(self, reencode: bool) -> Self {
        self.update(|s| s.reencode = reencode)
    }

    /// Counts into these metrics.
    #[must_use]
    pub fn metrics(self, metrics: PiiMetrics) -> Self {
        self.update(|s| s.metrics = Some(metrics))
    }

    /// The masker.
    #[must_use]
    pub fn masker(&self) -> &PiiMasker {
        &self.shared.masker
    }
}

impl<S> Layer<S> for PiiMaskLayer {
    type Service = PiiMask<S>;

    fn layer(&self, inner: S) -> PiiMask<S> {
        PiiMask {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`PiiMaskLayer`]. See the [layer docs](PiiMaskLayer).
///
/// ```
/// use palisade_pii::{PiiMask, PiiMaskLayer};
/// use tower::Layer;
/// let svc: PiiMask<()> = PiiMaskLayer::default().layer(());
/// assert!(svc.get_ref() == &());
/// ```
#[derive(Clone)]
pub struct PiiMask<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for PiiMask<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiiMask")
            .field("inner", &self.inner)
            .field("direction", &self.shared.direction)
            .finish_non_exhaustive()
    }
}

impl<S> PiiMask<S> {
    palisade_core::inner_accessors!(inner: S);
}

/// What the answer to a message is encoded in.
#[derive(Debug, Clone, Copy)]
struct Encoding {
    /// The body's coding, if any.
    coding: Option<Coding>,
    /// Re-encode the answer in it.
    reencode: bool,
}

/// Masks one message body according to its headers. `accepted`: the codings
/// the client accepts, for a response (`None` for a request, whose body is
/// sent on as identity).
async fn process<B>(
    shared: &Shared,
    headers: &mut HeaderMap,
    body: B,
    direction: &'static str,
    accepted: Option<Accepted>,
) -> Result<PalisadeBody<B>, PiiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let kind = MediaKind::of(headers);
    if kind == MediaKind::Binary {
        return Ok(PalisadeBody::inner(body));
    }
    let coding = content_coding(headers).map_err(|e| PiiError::Encoded(e.0))?;
    let Some(coding) = coding else {
        return mask_identity(shared, headers, body, kind, direction).await;
    };
    // Decoded once; answered in the same coding if the client takes it.
    let reencode = shared.reencode && accepted.is_some_and(|a| a.contains(coding));
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove("content-md5");
    if accepted.is_some() {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if reencode {
        headers.insert(header::CONTENT_ENCODING, coding.header_value());
    }
    let encoding = Encoding {
        coding: Some(coding),
        reencode,
    };
    if kind.is_framed_stream() {
        let source: Source = Box::pin(DecodedBody::new(body, coding, None).map_err(BoxError::from));
        return Ok(stream(shared, source, kind, false, encoding, direction));
    }
    // Decoded size is unknown: read it with the bound, so a bomb stops at
    // the limit.
    let limit = shared.limit as u64;
    let decoded = DecodedBody::new(body, coding, Some(limit));
    match read_bounded(decoded, shared.limit).await {
        Read::Complete(c) => {
            let (data, trailers) = mask_whole(shared, kind, c, direction);
            let data = match encoding.reencode {
                true => palisade_core::body::codec::encode_all(&data, coding)
                    .map_err(|e| PiiError::Body(e.into()))?,
                false => data,
            };
            if !reencode {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
            }
            Ok(PalisadeBody::full_with_trailers(data, trailers))
        }
        Read::Failed { error, .. } => Err(decode_failure(error, shared.limit)),
        Read::Over { prefix, rest } => match shared.oversize {
            Oversize::Refuse => Err(PiiError::too_large(prefix.len() as u64, shared.limit)),
            Oversize::Stream => {
                let source: Source = Box::pin(PalisadeBody::resumed_pinned(prefix, rest));
                Ok(stream(
                    shared,
                    source,
                    MediaKind::Text,
                    kind == MediaKind::Json,
                    encoding,
                    direction,
                ))
            }
        },
    }
}

/// A decoding failure: over the limit (413) or a body that does not decode.
fn decode_failure(error: BoxError, limit: usize) -> PiiError {
    match error.downcast::<palisade_core::body::codec::DecodeError>() {
        Ok(e) => match *e {
            palisade_core::body::codec::DecodeError::TooLarge { limit: l, .. } => {
                PiiError::too_large(l + 1, limit)
            }
            palisade_core::body::codec::DecodeError::Body(inner) => PiiError::Body(inner),
            other => PiiError::Undecodable(Box::new(other)),
        },
        Err(other) => PiiError::Body(other),
    }
}

/// An identity body: streamed when it is a stream, read whole otherwise.
async fn mask_identity<B>(
    shared: &Shared,
    headers: &mut HeaderMap,
    body: B,
    kind: MediaKind,
    direction: &'static str,
) -> Result<PalisadeBody<B>, PiiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let identity = Encoding {
        coding: None,
        reencode: false,
    };
    let declared = content_length(headers);
    // A stream: SSE, NDJSON, or text of unknown length (chunked), which may
    // trickle. Masked as it flows.
    let text_stream = matches!(kind, MediaKind::Text | MediaKind::Unknown)
        && declared.is_none()
        && !body.is_end_stream()
        && body.size_hint().exact().is_none();
    if kind.is_framed_stream() || text_stream {
        headers.remove(header::CONTENT_LENGTH);
        let source: Source = Box::pin(body.map_err(Into::into));
        return Ok(stream(shared, source, kind, false, identity, direction));
    }
    match read_bounded(body, shared.limit).await {
        Read::Complete(c) => {
            let (data, trailers) = mask_whole(shared, kind, c, direction);
            if declared.is_some() || headers.contains_key(header::CONTENT_LENGTH) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.len()));
            }
            Ok(PalisadeBody::full_with_trailers(data, trailers))
        }
        Read::Failed { error, .. } => Err(PiiError::Body(error)),
        Read::Over { prefix, rest } => match shared.oversize {
            Oversize::Refuse => Err(PiiError::too_large(
                (prefix.len() as u64).max(declared.unwrap_or(0)),
                shared.limit,
            )),
            Oversize::Stream => {
                headers.remove(header::CONTENT_LENGTH);
                tracing::debug!(
                    direction,
                    limit = shared.limit,
                    "pii: body over the limit, masking as a stream"
                );
                let source: Source = Box::pin(PalisadeBody::resumed_pinned(prefix, rest));
                Ok(stream(
                    shared,
                    source,
                    MediaKind::Text,
                    kind == MediaKind::Json,
                    identity,
                    direction,
                ))
            }
        },
    }
}

/// Masks a whole body: structurally when it is JSON, as text otherwise.
fn mask_whole(
    shared: &Shared,
    kind: MediaKind,
    c: Collected,
    direction: &'static str,
) -> (Bytes, Option<HeaderMap>) {
    let buf = c.data;
    let mut stats = MaskStats::default();
    let masked: Option<Vec<u8>> = {
        let json = if kind == MediaKind::Json {
            shared.masker.mask_json_bytes(&buf, &mut stats).ok()
        } else {
            None
        };
        let cow = match json {
            Some(c) => c,
            None => shared.masker.mask_bytes_counted(&buf, &mut stats),
        };
        match cow {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(v) => Some(v),
        }
    };
    let data = match masked {
        None => buf,
        Some(v) => {
            tracing::debug!(direction, masked = stats.total(), "pii: masked body");
            Bytes::from(v)
        }
    };
    if let Some(m) = &shared.metrics {
        m.record(direction, &stats);
    }
    (data, c.trailers)
}

/// A body masked as it streams.
fn stream<B>(
    shared: &Shared,
    source: Source,
    kind: MediaKind,
    json: bool,
    encoding: Encoding,
    direction: &'static str,
) -> PalisadeBody<B> {
    let mode = match kind {
        MediaKind::EventStream => Mode::Units {
            splitter: Splitter::new(Framing::Events),
            max_unit: shared.max_event,
            oversize: false,
        },
        MediaKind::NdJson => Mode::Units {
            splitter: Splitter::new(Framing::Lines),
            max_unit: shared.max_event,
            oversize: false,
        },
        _ => Mode::Text {
            idle: shared.idle_flush,
        },
    };
    let text = StreamMasker::new(shared.masker.clone(), shared.window, shared.limit);
    // JSON streamed because it is too large to parse whole, and the units
    // of SSE / NDJSON too large to hold: field names are honoured as the
    // stream passes.
    let fields = (json || matches!(kind, MediaKind::EventStream | MediaKind::NdJson))
        .then(|| FieldRedactor::new(shared.masker.clone()));
    let encoder = encoding
        .coding
        .filter(|_| encoding.reencode)
        .map(StreamEncoder::new);
    PalisadeBody::stream(MaskStream::new(
        source,
        mode,
        shared.masker.clone(),
        text,
        fields,
        encoder,
        shared.metrics.clone().map(|m| (m, direction)),
    ))
}

fn refused<B>(
    shared: &Shared,
    e: PiiError,
    direction: &'static str,
    grpc: bool,
) -> Response<PalisadeBody<B>> {
    let reason = match &e {
        PiiError::TooLarge { .. } => "too_large",
        PiiError::Encoded(_) => "encoded",
        PiiError::Undecodable(_) => "undecodable",
        PiiError::Body(_) | PiiError::UpstreamBody(_) => "body_error",
    };
    tracing::warn!(direction, reason, error = %e, "pii: body refused");
    if let Some(m) = &shared.metrics {
        m.refused.with_label_values(&[direction, reason]).inc();
    }
    palisade_core::Error::from(e).into_http_response(grpc)
}

async fn mask_response<B>(
    shared: &Shared,
    res: Response<B>,
    grpc: bool,
    accepted: Accepted,
) -> Response<PalisadeBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = res.into_parts();
    match process(shared, &mut parts.headers, body, "response", Some(accepted)).await {
        Ok(b) => Response::from_parts(parts, b),
        // A coding that cannot be decoded is the upstream's fault too: 502.
        Err(PiiError::Encoded(coding)) => refused(
            shared,
            PiiError::Undecodable(format!("unsupported content-encoding `{coding}`").into()),
            "response",
            grpc,
        ),
        // A response body that breaks off is the upstream's fault: 502.
        Err(PiiError::Body(e)) => refused(shared, PiiError::UpstreamBody(e), "response", grpc),
        Err(e) => refused(shared, e, "response", grpc),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future for [`PiiMask`].
    ///
    /// When a body has to be read before answering (masking needs the whole
    /// body) the work runs in one boxed future; a call that masks nothing is
    /// polled directly.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: FutKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutProj]
    enum FutKind<F, B, E> {
        Direct { #[pin] fut: F },
        Boxed { fut: BoxFuture<Result<Response<PalisadeBody<B>>, E>> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<PalisadeBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutProj::Direct { fut } => {
                let res = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(res.map(PalisadeBody::inner)))
            }
            FutProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for PiiMask<S>
where
    S: Service<Request<PalisadeBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<PalisadeBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = self.shared.clone();
        let grpc = palisade_core::is_grpc_request(req.headers());
        // A request without a body (a GET, mostly) has nothing to mask.
        let mask_req = shared.enabled
            && shared.direction.requests()
            && !req.body().is_end_stream()
            && MediaKind::of(req.headers()) != MediaKind::Binary;
        let mask_res = shared.enabled && shared.direction.responses();
        let accepted = if mask_res {
            Accepted::from_headers(req.headers())
        } else {
            Accepted::default()
        };
        if !mask_req {
            let (parts, body) = req.into_parts();
            let fut = self
                .inner
                .call(Request::from_parts(parts, PalisadeBody::inner(body)));
            if !mask_res {
                return ResponseFuture {
                    kind: FutKind::Direct { fut },
                };
            }
            return ResponseFuture {
                kind: FutKind::Boxed {
                    fut: Box::pin(async move {
                        let res = fut.await?;
                        Ok(mask_response(&shared, res, grpc, accepted).await)
                    }),
                },
            };
        }
        // The ready service goes into the future; a fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            kind: FutKind::Boxed {
                fut: Box::pin(async move {
                    let (mut parts, body) = req.into_parts();
                    let body =
                        match process(&shared, &mut parts.headers, body, "request", None).await {
                            Ok(b) => b,
                            // A body that does not decode is the client's fault.
                            Err(PiiError::Undecodable(e)) => {
                                return Ok(refused(&shared, PiiError::Body(e), "request", grpc));
                            }
                            Err(e) => return Ok(refused(&shared, e, "request", grpc)),
                        };
                    let res = inner.call(Request::from_parts(parts, body)).await?;
                    if mask_res {
                        Ok(mask_response(&shared, res, grpc, accepted).await)
                    } else {
                        Ok(res.map(PalisadeBody::inner))
                    }
                }),
            },
        }
    }
}
