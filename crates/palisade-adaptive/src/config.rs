//! Configuration: a serde [`AdaptiveConfig`] (off by default) and
//! [`AdaptiveLayer::from_config`].

use crate::{AdaptiveLayer, AdaptiveLayerBuilder, Algorithm, BuildError, Measure, PathPrefixKey};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Which algorithm an [`AdaptiveConfig`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlgorithmKind {
    /// [`Algorithm::Aimd`] (default).
    #[default]
    Aimd,
    /// [`Algorithm::Gradient`].
    Gradient,
}

/// Adaptive concurrency settings, as read from a file or the environment.
///
/// ```
/// use palisade_adaptive::{AdaptiveConfig, AdaptiveLayer};
///
/// let cfg: AdaptiveConfig = serde_json::from_str(
///     r#"{"enabled": true, "algorithm": "gradient", "min_limit": 2, "initial_limit": 10,
///         "max_limit": 100, "measure": "head", "max_queue": 50, "queue_timeout": "250ms"}"#,
/// )
/// .unwrap();
/// let layer = AdaptiveLayer::from_config(&cfg).unwrap();
/// assert_eq!(layer.limit(), 10);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdaptiveConfig {
    /// Whether a stack built from configuration has the layer (default
    /// `false`).
    pub enabled: bool,
    /// `aimd` (default) or `gradient`.
    pub algorithm: AlgorithmKind,
    /// The lowest limit (default 1).
    pub min_limit: usize,
    /// The first limit (default 20).
    pub initial_limit: usize,
    /// The highest limit (default 1000).
    pub max_limit: usize,
    /// AIMD: the limit is multiplied by this on a refusal (0.5–1, default 0.9).
    pub backoff_ratio: f64,
    /// Gradient: latency may grow to this many times its no-load value
    /// before the limit shrinks (≥ 1, default 1.5).
    pub tolerance: f64,
    /// Gradient: weight of each new estimate (0–1, default 0.2).
    pub smoothing: f64,
    /// `head` (time to first byte, default) or `body` (to the end of the
    /// response body).
    pub measure: Measure,
    /// Calls that may wait for a slot past the limit (default 0: refused at
    /// once).
    pub max_queue: usize,
    /// How long a queued call may wait (default 1 s).
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// Path prefixes that each learn their own limit (first match wins;
    /// other paths share one limit). Default: none, one limit for all.
    pub routes: Vec<String>,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithm: AlgorithmKind::Aimd,
            min_limit: 1,
            initial_limit: 20,
            max_limit: 1000,
            backoff_ratio: 0.9,
            tolerance: 1.5,
            smoothing: 0.2,
            measure: Measure::Head,
            max_queue: 0,
            queue_timeout: Duration::from_secs(1),
            routes: Vec::new(),
        }
    }
}

/// An [`AdaptiveConfig`] that cannot be used; `field` names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid adaptive concurrency configuration at `{field}`: {reason}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl AdaptiveConfig {
    /// The builder this configuration describes.
    pub fn builder(&self) -> AdaptiveLayerBuilder {
        let algorithm = match self.algorithm {
            AlgorithmKind::Aimd => Algorithm::Aimd {
                backoff_ratio: self.backoff_ratio,
            },
            AlgorithmKind::Gradient => Algorithm::Gradient {
                tolerance: self.tolerance,
                smoothing: self.smoothing,
            },
        };
        AdaptiveLayer::builder()
            .algorithm(algorithm)
            .limits(self.min_limit, self.initial_limit, self.max_limit)
            .measure(self.measure)
            .queue(self.max_queue, self.queue_timeout)
    }

    /// The range checks; the error names the field.
    ///
    /// ```
    /// use palisade_adaptive::AdaptiveConfig;
    ///
    /// let mut cfg = AdaptiveConfig::default();
    /// cfg.min_limit = 50; // above initial_limit
    /// assert_eq!(cfg.validate().unwrap_err().field, "min_limit");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self.routes.iter().find(|r| !r.starts_with('/')) {
            return Err(ConfigError {
                field: "routes",
                reason: format!("{bad:?} is not a path prefix (it must start with `/`)"),
            });
        }
        self.builder().build().map(|_| ()).map_err(|e| {
            let field = match &e {
                BuildError::Limits { min, initial, .. } => {
                    if *min < 1 || min > initial {
                        "min_limit"
                    } else {
                        "max_limit"
                    }
                }
                BuildError::Parameter { field, .. } => field,
            };
            ConfigError {
                field,
                reason: e.to_string(),
            }
        })
    }
}

impl AdaptiveConfig {
    /// The builder this configuration describes, keyed by `routes`.
    ///
    /// ```
    /// use palisade_adaptive::AdaptiveConfig;
    ///
    /// let mut cfg = AdaptiveConfig::default();
    /// cfg.routes = vec!["/v1/chat".into()];
    /// let layer = cfg.builder_per_route().build().unwrap();
    /// assert_eq!(layer.limit_of(&std::sync::Arc::<str>::from("/v1/chat")), 20);
    /// ```
    pub fn builder_per_route(&self) -> AdaptiveLayerBuilder<PathPrefixKey> {
        self.builder().key(PathPrefixKey::new(&self.routes))
    }
}

impl AdaptiveLayer {
    /// The layer `cfg` describes (whether or not `enabled`: a stack built
    /// from configuration checks that).
    ///
    /// # Errors
    /// As [`AdaptiveConfig::validate`].
    pub fn from_config(cfg: &AdaptiveConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(cfg.builder().build().expect("validated"))
    }
}
