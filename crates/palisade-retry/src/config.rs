//! Configuration: a serde [`Config`] whose `Default` is the defaults users
//! know, and the [`RetryLayerBuilder`] with the same fields.

use crate::{
    Backoff, Jitter, RetryBudget, RetryLayer, RetryMetrics, RetryReason, metrics::MetricHandles,
};
use http::StatusCode;
use palisade_core::GrpcCode;
use serde::{Deserialize, Serialize};
use std::{fmt, sync::Arc, time::Duration};

/// Retry settings, as read from a file or the environment.
///
/// `Default` is the tool-gateway profile users had: 3 attempts, 2 s → 4 s →
/// 8 s capped at 10 s, no jitter, retry on 429 / 502 / 503 / 504 and gRPC
/// `UNAVAILABLE`, idempotent methods only, bodies replayed up to 64 KiB, and
/// a budget of 20 % of requests plus 10 retries a second over 10 s.
/// [`Config::in_cluster`] is a faster profile for calls inside a cluster.
///
/// ```
/// use palisade_retry::{Config, RetryLayer};
/// use std::time::Duration;
///
/// let config: Config = serde_json::from_str(
///     r#"{"max_attempts": 5, "initial_delay": "100ms", "jitter": "full",
///         "attempt_timeout": "2s", "budget": {"ratio": 0.1}}"#,
/// )
/// .unwrap();
/// assert_eq!(config.initial_delay, Duration::from_millis(100));
/// assert_eq!(config.budget.as_ref().unwrap().min_per_sec, 10);
/// let layer = RetryLayer::from_config(&config).unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `false` turns retry off: one attempt, no attempt timeout, deadline,
    /// budget or hedge (default `true`).
    pub enabled: bool,
    /// Attempts in all, the first included (≥ 1).
    pub max_attempts: u32,
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Factor by which the delay grows for each further retry (≥ 1).
    pub base: f64,
    /// Delay cap. A `Retry-After` above it is not waited for: the response
    /// is returned.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// How delays are randomised.
    pub jitter: Jitter,
    /// Time limit of each attempt (none by default).
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Option<Duration>,
    /// Time limit of the whole call, waits and retries included (none by
    /// default).
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Response statuses that are retried. Only 5xx and 408, 425, 429 are
    /// accepted: other 4xx blame the request and never change on retry.
    pub retry_statuses: Vec<u16>,
    /// gRPC codes (numbers, e.g. 14 for `UNAVAILABLE`) in a response's
    /// `grpc-status` header that are retried.
    pub retry_grpc_codes: Vec<i32>,
    /// Retry non-idempotent requests (`POST`, `PATCH`) too. Off by default:
    /// they are then retried only when the request surely never left
    /// (connect errors). A request with an `Idempotency-Key` header counts
    /// as idempotent.
    pub retry_non_idempotent: bool,
    /// Retry gRPC calls (always `POST`) on the gRPC codes above. On by
    /// default: those codes mean the server did not process the call.
    pub retry_grpc: bool,
    /// Wait as long as `Retry-After` (and `X-RateLimit-Reset` on 429) asks,
    /// instead of the backoff.
    pub honor_retry_after: bool,
    /// Largest request body buffered so it can be replayed. A larger body is
    /// streamed through once and not retried.
    pub max_replay_body: usize,
    /// The retry budget; `null` for none.
    pub budget: Option<BudgetConfig>,
    /// Hedging: send a second attempt if the first has not answered after a
    /// delay (idempotent requests only); `null` (default) for none.
    pub hedge: Option<HedgeConfig>,
}

/// Retry budget settings (see [`RetryBudget`]).
///
/// ```
/// use palisade_retry::BudgetConfig;
///
/// let b: BudgetConfig = serde_json::from_str(r#"{"ratio": 0.1, "window": "30s"}"#).unwrap();
/// assert_eq!(b.min_per_sec, 10);
/// assert_eq!(b.window.as_secs(), 30);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// Retries allowed per request (0.2 = 20 %).
    pub ratio: f32,
    /// Retries allowed per second regardless of traffic.
    pub min_per_sec: u32,
    /// How long requests are remembered (1 s ..= 60 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_sec: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Hedging settings.
///
/// ```
/// use palisade_retry::Config;
///
/// let c: Config = serde_json::from_str(r#"{"hedge": {"delay": "150ms"}}"#).unwrap();
/// assert_eq!(c.hedge.unwrap().delay.as_millis(), 150);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// How long the first attempt may take before a hedge is sent.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(100),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::tool_gateway()
    }
}

impl Config {
    /// The tool-gateway profile (the default): 3 attempts, 2 s → 4 s → 8 s,
    /// capped at 10 s, no jitter.
    pub fn tool_gateway() -> Self {
        Self {
            enabled: true,
            max_attempts: 3,
            initial_delay: Duration::from_secs(2),
            base: 2.0,
            max_delay: Duration::from_secs(10),
            jitter: Jitter::None,
            attempt_timeout: None,
            deadline: None,
            retry_statuses: vec![429, 502, 503, 504],
            retry_grpc_codes: vec![GrpcCode::Unavailable as i32],
            retry_non_idempotent: false,
            retry_grpc: true,
            honor_retry_after: true,
            max_replay_body: 64 * 1024,
            budget: Some(BudgetConfig::default()),
            hedge: None,
        }
    }

    /// A faster profile for calls inside a cluster: 3 attempts, 25 ms →
    /// 50 ms with full jitter, capped at 250 ms, 2 s per attempt, 5 s in all.
    pub fn in_cluster() -> Self {
        Self {
            initial_delay: Duration::from_millis(25),
            max_delay: Duration::from_millis(250),
            jitter: Jitter::Full,
            attempt_timeout: Some(Duration::from_secs(2)),
            deadline: Some(Duration::from_secs(5)),
            ..Self::tool_gateway()
        }
    }

    /// Checks every field, naming the first invalid one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, reason: String| Err(ConfigError { field, reason });
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1".into());
        }
        if !(self.base.is_finite() && self.base >= 1.0) {
            return bad("base", format!("must be a number ≥ 1, got {}", self.base));
        }
        if self.max_delay < self.initial_delay {
            return bad(
                "max_delay",
                format!(
                    "{:?} is below initial_delay {:?}",
                    self.max_delay, self.initial_delay
                ),
            );
        }
        for &s in &self.retry_statuses {
            let ok = matches!(s, 408 | 425 | 429) || (500..=599).contains(&s);
            if !ok {
                return bad(
                    "retry_statuses",
                    format!("{s} is not retryable (only 5xx, 408, 425, 429)"),
                );
            }
        }
        for &c in &self.retry_grpc_codes {
            if !(1..=16).contains(&c) {
                return bad("retry_grpc_codes", format!("{c} is not a gRPC error code"));
            }
        }
        if self.attempt_timeout == Some(Duration::ZERO) {
            return bad("attempt_timeout", "must be above zero".into());
        }
        if self.deadline == Some(Duration::ZERO) {
            return bad("deadline", "must be above zero".into());
        }
        if let Some(b) = &self.budget {
            if !(b.ratio.is_finite() && (0.0..=1000.0).contains(&b.ratio)) {
                return bad(
                    "budget.ratio",
                    format!("must be in 0 ..= 1000, got {}", b.ratio),
                );
            }
            if b.window < Duration::from_secs(1) || b.window > Duration::from_secs(60) {
                return bad(
                    "budget.window",
                    format!("must be 1s ..= 60s, got {:?}", b.window),
                );
            }
        }
        if let Some(h) = &self.hedge
            && h.delay.is_zero()
        {
            return bad("hedge.delay", "must be above zero".into());
        }
        Ok(())
    }
}

/// An invalid configuration value.
///
/// ```
/// use palisade_retry::{Config, RetryLayer};
///
/// let c: Config = serde_json::from_str(r#"{"retry_statuses": [404]}"#).unwrap();
/// let err = RetryLayer::from_config(&c).unwrap_err();
/// assert_eq!(err.field(), "retry_statuses");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid retry config `{field}`: {reason}")]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    /// The offending field.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl From<ConfigError> for palisade_core::Error {
    fn from(e: ConfigError) -> Self {
        palisade_core::Error::new(palisade_core::ErrorKind::Internal, e.to_string())
    }
}

/// What a custom delay function sees (see [`RetryLayerBuilder::delay_fn`]).
///
/// ```
/// use palisade_retry::RetryLayer;
///
/// // Wait at least what the upstream asked for, plus a second.
/// let layer = RetryLayer::builder()
///     .delay_fn(|c| c.retry_after.map_or(c.delay, |a| a + std::time::Duration::from_secs(1)))
///     .build().unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct DelayContext {
    /// The retry about to be made (1 for the first retry).
    pub retry: u32,
    /// Why it is made.
    pub reason: RetryReason,
    /// The failed attempt's HTTP status, if it answered.
    pub status: Option<StatusCode>,
    /// What the upstream asked for (`Retry-After` …), if anything.
    pub retry_after: Option<Duration>,
    /// The delay the backoff (or `Retry-After`) chose.
    pub delay: Duration,
}

pub(crate) type DelayFn = Arc<dyn Fn(&DelayContext) -> Duration + Send + Sync>;

/// The resolved settings a retry service runs with (shared by `Arc`).
pub(crate) struct Policy {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    statuses: [u64; 4],
    grpc_codes: u32,
    pub(crate) non_idempotent: bool,
    pub(crate) grpc: bool,
    pub(crate) honor_retry_after: bool,
    pub(crate) max_body: usize,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) hedge: Option<Duration>,
    pub(crate) metrics: Option<MetricHandles>,
    pub(crate) delay_fn: Option<DelayFn>,
    pub(crate) name: Arc<str>,
}

impl Policy {
    #[inline]
    pub(crate) fn retry_status(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        if !(400..600).contains(&s) {
            return false;
        }
        let i = (s - 400) as usize;
        self.statuses[i / 64] & (1 << (i % 64)) != 0
    }

    #[inline]
    pub(crate) fn retry_grpc_code(&self, code: u32) -> bool {
        code < 32 && self.grpc_codes & (1 << code) != 0
    }

    /// Whether a timed call needs a timer.
    #[inline]
    pub(crate) fn timed(&self) -> bool {
        self.attempt_timeout.is_some() || self.deadline.is_some()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .field("hedge", &self.hedge)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RetryLayer`]; starts from [`Config::default`].
///
/// ```
/// use palisade_retry::{Jitter, RetryLayer};
/// use std::time::Duration;
///
/// let layer = RetryLayer::builder()
///     .max_attempts(4)
///     .backoff(Duration::from_millis(50), 2.0, Duration::from_secs(1))
///     .jitter(Jitter::Decorrelated)
///     .attempt_timeout(Duration::from_secs(2))
///     .deadline(Duration::from_secs(5))
///     .retry_statuses([503, 504])
///     .hedge(Duration::from_millis(200))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Clone)]
#[must_use]
pub struct RetryLayerBuilder {
    config: Config,
    budget: Option<Arc<RetryBudget>>,
    metrics: Option<MetricHandles>,
    delay_fn: Option<DelayFn>,
    name: Arc<str>,
}

impl fmt::Debug for RetryLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("config", &self.config)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Default for RetryLayerBuilder {
    fn default() -> Self {
        Self::from_config(Config::default())
    }
}

impl RetryLayerBuilder {
    /// A builder starting from `config`.
    pub fn from_config(config: Config) -> Self {
        Self {
            config,
            budget: None,
            metrics: None,
            delay_fn: None,
            name: Arc::from("default"),
        }
    }

    /// Attempts in all, the first included (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.max_attempts = n.max(1);
        self
    }

    /// Exponential backoff: `initial`, growing by `base`, capped at `max`.
    pub fn backoff(mut self, initial: Duration, base: f64, max: Duration) -> Self {
        self.config.initial_delay = initial;
        self.config.base = base;
        self.config.max_delay = max;
        self
    }

    /// The jitter.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// Time limit of each attempt.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
        self
    }

    /// Time limit of the whole call.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// Retryable HTTP statuses (5xx, 408, 425, 429; others are ignored).
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = u16>) -> Self {
        self.config.retry_statuses = statuses
            .into_iter()
            .filter(|s| matches!(s, 408 | 425 | 429) || (500..=599).contains(s))
            .collect();
        self
    }

    /// Retryable gRPC codes.
    pub fn retry_grpc_codes(mut self, codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        self.config.retry_grpc_codes = codes
            .into_iter()
            .map(|c| c as i32)
            .filter(|c| *c != 0)
            .collect();
        self
    }

    /// Retry non-idempotent requests too.
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.config.retry_non_idempotent = yes;
        self
    }

    /// Retry gRPC calls on the retryable gRPC codes.
    pub fn retry_grpc(mut self, yes: bool) -> Self {
        self.config.retry_grpc = yes;
        self
    }

    /// Honour `Retry-After` and friends.
    pub fn honor_retry_after(mut self, yes: bool) -> Self {
        self.config.honor_retry_after = yes;
        self
    }

    /// Largest request body buffered for replay.
    pub fn max_replay_body(mut self, bytes: usize) -> Self {
        self.config.max_replay_body = bytes;
        self
    }

    /// A budget of `ratio` retries per request plus `min_per_sec` per
    /// second, over a window of `window`.
    pub fn budget(mut self, ratio: f32, min_per_sec: u32, window: Duration) -> Self {
        self.config.budget = Some(BudgetConfig {
            ratio,
            min_per_sec,
            window,
        });
        self.budget = None;
        self
    }

    /// Shares one budget between several layers (e.g. every route to the
    /// same upstream).
    pub fn shared_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget.
    pub fn no_budget(mut self) -> Self {
        self.config.budget = None;
        self.budget = None;
        self
    }

    /// Hedging after `delay` (idempotent requests only).
    pub fn hedge(mut self, delay: Duration) -> Self {
        self.config.hedge = Some(HedgeConfig { delay });
        self
    }

    /// Records metrics on `metrics`, labelled `name`.
    pub fn metrics(mut self, metrics: &RetryMetrics, name: &str) -> Self {
        self.metrics = Some(metrics.handles(name));
        self.name = Arc::from(name);
        self
    }

    /// Names the layer in logs.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Arc::from(name);
        self
    }

    /// Computes each delay from the outcome: the function gets the chosen
    /// delay and what caused the retry, and returns the delay to use (still
    /// capped by the maximum delay).
    ///
    /// ```
    /// use palisade_retry::{RetryLayer, RetryReason};
    /// use std::time::Duration;
    ///
    /// // Back off harder on 429 than on anything else.
    /// let layer = RetryLayer::builder()
    ///     .delay_fn(|c| match c.status.map(|s| s.as_u16()) {
    ///         Some(429) => c.delay * 2,
    ///         _ if c.reason == RetryReason::Connect => Duration::from_millis(10),
    ///         _ => c.delay,
    ///     })
    ///     .build().unwrap();
    /// # let _ = layer;
    /// ```
    pub fn delay_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&DelayContext) -> Duration + Send + Sync + 'static,
    {
        self.delay_fn = Some(Arc::new(f));
        self
    }

    /// Validates and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting; nothing panics.
    ///
    /// ```
    /// use palisade_retry::RetryLayer;
    /// use std::time::Duration;
    ///
    /// let s = Duration::from_secs(1);
    /// let err = RetryLayer::builder().backoff(s, 0.5, s).build().unwrap_err();
    /// assert!(err.to_string().contains("base"), "{err}");
    /// ```
    pub fn build(mut self) -> Result<RetryLayer, ConfigError> {
        self.config.validate()?;
        if !self.config.enabled {
            // Off: the request passes once, unbounded by this layer.
            let c = &mut self.config;
            c.max_attempts = 1;
            c.attempt_timeout = None;
            c.deadline = None;
            c.budget = None;
            c.hedge = None;
            self.budget = None;
        }
        let c = &self.config;
        let mut statuses = [0u64; 4];
        for &s in &c.retry_statuses {
            let i = (s - 400) as usize;
            statuses[i / 64] |= 1 << (i % 64);
        }
        let grpc_codes = c
            .retry_grpc_codes
            .iter()
            .fold(0u32, |m, &code| m | (1 << code));
        let budget = self.budget.or_else(|| {
            c.budget
                .as_ref()
                .map(|b| Arc::new(RetryBudget::new(b.window, b.min_per_sec, b.ratio)))
        });
        let policy = Policy {
            max_attempts: c.max_attempts,
            backoff: Backoff::new(c.initial_delay, c.base, c.max_delay, c.jitter),
            attempt_timeout: c.attempt_timeout,
            deadline: c.deadline,
            statuses,
            grpc_codes,
            non_idempotent: c.retry_non_idempotent,
            grpc: c.retry_grpc,
            honor_retry_after: c.honor_retry_after,
            max_body: c.max_replay_body,
            budget,
            hedge: c.hedge.as_ref().map(|h| h.delay),
            metrics: self.metrics,
            delay_fn: self.delay_fn,
            name: self.name,
        };
        Ok(RetryLayer::from_policy(Arc::new(policy)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_tool_gateway_profile() {
        let c = Config::default();
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.initial_delay, Duration::from_secs(2));
        assert_eq!(c.max_delay, Duration::from_secs(10));
        assert_eq!(c.retry_statuses, [429, 502, 503, 504]);
        c.validate().unwrap();
        Config::in_cluster().validate().unwrap();
        let round: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases: [(&str, &str); 7] = [
            (r#"{"max_attempts": 0}"#, "max_attempts"),
            (r#"{"base": 0.5}"#, "base"),
            (r#"{"initial_delay": "20s"}"#, "max_delay"),
            (r#"{"retry_statuses": [404]}"#, "retry_statuses"),
            (r#"{"retry_grpc_codes": [0]}"#, "retry_grpc_codes"),
            (r#"{"budget": {"ratio": -1}}"#, "budget.ratio"),
            (r#"{"hedge": {"delay": "0s"}}"#, "hedge.delay"),
        ];
        for (json, field) in cases {
            let c: Config = serde_json::from_str(json).unwrap();
            assert_eq!(c.validate().unwrap_err().field(), field, "{json}");
            assert!(RetryLayer::from_config(&c).is_err());
        }
        assert!(serde_json::from_str::<Config>(r#"{"max_attempt": 3}"#).is_err());
    }

    #[test]
    fn status_and_code_sets() {
        let layer = RetryLayer::builder()
            .retry_statuses([404, 429, 503, 599])
            .build()
            .unwrap();
        let p = layer.policy();
        assert!(p.retry_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(p.retry_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(p.retry_status(StatusCode::from_u16(599).unwrap()));
        assert!(
            !p.retry_status(StatusCode::NOT_FOUND),
            "4xx is never retried"
        );
        assert!(!p.retry_status(StatusCode::OK));
        assert!(!p.retry_status(StatusCode::BAD_GATEWAY));
        assert!(p.retry_grpc_code(14));
        assert!(!p.retry_grpc_code(5));
    }
}
