//! Serde configuration for [`ShapeResponseLayer`](crate::ShapeResponseLayer).

use serde::{Deserialize, Serialize};

use crate::selector::SelectorLimits;
use crate::shaper::ShapeRules;

/// Configuration of the shaping layer; `Default` gives the usual defaults:
/// compaction on, no field selection, 4 characters per token, bodies up to
/// 4 MiB, per-request `fields=` allowed, `x-tokens-*` headers on.
///
/// # Example
///
/// ```
/// use palisade_shape::{ShapeConfig, ShapeResponseLayer};
///
/// let config: ShapeConfig = serde_json::from_str(r#"{
///     "rules": {"exclude": ["debug"]},
///     "routes": [
///         {"path": "/dealers", "methods": ["GET"], "rules": {"include": ["dealers"], "max_array_size": 1}},
///         {"path": "/raw/*", "rules": {"enabled": false}}
///     ],
///     "chars_per_token": 3.5
/// }"#).unwrap();
/// assert!(config.rules.compact);
/// let layer = ShapeResponseLayer::from_config(&config).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ShapeConfig {
    /// `false` turns shaping off for every route: responses pass untouched
    /// (default `true`; `rules.enabled` turns off the default rules only).
    pub enabled: bool,
    /// Rules for requests that match no route.
    pub rules: ShapeRules,
    /// Per-route rules; the first route that matches wins.
    pub routes: Vec<RouteConfig>,
    /// Characters per token for the default estimator (default 4).
    pub chars_per_token: f64,
    /// Bodies larger than this pass through untouched (default 4 MiB).
    pub max_body_bytes: usize,
    /// Query parameter for a per-request selection (default `fields`; `null`
    /// turns per-request selection off).
    pub query_param: Option<String>,
    /// Limits on a per-request selector.
    pub selector_limits: SelectorLimits,
    /// Whether to add the `x-tokens-*` headers to shaped responses (default true).
    pub headers: bool,
}

impl Default for ShapeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rules: ShapeRules::default(),
            routes: Vec::new(),
            chars_per_token: 4.0,
            max_body_bytes: 4 * 1024 * 1024,
            query_param: Some("fields".to_owned()),
            selector_limits: SelectorLimits::default(),
            headers: true,
        }
    }
}

/// Rules for one route.
///
/// `path` is an exact path (`/dealers`) or a prefix ending in `*`
/// (`/api/*` matches `/api/` and everything below it). `methods` empty
/// matches every method.
///
/// # Example
///
/// ```
/// use palisade_shape::{RouteConfig, ShapeRules};
///
/// let route = RouteConfig::new("/api/*", ShapeRules::new().include(["data"])).methods(["GET", "POST"]);
/// assert_eq!(route.methods.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RouteConfig {
    /// Exact path, or prefix ending in `*`.
    pub path: String,
    /// HTTP methods (empty: any).
    #[serde(default)]
    pub methods: Vec<String>,
    /// The rules for this route.
    #[serde(default)]
    pub rules: ShapeRules,
}

impl RouteConfig {
    /// A route for every method.
    pub fn new(path: impl Into<String>, rules: ShapeRules) -> Self {
        Self {
            path: path.into(),
            methods: Vec::new(),
            rules,
        }
    }

    /// Restricts the route to these methods.
    pub fn methods<I: IntoIterator<Item = S>, S: Into<String>>(mut self, methods: I) -> Self {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }
}
