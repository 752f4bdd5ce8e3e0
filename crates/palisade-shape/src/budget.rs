//! MCP tool results that fit a token budget: [`ToolBudgetLayer`] cuts a
//! `tools/call` result larger than its tool's budget (the
//! [`ToolFacts::output_budget`] a gateway sets) so a model's context is not
//! flooded, keeping its structure — arrays shortened, long strings cut, the
//! JSON valid — and says so in the result's `_meta`.

use crate::estimate::{CharsPerToken, TokenEstimator};
use crate::shaper::{ShapeRules, Shaper};
use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body::Body;
use palisade_core::body::collect::{Read, read_bounded};
use palisade_core::jsonrpc::JsonRpcCall;
use palisade_core::mcp::ToolFacts;
use palisade_core::{BoxError, PalisadeBody};
use pin_project_lite::pin_project;
use serde_json::{Map, Value};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tower_layer::Layer;
use tower_service::Service;

/// The `_meta` key of the marker on a cut result.
pub const BUDGET_META: &str = "palisade.dev/outputBudget";

/// What [`fit_result`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetCut {
    /// Estimated tokens of the result as the tool gave it.
    pub original_tokens: u64,
    /// Estimated tokens of the result as cut (before the marker).
    pub kept_tokens: u64,
    /// The budget.
    pub budget_tokens: u64,
}

/// Cuts a tool `result` object to `budget` tokens as `estimator` counts
/// them: arrays shortened (first elements kept) and long strings cut (ending
/// in `…`), evenly and more and more until it fits — or as far as cuts go
/// (arrays of one element, strings of 16 characters and `…`), the marker then saying
/// what was kept. Its `_meta` is kept whole and gets [`BUDGET_META`] with
/// `originalTokens`, `keptTokens` and `budgetTokens`. `None` when it already
/// fits.
///
/// ```
/// use palisade_shape::{CharsPerToken, budget::{BUDGET_META, fit_result}};
/// use serde_json::json;
///
/// let hits: Vec<String> = (0..100).map(|i| format!("hit number {i} of the search")).collect();
/// let mut result = json!({"content": [{"type": "text", "text": "many"}], "structuredContent": {"result": hits}}).as_object().unwrap().clone();
/// let cut = fit_result(&mut result, 100, &CharsPerToken::default()).unwrap();
/// assert!(cut.original_tokens > 100 && cut.kept_tokens <= 100);
/// let kept = result["structuredContent"]["result"].as_array().unwrap();
/// assert!(!kept.is_empty() && kept.len() < 100);
/// assert!(kept[0].as_str().unwrap().starts_with("hit number 0"));
/// assert_eq!(result["_meta"][BUDGET_META]["originalTokens"], cut.original_tokens);
/// ```
pub fn fit_result(
    result: &mut Map<String, Value>,
    budget: u64,
    estimator: &dyn TokenEstimator,
) -> Option<BudgetCut> {
    let meta = result.remove("_meta");
    let body = Value::Object(std::mem::take(result));
    let original = serde_json::to_vec(&body).ok()?;
    let original_tokens = estimator.estimate(&original);
    if original_tokens <= budget {
        *result = into_map(body);
        if let Some(meta) = meta {
            result.insert("_meta".into(), meta);
        }
        return None;
    }
    let (longest_array, longest_string) = extent(&body);
    let mut arrays = longest_array.max(1);
    let mut strings = longest_string.max(MIN_STRING);
    let (kept, kept_tokens) = loop {
        let shaper = Shaper::new(
            &ShapeRules::identity()
                .max_array_size(arrays)
                .max_string_length(strings),
        )
        .ok()?;
        let cut = shaper.shape(&body).ok()?.output;
        let tokens = estimator.estimate(&serde_json::to_vec(&cut).ok()?);
        if tokens <= budget || (arrays == 1 && strings == MIN_STRING) {
            break (cut, tokens);
        }
        // A quarter less each round: a few dozen rounds at most.
        arrays = (arrays - arrays / 4).min(arrays - 1).max(1);
        strings = (strings - strings / 4).min(strings - 1).max(MIN_STRING);
    };
    *result = into_map(kept);
    let mut meta = match meta {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.insert(
        BUDGET_META.into(),
        serde_json::json!({
            "originalTokens": original_tokens,
            "keptTokens": kept_tokens,
            "budgetTokens": budget,
        }),
    );
    result.insert("_meta".into(), Value::Object(meta));
    Some(BudgetCut {
        original_tokens,
        kept_tokens,
        budget_tokens: budget,
    })
}

/// Strings are never cut shorter than this.
const MIN_STRING: usize = 16;

fn into_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The longest array and the longest string (in characters) in `v`.
fn extent(v: &Value) -> (usize, usize) {
    match v {
        Value::Array(items) => items.iter().fold((items.len(), 0), |(a, s), item| {
            let (ia, is) = extent(item);
            (a.max(ia), s.max(is))
        }),
        Value::Object(map) => map.values().fold((0, 0), |(a, s), item| {
            let (ia, is) = extent(item);
            (a.max(ia), s.max(is))
        }),
        Value::String(text) => (0, text.chars().count()),
        _ => (0, 0),
    }
}

/// A JSON-RPC reply with its result fitted (see [`fit_result`]); `None`
/// when it is not a reply with a result object, or it fits.
fn fit_message(message: &[u8], budget: u64, estimator: &dyn TokenEstimator) -> Option<Vec<u8>> {
    let mut reply: Map<String, Value> = serde_json::from_slice(message).ok()?;
    let Some(Value::Object(result)) = reply.get_mut("result") else {
        return None;
    };
    fit_result(result, budget, estimator)?;
    serde_json::to_vec(&reply).ok()
}

/// An event stream with the reply it carries fitted; `None` when nothing
/// changed.
fn fit_events(stream: &[u8], budget: u64, estimator: &dyn TokenEstimator) -> Option<Bytes> {
    let mut out = BytesMut::with_capacity(stream.len());
    let mut changed = false;
    let text = std::str::from_utf8(stream).ok()?;
    // Events end with a blank line (`\n\n`, `\r\n\r\n`); lines are kept as
    // they came, but a fitted event's data is written as one `data:` line.
    let mut rest = text;
    while !rest.is_empty() {
        let (event, tail, sep) = split_event(rest);
        rest = tail;
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        let fitted = (!data.is_empty())
            .then(|| fit_message(data.join("\n").as_bytes(), budget, estimator))
            .flatten();
        match fitted {
            Some(message) => {
                changed = true;
                for line in event.lines().filter(|l| !l.starts_with("data:")) {
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\n");
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&message);
                out.extend_from_slice(b"\n\n");
            }
            None => {
                out.extend_from_slice(event.as_bytes());
                out.extend_from_slice(sep.as_bytes());
            }
        }
    }
    changed.then(|| out.freeze())
}

/// The first event of `text`, the rest, and the separator between them.
fn split_event(text: &str) -> (&str, &str, &str) {
    let lf = text.find("\n\n").map(|i| (i, 2));
    let crlf = text.find("\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => {
            let (i, n) = if a.0 <= b.0 { a } else { b };
            (&text[..i], &text[i + n..], &text[i..i + n])
        }
        (Some((i, n)), None) | (None, Some((i, n))) => {
            (&text[..i], &text[i + n..], &text[i..i + n])
        }
        (None, None) => (text, "", ""),
    }
}

/// Cuts MCP tool results to their tool's token budget (see the
/// [module docs](self)). A `tools/call` whose [`ToolFacts`] carry an
/// `output_budget` has its 200 JSON or event-stream answer (identity
/// encoded, at most `max_body` bytes) read whole and the result fitted with
/// [`fit_result`]; every other request and answer passes untouched (an
/// event stream is held until its end, so only budgeted tools' are).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade_core::jsonrpc::peek;
/// use palisade_core::mcp::{ToolAnnotations, ToolFacts};
/// use palisade_shape::budget::{BUDGET_META, ToolBudgetLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new().layer(ToolBudgetLayer::new()).service_fn(|_req: http::Request<_>| async {
///     let text = "x".repeat(4000);
///     let reply = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": text}]}});
///     Ok::<_, std::convert::Infallible>(
///         http::Response::builder()
///             .header("content-type", "application/json")
///             .body(Full::new(Bytes::from(reply.to_string())))
///             .unwrap(),
///     )
/// });
/// let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"dump","arguments":{}}}"#;
/// let mut req = peek(http::Request::post("/mcp").body(Full::new(Bytes::from(call))).unwrap(), 1 << 16).await;
/// req.extensions_mut().insert(ToolFacts::new(ToolAnnotations::default()).output_budget(Some(100)));
/// let res = svc.oneshot(req).await.unwrap();
/// let reply: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
/// let marker = &reply["result"]["_meta"][BUDGET_META];
/// // `{"content":[{"text":"xx…x","type":"text"}]}`: 4,039 characters / 4, rounded up.
/// assert_eq!(marker["originalTokens"], 1010);
/// assert!(marker["keptTokens"].as_u64().unwrap() <= 100);
/// assert!(reply["result"]["content"][0]["text"].as_str().unwrap().ends_with('…'));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ToolBudgetLayer {
    estimator: Arc<dyn TokenEstimator>,
    max_body: usize,
}

impl Default for ToolBudgetLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolBudgetLayer {
    /// Characters / 4 per token, answers of at most 16 MiB read.
    pub fn new() -> Self {
        Self {
            estimator: Arc::new(CharsPerToken::default()),
            max_body: 16 << 20,
        }
    }

    /// Counts tokens with `estimator`.
    pub fn estimator<E: TokenEstimator>(mut self, estimator: E) -> Self {
        self.estimator = Arc::new(estimator);
        self
    }

    /// Reads answers of at most `bytes` (larger ones pass untouched).
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

impl<S> Layer<S> for ToolBudgetLayer {
    type Service = ToolBudget<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ToolBudget {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of a [`ToolBudgetLayer`].
#[derive(Clone, Debug)]
pub struct ToolBudget<S> {
    inner: S,
    layer: ToolBudgetLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for ToolBudget<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<PalisadeBody<ResBody>>;
    type Error = S::Error;
    type Future = ToolBudgetFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let budget = req
            .extensions()
            .get::<JsonRpcCall>()
            .filter(|c| c.method() == "tools/call")
            .and(req.extensions().get::<ToolFacts>())
            .and_then(|f| f.output_budget);
        let fut = self.inner.call(req);
        let Some(budget) = budget else {
            return ToolBudgetFuture {
                kind: FutKind::Pass { fut },
            };
        };
        let layer = self.layer.clone();
        ToolBudgetFuture {
            kind: FutKind::Budgeted {
                fut: Box::pin(async move {
                    let res = fut.await?;
                    Ok(fit_response(res, budget, &layer).await)
                }),
            },
        }
    }
}

async fn fit_response<B>(
    res: Response<B>,
    budget: u64,
    layer: &ToolBudgetLayer,
) -> Response<PalisadeBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    use palisade_core::body::media::MediaKind;
    let kind = MediaKind::of(res.headers());
    if res.status() != StatusCode::OK
        || res.headers().contains_key(header::CONTENT_ENCODING)
        || !matches!(kind, MediaKind::Json | MediaKind::EventStream)
    {
        return res.map(PalisadeBody::inner);
    }
    let (mut parts, body) = res.into_parts();
    let data = match read_bounded(body, layer.max_body).await {
        Read::Complete(c) => c.data,
        Read::Over { prefix, rest } => {
            return Response::from_parts(parts, PalisadeBody::resumed_pinned(prefix, rest));
        }
        Read::Failed { prefix, error } => {
            return Response::from_parts(parts, PalisadeBody::failed(prefix, error));
        }
    };
    let estimator = &*layer.estimator;
    let fitted = match kind {
        MediaKind::Json => fit_message(&data, budget, estimator).map(Bytes::from),
        _ => fit_events(&data, budget, estimator),
    };
    let data = match fitted {
        Some(fitted) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::ETAG);
            fitted
        }
        None => data,
    };
    Response::from_parts(parts, PalisadeBody::full(data))
}

pin_project! {
    /// The response future of a [`ToolBudget`]: the inner future as it is
    /// for a call without a budget, a boxed read-and-fit for one with.
    pub struct ToolBudgetFuture<F, B, E> {
        #[pin]
        kind: FutKind<F, B, E>,
    }
}

pin_project! {
    #[project = FutKindProj]
    enum FutKind<F, B, E> {
        Pass { #[pin] fut: F },
        Budgeted { fut: BoxFuture<Result<Response<PalisadeBody<B>>, E>> },
    }
}

impl<F, B, E> fmt::Debug for ToolBudgetFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ToolBudgetFuture")
    }
}

impl<F, B, E> Future for ToolBudgetFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<PalisadeBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            FutKindProj::Pass { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(PalisadeBody::inner))),
            FutKindProj::Budgeted { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn est() -> CharsPerToken {
        CharsPerToken::default()
    }

    #[test]
    fn a_result_that_fits_is_left_alone() {
        let mut r = json!({"content": [{"type": "text", "text": "small"}], "_meta": {"a": 1}})
            .as_object()
            .unwrap()
            .clone();
        let before = r.clone();
        assert_eq!(fit_result(&mut r, 1000, &est()), None);
        assert_eq!(r, before);
    }

    #[test]
    fn cuts_keep_the_structure_and_the_meta() {
        let items: Vec<Value> = (0..500)
            .map(|i| json!({"id": i, "body": "lorem ipsum ".repeat(40)}))
            .collect();
        let mut r = json!({"content": [{"type": "text", "text": "x"}], "structuredContent": {"items": items}, "isError": false, "_meta": {"trace": "t-1"}})
            .as_object()
            .unwrap()
            .clone();
        let cut = fit_result(&mut r, 300, &est()).unwrap();
        assert!(cut.kept_tokens <= 300, "{cut:?}");
        let kept = r["structuredContent"]["items"].as_array().unwrap();
        assert!(!kept.is_empty() && kept.len() < 500);
        assert_eq!(kept[0]["id"], 0);
        assert_eq!(r["isError"], false);
        assert_eq!(r["_meta"]["trace"], "t-1", "the tool's own meta is kept");
        assert_eq!(r["_meta"][BUDGET_META]["keptTokens"], cut.kept_tokens);
        // The cut result serialises and its estimate is what the marker says.
        let mut without = r.clone();
        without.remove("_meta");
        let text = serde_json::to_vec(&Value::Object(without)).unwrap();
        assert_eq!(est().estimate(&text), cut.kept_tokens);
    }

    #[test]
    fn an_impossible_budget_cuts_as_far_as_cuts_go_and_says_so() {
        let mut r = json!({"content": [{"type": "text", "text": "y".repeat(10_000)}]})
            .as_object()
            .unwrap()
            .clone();
        let cut = fit_result(&mut r, 1, &est()).unwrap();
        assert!(cut.kept_tokens > 1 && cut.kept_tokens < cut.original_tokens);
        assert_eq!(
            r["content"][0]["text"].as_str().unwrap().chars().count(),
            MIN_STRING + 1,
            "the shortest cut: 16 characters and `…`"
        );
    }

    #[test]
    fn event_streams_fit_the_reply_and_keep_the_other_events() {
        let reply = json!({"jsonrpc": "2.0", "id": 4, "result": {"content": [{"type": "text", "text": "z".repeat(4000)}]}});
        let stream = format!(
            "event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{{}}}}\r\n\r\nevent: message\ndata: {reply}\n\n"
        );
        let out = fit_events(stream.as_bytes(), 50, &est()).unwrap();
        let out = std::str::from_utf8(&out).unwrap();
        assert!(out.starts_with("event: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\r\n\r\n"), "{out}");
        let data = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .nth(1)
            .unwrap();
        let fitted: Value = serde_json::from_str(data).unwrap();
        assert_eq!(fitted["id"], 4);
        assert!(
            fitted["result"]["_meta"][BUDGET_META]["keptTokens"]
                .as_u64()
                .unwrap()
                <= 50
        );
        assert!(
            fit_events(
                b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n",
                50,
                &est()
            )
            .is_none()
        );
    }
}
