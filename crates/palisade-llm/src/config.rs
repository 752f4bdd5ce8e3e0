//! A token limit as configuration (TOML / JSON), for services that build
//! their stack from a file.

use crate::usage::Estimator;
use crate::{FailPolicy, Mode, OnMissingUsage, TokenBudgetError, TokenBudgetLayer};
use palisade_core::key::HeaderKey;
use palisade_store::{Store, TokenRule};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One token limit (`kind = "tokens"`): `quota` tokens per `period` per
/// value of the `key_header` request header.
///
/// ```
/// use palisade_llm::TokenLimitConfig;
///
/// let cfg: TokenLimitConfig = toml::from_str(r#"
///     kind = "tokens"
///     name = "per-user"
///     key_header = "x-user"
///     quota = 100000
///     period = "1m"
///     lease = "10m"
///     on_missing_usage = "reservation"
///     estimator = { chars_per_token = 3.5, default_output = 1024 }
/// "#).unwrap();
/// let layer = cfg.layer(palisade_store::Store::in_memory(), None).unwrap();
/// assert_eq!(layer.name(), "per-user");
///
/// let bad: TokenLimitConfig = toml::from_str("kind = \"tokens\"\nkey_header = \"x-user\"\nquota = 0").unwrap();
/// assert!(bad.layer(palisade_store::Store::in_memory(), None).unwrap_err().to_string().contains("quota"));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitConfig {
    /// Always `"tokens"` (what sets this limit apart from request limits).
    pub kind: TokenKind,
    /// The limit's name (metrics label, `RateLimit` policy name).
    #[serde(default = "default_name")]
    pub name: String,
    /// The request header whose value keys the budget (a user or API key
    /// set by an authentication layer).
    pub key_header: String,
    /// Tokens per `period`.
    pub quota: u64,
    /// The window (default one minute).
    #[serde(default = "minute", with = "humantime_serde")]
    pub period: Duration,
    /// How long a reservation is held unsettled (default 10 minutes).
    #[serde(default = "lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Enforce (default), log-only or disabled.
    #[serde(default)]
    pub mode: Mode,
    /// What a response without usage is charged.
    #[serde(default)]
    pub on_missing_usage: OnMissingUsage,
    /// What to do when the store cannot decide.
    #[serde(default)]
    pub on_store_error: FailPolicy,
    /// How requests are estimated.
    #[serde(default)]
    pub estimator: Estimator,
}

/// The `kind` of a token limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenKind {
    /// A token budget.
    Tokens,
}

fn default_name() -> String {
    "tokens".into()
}

fn minute() -> Duration {
    Duration::from_secs(60)
}

fn lease() -> Duration {
    TokenRule::DEFAULT_LEASE
}

impl TokenLimitConfig {
    /// Builds the layer on `store`.
    ///
    /// # Errors
    /// [`TokenBudgetError::InvalidConfig`] naming the bad key.
    pub fn layer(
        &self,
        store: Store,
        metrics: Option<&crate::TokenMetrics>,
    ) -> Result<TokenBudgetLayer<HeaderKey>, TokenBudgetError> {
        let key = http::HeaderName::from_bytes(self.key_header.as_bytes()).map_err(|_| {
            TokenBudgetError::InvalidConfig(format!(
                "key_header: {:?} is not a header name",
                self.key_header
            ))
        })?;
        let rule = TokenRule::new(self.quota, self.period).lease(self.lease);
        let mut b = TokenBudgetLayer::builder(store, HeaderKey::from_name(key), rule)
            .name(self.name.clone())
            .mode(self.mode)
            .on_missing_usage(self.on_missing_usage)
            .on_store_error(self.on_store_error)
            .estimator(self.estimator);
        if let Some(m) = metrics {
            b = b.metrics(m);
        }
        b.build()
    }
}
