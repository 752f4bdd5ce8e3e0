//! [`ShapeResponse`] and its [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use palisade_core::{BoxError, PalisadeBody};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::layer::{Inner, Outcome, RuleSet, ShapeResponseLayer};
use crate::selector::{FieldSelector, SelectorError};
use crate::shaper::{ShapeError, ShapeStats};

/// `x-tokens-original`: estimated tokens of the upstream body.
pub const X_TOKENS_ORIGINAL: HeaderName = HeaderName::from_static("x-tokens-original");
/// `x-tokens-shaped`: estimated tokens of the shaped body.
pub const X_TOKENS_SHAPED: HeaderName = HeaderName::from_static("x-tokens-shaped");
/// `x-tokens-saved`: the difference.
pub const X_TOKENS_SAVED: HeaderName = HeaderName::from_static("x-tokens-saved");
/// `x-tokens-saved-percent`: the difference as a percentage, one decimal.
pub const X_TOKENS_SAVED_PERCENT: HeaderName = HeaderName::from_static("x-tokens-saved-percent");

/// The response type of [`ShapeResponse`].
pub type ShapedResponse<B> = Response<PalisadeBody<B>>;

/// Middleware shaping JSON responses; see [`ShapeResponseLayer`].
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade_shape::{ShapeResponse, ShapeResponseLayer, ShapeRules};
///
/// let layer = ShapeResponseLayer::new(ShapeRules::new()).unwrap();
/// let svc = ShapeResponse::new(
///     tower::service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
///     }),
///     layer,
/// );
/// let _inner = svc.get_ref();
/// ```
#[derive(Debug, Clone)]
pub struct ShapeResponse<S> {
    inner: S,
    layer: ShapeResponseLayer,
}

impl<S> ShapeResponse<S> {
    /// Wraps `inner` with the shaping of `layer`.
    pub fn new(inner: S, layer: ShapeResponseLayer) -> Self {
        Self { inner, layer }
    }

    palisade_core::inner_accessors!(inner: S);
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ShapeResponse<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    type Response = ShapedResponse<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let inner = &self.layer.inner;
        let route = inner.route_index(req.method(), req.uri().path());
        let rules = inner.rule_set(route);
        if !rules.enabled {
            inner.count(Outcome::Disabled);
            return ResponseFuture::calling(self.inner.call(req), Plan::Disabled);
        }
        let fields = match selector(inner, req.uri()) {
            Ok(fields) => fields,
            Err(err) => {
                inner.count(Outcome::BadSelector);
                tracing::debug!(error = %err, "rejecting a malformed field selector");
                let grpc = palisade_core::is_grpc_request(req.headers());
                let response =
                    palisade_core::Error::from(ShapeError::Selector(err)).into_http_response(grpc);
                return ResponseFuture {
                    state: State::Rejected {
                        response: Some(response),
                    },
                };
            }
        };
        let plan = Plan::Shape(Box::new(ShapePlan {
            inner: inner.clone(),
            route,
            fields,
            head: req.method() == Method::HEAD,
        }));
        ResponseFuture::calling(self.inner.call(req), plan)
    }
}

/// Reads the per-request selection from the query, if any.
fn selector(inner: &Inner, uri: &Uri) -> Result<Option<FieldSelector>, SelectorError> {
    let (Some(param), Some(query)) = (inner.query_param.as_deref(), uri.query()) else {
        return Ok(None);
    };
    // Cheap pre-check; a percent-encoded name needs the full parse.
    if !query.contains(param) && !query.contains('%') {
        return Ok(None);
    }
    let mut joined: Option<String> = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == param {
            match &mut joined {
                None => joined = Some(value.into_owned()),
                Some(all) => {
                    all.push(',');
                    all.push_str(&value);
                }
            }
        }
    }
    joined
        .map(|s| FieldSelector::parse_with_limits(&s, &inner.limits))
        .transpose()
}

impl From<ShapeError> for palisade_core::Error {
    fn from(err: ShapeError) -> Self {
        use palisade_core::ErrorKind;
        let kind = match &err {
            ShapeError::Selector(_) => ErrorKind::BadRequest,
            ShapeError::InvalidJson(_) => ErrorKind::Upstream,
            _ => ErrorKind::Internal,
        };
        let message = match &err {
            // The selector came from the client: tell it what is wrong and where.
            ShapeError::Selector(e) => e.to_string(),
            ShapeError::InvalidJson(_) => "the upstream answered with invalid JSON".to_owned(),
            _ => "response shaping is misconfigured".to_owned(),
        };
        palisade_core::Error::new(kind, message).with_source(err)
    }
}

/// What the future does once the inner service answers.
#[derive(Debug)]
enum Plan {
    Disabled,
    Shape(Box<ShapePlan>),
}

#[derive(Debug)]
struct ShapePlan {
    inner: Arc<Inner>,
    route: Option<usize>,
    fields: Option<FieldSelector>,
    head: bool,
}

impl ShapePlan {
    fn rules(&self) -> &RuleSet {
        self.inner.rule_set(self.route)
    }
}

pin_project! {
    /// Response future of [`ShapeResponse`].
    pub struct ResponseFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Rejected { response: Option<ShapedResponse<B>> },
        Calling { #[pin] future: F, plan: Option<Plan> },
        Collecting {
            parts: Option<http::response::Parts>,
            body: Option<Pin<Box<B>>>,
            chunks: Vec<Bytes>,
            len: usize,
            trailers: Option<HeaderMap>,
            plan: Option<Box<ShapePlan>>,
        },
        Done,
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn calling(future: F, plan: Plan) -> Self {
        Self {
            state: State::Calling {
                future,
                plan: Some(plan),
            },
        }
    }
}

const POLLED_AFTER_DONE: &str = "ResponseFuture polled after completion";

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<ShapedResponse<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Rejected { response } => {
                    let response = response.take().expect(POLLED_AFTER_DONE);
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Calling { future, plan } => {
                    let response = ready!(future.poll(cx))?;
                    let plan = plan.take().expect(POLLED_AFTER_DONE);
                    match begin(response, plan) {
                        Begin::Done(response) => {
                            state.set(State::Done);
                            return Poll::Ready(Ok(response));
                        }
                        Begin::Collect(parts, body, plan) => state.set(State::Collecting {
                            parts: Some(parts),
                            body: Some(Box::pin(body)),
                            chunks: Vec::new(),
                            len: 0,
                            trailers: None,
                            plan: Some(plan),
                        }),
                    }
                }
                StateProj::Collecting {
                    parts,
                    body,
                    chunks,
                    len,
                    trailers,
                    plan,
                } => {
                    let Some(stream) = body.as_mut() else {
                        panic!("{POLLED_AFTER_DONE}");
                    };
                    let max = plan.as_ref().map_or(0, |p| p.inner.max_body);
                    let frame = ready!(stream.as_mut().poll_frame(cx));
                    let (parts, plan) = match frame {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                *len += data.len();
                                chunks.push(data);
                                if *len <= max {
                                    continue;
                                }
                                let (parts, plan) = (parts.take(), plan.take());
                                let (parts, plan) = parts.zip(plan).expect(POLLED_AFTER_DONE);
                                plan.inner.count(Outcome::TooLarge);
                                tracing::debug!(max, "JSON body over the limit, passed through");
                                let prefix = concat(std::mem::take(chunks));
                                let body = match body.take() {
                                    Some(rest) => PalisadeBody::resumed_pinned(prefix, rest),
                                    None => {
                                        PalisadeBody::full_with_trailers(prefix, trailers.take())
                                    }
                                };
                                state.set(State::Done);
                                return Poll::Ready(Ok(Response::from_parts(parts, body)));
                            }
                            Err(frame) => {
                                if let Ok(t) = frame.into_trailers() {
                                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                                }
                                continue;
                            }
                        },
                        Some(Err(err)) => {
                            let (parts, plan) =
                                parts.take().zip(plan.take()).expect(POLLED_AFTER_DONE);
                            plan.inner.count(Outcome::BodyError);
                            let body =
                                PalisadeBody::failed(concat(std::mem::take(chunks)), err.into());
                            state.set(State::Done);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        None => parts.take().zip(plan.take()).expect(POLLED_AFTER_DONE),
                    };
                    let response = finish(parts, std::mem::take(chunks), trailers.take(), &plan);
                    state.set(State::Done);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Done => panic!("{POLLED_AFTER_DONE}"),
            }
        }
    }
}

enum Begin<B> {
    Done(ShapedResponse<B>),
    Collect(http::response::Parts, B, Box<ShapePlan>),
}

/// Decides from the head whether to read the body.
fn begin<B: Body>(response: Response<B>, plan: Plan) -> Begin<B> {
    let (parts, body) = response.into_parts();
    let pass = |parts, body, plan: Option<&ShapePlan>, outcome| {
        if let Some(plan) = plan {
            plan.inner.count(outcome);
        }
        tracing::trace!(?outcome, "response passed through unshaped");
        Begin::Done(Response::from_parts(parts, PalisadeBody::inner(body)))
    };
    let plan = match plan {
        // Counted when the request came in.
        Plan::Disabled => return pass(parts, body, None, Outcome::Disabled),
        Plan::Shape(plan) => plan,
    };
    if plan.head
        || !parts.status.is_success()
        || matches!(
            parts.status,
            StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::PARTIAL_CONTENT
        )
    {
        return pass(parts, body, Some(&plan), Outcome::NotShapeable);
    }
    if !is_json(&parts.headers) {
        return pass(parts, body, Some(&plan), Outcome::NotJson);
    }
    if parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return pass(parts, body, Some(&plan), Outcome::Encoded);
    }
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let max = plan.inner.max_body as u64;
    if declared.is_some_and(|n| n > max) || body.size_hint().lower() > max {
        return pass(parts, body, Some(&plan), Outcome::TooLarge);
    }
    Begin::Collect(parts, body, plan)
}

/// `application/json` or any `application/*+json`, parameters ignored.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Shapes the collected body (or passes it on when it is not valid JSON).
fn finish<B>(
    mut parts: http::response::Parts,
    mut chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    plan: &ShapePlan,
) -> ShapedResponse<B> {
    let bytes = concat(std::mem::take(&mut chunks));
    let rules = plan.rules();
    match rules.shaper.shape_bytes_with(plan.fields.as_ref(), &bytes) {
        Ok(shaped) => {
            let stats = shaped.stats;
            record(plan, &stats);
            let headers = &mut parts.headers;
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(shaped.output.len()),
            );
            headers.remove(header::TRANSFER_ENCODING);
            headers.remove(header::ETAG);
            if plan.inner.headers {
                headers.insert(X_TOKENS_ORIGINAL, HeaderValue::from(stats.original_tokens));
                headers.insert(X_TOKENS_SHAPED, HeaderValue::from(stats.shaped_tokens));
                headers.insert(X_TOKENS_SAVED, HeaderValue::from(stats.tokens_saved()));
                if let Ok(v) = HeaderValue::from_str(&format!("{:.1}", stats.saved_percent())) {
                    headers.insert(X_TOKENS_SAVED_PERCENT, v);
                }
            }
            Response::from_parts(
                parts,
                PalisadeBody::full_with_trailers(shaped.output, trailers),
            )
        }
        Err(err) => {
            plan.inner.count(Outcome::InvalidJson);
            tracing::debug!(error = %err, "upstream JSON did not parse, passed through");
            Response::from_parts(parts, PalisadeBody::full_with_trailers(bytes, trailers))
        }
    }
}

/// The chunks read so far, as one buffer (no copy for a single chunk).
fn concat(mut chunks: Vec<Bytes>) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in &chunks {
        all.extend_from_slice(c);
    }
    all.freeze()
}

fn record(plan: &ShapePlan, stats: &ShapeStats) {
    tracing::debug!(
        original_bytes = stats.original_bytes,
        shaped_bytes = stats.shaped_bytes,
        original_tokens = stats.original_tokens,
        shaped_tokens = stats.shaped_tokens,
        "shaped JSON response"
    );
    plan.inner.count(Outcome::Shaped);
    if let Some(m) = &plan.inner.metrics {
        m.bytes_original.inc_by(stats.original_bytes);
        m.bytes_saved.inc_by(stats.bytes_saved().max(0) as u64);
        m.tokens_original.inc_by(stats.original_tokens);
        m.tokens_saved.inc_by(stats.tokens_saved().max(0) as u64);
    }
}
