//! [`ShapeResponseLayer`], its builder, routes and metrics.

use std::fmt;
use std::sync::Arc;

use http::Method;
use prometheus::{IntCounter, Registry};
use tower_layer::Layer;

use crate::config::{RouteConfig, ShapeConfig};
use crate::estimate::{CharsPerToken, TokenEstimator};
use crate::selector::SelectorLimits;
use crate::service::ShapeResponse;
use crate::shaper::{ShapeError, ShapeRules, Shaper};

/// Shapes JSON responses: field selection, cuts, compaction, token figures.
///
/// For each response the layer:
/// 1. picks the rules of the first matching route (path and method), or the
///    default rules;
/// 2. reads a per-request selection from the `fields=` query parameter
///    (partial-response syntax, see [`FieldSelector`](crate::FieldSelector)),
///    which replaces the include list (the exclude list still applies). A
///    malformed selector is answered at once with a 400 (gRPC
///    `INVALID_ARGUMENT`) naming the error and its offset;
/// 3. shapes a 2xx `application/json` / `+json` body of at most
///    `max_body_bytes`, sets `content-length`, drops the upstream `etag` (it
///    named other bytes) and adds `x-tokens-original`, `x-tokens-shaped`,
///    `x-tokens-saved` and `x-tokens-saved-percent`.
///
/// Everything else passes through untouched and is counted: other content
/// types, encoded (compressed) bodies, bodies over the limit, HEAD requests,
/// non-2xx answers, and invalid JSON (never a 500). The body is read and
/// shaped within the response future.
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use palisade_shape::{ShapeResponseLayer, ShapeRules};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = ShapeResponseLayer::builder()
///     .rules(ShapeRules::new().include(["dealers"]).max_array_size(1))
///     .build()
///     .unwrap();
/// let svc = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
///     let body = r#"{"dealers": [{"name": "A", "fax": null}, {"name": "B"}], "page": 1}"#;
///     Ok::<_, std::convert::Infallible>(
///         http::Response::builder()
///             .header("content-type", "application/json")
///             .body(Full::new(Bytes::from(body)))
///             .unwrap(),
///     )
/// });
/// let res = svc.oneshot(http::Request::new(())).await.unwrap();
/// assert_eq!(res.headers()["x-tokens-original"], "17");
/// assert_eq!(res.headers()["x-tokens-shaped"], "7");
/// let body = res.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, r#"{"dealers":[{"name":"A"}]}"#);
/// # }
/// ```
#[derive(Clone)]
pub struct ShapeResponseLayer {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for ShapeResponseLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShapeResponseLayer")
            .field("routes", &self.inner.routes.len())
            .field("max_body_bytes", &self.inner.max_body)
            .field("query_param", &self.inner.query_param)
            .field("metrics", &self.inner.metrics.is_some())
            .finish()
    }
}

impl<S> Layer<S> for ShapeResponseLayer {
    type Service = ShapeResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShapeResponse::new(inner, self.clone())
    }
}

impl ShapeResponseLayer {
    /// A layer applying `rules` to every route, with the other defaults.
    pub fn new(rules: ShapeRules) -> Result<Self, ShapeError> {
        Self::builder().rules(rules).build()
    }

    /// A builder starting from [`ShapeConfig::default`].
    pub fn builder() -> ShapeResponseLayerBuilder {
        ShapeResponseLayerBuilder::from_config(ShapeConfig::default())
    }

    /// Builds the layer from a configuration (without metrics; see
    /// [`ShapeResponseLayerBuilder::metrics`]).
    pub fn from_config(config: &ShapeConfig) -> Result<Self, ShapeError> {
        ShapeResponseLayerBuilder::from_config(config.clone()).build()
    }

    /// The shaper used for requests that match no route.
    pub fn shaper(&self) -> &Shaper {
        &self.inner.default.shaper
    }
}

/// Builder for [`ShapeResponseLayer`]; see [`ShapeConfig`] for the defaults.
///
/// # Example
///
/// ```
/// use palisade_shape::{RouteConfig, ShapeResponseLayer, ShapeRules};
///
/// let registry = prometheus::Registry::new();
/// let layer = ShapeResponseLayer::builder()
///     .rules(ShapeRules::new().exclude(["debug"]))
///     .route(RouteConfig::new("/dealers", ShapeRules::new().include(["dealers"])).methods(["GET"]))
///     .chars_per_token(3.5)
///     .max_body_bytes(1 << 20)
///     .query_param(Some("select"))
///     .metrics(&registry)
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug)]
pub struct ShapeResponseLayerBuilder {
    config: ShapeConfig,
    estimator: Option<Arc<dyn TokenEstimator>>,
    registry: Option<Registry>,
}

impl ShapeResponseLayerBuilder {
    /// A builder holding `config`.
    pub fn from_config(config: ShapeConfig) -> Self {
        Self {
            config,
            estimator: None,
            registry: None,
        }
    }

    /// Rules for requests that match no route.
    pub fn rules(mut self, rules: ShapeRules) -> Self {
        self.config.rules = rules;
        self
    }

    /// Adds a route; the first matching route wins.
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.config.routes.push(route);
        self
    }

    /// Characters per token of the default estimator.
    pub fn chars_per_token(mut self, ratio: f64) -> Self {
        self.config.chars_per_token = ratio;
        self
    }

    /// Replaces the token estimator (overrides `chars_per_token`).
    pub fn estimator<E: TokenEstimator>(mut self, estimator: E) -> Self {
        self.estimator = Some(Arc::new(estimator));
        self
    }

    /// Bodies larger than this pass through untouched.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.config.max_body_bytes = max;
        self
    }

    /// Query parameter for per-request selection (`None` turns it off).
    pub fn query_param(mut self, name: Option<&str>) -> Self {
        self.config.query_param = name.map(str::to_owned);
        self
    }

    /// Limits for per-request selectors.
    pub fn selector_limits(mut self, limits: SelectorLimits) -> Self {
        self.config.selector_limits = limits;
        self
    }

    /// Whether shaped responses carry the `x-tokens-*` headers.
    pub fn headers(mut self, on: bool) -> Self {
        self.config.headers = on;
        self
    }

    /// Registers the layer's metrics on `registry` at [`build`](Self::build).
    pub fn metrics(mut self, registry: &Registry) -> Self {
        self.registry = Some(registry.clone());
        self
    }

    /// Compiles the rules and routes, registers metrics.
    pub fn build(self) -> Result<ShapeResponseLayer, ShapeError> {
        let config = self.config;
        let estimator = match self.estimator {
            Some(estimator) => estimator,
            None if config.chars_per_token.is_finite() && config.chars_per_token > 0.0 => {
                Arc::new(CharsPerToken::new(config.chars_per_token))
            }
            None => {
                return Err(ShapeError::InvalidConfig {
                    key: "chars_per_token",
                    reason: "must be a positive number",
                });
            }
        };
        let compile = |rules: &ShapeRules| -> Result<RuleSet, ShapeError> {
            Ok(RuleSet {
                enabled: config.enabled && rules.enabled,
                shaper: Shaper::from_parts(Arc::new(rules.compile()?), estimator.clone()),
            })
        };
        let default = compile(&config.rules)?;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    pattern: PathPattern::parse(&r.path)?,
                    methods: parse_methods(r)?,
                    rules: compile(&r.rules)?,
                })
            })
            .collect::<Result<Vec<_>, ShapeError>>()?;
        let metrics = self.registry.as_ref().map(Metrics::register).transpose()?;
        Ok(ShapeResponseLayer {
            inner: Arc::new(Inner {
                default,
                routes,
                max_body: config.max_body_bytes,
                query_param: config.query_param.filter(|p| !p.is_empty()),
                limits: config.selector_limits,
                headers: config.headers,
                metrics,
            }),
        })
    }
}

fn parse_methods(route: &RouteConfig) -> Result<Vec<Method>, ShapeError> {
    route
        .methods
        .iter()
        .map(|m| {
            Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()).map_err(|_| {
                ShapeError::InvalidRoute {
                    pattern: route.path.clone(),
                    reason: "invalid HTTP method",
                }
            })
        })
        .collect()
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) default: RuleSet,
    pub(crate) routes: Vec<Route>,
    pub(crate) max_body: usize,
    pub(crate) query_param: Option<String>,
    pub(crate) limits: SelectorLimits,
    pub(crate) headers: bool,
    pub(crate) metrics: Option<Metrics>,
}

impl Inner {
    /// The first route matching a request, by path and method.
    pub(crate) fn route_index(&self, method: &Method, path: &str) -> Option<usize> {
        self.routes.iter().position(|r| {
            r.pattern.matches(path) && (r.methods.is_empty() || r.methods.contains(method))
        })
    }

    /// The rules of a route, or the default rules.
    pub(crate) fn rule_set(&self, route: Option<usize>) -> &RuleSet {
        route
            .and_then(|i| self.routes.get(i))
            .map_or(&self.default, |r| &r.rules)
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            m.outcome(outcome).inc();
        }
    }
}

#[derive(Debug)]
pub(crate) struct RuleSet {
    pub(crate) enabled: bool,
    pub(crate) shaper: Shaper,
}

#[derive(Debug)]
pub(crate) struct Route {
    pattern: PathPattern,
    methods: Vec<Method>,
    pub(crate) rules: RuleSet,
}

#[derive(Debug)]
enum PathPattern {
    Exact(String),
    Prefix(String),
}

impl PathPattern {
    fn parse(pattern: &str) -> Result<Self, ShapeError> {
        let invalid = |reason| ShapeError::InvalidRoute {
            pattern: pattern.to_owned(),
            reason,
        };
        if !pattern.starts_with('/') {
            return Err(invalid("a route path starts with '/'"));
        }
        match pattern.find('*') {
            None => Ok(Self::Exact(pattern.to_owned())),
            Some(i) if i == pattern.len() - 1 => Ok(Self::Prefix(pattern[..i].to_owned())),
            Some(_) => Err(invalid("'*' is only allowed at the end of a route path")),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// Why a response was or was not shaped (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Shaped,
    NotJson,
    TooLarge,
    InvalidJson,
    Encoded,
    NotShapeable,
    Disabled,
    BodyError,
    BadSelector,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Shaped,
        Outcome::NotJson,
        Outcome::TooLarge,
        Outcome::InvalidJson,
        Outcome::Encoded,
        Outcome::NotShapeable,
        Outcome::Disabled,
        Outcome::BodyError,
        Outcome::BadSelector,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Shaped => "shaped",
            Outcome::NotJson => "skipped_not_json",
            Outcome::TooLarge => "skipped_too_large",
            Outcome::InvalidJson => "skipped_invalid_json",
            Outcome::Encoded => "skipped_encoded",
            Outcome::NotShapeable => "skipped_status_or_method",
            Outcome::Disabled => "skipped_disabled",
            Outcome::BodyError => "skipped_body_error",
            Outcome::BadSelector => "rejected_bad_selector",
        }
    }
}

/// Prometheus metrics of the layer.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    outcomes: [IntCounter; 9],
    pub(crate) bytes_original: IntCounter,
    pub(crate) bytes_saved: IntCounter,
    pub(crate) tokens_original: IntCounter,
    pub(crate) tokens_saved: IntCounter,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, ShapeError> {
        use palisade_core::metrics::register_counter_vec;
        let responses = register_counter_vec(
            registry,
            "palisade_shape_responses_total",
            "Responses seen by the shaping layer, by outcome (shaped or why skipped).",
            &["outcome"],
        )?;
        let single = |name: &str, help: &str| -> Result<IntCounter, ShapeError> {
            Ok(register_counter_vec(registry, name, help, &[])?.with_label_values(&[] as &[&str]))
        };
        Ok(Self {
            outcomes: Outcome::ALL.map(|o| responses.with_label_values(&[o.as_str()])),
            bytes_original: single(
                "palisade_shape_bytes_original_total",
                "Bytes of the bodies shaped, before shaping.",
            )?,
            bytes_saved: single(
                "palisade_shape_bytes_saved_total",
                "Bytes removed by shaping.",
            )?,
            tokens_original: single(
                "palisade_shape_tokens_original_total",
                "Estimated tokens of the bodies shaped, before shaping.",
            )?,
            tokens_saved: single(
                "palisade_shape_tokens_saved_total",
                "Estimated tokens removed by shaping.",
            )?,
        })
    }

    fn outcome(&self, outcome: Outcome) -> &IntCounter {
        // `ALL` lists the variants in declaration order.
        &self.outcomes[outcome as usize]
    }
}
