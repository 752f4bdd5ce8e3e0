//! The token budget layer: reserve before the call, settle from the
//! response. See [`TokenBudget`].

use crate::metrics::{Event, Outcome, TokenMetrics};
use crate::usage::{Estimate, Estimator, UsageScan};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use palisade_core::body::collect::{Read, read_bounded};
use palisade_core::body::media::content_length;
use palisade_core::key::KeyExtractor;
use palisade_core::tier::Tier;
use palisade_core::{BoxError, Error, ErrorKind, PalisadeBody, is_grpc_request};
use palisade_store::{Store, TokenReservation, TokenRule};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tower_layer::Layer;
use tower_service::Service;

/// What the layer does with its decisions.
///
/// ```
/// use palisade_llm::Mode;
///
/// assert_eq!(Mode::default(), Mode::Enforce);
/// let m: Mode = serde_json::from_str("\"log_only\"").unwrap();
/// assert_eq!(m, Mode::LogOnly);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Reserve, settle and refuse over-budget requests.
    #[default]
    Enforce,
    /// Reserve and settle admitted requests; over-budget ones are logged,
    /// counted and sent on without a reservation (also spelled `shadow`).
    #[serde(alias = "shadow")]
    LogOnly,
    /// Do nothing.
    Disabled,
}

/// What a response that ends without reporting its usage (a stream cut
/// mid-way, a provider that omits it) is charged.
///
/// ```
/// use palisade_llm::OnMissingUsage;
///
/// assert_eq!(OnMissingUsage::default(), OnMissingUsage::Streamed);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OnMissingUsage {
    /// The prompt estimate plus the text streamed so far (characters /
    /// ratio).
    #[default]
    Streamed,
    /// The whole reservation.
    Reservation,
}

/// What to do when the store cannot decide (down, timed out).
///
/// ```
/// assert_eq!(palisade_llm::FailPolicy::default(), palisade_llm::FailPolicy::Open);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailPolicy {
    /// Send the request on without a reservation (logged and counted).
    #[default]
    Open,
    /// Refuse it (503 with `Retry-After: 1`).
    Closed,
}

/// A bad token budget setting.
///
/// ```
/// use palisade_llm::{TokenBudgetLayer, TokenBudgetError};
/// use palisade_core::key::ConstKey;
/// use palisade_store::{Store, TokenRule};
///
/// let err = TokenBudgetLayer::builder(Store::in_memory(), ConstKey("all"), TokenRule::per_minute(0))
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, TokenBudgetError::InvalidConfig(_)));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenBudgetError {
    /// A setting is invalid; the message names it.
    #[error("invalid token budget: {0}")]
    InvalidConfig(String),
    /// A configured key is invalid ([`TokenLimitConfig`](crate::TokenLimitConfig)).
    #[error("invalid token limit: {field}: {reason}")]
    InvalidField {
        /// The key, relative to the limit (`quota`, `key_header` …).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl TokenBudgetError {
    /// The configuration key at fault, when known.
    ///
    /// ```
    /// use palisade_llm::TokenLimitConfig;
    ///
    /// let cfg: TokenLimitConfig = toml::from_str("kind = \"tokens\"\nkey = \"global\"\nquota = 0").unwrap();
    /// assert_eq!(cfg.validate().unwrap_err().field(), Some("quota"));
    /// ```
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } => Some(field),
            Self::InvalidConfig(_) => None,
        }
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const PROBLEM_TYPE: &str = "https://palisade.invalid/problems/token-budget";

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A structured-field string (RFC 8941).
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
    out
}

struct Shared {
    store: Store,
    name: Arc<str>,
    /// The ledger's name in the store: the limit's, `name@tier` for a tier.
    ledger: Arc<str>,
    sf_name: String,
    policy: HeaderValue,
    rule: TokenRule,
    mode: Mode,
    on_missing: OnMissingUsage,
    fail: FailPolicy,
    estimator: Estimator,
    peek_limit: usize,
    scan_limit: usize,
    path_prefix: Option<Arc<str>>,
    metrics: Option<crate::metrics::Counters>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBudget")
            .field("name", &self.name)
            .field("rule", &self.rule)
            .field("mode", &self.mode)
            .field("on_missing", &self.on_missing)
            .field("fail", &self.fail)
            .field("estimator", &self.estimator)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn count(&self, event: Event, tokens: u64) {
        if let Some(m) = &self.metrics {
            m.tokens(event, tokens);
        }
    }

    fn outcome(&self, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            m.outcome(outcome);
        }
    }

    /// `RateLimit-Policy` and `RateLimit` for `remaining` tokens, full
    /// again in `reset`.
    fn write_headers(&self, headers: &mut HeaderMap, remaining: u64, reset: Duration) {
        // Appended: the fields are lists, and the upstream or another
        // limit may have written its own policy.
        headers.append(RATELIMIT_POLICY, self.policy.clone());
        let mut r = itoa::Buffer::new();
        let mut t = itoa::Buffer::new();
        let v = format!(
            "{};r={};t={}",
            self.sf_name,
            r.format(remaining),
            t.format(ceil_secs(reset))
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.append(RATELIMIT, v);
        }
    }
}

/// Builds a [`TokenBudgetLayer`]; see [`TokenBudgetLayer::builder`].
///
/// ```
/// use palisade_core::key::HeaderKey;
/// use palisade_llm::{Mode, OnMissingUsage, TokenBudgetLayer, usage::Estimator};
/// use palisade_store::{Store, TokenRule};
///
/// let layer = TokenBudgetLayer::builder(Store::in_memory(), HeaderKey::new("x-user"), TokenRule::per_minute(100_000))
///     .name("per-user")
///     .mode(Mode::LogOnly)
///     .on_missing_usage(OnMissingUsage::Reservation)
///     .estimator(Estimator { chars_per_token: 3.5, default_output: 1024 })
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug)]
#[must_use]
pub struct TokenBudgetBuilder<K> {
    store: Store,
    key: K,
    rule: TokenRule,
    name: String,
    mode: Mode,
    on_missing: OnMissingUsage,
    fail: FailPolicy,
    estimator: Estimator,
    peek_limit: usize,
    scan_limit: usize,
    path_prefix: Option<String>,
    metrics: Option<TokenMetrics>,
    tiers: Vec<(Tier, TokenRule)>,
}

impl<K> TokenBudgetBuilder<K> {
    /// A budget of its own for requests of `tier` (a [`Tier`] request
    /// extension, set by an authentication layer or, in the gateway, from
    /// the trusted tier header): its quota, period and lease replace the
    /// layer's rule, which stays the budget of requests without a tier or
    /// with one not given here. Each tier keeps its own ledger per key (a
    /// key moved to another plan starts on that plan's budget).
    /// Metrics carry the tier's name (`default` for the others).
    ///
    /// ```
    /// use palisade_core::{key::ConstKey, tier::Tier};
    /// use palisade_llm::TokenBudgetLayer;
    /// use palisade_store::{Store, TokenRule};
    ///
    /// let layer = TokenBudgetLayer::builder(Store::in_memory(), ConstKey("all"), TokenRule::per_day(100_000))
    ///     .tier(Tier::PREMIUM, TokenRule::per_day(2_000_000))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.tiers().collect::<Vec<_>>(), ["premium"]);
    /// ```
    pub fn tier(mut self, tier: Tier, rule: TokenRule) -> Self {
        self.tiers.retain(|(t, _)| *t != tier);
        self.tiers.push((tier, rule));
        self
    }

    /// The limit's name (metrics label, `RateLimit` policy name; default
    /// `tokens`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Enforce (default), log-only or disabled.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// What a response without usage is charged (default: what streamed).
    pub fn on_missing_usage(mut self, on: OnMissingUsage) -> Self {
        self.on_missing = on;
        self
    }

    /// What to do when the store cannot decide (default: let through).
    pub fn on_store_error(mut self, fail: FailPolicy) -> Self {
        self.fail = fail;
        self
    }

    /// How requests are estimated at admission.
    pub fn estimator(mut self, estimator: Estimator) -> Self {
        self.estimator = estimator;
        self
    }

    /// Most request-body bytes read ahead for the estimate (default 1 MiB;
    /// a larger body is estimated from its length).
    pub fn peek_limit(mut self, bytes: usize) -> Self {
        self.peek_limit = bytes;
        self
    }

    /// Most bytes of a non-streamed JSON response kept to read its usage
    /// (default 4 MiB).
    pub fn scan_limit(mut self, bytes: usize) -> Self {
        self.scan_limit = bytes;
        self
    }

    /// Budgets only requests whose path starts with `prefix` (e.g.
    /// `/v1/`); the others pass through untouched, neither budgeted nor
    /// counted. Default: every request.
    ///
    /// ```
    /// use palisade_core::key::ConstKey;
    /// use palisade_llm::TokenBudgetLayer;
    /// use palisade_store::{Store, TokenRule};
    ///
    /// let layer = TokenBudgetLayer::builder(Store::in_memory(), ConstKey("all"), TokenRule::per_minute(1_000))
    ///     .path_prefix("/v1/")
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.path_prefix(), Some("/v1/"));
    /// assert!(TokenBudgetLayer::builder(Store::in_memory(), ConstKey("all"), TokenRule::per_minute(1_000))
    ///     .path_prefix("v1")
    ///     .build()
    ///     .is_err());
    /// ```
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Counts tokens and decisions on `metrics`.
    pub fn metrics(mut self, metrics: &TokenMetrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// [`TokenBudgetError::InvalidConfig`] naming the bad setting.
    pub fn build(self) -> Result<TokenBudgetLayer<K>, TokenBudgetError> {
        let bad = TokenBudgetError::InvalidConfig;
        self.estimator
            .validate()
            .map_err(|e| bad(format!("token limit {:?}: {e}", self.name)))?;
        if self.name.is_empty() {
            return Err(bad("token limit name must not be empty".into()));
        }
        if let Some(p) = &self.path_prefix
            && !p.starts_with('/')
        {
            return Err(bad(format!(
                "token limit {:?}: path_prefix {p:?} must start with '/'",
                self.name
            )));
        }
        let name: Arc<str> = self.name.as_str().into();
        let path_prefix: Option<Arc<str>> = self.path_prefix.as_deref().map(Into::into);
        let shared = |rule: TokenRule, tier: Option<&str>, what: String| {
            check_rule(&rule, &what)?;
            let sf_name = sf_string(&self.name);
            let policy = format!(
                "{sf_name};q={};qu=\"tokens\";w={}",
                rule.quota,
                ceil_secs(rule.period)
            );
            let policy = HeaderValue::from_str(&policy)
                .map_err(|_| bad(format!("{what}: name is not a header value")))?;
            Ok::<_, TokenBudgetError>(Arc::new(Shared {
                store: self.store.clone(),
                metrics: self.metrics.as_ref().map(|m| {
                    let label = match tier {
                        Some(t) => t,
                        None if self.tiers.is_empty() => "none",
                        None => "default",
                    };
                    m.counters(&name, label)
                }),
                ledger: match tier {
                    Some(t) => format!("{name}@{t}").into(),
                    None => name.clone(),
                },
                sf_name,
                policy,
                name: name.clone(),
                rule,
                mode: self.mode,
                on_missing: self.on_missing,
                fail: self.fail,
                estimator: self.estimator,
                peek_limit: self.peek_limit,
                scan_limit: self.scan_limit,
                path_prefix: path_prefix.clone(),
            }))
        };
        let base = shared(self.rule, None, format!("token limit {:?}", self.name))?;
        let mut tiers = Vec::with_capacity(self.tiers.len());
        for (tier, rule) in &self.tiers {
            let what = format!("token limit {:?}, tier {:?}", self.name, tier.as_str());
            tiers.push((tier.clone(), shared(*rule, Some(tier.as_str()), what)?));
        }
        Ok(TokenBudgetLayer {
            key: self.key,
            shared: base,
            tiers: tiers.into(),
        })
    }
}

/// The checks every budget's rule passes.
fn check_rule(rule: &TokenRule, what: &str) -> Result<(), TokenBudgetError> {
    let bad = |why: String| Err(TokenBudgetError::InvalidConfig(format!("{what}: {why}")));
    if rule.quota == 0 {
        return bad("quota must be at least 1".into());
    }
    if rule.period.is_zero() {
        return bad("period must be non-zero".into());
    }
    if rule.lease.is_zero() {
        return bad("lease must be non-zero".into());
    }
    if rule.period.as_micros() / u128::from(rule.quota) == 0 {
        return bad(format!(
            "quota {} per {:?} is finer than one token a microsecond",
            rule.quota, rule.period
        ));
    }
    Ok(())
}

/// The budget of a request: its tier's, else the layer's own.
fn pick<B>(base: &Arc<Shared>, tiers: &[(Tier, Arc<Shared>)], req: &Request<B>) -> Arc<Shared> {
    if !tiers.is_empty()
        && let Some(tier) = req.extensions().get::<Tier>()
        && let Some((_, shared)) = tiers.iter().find(|(t, _)| t == tier)
    {
        return shared.clone();
    }
    base.clone()
}

/// Applies a token budget to a service. See [`TokenBudget`].
///
/// ```
/// use palisade_core::key::HeaderKey;
/// use palisade_llm::TokenBudgetLayer;
/// use palisade_store::{Store, TokenRule};
///
/// let layer = TokenBudgetLayer::builder(Store::in_memory(), HeaderKey::new("x-api-key"), TokenRule::per_day(2_000_000))
///     .build()
///     .unwrap();
/// assert_eq!(layer.name(), "tokens");
/// ```
#[derive(Clone, Debug)]
pub struct TokenBudgetLayer<K> {
    key: K,
    shared: Arc<Shared>,
    tiers: Arc<[(Tier, Arc<Shared>)]>,
}

impl<K> TokenBudgetLayer<K> {
    /// A builder for `rule`'s budget on `store`, one budget per key `key`
    /// extracts.
    pub fn builder(store: Store, key: K, rule: TokenRule) -> TokenBudgetBuilder<K> {
        TokenBudgetBuilder {
            store,
            key,
            rule,
            name: "tokens".into(),
            mode: Mode::Enforce,
            on_missing: OnMissingUsage::Streamed,
            fail: FailPolicy::Open,
            estimator: Estimator::default(),
            peek_limit: 1 << 20,
            scan_limit: 4 << 20,
            path_prefix: None,
            metrics: None,
            tiers: Vec::new(),
        }
    }

    /// The tiers with a budget of their own (see
    /// [`TokenBudgetBuilder::tier`]).
    pub fn tiers(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|(t, _)| t.as_str())
    }

    /// The limit's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The path prefix the budget applies to, when it is not every request.
    pub fn path_prefix(&self) -> Option<&str> {
        self.shared.path_prefix.as_deref()
    }
}

impl<S, K: Clone> Layer<S> for TokenBudgetLayer<K> {
    type Service = TokenBudget<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenBudget {
            inner,
            key: self.key.clone(),
            shared: self.shared.clone(),
            tiers: self.tiers.clone(),
        }
    }
}

/// A token budget in front of an LLM upstream.
///
/// Per request:
///
/// 1. the key is extracted (no key: the request passes unbudgeted);
/// 2. the body is read ahead (bounded, not consumed: the inner service gets
///    it whole) and estimated ([`Estimator`]);
/// 3. the estimate is reserved on the store
///    ([`Store::token_reserve`]); when it does not fit the request is
///    answered **429** with `Retry-After` and the IETF `RateLimit` /
///    `RateLimit-Policy` fields (`qu="tokens"`) — before the inner service
///    is called, so no byte goes upstream and no stream is ever cut;
/// 4. the response body is wrapped ([`TokenBody`]): its usage is read as it
///    streams ([`UsageScan`]), and when it ends — or is dropped mid-way —
///    the reservation is settled with the true amount
///    ([`Store::token_settle`]). A response that is not a success is
///    settled at zero (providers do not bill refused calls).
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade_core::key::ConstKey;
/// use palisade_llm::TokenBudgetLayer;
/// use palisade_store::{Store, TokenRule};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = TokenBudgetLayer::builder(Store::in_memory(), ConstKey("all"), TokenRule::per_minute(150))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<_>| async {
///     let body = r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":7}}"#;
///     Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
/// });
/// let ask = |max: u32| {
///     let body = format!(r#"{{"max_tokens":{max},"messages":[{{"role":"user","content":"hi"}}]}}"#);
///     http::Request::post("/v1/chat/completions").body(Full::new(Bytes::from(body))).unwrap()
/// };
/// let res = svc.clone().oneshot(ask(100)).await.unwrap();
/// assert_eq!(res.status(), 200);
/// res.into_body().collect().await.unwrap(); // settles: 10 charged, 91 refunded
/// tokio::task::yield_now().await;
/// let refused = svc.oneshot(ask(145)).await.unwrap();
/// assert_eq!(refused.status(), 429);
/// assert!(refused.headers().contains_key("retry-after"));
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct TokenBudget<S, K> {
    inner: S,
    key: K,
    shared: Arc<Shared>,
    tiers: Arc<[(Tier, Arc<Shared>)]>,
}

impl<S, K> TokenBudget<S, K> {
    palisade_core::inner_accessors!(inner: S);
}

type Answer<B> = Response<PalisadeBody<TokenBody<B>>>;

fn answer<B>(err: Error, grpc: bool) -> Answer<B> {
    err.into_http_response(grpc)
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for TokenBudget<S, K>
where
    S: Service<Request<PalisadeBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
    K: KeyExtractor<Request<ReqBody>>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Answer<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready service goes with the request; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = pick(&self.shared, &self.tiers, &req);
        let grpc = is_grpc_request(req.headers());
        let plain = |req: Request<ReqBody>| req.map(PalisadeBody::inner);
        let outside = shared
            .path_prefix
            .as_deref()
            .is_some_and(|p| !req.uri().path().starts_with(p));
        if shared.mode == Mode::Disabled || outside {
            let fut = inner.call(plain(req));
            return ResponseFuture::new(async move {
                Ok(fut.await?.map(|b| PalisadeBody::inner(TokenBody::plain(b))))
            });
        }
        if let Some(err) = self.key.refusal(&req) {
            return ResponseFuture::new(async move { Ok(answer(err, grpc)) });
        }
        let Some(key) = self.key.extract(&req) else {
            shared.outcome(Outcome::Unkeyed);
            let fut = inner.call(plain(req));
            return ResponseFuture::new(async move {
                Ok(fut.await?.map(|b| PalisadeBody::inner(TokenBody::plain(b))))
            });
        };
        let store_key = shared
            .store
            .key("tokens", &shared.ledger, &key.to_string(), "v1");
        ResponseFuture::new(async move {
            let (parts, body) = req.into_parts();
            let declared = content_length(&parts.headers);
            let (body, estimate) = match read_bounded(body, shared.peek_limit).await {
                Read::Complete(c) => {
                    let e = shared.estimator.estimate(&c.data);
                    (PalisadeBody::from(c), e)
                }
                Read::Over { prefix, rest } => {
                    let len = declared.unwrap_or(0).max(prefix.len() as u64);
                    let e = Estimate {
                        prompt: shared.estimator.tokens_for_chars(len),
                        output: shared.estimator.default_output,
                    };
                    (PalisadeBody::resumed_pinned(prefix, rest), e)
                }
                Read::Failed { prefix, error } => {
                    // The inner service sees the failure; nothing to budget.
                    let req = Request::from_parts(parts, PalisadeBody::failed(prefix, error));
                    let res = inner.call(req).await?;
                    return Ok(res.map(|b| PalisadeBody::inner(TokenBody::plain(b))));
                }
            };
            let req = Request::from_parts(parts, body);
            let amount = estimate.total();
            if amount > shared.rule.quota {
                shared.count(Event::Refused, amount);
                if shared.mode == Mode::Enforce {
                    shared.outcome(Outcome::Refused);
                    let mut headers = HeaderMap::new();
                    shared.write_headers(&mut headers, 0, Duration::ZERO);
                    let mut err = Error::new(
                        ErrorKind::RateLimited,
                        format!(
                            "the request may use {amount} tokens, more than the whole budget of {}",
                            shared.rule.quota
                        ),
                    )
                    .with_problem_type(PROBLEM_TYPE);
                    for (name, value) in headers.iter() {
                        err = err.with_header(name.clone(), value.clone());
                    }
                    return Ok(answer(err, grpc));
                }
                shared.outcome(Outcome::ShadowRefused);
                let res = inner.call(req).await?;
                return Ok(res.map(|b| PalisadeBody::inner(TokenBody::plain(b))));
            }
            let decision = match shared
                .store
                .token_reserve(&store_key, shared.rule, amount)
                .await
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(limit = %shared.name, error = %e, "token budget store failed");
                    if shared.fail == FailPolicy::Closed && shared.mode == Mode::Enforce {
                        shared.outcome(Outcome::FailClosed);
                        let err = Error::new(ErrorKind::Unavailable, "token budget unavailable")
                            .with_retry_after(Duration::from_secs(1))
                            .with_source(e);
                        return Ok(answer(err, grpc));
                    }
                    shared.outcome(Outcome::FailOpen);
                    let res = inner.call(req).await?;
                    return Ok(res.map(|b| PalisadeBody::inner(TokenBody::plain(b))));
                }
            };
            let Some(reservation) = decision.reservation else {
                shared.count(Event::Refused, amount);
                let retry = decision.retry_after.unwrap_or(Duration::from_secs(1));
                if shared.mode == Mode::Enforce {
                    shared.outcome(Outcome::Refused);
                    tracing::debug!(limit = %shared.name, %key, amount, ?retry, "token budget refused");
                    let mut headers = HeaderMap::new();
                    shared.write_headers(&mut headers, decision.remaining, decision.reset_after);
                    let mut err = Error::new(ErrorKind::RateLimited, "token budget exhausted")
                        .with_retry_after(retry)
                        .with_problem_type(PROBLEM_TYPE);
                    for (name, value) in headers.iter() {
                        err = err.with_header(name.clone(), value.clone());
                    }
                    return Ok(answer(err, grpc));
                }
                shared.outcome(Outcome::ShadowRefused);
                tracing::info!(limit = %shared.name, %key, amount, "token budget would refuse (log-only)");
                let res = inner.call(req).await?;
                return Ok(res.map(|b| PalisadeBody::inner(TokenBody::plain(b))));
            };
            shared.outcome(Outcome::Admitted);
            shared.count(Event::Reserved, amount);
            let settle = Settle {
                shared: shared.clone(),
                key: store_key,
                reservation,
                estimate,
            };
            let res = match inner.call(req).await {
                Ok(res) => res,
                Err(e) => {
                    settle.run(0);
                    return Err(e);
                }
            };
            let (mut parts, body) = res.into_parts();
            shared.write_headers(&mut parts.headers, decision.remaining, decision.reset_after);
            if !parts.status.is_success() {
                settle.run(0);
                return Ok(Response::from_parts(
                    parts,
                    PalisadeBody::inner(TokenBody::plain(body)),
                ));
            }
            let media = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let scan = if media.starts_with("text/event-stream") {
                UsageScan::events()
            } else {
                UsageScan::json(shared.scan_limit)
            };
            let body = TokenBody::settled(body, scan, settle);
            Ok(Response::from_parts(parts, PalisadeBody::inner(body)))
        })
    }
}

/// A reservation to settle when the response ends.
struct Settle {
    shared: Arc<Shared>,
    key: String,
    reservation: TokenReservation,
    estimate: Estimate,
}

impl Settle {
    /// Settles with what the scan found: the reported usage when the body
    /// ended with one, otherwise by [`OnMissingUsage`].
    fn finish(self, scan: UsageScan, complete: bool) {
        let end = scan.finish();
        let actual = match end.usage {
            // A usage from the stream's closing event stands even when the
            // client left before the body's very end (after `[DONE]`).
            Some(u) if complete || end.final_usage => u.total(),
            usage => match self.shared.on_missing {
                OnMissingUsage::Reservation => self.reservation.amount(),
                OnMissingUsage::Streamed => {
                    let input = usage.map_or(self.estimate.prompt, |u| u.input);
                    let streamed = self.shared.estimator.tokens_for_chars(end.streamed_chars);
                    input + streamed.max(usage.map_or(0, |u| u.output))
                }
            },
        };
        if !(complete || end.final_usage) || end.usage.is_none() {
            tracing::debug!(
                limit = %self.shared.name,
                complete,
                actual,
                "response ended without usage; charged by setting"
            );
        }
        self.run(actual);
    }

    /// Settles with `actual` tokens, in the background.
    fn run(self, actual: u64) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(limit = %self.shared.name, "no runtime to settle on; the lease will expire");
            return;
        };
        rt.spawn(async move {
            let s = &self.shared;
            match s
                .store
                .token_settle(&self.key, s.rule, &self.reservation, actual)
                .await
            {
                Ok(done) => {
                    s.count(Event::Charged, done.charged);
                    s.count(Event::Refunded, done.refunded);
                    if !done.held {
                        tracing::warn!(limit = %s.name, "settled after the lease expired; charged in full");
                    }
                }
                Err(e) => {
                    tracing::warn!(limit = %s.name, error = %e, "token settle failed; the lease will expire");
                }
            }
        });
    }
}

pin_project! {
    /// A response body that settles its reservation when it ends, or when
    /// it is dropped before its end (a client that went away, a stream cut
    /// mid-way). Data passes through untouched and unheld.
    ///
    /// See the [`TokenBudget`] docs for an example.
    pub struct TokenBody<B> {
        #[pin]
        inner: B,
        state: Option<Box<(UsageScan, Settle)>>,
    }

    impl<B> PinnedDrop for TokenBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(state) = this.project().state.take() {
                let (scan, settle) = *state;
                settle.finish(scan, false);
            }
        }
    }
}

impl<B> fmt::Debug for TokenBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBody")
            .field("settling", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

impl<B> TokenBody<B> {
    fn plain(inner: B) -> Self {
        Self { inner, state: None }
    }

    fn settled(inner: B, scan: UsageScan, settle: Settle) -> Self {
        Self {
            inner,
            state: Some(Box::new((scan, settle))),
        }
    }
}

impl<B> Body for TokenBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(state)) = (f.data_ref(), this.state.as_mut()) {
                    state.0.push(data);
                }
                // hyper stops polling once the body says it ended.
                if this.inner.is_end_stream()
                    && let Some(state) = this.state.take()
                {
                    let (scan, settle) = *state;
                    settle.finish(scan, true);
                }
            }
            None => {
                if let Some(state) = this.state.take() {
                    let (scan, settle) = *state;
                    settle.finish(scan, true);
                }
            }
            Some(Err(_)) => {
                if let Some(state) = this.state.take() {
                    let (scan, settle) = *state;
                    settle.finish(scan, false);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Response future of [`TokenBudget`].
pub type ResponseFuture<B, E> = crate::future::BoxedResponse<Answer<B>, E>;
