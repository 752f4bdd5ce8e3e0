//! The serde [`Config`] of a breaker; `Default` gives the defaults users know.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Everything a breaker can be told, readable from a file or the environment.
///
/// `Default` is the SPEC: 5 consecutive failures trip it; a failure rate of
/// 50 % over the last 100 calls (once 100 calls are seen) trips it too; it
/// stays open 60 s, then admits 3 trial calls, of which 2 successes close it.
///
/// ```
/// use palisade_breaker::{Config, SlidingWindow};
/// use std::time::Duration;
///
/// let cfg: Config = toml::from_str(r#"
///     failure_threshold = 3
///     recovery_timeout = "30s"
///     sliding_window = { kind = "time", duration = "10s" }
///     minimum_calls = 20
///     slow_call_threshold = "2s"
/// "#).unwrap();
/// assert_eq!(cfg.failure_threshold, 3);
/// assert_eq!(cfg.sliding_window, SlidingWindow::Time { duration: Duration::from_secs(10) });
/// assert_eq!(cfg.half_open_max_calls, 3); // untouched fields keep their defaults
/// cfg.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `false` starts every breaker disabled: calls pass, nothing is
    /// counted (the same as `initial_mode = "disabled"`; default `true`).
    pub enabled: bool,
    /// Consecutive failures that trip the breaker (default 5; 0 turns this
    /// rule off).
    pub failure_threshold: u32,
    /// Failure rate (0 < r ≤ 1) over the sliding window that trips the
    /// breaker once [`minimum_calls`](Self::minimum_calls) are seen
    /// (default 0.5; `None` turns this rule off).
    pub failure_rate_threshold: Option<f64>,
    /// The window the rates are computed over (default: the last 100 calls).
    pub sliding_window: SlidingWindow,
    /// Calls the window must hold before a rate can trip it (default 100;
    /// capped at the size of a count-based window).
    pub minimum_calls: u32,
    /// Calls slower than this count as slow (default `None`: no slow-call
    /// rule). In half-open, a slow trial call counts as a failure.
    #[serde(with = "humantime_serde")]
    pub slow_call_threshold: Option<Duration>,
    /// Slow-call rate (0 < r ≤ 1) over the window that trips the breaker
    /// (default 1.0, as in Resilience4j).
    pub slow_call_rate_threshold: f64,
    /// How long the breaker stays open before trial calls (default 60 s).
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Duration,
    /// Growth of the open time on repeated trips (default `None`: fixed).
    pub recovery_backoff: Option<RecoveryBackoff>,
    /// Trial calls admitted in half-open (default 3); more are rejected.
    pub half_open_max_calls: u32,
    /// Successful trial calls that close the breaker (default 2; at most
    /// [`half_open_max_calls`](Self::half_open_max_calls)).
    pub success_threshold: u32,
    /// A half-open breaker that sees no call for this long goes to
    /// [`half_open_idle_state`](Self::half_open_idle_state) (default `None`).
    #[serde(with = "humantime_serde")]
    pub half_open_idle_timeout: Option<Duration>,
    /// Where an idle half-open breaker goes (default open).
    pub half_open_idle_state: IdleTarget,
    /// The state a breaker starts in (default closed).
    pub initial_mode: InitialMode,
    /// Per-key breakers: at most this many keys are kept (default 10 000).
    pub max_keys: u64,
    /// Per-key breakers: a key unused this long is evicted (default 10 min).
    #[serde(with = "humantime_serde")]
    pub key_idle_timeout: Duration,
    /// How often a breaker shared through a store polls it (default 1 s).
    #[serde(with = "humantime_serde")]
    pub shared_poll_interval: Duration,
    /// A call dropped before it reports (cut by a timeout outside the
    /// breaker, or given up by its caller) after running at least this long
    /// counts as a failure (default 1 s), so an upstream that hangs opens
    /// the circuit and a hanging half-open trial re-opens it, while a client
    /// that hangs up on a healthy upstream early does not. A call dropped
    /// sooner is not counted (a trial permit is given back). `0s`: every
    /// dropped call is a failure; `None`: none is.
    #[serde(with = "humantime_serde")]
    pub cancelled_failure_after: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 5,
            failure_rate_threshold: Some(0.5),
            sliding_window: SlidingWindow::Count { size: 100 },
            minimum_calls: 100,
            slow_call_threshold: None,
            slow_call_rate_threshold: 1.0,
            recovery_timeout: Duration::from_secs(60),
            recovery_backoff: None,
            half_open_max_calls: 3,
            success_threshold: 2,
            half_open_idle_timeout: None,
            half_open_idle_state: IdleTarget::Open,
            initial_mode: InitialMode::Closed,
            max_keys: 10_000,
            key_idle_timeout: Duration::from_secs(600),
            shared_poll_interval: Duration::from_secs(1),
            cancelled_failure_after: Some(Duration::from_secs(1)),
        }
    }
}

/// The window failure and slow-call rates are computed over.
///
/// ```
/// use palisade_breaker::SlidingWindow;
/// let w: SlidingWindow = serde_json::from_str(r#"{"kind":"count","size":50}"#).unwrap();
/// assert_eq!(w, SlidingWindow::Count { size: 50 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum SlidingWindow {
    /// The last `size` calls (1 ..= 65 536).
    Count {
        /// Calls in the window.
        size: u32,
    },
    /// The calls of the last `duration`, in one-second buckets (1 s ..= 1 h).
    Time {
        /// Length of the window (whole seconds).
        #[serde(with = "humantime_serde")]
        duration: Duration,
    },
}

/// Open time growing on repeated trips: `recovery_timeout × multiplierⁿ⁻¹`
/// for the n-th trip in a row, capped at `max`, then spread by ± `jitter`.
///
/// ```
/// use palisade_breaker::RecoveryBackoff;
/// use std::time::Duration;
///
/// let b = RecoveryBackoff::default();
/// assert_eq!(b.multiplier, 2.0);
/// assert_eq!(b.max, Duration::from_secs(600));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecoveryBackoff {
    /// Growth factor per trip in a row (default 2.0, at least 1.0).
    pub multiplier: f64,
    /// Longest open time (default 10 min).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Random spread as a fraction of the open time, 0 ..= 1 (default 0.1).
    pub jitter: f64,
}

impl Default for RecoveryBackoff {
    fn default() -> Self {
        Self {
            multiplier: 2.0,
            max: Duration::from_secs(600),
            jitter: 0.1,
        }
    }
}

/// Where a half-open breaker that saw no call for a while goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum IdleTarget {
    /// Back to open, for another recovery timeout.
    Open,
    /// To closed.
    Closed,
}

/// The state a breaker starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InitialMode {
    /// Normal operation.
    Closed,
    /// Every call passes, nothing is recorded.
    Disabled,
    /// Calls are recorded, the breaker never trips.
    MetricsOnly,
    /// Every call is rejected until reset.
    ForcedOpen,
}

/// A configuration that cannot work, named by its field.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field is out of range.
    #[error("invalid breaker config `{field}`: {reason}")]
    Invalid {
        /// The field's name, as in [`Config`].
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A breaker of that name is already in the registry.
    #[error("a circuit breaker named {0:?} is already registered")]
    DuplicateName(String),
    /// A breaker shared through a store was built outside a Tokio runtime
    /// (its background task needs one).
    #[error("a circuit breaker shared through a store must be built inside a Tokio runtime")]
    NoRuntime,
}

fn invalid(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

fn is_rate(r: f64) -> bool {
    r > 0.0 && r <= 1.0
}

impl Config {
    /// Checks every field; the first bad one is named.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(r) = self.failure_rate_threshold
            && !is_rate(r)
        {
            return Err(invalid("failure_rate_threshold", "must be in (0, 1]"));
        }
        match self.sliding_window {
            SlidingWindow::Count { size } if !(1..=65_536).contains(&size) => {
                return Err(invalid("sliding_window", "size must be in 1 ..= 65536"));
            }
            SlidingWindow::Time { duration }
                if !(1..=3600).contains(&duration.as_secs()) || duration.subsec_nanos() != 0 =>
            {
                return Err(invalid(
                    "sliding_window",
                    "duration must be whole seconds in 1 s ..= 1 h",
                ));
            }
            _ => {}
        }
        if self.minimum_calls == 0 {
            return Err(invalid("minimum_calls", "must be at least 1"));
        }
        if self.slow_call_threshold == Some(Duration::ZERO) {
            return Err(invalid("slow_call_threshold", "must be above zero"));
        }
        if !is_rate(self.slow_call_rate_threshold) {
            return Err(invalid("slow_call_rate_threshold", "must be in (0, 1]"));
        }
        if self.recovery_timeout.is_zero() {
            return Err(invalid("recovery_timeout", "must be above zero"));
        }
        if let Some(b) = &self.recovery_backoff {
            if !(b.multiplier >= 1.0 && b.multiplier.is_finite()) {
                return Err(invalid(
                    "recovery_backoff.multiplier",
                    "must be finite and at least 1",
                ));
            }
            if b.max < self.recovery_timeout {
                return Err(invalid(
                    "recovery_backoff.max",
                    "must be at least recovery_timeout",
                ));
            }
            if !(0.0..=1.0).contains(&b.jitter) {
                return Err(invalid("recovery_backoff.jitter", "must be in [0, 1]"));
            }
        }
        if self.half_open_max_calls == 0 {
            return Err(invalid("half_open_max_calls", "must be at least 1"));
        }
        if self.success_threshold == 0 || self.success_threshold > self.half_open_max_calls {
            return Err(invalid(
                "success_threshold",
                "must be in 1 ..= half_open_max_calls",
            ));
        }
        if self.half_open_idle_timeout == Some(Duration::ZERO) {
            return Err(invalid("half_open_idle_timeout", "must be above zero"));
        }
        if self.max_keys == 0 {
            return Err(invalid("max_keys", "must be at least 1"));
        }
        if self.key_idle_timeout.is_zero() {
            return Err(invalid("key_idle_timeout", "must be above zero"));
        }
        if self.shared_poll_interval.is_zero() {
            return Err(invalid("shared_poll_interval", "must be above zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec_and_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.failure_threshold, 5);
        assert_eq!(c.recovery_timeout, Duration::from_secs(60));
        assert_eq!(c.half_open_max_calls, 3);
        assert_eq!(c.success_threshold, 2);
        let round: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |f: fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            match c.validate().unwrap_err() {
                ConfigError::Invalid { field, .. } => field,
                other => panic!("{other}"),
            }
        };
        assert_eq!(
            bad(|c| c.failure_rate_threshold = Some(1.5)),
            "failure_rate_threshold"
        );
        assert_eq!(
            bad(|c| c.sliding_window = SlidingWindow::Count { size: 0 }),
            "sliding_window"
        );
        assert_eq!(
            bad(|c| c.sliding_window = SlidingWindow::Time {
                duration: Duration::from_millis(1500)
            }),
            "sliding_window"
        );
        assert_eq!(bad(|c| c.success_threshold = 4), "success_threshold");
        assert_eq!(bad(|c| c.half_open_max_calls = 0), "half_open_max_calls");
        assert_eq!(
            bad(|c| c.recovery_timeout = Duration::ZERO),
            "recovery_timeout"
        );
        assert_eq!(
            bad(|c| c.recovery_backoff = Some(RecoveryBackoff {
                multiplier: 0.5,
                ..Default::default()
            })),
            "recovery_backoff.multiplier"
        );
        assert!(serde_json::from_str::<Config>(r#"{"failure_treshold": 3}"#).is_err());
    }
}
