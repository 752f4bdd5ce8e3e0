//! Configuration: a serde [`FaultConfig`] (off by default) and
//! [`FaultLayer::from_config`].

use crate::{BuildError, Fault, FaultLayer, FaultLayerBuilder, Rule, layer::grpc_code};
use ipnet::IpNet;
use palisade_core::key::{HeaderKey, HeaderValueKey, KeyExtractor};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Fault injection settings, as read from a file or the environment.
///
/// `Default` injects nothing and honours no header: faults happen only when
/// `enabled` is set and a rule (or a trusted caller's header) asks for one.
///
/// ```
/// use palisade_fault::{FaultConfig, FaultLayer};
///
/// let cfg: FaultConfig = toml_like(r#"{
///     "enabled": true,
///     "trusted_peers": ["127.0.0.1/32"],
///     "rules": [{"path_prefix": "/slow", "delay": "200ms", "delay_percent": 50.0}]
/// }"#);
/// let layer = FaultLayer::from_config(&cfg).unwrap();
/// assert!(layer.is_active());
/// assert!(!FaultLayer::from_config(&FaultConfig::default()).unwrap().is_active());
/// # fn toml_like(s: &str) -> FaultConfig { serde_json::from_str(s).unwrap() }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FaultConfig {
    /// Nothing is injected and no header is honoured unless this is `true`
    /// (default `false`).
    pub enabled: bool,
    /// Seed of the generator the percentages draw from (default: random).
    pub seed: Option<u64>,
    /// `x-palisade-fault` is honoured from connected peers in these
    /// networks (default: none).
    pub trusted_peers: Vec<IpNet>,
    /// `x-palisade-fault` is honoured from callers sending this secret in
    /// `x-palisade-fault-token` (default: none).
    pub header_token: Option<String>,
    /// The request header rules with `key` look at (e.g. `x-tenant`);
    /// default: none.
    pub key_header: Option<String>,
    /// The rules, first match wins.
    pub rules: Vec<RuleConfig>,
}

/// One rule of a [`FaultConfig`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RuleConfig {
    /// Only requests whose path starts with this (default: all).
    pub path_prefix: Option<String>,
    /// Only requests whose `key_header` has this value (default: all).
    pub key: Option<String>,
    /// Added latency (default: none).
    #[serde(with = "humantime_serde")]
    pub delay: Option<Duration>,
    /// Share of calls delayed, 0–100 (default 100).
    pub delay_percent: f64,
    /// Error answer's HTTP status, 400–599 (default: none).
    pub status: Option<u16>,
    /// Error answer's gRPC code, 1–16 (default: the one closest to
    /// `status`; alone, it makes the HTTP status 503).
    pub grpc_code: Option<i32>,
    /// Share of calls answered with the error, 0–100 (default 100).
    pub error_percent: f64,
    /// Share of calls aborted, 0–100 (default 0).
    pub abort_percent: f64,
}

impl Default for RuleConfig {
    fn default() -> Self {
        Self {
            path_prefix: None,
            key: None,
            delay: None,
            delay_percent: 100.0,
            status: None,
            grpc_code: None,
            error_percent: 100.0,
            abort_percent: 0.0,
        }
    }
}

impl RuleConfig {
    fn rule(&self) -> Result<Rule, (&'static str, String)> {
        let mut fault = Fault::new();
        if let Some(d) = self.delay {
            fault = fault.delay(d, self.delay_percent);
        }
        if self.status.is_some() || self.grpc_code.is_some() {
            fault = fault.error(self.status.unwrap_or(503), self.error_percent);
        }
        if let Some(n) = self.grpc_code {
            let code = grpc_code(n)
                .ok_or(("grpc_code", format!("{n} is not a gRPC error code (1–16)")))?;
            fault = fault.grpc_code(code);
        }
        if self.abort_percent != 0.0 {
            fault = fault.abort(self.abort_percent);
        }
        fault.compile().map_err(|e| {
            let field = match e {
                BuildError::Status(_) => "status",
                BuildError::Percent(p) if p == self.delay_percent && self.delay.is_some() => {
                    "delay_percent"
                }
                BuildError::Percent(p) if p == self.abort_percent => "abort_percent",
                _ => "error_percent",
            };
            (field, e.to_string())
        })?;
        let mut rule = Rule::all().fault(fault);
        if let Some(prefix) = &self.path_prefix {
            rule = rule.and_path_prefix(prefix.clone());
        }
        if let Some(key) = &self.key {
            rule = rule.key(key.clone());
        }
        Ok(rule)
    }
}

/// A [`FaultConfig`] that cannot be used; `field` names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid fault configuration at `{field}`: {reason}")]
#[non_exhaustive]
pub struct ConfigError {
    /// The dotted field, e.g. `rules[0].status`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl FaultConfig {
    /// The range checks; the error names the field, e.g. `rules[0].status`.
    ///
    /// ```
    /// use palisade_fault::{FaultConfig, RuleConfig};
    ///
    /// let mut cfg = FaultConfig::default();
    /// let mut rule = RuleConfig::default();
    /// rule.abort_percent = 150.0;
    /// cfg.rules.push(rule);
    /// assert_eq!(cfg.validate().unwrap_err().field, "rules[0].abort_percent");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(name) = &self.key_header
            && http::HeaderName::try_from(name.as_str()).is_err()
        {
            return Err(ConfigError {
                field: "key_header".into(),
                reason: format!("{name:?} is not a header name"),
            });
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.key.is_some() && self.key_header.is_none() {
                return Err(ConfigError {
                    field: format!("rules[{i}].key"),
                    reason: "a rule with a key needs `key_header`".into(),
                });
            }
            rule.rule().map_err(|(field, reason)| ConfigError {
                field: format!("rules[{i}].{field}"),
                reason,
            })?;
        }
        Ok(())
    }
}

impl FaultConfig {
    /// The builder this configuration describes (with no rule and no
    /// trusted caller unless `enabled`), to add metrics to.
    ///
    /// ```
    /// use palisade_fault::{FaultConfig, FaultMetrics};
    ///
    /// let metrics = FaultMetrics::register(&prometheus::Registry::new()).unwrap();
    /// let layer = FaultConfig::default().builder().unwrap().metrics(&metrics, "upstream").build().unwrap();
    /// assert!(!layer.is_active());
    /// ```
    ///
    /// # Errors
    /// As [`FaultConfig::validate`].
    pub fn builder(&self) -> Result<FaultLayerBuilder<HeaderKeyIfSet>, ConfigError> {
        self.validate()?;
        let key = HeaderKeyIfSet(
            self.key_header
                .as_deref()
                .and_then(|n| http::HeaderName::try_from(n).ok())
                .map(HeaderKey::from_name),
        );
        let mut b = FaultLayer::builder().key(key);
        if !self.enabled {
            return Ok(b);
        }
        b = b.trust_peers(self.trusted_peers.iter().copied());
        if let Some(token) = &self.header_token {
            b = b.trust_token(token.clone());
        }
        if let Some(seed) = self.seed {
            b = b.seed(seed);
        }
        for rule in &self.rules {
            if let Ok(rule) = rule.rule() {
                b = b.rule(rule);
            }
        }
        Ok(b)
    }
}

/// The key of a configured layer: the value of `key_header`, when set.
#[derive(Clone, Debug, Default)]
pub struct HeaderKeyIfSet(Option<HeaderKey>);

impl<B> KeyExtractor<http::Request<B>> for HeaderKeyIfSet {
    type Key = HeaderValueKey;

    fn extract(&self, req: &http::Request<B>) -> Option<HeaderValueKey> {
        self.0.as_ref()?.extract(req)
    }
}

impl FaultLayer<HeaderKeyIfSet> {
    /// The layer `cfg` describes: one that injects nothing unless
    /// `cfg.enabled`.
    ///
    /// # Errors
    /// As [`FaultConfig::validate`].
    pub fn from_config(cfg: &FaultConfig) -> Result<Self, ConfigError> {
        cfg.builder()?.build().map_err(|e| ConfigError {
            field: e.field().to_owned(),
            reason: e.to_string(),
        })
    }
}
