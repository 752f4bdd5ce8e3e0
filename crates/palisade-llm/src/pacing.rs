//! Provider pacing: the provider's own quota, shared between replicas. See
//! [`ProviderPacing`].

use crate::quota::{ProviderQuota, QuotaKind, Spent};
use http::{HeaderMap, Request, Response};
use palisade_core::metrics::{register_counter_vec, register_int_gauge_vec};
use palisade_core::{Error, ErrorKind, PalisadeBody, is_grpc_request};
use palisade_store::Store;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use sha2::{Digest, Sha256};
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::sync::Semaphore;
use tower_layer::Layer;
use tower_service::Service;

const PROBLEM_TYPE: &str = "https://palisade.invalid/problems/provider-quota";

/// The headers that carry a provider credential, hashed into the state's
/// key (the first one present).
const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// A bad provider pacing setting.
///
/// ```
/// use palisade_llm::{PacingError, ProviderPacingLayer};
/// use palisade_store::Store;
///
/// let err = ProviderPacingLayer::builder(Store::in_memory()).upstream("").build().unwrap_err();
/// assert_eq!(err.field(), Some("upstream"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacingError {
    /// A setting is invalid.
    #[error("invalid provider pacing: {field}: {reason}")]
    InvalidField {
        /// The setting (the configuration key under `[llm.pacing]`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl PacingError {
    fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The setting at fault, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidField { field, .. } => Some(field),
        }
    }
}

/// The provider pacing metrics, registered once per registry:
///
/// - `palisade_llm_provider_remaining{upstream, kind}` (gauge) — what the
///   provider last said was left of its `requests`, `tokens`,
///   `input_tokens` or `output_tokens` budget, as this replica saw it (on
///   any credential; zero when it refused from the shared state);
/// - `palisade_llm_provider_pacing_total{upstream, outcome}` — `refused`
///   (answered 429 without calling the provider), `waited` (queued until
///   the provider's reset, then sent), `spent` (a provider response said
///   its budget is spent: a 429, or nothing remaining until a reset) and
///   `store_error` (the shared state could not be read or written; the
///   request was sent).
///
/// ```
/// let registry = prometheus::Registry::new();
/// let metrics = palisade_llm::PacingMetrics::register(&registry).unwrap();
/// assert!(palisade_llm::PacingMetrics::register(&registry).is_err());
/// # let _ = metrics;
/// ```
#[derive(Clone, Debug)]
pub struct PacingMetrics {
    remaining: IntGaugeVec,
    outcomes: IntCounterVec,
}

impl PacingMetrics {
    /// Registers the metrics on `registry`.
    ///
    /// # Errors
    /// When they are already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            remaining: register_int_gauge_vec(
                registry,
                "palisade_llm_provider_remaining",
                "What the LLM provider last reported left of its budget, per kind.",
                &["upstream", "kind"],
            )?,
            outcomes: register_counter_vec(
                registry,
                "palisade_llm_provider_pacing_total",
                "Provider pacing decisions: refused, waited, spent (reported by the provider), store_error.",
                &["upstream", "outcome"],
            )?,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Refused = 0,
    Waited = 1,
    Spent = 2,
    StoreError = 3,
}

const OUTCOMES: [&str; 4] = ["refused", "waited", "spent", "store_error"];

#[derive(Debug)]
struct Counters {
    remaining: [IntGauge; 4],
    outcomes: [IntCounter; 4],
}

fn kind_index(kind: QuotaKind) -> usize {
    QuotaKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

struct Shared {
    store: Store,
    upstream: Arc<str>,
    path_prefix: Option<Arc<str>>,
    max_wait: Duration,
    queue: Option<Arc<Semaphore>>,
    metrics: Option<Counters>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderPacing")
            .field("upstream", &self.upstream)
            .field("path_prefix", &self.path_prefix)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

/// The provider's budget is spent, as the shared state says.
#[derive(Debug)]
struct Block {
    /// When the provider said it has budget again (Unix ms).
    until: u64,
    wait: Duration,
    limit: String,
    kind: Option<QuotaKind>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shared {
    fn count(&self, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            m.outcomes[outcome as usize].inc();
        }
    }

    fn gauge(&self, kind: QuotaKind, remaining: u64) {
        if let Some(m) = &self.metrics {
            m.remaining[kind_index(kind)].set(i64::try_from(remaining).unwrap_or(i64::MAX));
        }
    }

    /// The shared state of `key`: `<until unix ms> <kind or -> <limit>`.
    async fn blocked(&self, key: &str) -> Option<Block> {
        let raw = match self.store.get(key).await {
            Ok(v) => v?,
            Err(e) => {
                tracing::warn!(upstream = %self.upstream, error = %e, "provider pacing state unreadable; sending");
                self.count(Outcome::StoreError);
                return None;
            }
        };
        let text = std::str::from_utf8(&raw).ok()?;
        let mut parts = text.splitn(3, ' ');
        let until: u64 = parts.next()?.parse().ok()?;
        let kind = parts.next()?;
        let limit = parts.next()?.to_owned();
        let wait = Duration::from_millis(until.saturating_sub(unix_ms(SystemTime::now())));
        if wait.is_zero() {
            return None;
        }
        let kind = QuotaKind::ALL.into_iter().find(|k| k.as_str() == kind);
        Some(Block {
            until,
            wait,
            limit,
            kind,
        })
    }

    /// Shares that the provider is spent for `spent.wait` from now, unless
    /// a longer wait is already shared.
    async fn record(&self, key: &str, spent: &Spent) {
        self.count(Outcome::Spent);
        let until = unix_ms(SystemTime::now() + spent.wait);
        if let Some(current) = self.blocked(key).await
            && current.wait >= spent.wait
        {
            return;
        }
        let kind = spent.kind.map_or("-", QuotaKind::as_str);
        let value = format!("{until} {kind} {}", spent.limit);
        // The entry lives as long as the wait: on Redis it expires by the
        // server's clock, in-process by tokio's (a paused test clock too).
        let ttl = spent.wait.max(Duration::from_millis(1));
        if let Err(e) = self.store.set(key, value.into(), Some(ttl)).await {
            tracing::warn!(upstream = %self.upstream, error = %e, "provider pacing state not shared");
            self.count(Outcome::StoreError);
        }
    }

    fn observe(&self, quota: &ProviderQuota) {
        for kind in QuotaKind::ALL {
            if let Some(r) = quota.remaining(kind) {
                self.gauge(kind, r);
            }
        }
    }

    fn refusal(&self, block: &Block) -> Error {
        if let Some(kind) = block.kind {
            self.gauge(kind, 0);
        }
        self.count(Outcome::Refused);
        Error::new(
            ErrorKind::RateLimited,
            format!(
                "the provider's limit {} of upstream {:?} is spent for this credential; retry after {} s",
                block.limit,
                self.upstream,
                block.wait.as_secs() + u64::from(block.wait.subsec_nanos() > 0)
            ),
        )
        .with_retry_after(block.wait)
        .with_problem_type(PROBLEM_TYPE)
    }
}

/// The state's credential part: a hash of the credential header (never the
/// secret itself), or `none`.
fn credential(headers: &HeaderMap) -> String {
    let Some(value) = CREDENTIAL_HEADERS.iter().find_map(|h| headers.get(*h)) else {
        return "none".into();
    };
    let digest = Sha256::digest(value.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds a [`ProviderPacingLayer`]; see [`ProviderPacingLayer::builder`].
///
/// ```
/// use palisade_llm::ProviderPacingLayer;
/// use palisade_store::Store;
/// use std::time::Duration;
///
/// let layer = ProviderPacingLayer::builder(Store::in_memory())
///     .upstream("openai")
///     .path_prefix("/v1/")
///     .wait(Duration::from_secs(5), 32)
///     .build()
///     .unwrap();
/// assert_eq!(layer.upstream(), "openai");
/// ```
#[derive(Debug)]
#[must_use]
pub struct ProviderPacingBuilder {
    store: Store,
    upstream: String,
    path_prefix: Option<String>,
    max_wait: Duration,
    max_waiting: usize,
    metrics: Option<PacingMetrics>,
}

impl ProviderPacingBuilder {
    /// The upstream's name: part of the shared state's key and the metrics'
    /// `upstream` label (default `upstream`).
    pub fn upstream(mut self, name: impl Into<String>) -> Self {
        self.upstream = name.into();
        self
    }

    /// Paces only requests whose path starts with `prefix` (e.g. `/v1/`);
    /// the others pass untouched and their responses are not read.
    pub fn path_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Instead of refusing at once, a request whose provider is spent for
    /// at most `max_wait` waits for the reset — at most `max_waiting` at a
    /// time per layer; the others are refused. Default: no waiting.
    pub fn wait(mut self, max_wait: Duration, max_waiting: usize) -> Self {
        self.max_wait = max_wait;
        self.max_waiting = max_waiting;
        self
    }

    /// Reports on `metrics`.
    pub fn metrics(mut self, metrics: &PacingMetrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    /// [`PacingError::InvalidField`] naming the setting: an empty
    /// `upstream`, a `path_prefix` not starting with `/`, a `max_wait`
    /// without room to wait (`max_waiting` 0) or over an hour.
    pub fn build(self) -> Result<ProviderPacingLayer, PacingError> {
        if self.upstream.is_empty() {
            return Err(PacingError::invalid("upstream", "must not be empty"));
        }
        if let Some(p) = &self.path_prefix
            && !p.starts_with('/')
        {
            return Err(PacingError::invalid(
                "path_prefix",
                format!("{p:?} must start with '/'"),
            ));
        }
        if self.max_wait > Duration::from_secs(3600) {
            return Err(PacingError::invalid("max_wait", "must be at most 1h"));
        }
        if !self.max_wait.is_zero() && self.max_waiting == 0 {
            return Err(PacingError::invalid(
                "max_waiting",
                "must be at least 1 when max_wait is set",
            ));
        }
        let upstream: Arc<str> = self.upstream.into();
        let metrics = self.metrics.map(|m| Counters {
            remaining: QuotaKind::ALL
                .map(|k| m.remaining.with_label_values(&[&upstream, k.as_str()])),
            outcomes: OUTCOMES.map(|o| m.outcomes.with_label_values(&[&upstream, o])),
        });
        Ok(ProviderPacingLayer {
            shared: Arc::new(Shared {
                store: self.store,
                upstream,
                path_prefix: self.path_prefix.map(Into::into),
                max_wait: self.max_wait,
                queue: (!self.max_wait.is_zero())
                    .then(|| Arc::new(Semaphore::new(self.max_waiting))),
                metrics,
            }),
        })
    }
}

/// Applies [`ProviderPacing`] to a service.
///
/// ```
/// use palisade_llm::ProviderPacingLayer;
/// use palisade_store::Store;
///
/// let layer = ProviderPacingLayer::builder(Store::in_memory()).build().unwrap();
/// assert_eq!(layer.upstream(), "upstream");
/// ```
#[derive(Clone, Debug)]
pub struct ProviderPacingLayer {
    shared: Arc<Shared>,
}

impl ProviderPacingLayer {
    /// A builder keeping the provider's state on `store` (in-process, or
    /// Redis shared by every replica).
    pub fn builder(store: Store) -> ProviderPacingBuilder {
        ProviderPacingBuilder {
            store,
            upstream: "upstream".into(),
            path_prefix: None,
            max_wait: Duration::ZERO,
            max_waiting: 0,
            metrics: None,
        }
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }
}

impl<S> Layer<S> for ProviderPacingLayer {
    type Service = ProviderPacing<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProviderPacing {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Paces calls to an LLM provider by the provider's own quota headers.
///
/// Every response passing through is read for the provider's quota
/// ([`quota`](crate::quota): OpenAI's `x-ratelimit-*`, Anthropic's
/// `anthropic-ratelimit-*`, a 429's `Retry-After`). When it says the
/// budget is spent — a 429 with `Retry-After`, or nothing remaining until
/// a reset — that is written to the [`Store`] under the upstream and a
/// hash of the request's credential (`Authorization`, `x-api-key` or
/// `api-key`; never the secret itself), expiring with the reset. On Redis
/// every replica sees it.
///
/// A request on a spent credential is then answered **429** by palisade,
/// with the provider's `Retry-After` and an `application/problem+json`
/// body naming the provider's limit, without calling the provider — or,
/// with [`wait`](ProviderPacingBuilder::wait), held until the reset when
/// that is near enough and the queue has room. The state is written before
/// the response that reported it is handed on, so the next request, on any
/// replica, sees it. A store that cannot be read lets requests through.
/// Answers palisade made itself (they carry an [`ErrorKind`] extension,
/// e.g. a [`TokenBudget`](crate::TokenBudget)'s 429 inside this layer) are
/// not read: they say nothing of the provider.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use palisade_llm::ProviderPacingLayer;
/// use palisade_store::Store;
/// use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let calls = Arc::new(AtomicUsize::new(0));
/// let seen = calls.clone();
/// let provider = ServiceBuilder::new()
///     .layer(ProviderPacingLayer::builder(Store::in_memory()).upstream("openai").build().unwrap())
///     .service_fn(move |_req: http::Request<Full<Bytes>>| {
///         seen.fetch_add(1, Ordering::SeqCst);
///         async {
///             let res = http::Response::builder()
///                 .status(429)
///                 .header("retry-after", "30")
///                 .body(Full::new(Bytes::from_static(b"{}")))
///                 .unwrap();
///             Ok::<_, std::convert::Infallible>(res)
///         }
///     });
/// let ask = || http::Request::post("/v1/chat/completions")
///     .header("authorization", "Bearer sk-one")
///     .body(Full::new(Bytes::new()))
///     .unwrap();
/// let first = provider.clone().oneshot(ask()).await.unwrap();
/// assert_eq!(first.status(), 429); // the provider's
/// let second = provider.oneshot(ask()).await.unwrap();
/// assert_eq!(second.status(), 429); // palisade's
/// assert_eq!(second.headers()["content-type"], "application/problem+json");
/// assert!(["29", "30"].contains(&second.headers()["retry-after"].to_str().unwrap()));
/// assert_eq!(calls.load(Ordering::SeqCst), 1, "the provider was called once");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ProviderPacing<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> ProviderPacing<S> {
    palisade_core::inner_accessors!(inner: S);
}

type Answer<B> = Response<PalisadeBody<B>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ProviderPacing<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Answer<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        if shared
            .path_prefix
            .as_deref()
            .is_some_and(|p| !req.uri().path().starts_with(p))
        {
            let fut = inner.call(req);
            return ResponseFuture::new(async move { Ok(fut.await?.map(PalisadeBody::inner)) });
        }
        let grpc = is_grpc_request(req.headers());
        let key = shared
            .store
            .key("pacing", &shared.upstream, &credential(req.headers()), "v1");
        ResponseFuture::new(async move {
            if let Some(block) = shared.blocked(&key).await {
                let permit = match &shared.queue {
                    Some(q) if block.wait <= shared.max_wait => q.clone().try_acquire_owned().ok(),
                    _ => None,
                };
                let Some(permit) = permit else {
                    tracing::debug!(upstream = %shared.upstream, limit = %block.limit, wait = ?block.wait, "provider spent; refused");
                    return Ok(shared.refusal(&block).into_http_response(grpc));
                };
                // Bounded: at most `max_wait`.
                tokio::time::sleep(block.wait).await;
                drop(permit);
                // Refused only when the wait was extended meanwhile (another
                // 429): the same entry may outlive the wait by a clock tick
                // (its expiry is the store's clock, the wait ours).
                if let Some(later) = shared.blocked(&key).await
                    && later.until > block.until
                {
                    return Ok(shared.refusal(&later).into_http_response(grpc));
                }
                shared.count(Outcome::Waited);
            }
            let res = inner.call(req).await?;
            // An answer by palisade itself (a token budget's 429 inside
            // this layer, a bulkhead's 503) is not the provider's word.
            if res.extensions().get::<ErrorKind>().is_some() {
                return Ok(res.map(PalisadeBody::inner));
            }
            let quota = ProviderQuota::from_headers(res.status(), res.headers(), SystemTime::now());
            shared.observe(&quota);
            if let Some(spent) = quota.spent() {
                tracing::info!(upstream = %shared.upstream, limit = spent.limit, wait = ?spent.wait, "provider reports its budget spent");
                shared.record(&key, &spent).await;
            }
            Ok(res.map(PalisadeBody::inner))
        })
    }
}

/// Response future of [`ProviderPacing`].
pub type ResponseFuture<B, E> = crate::future::BoxedResponse<Answer<B>, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hashed_not_kept() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), "none");
        h.insert("x-api-key", "sk-ant-secret".parse().unwrap());
        let a = credential(&h);
        assert_eq!(a.len(), 32);
        assert!(!a.contains("secret"));
        h.insert("authorization", "Bearer sk-secret".parse().unwrap());
        let b = credential(&h);
        assert_ne!(a, b, "authorization comes first");
    }

    #[test]
    fn bad_settings_name_the_key() {
        let b = || ProviderPacingLayer::builder(Store::in_memory());
        assert_eq!(
            b().upstream("").build().unwrap_err().field(),
            Some("upstream")
        );
        assert_eq!(
            b().path_prefix("v1").build().unwrap_err().field(),
            Some("path_prefix")
        );
        assert_eq!(
            b().wait(Duration::from_secs(1), 0)
                .build()
                .unwrap_err()
                .field(),
            Some("max_waiting")
        );
        assert_eq!(
            b().wait(Duration::from_secs(7200), 1)
                .build()
                .unwrap_err()
                .field(),
            Some("max_wait")
        );
    }
}
