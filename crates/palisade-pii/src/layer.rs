//! [`PiiMaskLayer`], [`PiiMask`] and their [`ResponseFuture`].

use crate::body::MaskingBody;
use crate::config::{Direction, Oversize, PiiConfig};
use crate::error::PiiError;
use crate::masker::{BuildError, MaskStats, PiiMasker};
use crate::metrics::PiiMetrics;
use crate::stream::StreamMasker;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body::Body;
use http_body_util::BodyExt;
use palisade_core::{BoxError, PalisadeBody};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower_layer::Layer;
use tower_service::Service;

#[derive(Clone)]
struct Shared {
    masker: PiiMasker,
    direction: Direction,
    limit: usize,
    oversize: Oversize,
    window: usize,
    metrics: Option<PiiMetrics>,
}

/// Masks PII in request and/or response bodies (see the [crate docs](crate)).
///
/// - JSON (`application/json`, `*+json`) is masked structurally; JSON that
///   does not parse, `text/*` and any other non-binary type are masked as
///   text; images, audio, video, fonts, `application/octet-stream`, PDF,
///   archives, protobuf and gRPC pass untouched. `text/event-stream` is
///   always masked as a stream. Content-Length is fixed up.
/// - A body over `max_body_bytes` is refused (413) or streamed, never passed
///   through unmasked. A compressed body (`Content-Encoding` other than
///   `identity`) is refused with 415: put compression outside this layer.
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
                direction: d.direction,
                limit: d.max_body_bytes,
                oversize: d.oversize,
                window: d.stream_window,
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
            .direction(config.direction)
            .max_body_bytes(config.max_body_bytes)
            .oversize(config.oversize)
            .stream_window(config.stream_window))
    }

    fn update(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
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
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Json,
    Text,
    EventStream,
    Binary,
}

fn classify(headers: &HeaderMap) -> Class {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        // Unknown: scan it, never leak.
        return Class::Text;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let (top, sub) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
    match top {
        "image" | "audio" | "video" | "font" => return Class::Binary,
        "text" if sub == "event-stream" => return Class::EventStream,
        _ => {}
    }
    if sub == "json" || sub.ends_with("+json") {
        return Class::Json;
    }
    let binary = matches!(
        sub,
        "octet-stream"
            | "pdf"
            | "zip"
            | "gzip"
            | "x-gzip"
            | "x-tar"
            | "zstd"
            | "wasm"
            | "protobuf"
            | "x-protobuf"
            | "vnd.google.protobuf"
            | "msgpack"
            | "x-msgpack"
            | "cbor"
    ) || sub.starts_with("grpc");
    if binary { Class::Binary } else { Class::Text }
}

fn encoded(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(header::CONTENT_ENCODING)?
        .to_str()
        .unwrap_or("?");
    let v = v.trim();
    (!v.is_empty() && !v.eq_ignore_ascii_case("identity")).then(|| v.to_owned())
}

/// Masks one message body according to its headers.
async fn process<B>(
    shared: &Shared,
    headers: &mut HeaderMap,
    body: B,
    direction: &'static str,
) -> Result<MaskingBody<B>, PiiError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let class = classify(headers);
    if class == Class::Binary {
        return Ok(MaskingBody::passthrough(body));
    }
    if let Some(enc) = encoded(headers) {
        return Err(PiiError::Encoded(enc));
    }
    let streamer = || StreamMasker::new(shared.masker.clone(), shared.window, shared.limit);
    if class == Class::EventStream {
        headers.remove(header::CONTENT_LENGTH);
        return Ok(MaskingBody::stream(
            Bytes::new(),
            Box::pin(body),
            streamer(),
        ));
    }
    let limit = shared.limit;
    let hint = body.size_hint().lower();
    let mut body = Box::pin(body);
    let mut buf = BytesMut::new();
    let mut trailers = None;
    let mut over = hint > limit as u64;
    while !over {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(PiiError::Body(e.into())),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    over = buf.len() > limit;
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            },
        }
    }
    if over {
        return match shared.oversize {
            Oversize::Refuse => Err(PiiError::too_large((buf.len() as u64).max(hint), limit)),
            Oversize::Stream => {
                headers.remove(header::CONTENT_LENGTH);
                tracing::debug!(
                    direction,
                    limit,
                    "pii: body over the limit, masking as a stream"
                );
                Ok(MaskingBody::stream(buf.freeze(), body, streamer()))
            }
        };
    }
    let mut stats = MaskStats::default();
    let masked: Option<Vec<u8>> = {
        let json = if class == Class::Json {
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
        None => buf.freeze(),
        Some(v) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(v.len()));
            headers.remove("content-md5");
            tracing::debug!(direction, masked = stats.total(), "pii: masked body");
            Bytes::from(v)
        }
    };
    if let Some(m) = &shared.metrics {
        m.record(direction, &stats);
    }
    Ok(MaskingBody::buffered(data, trailers))
}

fn refused<B>(
    shared: &Shared,
    e: PiiError,
    direction: &'static str,
    grpc: bool,
) -> Response<PalisadeBody<MaskingBody<B>>> {
    let reason = match &e {
        PiiError::TooLarge { .. } => "too_large",
        PiiError::Encoded(_) => "encoded",
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
) -> Response<PalisadeBody<MaskingBody<B>>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = res.into_parts();
    match process(shared, &mut parts.headers, body, "response").await {
        Ok(b) => Response::from_parts(parts, PalisadeBody::inner(b)),
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
        Boxed { fut: BoxFuture<Result<Response<PalisadeBody<MaskingBody<B>>>, E>> },
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
    type Output = Result<Response<PalisadeBody<MaskingBody<B>>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutProj::Direct { fut } => {
                let res = ready!(fut.poll(cx))?;
                Poll::Ready(Ok(
                    res.map(|b| PalisadeBody::inner(MaskingBody::passthrough(b)))
                ))
            }
            FutProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for PiiMask<S>
where
    S: Service<Request<MaskingBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<PalisadeBody<MaskingBody<ResB>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = self.shared.clone();
        let grpc = palisade_core::is_grpc_request(req.headers());
        let mask_req = shared.direction.requests() && classify(req.headers()) != Class::Binary;
        let mask_res = shared.direction.responses();
        if !mask_req {
            let (parts, body) = req.into_parts();
            let fut = self
                .inner
                .call(Request::from_parts(parts, MaskingBody::passthrough(body)));
            if !mask_res {
                return ResponseFuture {
                    kind: FutKind::Direct { fut },
                };
            }
            return ResponseFuture {
                kind: FutKind::Boxed {
                    fut: Box::pin(async move {
                        let res = fut.await?;
                        Ok(mask_response(&shared, res, grpc).await)
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
                    let body = match process(&shared, &mut parts.headers, body, "request").await {
                        Ok(b) => b,
                        Err(e) => return Ok(refused(&shared, e, "request", grpc)),
                    };
                    let res = inner.call(Request::from_parts(parts, body)).await?;
                    if mask_res {
                        Ok(mask_response(&shared, res, grpc).await)
                    } else {
                        Ok(res.map(|b| PalisadeBody::inner(MaskingBody::passthrough(b))))
                    }
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(ct: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        m
    }

    #[test]
    fn classes() {
        assert_eq!(classify(&h("application/json; charset=utf-8")), Class::Json);
        assert_eq!(classify(&h("application/problem+json")), Class::Json);
        assert_eq!(classify(&h("text/plain")), Class::Text);
        assert_eq!(classify(&h("text/event-stream")), Class::EventStream);
        assert_eq!(classify(&h("application/xml")), Class::Text);
        assert_eq!(classify(&h("image/png")), Class::Binary);
        assert_eq!(classify(&h("application/grpc+proto")), Class::Binary);
        assert_eq!(classify(&h("application/octet-stream")), Class::Binary);
        assert_eq!(classify(&HeaderMap::new()), Class::Text);
    }
}
