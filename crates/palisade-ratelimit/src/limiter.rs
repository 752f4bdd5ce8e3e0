//! The rate limiter: several limits per decision, tiers, modes, and an
//! in-process or shared (Redis) backend.

use crate::{
    error::RateLimitError,
    keyref::KeyRef,
    limit::{Limit, QuotaSource, Tier, Tiers},
    local::{Clock, DEFAULT_MAX_KEYS, LocalLimiter, PassThroughMap, TimeSource},
    metrics::{Outcome as MetricOutcome, RateLimitMetrics, SlotCounters},
    quota::{Algorithm, Decision, Quota},
};
use http::Request;
use palisade_store::{GcraRule, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    fmt::{self, Display},
    future::Future,
    hash::{BuildHasher, Hasher},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

/// Most limits one limiter checks per request.
pub const MAX_LIMITS: usize = 8;

/// What the limiter does with its decisions.
///
/// ```
/// use palisade_ratelimit::Mode;
///
/// assert_eq!(Mode::default(), Mode::Enforce);
/// let m: Mode = serde_json::from_str("\"log_only\"").unwrap();
/// assert_eq!(m, Mode::LogOnly);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// Decide, count and reject over-limit requests.
    #[default]
    Enforce,
    /// Shadow mode: decide, count and log, never reject (also spelled
    /// `shadow`).
    #[serde(alias = "shadow")]
    LogOnly,
    /// Do nothing: every request passes, no headers, no counting.
    Disabled,
}

/// What to do when the shared store cannot decide (down, timed out).
///
/// ```
/// use palisade_ratelimit::FailPolicy;
///
/// assert_eq!(FailPolicy::default(), FailPolicy::Open);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailPolicy {
    /// Let the request through (logged and counted).
    #[default]
    Open,
    /// Refuse the request (503 with `Retry-After: 1`).
    Closed,
}

/// How a decision ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Every enforced limit allowed the request (or none applied).
    Allowed,
    /// An enforced limit refused it.
    Rejected,
    /// The store failed and the limiter let the request through.
    FailedOpen,
    /// The store failed and the limiter refused the request.
    FailedClosed,
}

/// The answer to one check: the outcome and the decision of the strictest
/// enforced limit (the refusing one, or the one with the least room left).
///
/// ```
/// use palisade_ratelimit::{Limit, Outcome, Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::builder()
///     .limit(Limit::per_tool().with_quota(Quota::per_minute(1)))
///     .build()
///     .unwrap();
/// let v = limiter.check_key("tool", &"search", 1).await.unwrap();
/// assert!(v.is_allowed());
/// let v = limiter.check_key("tool", &"search", 1).await.unwrap();
/// assert_eq!(v.outcome(), Outcome::Rejected);
/// assert_eq!(v.retry_after().unwrap().as_secs_f64().ceil(), 60.0);
/// assert_eq!(v.limit_name(), Some("tool"));
/// # }
/// ```
#[derive(Debug)]
pub struct Verdict {
    pub(crate) outcome: Outcome,
    pub(crate) decision: Decision,
    pub(crate) policy: Option<&'static Policy>,
    pub(crate) shadow_rejected: bool,
    pub(crate) store_error: Option<Box<StoreError>>,
}

impl Verdict {
    fn allowed() -> Self {
        Self {
            outcome: Outcome::Allowed,
            decision: Decision::unlimited(),
            policy: None,
            shadow_rejected: false,
            store_error: None,
        }
    }

    /// How the decision ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the request may go on.
    pub fn is_allowed(&self) -> bool {
        matches!(self.outcome, Outcome::Allowed | Outcome::FailedOpen)
    }

    /// The strictest enforced limit's decision (all `u32::MAX` when no
    /// limit applied).
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// Requests still allowed now under the strictest limit.
    pub fn remaining(&self) -> u32 {
        self.decision.remaining
    }

    /// Time until the strictest limit is whole again.
    pub fn reset_after(&self) -> Duration {
        self.decision.reset_after
    }

    /// When refused: how long until the same request would be allowed.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.outcome {
            Outcome::Rejected => self.decision.retry_after,
            Outcome::FailedClosed => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// The name of the limit that decided, when one did.
    pub fn limit_name(&self) -> Option<&str> {
        self.policy.map(|p| &*p.name)
    }

    /// Whether a shadow limit would have refused the request.
    pub fn shadow_rejected(&self) -> bool {
        self.shadow_rejected
    }

    /// The refusal as an error (`None` when allowed).
    pub fn into_error(self) -> Option<RateLimitError> {
        match self.outcome {
            Outcome::Rejected => Some(RateLimitError::Exceeded {
                limit: self
                    .policy
                    .map_or_else(|| Arc::from("unknown"), |p| p.name.clone()),
                decision: self.decision,
            }),
            Outcome::FailedClosed => Some(RateLimitError::StoreUnavailable(
                self.store_error
                    .map_or(StoreError::Timeout(Duration::ZERO), |e| *e),
            )),
            _ => None,
        }
    }
}

/// A tier (none for untiered limits) and its quota (none: unlimited).
type TierQuota<'a> = (Option<&'a Tier>, Option<Quota>);

/// A tier resolver: which tier a request belongs to.
pub(crate) type TierFn = Arc<dyn Fn(&Request<()>) -> Option<Tier> + Send + Sync>;

/// Keys a store told us are over their limit, until they fit again.
struct Memo {
    until: PassThroughMap<u64>,
    max: usize,
}

impl Memo {
    fn blocked(&self, hash: u64, now: u64) -> Option<u64> {
        self.until.get(&hash).map(|u| *u).filter(|&u| u > now)
    }

    fn insert(&self, hash: u64, until: u64, now: u64) {
        if self.until.len() >= self.max {
            self.until.retain(|_, u| *u > now);
            if self.until.len() >= self.max {
                return;
            }
        }
        self.until.insert(hash, until);
    }
}

/// What the headers say about one (limit, tier), rendered once.
///
/// Policies are interned for the life of the process, one per distinct
/// (name, limit, window): a verdict points at its policy without touching a
/// shared reference count per request, and the header values are static
/// bytes (cloning them is a copy, not an atomic increment). Rebuilding a
/// limiter with the same configuration reuses the same policies.
#[derive(Debug)]
pub(crate) struct Policy {
    pub(crate) name: Arc<str>,
    /// `"<name>"` as a structured-field string.
    pub(crate) sf_name: &'static str,
    /// `X-RateLimit-Limit`.
    pub(crate) limit: http::HeaderValue,
    /// `RateLimit-Policy`.
    pub(crate) policy: http::HeaderValue,
}

type PolicyKey = (Arc<str>, u32, u64);

impl Policy {
    fn intern(name: &Arc<str>, quota: Quota) -> &'static Policy {
        static POLICIES: Mutex<Option<HashMap<PolicyKey, &'static Policy>>> = Mutex::new(None);
        let window = quota.period().as_secs() + u64::from(quota.period().subsec_nanos() > 0);
        let key = (name.clone(), quota.limit(), window);
        let mut all = POLICIES.lock().unwrap_or_else(PoisonError::into_inner);
        let all = all.get_or_insert_with(HashMap::new);
        if let Some(p) = all.get(&key) {
            return p;
        }
        // Only visible ASCII: `sf_string` escapes everything else, the rest
        // is digits and `;=`, so `from_static` cannot panic.
        let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
        let sf_name = leak(crate::layer::sf_string(name));
        let policy: &'static Policy = Box::leak(Box::new(Self {
            name: name.clone(),
            limit: http::HeaderValue::from_static(leak(quota.limit().to_string())),
            policy: http::HeaderValue::from_static(leak(format!(
                "{sf_name};q={};w={window}",
                quota.limit()
            ))),
            sf_name,
        }));
        all.insert(key, policy);
        policy
    }
}

pub(crate) struct Slot {
    quota: Option<Quota>,
    policy: Option<&'static Policy>,
    local: Option<LocalLimiter>,
    memo: Option<Memo>,
    counters: Option<SlotCounters>,
}

pub(crate) struct Entry {
    limit: Limit,
    tiered: bool,
    slots: Box<[Slot]>,
}

pub(crate) struct Shared {
    entries: Box<[Entry]>,
    tiers: Tiers,
    /// `None`: the default, a [`Tier`] extension (read without cloning it).
    resolve: Option<TierFn>,
    any_tiered: bool,
    mode: Mode,
    store: Option<Store>,
    /// Every store key under this Redis Cluster hash tag (one slot).
    hash_tag: Option<Box<str>>,
    fail: FailPolicy,
    time: TimeSource,
    hasher: foldhash::quality::RandomState,
    metrics: Option<RateLimitMetrics>,
}

/// Decides whether requests may go on: several [`Limit`]s per decision
/// (the strictest answer wins), tiers, modes, and a backend — in-process
/// (lock-free, the default) or a shared [`Store`] (Redis / Redis Cluster:
/// one round trip per decision, exact across replicas).
///
/// Cheap to clone; [`RateLimitLayer`](crate::RateLimitLayer) wraps one for
/// HTTP and gRPC services, and [`check_key`](RateLimiter::check_key) /
/// [`check_keys`](RateLimiter::check_keys) serve code that is not a request
/// (a tool call, a job).
///
/// ```
/// use palisade_ratelimit::{Limit, Quota, RateLimiter, Tier, Tiers};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let limiter = RateLimiter::builder()
///     .limit(Limit::per_user())
///     .limit(Limit::per_tool().cost(5))
///     .build()
///     .unwrap();
/// let v = limiter
///     .check_keys(&[("user", &"alice"), ("tool", &"web_search")], None, 5)
///     .await
///     .unwrap();
/// assert!(v.is_allowed());
/// assert_eq!(v.limit_name(), Some("tool"), "50/min with 5 spent is the strictest");
/// assert_eq!(v.remaining(), 45);
/// # }
/// ```
#[derive(Clone)]
pub struct RateLimiter {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field(
                "limits",
                &self
                    .shared
                    .entries
                    .iter()
                    .map(|e| &e.limit)
                    .collect::<Vec<_>>(),
            )
            .field("tiers", &self.shared.tiers)
            .field("mode", &self.shared.mode)
            .field("store", &self.shared.store.as_ref().map(Store::backend))
            .field("on_store_error", &self.shared.fail)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RateLimiter`]. See [`RateLimiter::builder`].
pub struct RateLimiterBuilder {
    limits: Vec<Limit>,
    tiers: Tiers,
    resolve: Option<TierFn>,
    mode: Mode,
    store: Option<Store>,
    hash_tag: Option<Box<str>>,
    fail: FailPolicy,
    max_keys: usize,
    clock: Clock,
    metrics: Option<RateLimitMetrics>,
}

impl fmt::Debug for RateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterBuilder")
            .field("limits", &self.limits)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimiterBuilder {
    fn default() -> Self {
        Self {
            limits: Vec::new(),
            tiers: Tiers::default(),
            resolve: None,
            mode: Mode::Enforce,
            store: None,
            hash_tag: None,
            fail: FailPolicy::Open,
            max_keys: DEFAULT_MAX_KEYS,
            clock: Clock::Tokio,
            metrics: None,
        }
    }
}

impl RateLimiterBuilder {
    /// Adds a limit (when none is added: [`Limit::per_ip`], 60/min).
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.push(limit);
        self
    }

    /// The tier table of tiered limits (default: [`Tiers::default`]).
    pub fn tiers(mut self, tiers: Tiers) -> Self {
        self.tiers = tiers;
        self
    }

    /// How a request's tier is found (default: a [`Tier`] request
    /// extension); requests without one get the table's default tier.
    pub fn tier_resolver(
        mut self,
        f: impl Fn(&Request<()>) -> Option<Tier> + Send + Sync + 'static,
    ) -> Self {
        self.resolve = Some(Arc::new(f));
        self
    }

    /// Enforce (default), log-only or disabled.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Shares the counters through `store` (Redis or Redis Cluster) instead
    /// of in-process; GCRA limits only.
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Puts every counter of this limiter under one Redis Cluster hash tag
    /// (`{tag}`), so all of a request's limits sit in one slot and each
    /// decision is one script, one round trip, on a cluster too — where
    /// limits in different slots take a peek then a count per slot. The
    /// price: every counter of the limiter lives on one master. Without a
    /// cluster it changes nothing but the key names.
    ///
    /// ```
    /// use palisade_ratelimit::{Limit, RateLimiter};
    /// use palisade_store::Store;
    ///
    /// let limiter = RateLimiter::builder()
    ///     .limit(Limit::per_user())
    ///     .limit(Limit::per_tool())
    ///     .store(Store::in_memory())
    ///     .hash_tag("ratelimit")
    ///     .build()
    ///     .unwrap();
    /// # let _ = limiter;
    /// ```
    pub fn hash_tag(mut self, tag: impl Into<String>) -> Self {
        self.hash_tag = Some(tag.into().into_boxed_str());
        self
    }

    /// What to do when the store fails (default: fail open).
    pub fn on_store_error(mut self, policy: FailPolicy) -> Self {
        self.fail = policy;
        self
    }

    /// Most keys tracked in-process per limit (and per tier), default
    /// 100 000.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// The clock of in-process limits and of the memo (default
    /// [`Clock::Tokio`], which follows a paused test clock).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Counts decisions and store errors on these metrics.
    pub fn metrics(mut self, metrics: &RateLimitMetrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Checks the configuration and builds the limiter.
    ///
    /// # Errors
    /// [`RateLimitError::InvalidConfig`] naming the limit and the problem:
    /// an invalid quota, two limits of one name, more than [`MAX_LIMITS`]
    /// limits, or a window algorithm on a shared store.
    pub fn build(self) -> Result<RateLimiter, RateLimitError> {
        let mut limits = self.limits;
        if limits.is_empty() {
            limits.push(Limit::per_ip());
        }
        let bad = |msg: String| RateLimitError::InvalidConfig(msg);
        if limits.len() > MAX_LIMITS {
            return Err(bad(format!(
                "{} limits given, at most {MAX_LIMITS} per limiter",
                limits.len()
            )));
        }
        let time = TimeSource::new(self.clock);
        let mut entries = Vec::with_capacity(limits.len());
        for (i, limit) in limits.iter().enumerate() {
            if limits[..i].iter().any(|l| l.name == limit.name) {
                return Err(bad(format!("two limits are named {:?}", limit.name)));
            }
            if limit.name.is_empty() {
                return Err(bad("a limit has an empty name".into()));
            }
            let (tiered, quotas): (bool, Vec<TierQuota<'_>>) = match limit.quota {
                QuotaSource::Fixed(q) => (false, vec![(None, Some(q))]),
                QuotaSource::Tiered => {
                    (true, self.tiers.iter().map(|(t, q)| (Some(t), q)).collect())
                }
            };
            let mut slots = Vec::with_capacity(quotas.len());
            for (tier, quota) in quotas {
                let name = match tier {
                    Some(t) => format!("limit {:?}, tier {:?}", limit.name, t.as_str()),
                    None => format!("limit {:?}", limit.name),
                };
                if let Some(q) = quota {
                    q.validate().map_err(|e| bad(format!("{name}: {e}")))?;
                    if self.store.is_some() {
                        if q.algorithm() != Algorithm::Gcra {
                            return Err(bad(format!(
                                "{name}: {} is in-process only; use gcra with a shared store",
                                q.algorithm().as_str()
                            )));
                        }
                        let rule = GcraRule::new(q.limit(), q.period());
                        if rule.emission_interval().is_zero()
                            || q.period() > Duration::from_secs(280_000_000)
                        {
                            return Err(bad(format!(
                                "{name}: the store counts in microseconds: at most one request \
                                 per microsecond, periods up to about 8.9 years"
                            )));
                        }
                    }
                }
                let local = match (quota, &self.store) {
                    (Some(q), None) => {
                        Some(LocalLimiter::with_max_keys(q, self.max_keys)?.with_time(time.clone()))
                    }
                    _ => None,
                };
                let memo = (quota.is_some() && self.store.is_some()).then(|| Memo {
                    until: PassThroughMap::default(),
                    max: self.max_keys,
                });
                let counters = self
                    .metrics
                    .as_ref()
                    .map(|m| m.slot(&limit.name, tier.map_or("none", Tier::as_str)));
                slots.push(Slot {
                    quota,
                    policy: quota.map(|q| Policy::intern(&limit.name, q)),
                    local,
                    memo,
                    counters,
                });
            }
            entries.push(Entry {
                limit: limit.clone(),
                tiered,
                slots: slots.into(),
            });
        }
        Ok(RateLimiter {
            shared: Arc::new(Shared {
                any_tiered: entries.iter().any(|e| e.tiered),
                entries: entries.into(),
                tiers: self.tiers,
                resolve: self.resolve,
                mode: self.mode,
                store: self.store,
                hash_tag: self.hash_tag,
                fail: self.fail,
                time,
                hasher: foldhash::quality::RandomState::default(),
                metrics: self.metrics,
            }),
        })
    }
}

/// Follows the strictest decisions of one check.
#[derive(Default)]
struct Tally {
    head: Option<(Decision, usize, usize)>,
    rejected: Option<(Decision, usize, usize)>,
    shadow_rejected: bool,
}

impl Tally {
    /// Records one limit's decision; `true` when an enforced limit refused.
    #[inline]
    fn record(
        &mut self,
        shared: &Shared,
        entry: usize,
        slot: usize,
        d: Decision,
        shadow: bool,
    ) -> bool {
        let s = &shared.entries[entry].slots[slot];
        let outcome = match (d.allowed, shadow) {
            (true, _) => MetricOutcome::Allowed,
            (false, true) => MetricOutcome::ShadowRejected,
            (false, false) => MetricOutcome::Rejected,
        };
        if let Some(c) = &s.counters {
            c.inc(outcome);
        }
        if d.allowed {
            if !shadow
                && self.head.is_none_or(|(h, _, _)| {
                    d.remaining < h.remaining
                        || (d.remaining == h.remaining && d.reset_after > h.reset_after)
                })
            {
                self.head = Some((d, entry, slot));
            }
            return false;
        }
        let name = &shared.entries[entry].limit.name;
        if shadow {
            self.shadow_rejected = true;
            tracing::info!(limit = %name, retry_after = ?d.retry_after, "rate limit exceeded (shadow: not enforced)");
            return false;
        }
        tracing::debug!(limit = %name, retry_after = ?d.retry_after, "rate limit exceeded");
        if self
            .rejected
            .is_none_or(|(r, _, _)| d.retry_after > r.retry_after)
        {
            self.rejected = Some((d, entry, slot));
        }
        true
    }

    #[inline]
    fn verdict(self, shared: &Shared) -> Verdict {
        let policy = |entry: usize, slot: usize| shared.entries[entry].slots[slot].policy;
        match (self.rejected, self.head) {
            (Some((d, e, s)), _) => Verdict {
                outcome: Outcome::Rejected,
                decision: d,
                policy: policy(e, s),
                shadow_rejected: self.shadow_rejected,
                store_error: None,
            },
            (None, Some((d, e, s))) => Verdict {
                outcome: Outcome::Allowed,
                decision: d,
                policy: policy(e, s),
                shadow_rejected: self.shadow_rejected,
                store_error: None,
            },
            (None, None) => Verdict {
                shadow_rejected: self.shadow_rejected,
                ..Verdict::allowed()
            },
        }
    }
}

/// One check to make on the store.
pub(crate) struct Planned {
    entry: usize,
    slot: usize,
    key: String,
    hash: u64,
    cost: u32,
    shadow: bool,
}

/// The future of [`RateLimiter::check_keys`]: complete at once in-process
/// (no shared state cloned, nothing allocated), boxed on the store path.
enum Check {
    Ready(Option<Result<Verdict, RateLimitError>>),
    Store(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

impl Future for Check {
    type Output = Result<Verdict, RateLimitError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Check::Ready(r) => Poll::Ready(r.take().expect("polled after completion")),
            Check::Store(f) => f.as_mut().poll(cx).map(Ok),
        }
    }
}

/// A decision still to be made: at once (in-process) or on the store.
pub(crate) enum Pending {
    Ready(Verdict),
    Store(Vec<Planned>),
}

impl RateLimiter {
    /// A builder with the defaults: no limit yet (60/min per IP when none is
    /// added), the default tiers, enforce mode, in-process, fail open.
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder::default()
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// The limits, in order.
    pub fn limits(&self) -> impl Iterator<Item = &Limit> {
        self.shared.entries.iter().map(|e| &e.limit)
    }

    /// Checks one limit for one key (a tool call, a job), counting `cost`.
    ///
    /// The keys are read at once; the returned future owns everything it
    /// needs (`Send + 'static`), and in-process it is already complete.
    ///
    /// # Errors
    /// [`RateLimitError::UnknownLimit`] when no limit has that name.
    pub fn check_key(
        &self,
        limit: &str,
        key: &dyn Display,
        cost: u32,
    ) -> impl Future<Output = Result<Verdict, RateLimitError>> + Send + 'static + use<> {
        self.check_keys(&[(limit, key)], None, cost)
    }

    /// Checks several limits at once (all counted, or none when one
    /// refuses), each `(limit name, key)`, counting `cost` on each; `tier`
    /// picks the quota of tiered limits (the default tier when `None`).
    ///
    /// # Errors
    /// [`RateLimitError::UnknownLimit`] when a name matches no limit.
    pub fn check_keys(
        &self,
        keys: &[(&str, &dyn Display)],
        tier: Option<&Tier>,
        cost: u32,
    ) -> impl Future<Output = Result<Verdict, RateLimitError>> + Send + 'static + use<> {
        match self.plan_keys(keys, tier, cost) {
            Ok(Pending::Store(plan)) => {
                Check::Store(Box::pin(decide_store(self.shared.clone(), plan)))
            }
            Ok(Pending::Ready(v)) => Check::Ready(Some(Ok(v))),
            Err(e) => Check::Ready(Some(Err(e))),
        }
    }

    #[inline]
    fn plan_keys(
        &self,
        keys: &[(&str, &dyn Display)],
        tier: Option<&Tier>,
        cost: u32,
    ) -> Result<Pending, RateLimitError> {
        let shared = &self.shared;
        let tier = shared.tiers.index(tier);
        let mut plan = [(0usize, None::<KeyRef<'_>>); MAX_LIMITS];
        if keys.len() > MAX_LIMITS {
            return Err(RateLimitError::InvalidConfig(format!(
                "{} keys checked at once, at most {MAX_LIMITS}",
                keys.len()
            )));
        }
        for (i, &(name, key)) in keys.iter().enumerate() {
            let entry = shared
                .entries
                .iter()
                .position(|e| *e.limit.name == *name)
                .ok_or_else(|| RateLimitError::UnknownLimit(name.to_owned()))?;
            plan[i] = (entry, Some(KeyRef::Display(key)));
        }
        if shared.mode == Mode::Disabled {
            return Ok(Pending::Ready(Verdict::allowed()));
        }
        let shadow_all = shared.mode == Mode::LogOnly;
        Ok(self.decide(&mut |f| {
            for &(entry, key) in &plan[..keys.len()] {
                let Some(key) = key else { continue };
                let e = &shared.entries[entry];
                let slot = if e.tiered { tier } else { 0 };
                if e.slots[slot].quota.is_some()
                    && !f(entry, slot, key, cost, e.limit.shadow || shadow_all)
                {
                    break;
                }
            }
        }))
    }

    /// Plans the checks of a request (its body set aside).
    #[inline]
    pub(crate) fn begin(&self, req: &Request<()>) -> Pending {
        let shared = &self.shared;
        let tier = if shared.any_tiered {
            match &shared.resolve {
                Some(resolve) => shared.tiers.index(resolve(req).as_ref()),
                None => shared.tiers.index(req.extensions().get::<Tier>()),
            }
        } else {
            0
        };
        let shadow_all = shared.mode == Mode::LogOnly;
        self.decide(&mut |f| {
            for (i, e) in shared.entries.iter().enumerate() {
                let slot = if e.tiered { tier } else { 0 };
                if e.slots[slot].quota.is_none() {
                    continue;
                }
                let cost = e.limit.cost_fn.as_ref().map_or(e.limit.cost, |c| c(req));
                let shadow = e.limit.shadow || shadow_all;
                let mut go = true;
                e.limit
                    .key
                    .visit(req, &mut |k| go = f(i, slot, k, cost, shadow));
                if !go {
                    break;
                }
            }
        })
    }

    /// Decides in-process at once, or plans the store checks.
    #[allow(clippy::type_complexity)]
    #[inline]
    fn decide(
        &self,
        items: &mut dyn FnMut(&mut dyn FnMut(usize, usize, KeyRef<'_>, u32, bool) -> bool),
    ) -> Pending {
        let shared = &*self.shared;
        if let Some(store) = &shared.store {
            let mut plan = Vec::new();
            items(&mut |entry, slot, key, cost, shadow| {
                let name = &shared.entries[entry].limit.name;
                let (hash, key) = key.with_str(|k| {
                    let stored = match &shared.hash_tag {
                        None => store.key("ratelimit", name, k, "v1"),
                        Some(tag) => store.grouped_key(tag, "ratelimit", name, k, "v1"),
                    };
                    (shared.hash_bytes(k.as_bytes()), stored)
                });
                plan.push(Planned {
                    entry,
                    slot,
                    key,
                    hash,
                    cost,
                    shadow,
                });
                true
            });
            return Pending::Store(plan);
        }
        let mut tally = Tally::default();
        let mut taken = [(0u8, 0u8, 0u64, 0u32); MAX_LIMITS];
        let mut n = 0;
        let mut now = None;
        items(&mut |entry, slot, key, cost, shadow| {
            let s = &shared.entries[entry].slots[slot];
            let (Some(local), Some(q)) = (&s.local, s.quota) else {
                return true;
            };
            let hash = key.with_bytes(|k| local.hash_bytes(k));
            // One clock reading per request, shared by its limits.
            let now = *now.get_or_insert_with(|| shared.now());
            let d = local.check_hashed(hash, q.limit(), cost, now);
            if d.allowed && n < MAX_LIMITS {
                taken[n] = (entry as u8, slot as u8, hash, cost);
                n += 1;
            }
            !tally.record(shared, entry, slot, d, shadow)
        });
        if tally.rejected.is_some() {
            // All or nothing: give back what the other limits took.
            for &(entry, slot, hash, cost) in &taken[..n] {
                let s = &shared.entries[usize::from(entry)].slots[usize::from(slot)];
                if let (Some(local), Some(q)) = (&s.local, s.quota) {
                    local.refund(hash, q.limit(), cost, now.unwrap_or_default());
                }
            }
        }
        Pending::Ready(tally.verdict(shared))
    }
}

impl Shared {
    fn hash_bytes(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    fn now(&self) -> u64 {
        self.time.now()
    }

    fn failed(&self, plan: &[Planned], err: StoreError) -> Verdict {
        let closed = self.fail == FailPolicy::Closed && self.mode == Mode::Enforce;
        if let Some(m) = &self.metrics {
            m.store_error(&err);
        }
        for p in plan {
            if let Some(c) = &self.entries[p.entry].slots[p.slot].counters {
                c.inc(if closed {
                    MetricOutcome::FailClosed
                } else {
                    MetricOutcome::FailOpen
                });
            }
        }
        if closed {
            tracing::error!(error = %err, "rate-limit store failed: refusing the request (fail closed)");
            Verdict {
                outcome: Outcome::FailedClosed,
                store_error: Some(Box::new(err)),
                ..Verdict::allowed()
            }
        } else {
            tracing::warn!(error = %err, "rate-limit store failed: letting the request through (fail open)");
            Verdict {
                outcome: Outcome::FailedOpen,
                ..Verdict::allowed()
            }
        }
    }
}

/// Decides on the store: one round trip (a second one only when nothing but
/// shadow limits refused, to count the rest).
pub(crate) async fn decide_store(shared: Arc<Shared>, plan: Vec<Planned>) -> Verdict {
    let Some(store) = shared.store.as_ref() else {
        return Verdict::allowed();
    };
    let mut tally = Tally::default();
    if plan.is_empty() {
        return tally.verdict(&shared);
    }
    // Keys known to be over their limit are refused without a round trip;
    // costs above a limit can never pass.
    let now = shared.now();
    for p in plan.iter().filter(|p| !p.shadow) {
        let slot = &shared.entries[p.entry].slots[p.slot];
        let Some(q) = slot.quota else { continue };
        let refused = if p.cost > q.limit() {
            Some(Decision {
                allowed: false,
                limit: q.limit(),
                remaining: 0,
                reset_after: Duration::ZERO,
                retry_after: None,
            })
        } else {
            slot.memo
                .as_ref()
                .and_then(|m| m.blocked(p.hash, now))
                .map(|until| {
                    if let Some(m) = &shared.metrics {
                        m.memo_hit(&shared.entries[p.entry].limit.name);
                    }
                    let wait = Duration::from_nanos(until - now);
                    Decision {
                        allowed: false,
                        limit: q.limit(),
                        remaining: 0,
                        reset_after: wait,
                        retry_after: Some(wait),
                    }
                })
        };
        if let Some(d) = refused {
            tally.record(&shared, p.entry, p.slot, d, false);
            return tally.verdict(&shared);
        }
    }
    let rule = |p: &Planned| {
        let q = shared.entries[p.entry].slots[p.slot]
            .quota
            .unwrap_or(Quota::per_second(1));
        GcraRule::new(q.limit(), q.period())
    };
    let run = |idx: Vec<usize>| {
        let checks: Vec<(&str, GcraRule, u32)> = idx
            .iter()
            .map(|&i| {
                (
                    plan[i].key.as_str(),
                    rule(&plan[i]),
                    plan[i].cost.min(rule(&plan[i]).limit),
                )
            })
            .collect();
        async move {
            if let [(key, rule, cost)] = checks[..] {
                store.rate_limit(key, rule, cost).await.map(|d| vec![d])
            } else {
                store.rate_limit_many(&checks).await
            }
        }
    };
    let mut decisions: Vec<Decision> = match run((0..plan.len()).collect()).await {
        Ok(ds) => ds.into_iter().map(Decision::from).collect(),
        Err(err) => return shared.failed(&plan, err),
    };
    let enforced_refused = decisions
        .iter()
        .zip(&plan)
        .any(|(d, p)| !d.allowed && !p.shadow);
    if !enforced_refused && decisions.iter().any(|d| !d.allowed) {
        // Only shadow limits refused, so nothing was counted: count the rest.
        let again: Vec<usize> = (0..plan.len()).filter(|&i| decisions[i].allowed).collect();
        if !again.is_empty() {
            match run(again.clone()).await {
                Ok(ds) => {
                    for (i, d) in again.into_iter().zip(ds) {
                        decisions[i] = d.into();
                    }
                }
                Err(err) => return shared.failed(&plan, err),
            }
        }
    }
    let now = shared.now();
    for (p, d) in plan.iter().zip(decisions) {
        if tally.record(&shared, p.entry, p.slot, d, p.shadow) {
            let slot = &shared.entries[p.entry].slots[p.slot];
            if let (Some(memo), Some(q), Some(after)) = (&slot.memo, slot.quota, d.retry_after) {
                // Until a request of cost 1 fits again.
                let t = GcraRule::new(q.limit(), q.period()).emission_interval();
                let wait = after.saturating_sub(t * p.cost.saturating_sub(1));
                if !wait.is_zero() {
                    let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
                    memo.insert(p.hash, now.saturating_add(wait), now);
                }
            }
        }
    }
    tally.verdict(&shared)
}
