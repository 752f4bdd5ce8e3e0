//! Every breaker by name: snapshots, manual control, events, metrics.

use crate::{
    breaker::{Breaker, Snapshot, State, StateChange},
    config::ConfigError,
    keyed::Group,
};
use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, PoisonError, RwLock, atomic::Ordering::Relaxed},
};
use tokio::sync::broadcast;

#[derive(Clone)]
pub(crate) enum Entry {
    Single(Breaker),
    Group(Arc<Group>),
}

impl Entry {
    fn breakers(&self) -> Vec<Breaker> {
        match self {
            Self::Single(b) => vec![b.clone()],
            Self::Group(g) => g.breakers(),
        }
    }
}

struct RegistryInner {
    entries: RwLock<BTreeMap<String, Entry>>,
    events: broadcast::Sender<StateChange>,
}

/// Names every breaker built with it: snapshots (state, calls by outcome,
/// failure rate, time until retry), reset, force-open, disable, a stream of
/// state changes, and Prometheus metrics.
///
/// Cheap to clone; clones share the breakers. Per-key breakers are listed
/// under their layer's name, each with its key.
///
/// # Example
///
/// ```
/// use palisade_breaker::{BreakerRegistry, CircuitBreakerLayer, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let registry = BreakerRegistry::new();
/// let mut events = registry.subscribe();
/// let _layer = CircuitBreakerLayer::builder("inventory")
///     .registry(&registry)
///     .build()
///     .unwrap();
///
/// registry.force_open("inventory");
/// assert_eq!(registry.snapshot("inventory")[0].state, State::ForcedOpen);
/// assert_eq!(events.recv().await.unwrap().to, State::ForcedOpen);
/// registry.reset("inventory");
/// assert_eq!(registry.names(), ["inventory"]);
/// # }
/// ```
#[derive(Clone)]
pub struct BreakerRegistry {
    inner: Arc<RegistryInner>,
}

impl Default for BreakerRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl BreakerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                entries: RwLock::new(BTreeMap::new()),
                events: broadcast::channel(256).0,
            }),
        }
    }

    pub(crate) fn events(&self) -> broadcast::Sender<StateChange> {
        self.inner.events.clone()
    }

    pub(crate) fn insert(&self, name: &str, entry: Entry) -> Result<(), ConfigError> {
        let mut entries = self
            .inner
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if entries.contains_key(name) {
            return Err(ConfigError::DuplicateName(name.to_owned()));
        }
        entries.insert(name.to_owned(), entry);
        Ok(())
    }

    /// Adds a breaker built on its own ([`Breaker::new`]); its events are
    /// not on this registry's stream.
    pub fn register(&self, breaker: &Breaker) -> Result<(), ConfigError> {
        self.insert(breaker.name(), Entry::Single(breaker.clone()))
    }

    /// Removes a breaker (or a per-key group) by name.
    pub fn remove(&self, name: &str) -> bool {
        self.inner
            .entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .is_some()
    }

    fn entry(&self, name: &str) -> Option<Entry> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn entries(&self) -> Vec<(String, Entry)> {
        self.inner
            .entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries().into_iter().map(|(n, _)| n).collect()
    }

    /// The breaker named `name`; for a per-key group, its key-less breaker.
    pub fn get(&self, name: &str) -> Option<Breaker> {
        match self.entry(name)? {
            Entry::Single(b) => Some(b),
            Entry::Group(g) => Some(g.keyless.clone()),
        }
    }

    /// The breakers named `name`: one, or every key of a per-key group.
    pub fn breakers(&self, name: &str) -> Vec<Breaker> {
        self.entry(name).map(|e| e.breakers()).unwrap_or_default()
    }

    /// Snapshots of the breakers named `name` (empty when unknown).
    pub fn snapshot(&self, name: &str) -> Vec<Snapshot> {
        self.breakers(name).iter().map(Breaker::snapshot).collect()
    }

    /// Snapshots of every breaker, by name.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.entries()
            .iter()
            .flat_map(|(_, e)| e.breakers())
            .map(|b| b.snapshot())
            .collect()
    }

    fn apply(&self, name: &str, f: impl Fn(&Breaker)) -> bool {
        let breakers = self.breakers(name);
        breakers.iter().for_each(f);
        !breakers.is_empty()
    }

    /// Closes the breakers named `name`; false when unknown.
    pub fn reset(&self, name: &str) -> bool {
        self.apply(name, Breaker::reset)
    }

    /// Forces the breakers named `name` open; false when unknown.
    pub fn force_open(&self, name: &str) -> bool {
        self.apply(name, Breaker::force_open)
    }

    /// Disables the breakers named `name` (every call passes); false when
    /// unknown.
    pub fn disable(&self, name: &str) -> bool {
        self.apply(name, Breaker::disable)
    }

    /// Puts the breakers named `name` in metrics-only mode; false when
    /// unknown.
    pub fn metrics_only(&self, name: &str) -> bool {
        self.apply(name, Breaker::metrics_only)
    }

    /// State changes of every breaker built with this registry.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.inner.events.subscribe()
    }

    /// Registers the breakers' metrics on `registry`, read at scrape time
    /// (nothing is added to the call path):
    ///
    /// - `palisade_breaker_state{breaker, state}`: breakers in each state
    ///   (1/0 for a single breaker; a count of keys for a per-key group);
    /// - `palisade_breaker_calls_total{breaker, outcome}`: `success`,
    ///   `failure`, `ignored`, `rejected`, `slow`;
    /// - `palisade_breaker_transitions_total{breaker, to}`.
    ///
    /// Labels are bounded: the breaker's name, never a key.
    ///
    /// ```
    /// let breakers = palisade_breaker::BreakerRegistry::new();
    /// let _layer = palisade_breaker::CircuitBreakerLayer::builder("db")
    ///     .registry(&breakers)
    ///     .build()
    ///     .unwrap();
    /// let prom = prometheus::Registry::new();
    /// breakers.register_metrics(&prom).unwrap();
    /// let names: Vec<_> = prom.gather().iter().map(|f| f.name().to_owned()).collect();
    /// assert!(names.contains(&"palisade_breaker_state".to_owned()));
    /// ```
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(MetricsCollector::new(self.clone())?))
    }
}

impl fmt::Debug for BreakerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerRegistry")
            .field("names", &self.names())
            .finish()
    }
}

struct MetricsCollector {
    registry: BreakerRegistry,
    descs: Vec<Desc>,
}

const STATE: &str = "palisade_breaker_state";
const CALLS: &str = "palisade_breaker_calls_total";
const TRANSITIONS: &str = "palisade_breaker_transitions_total";
const STORE_ERRORS: &str = "palisade_breaker_store_errors_total";
const STORE_ERRORS_HELP: &str = "Failed store operations of shared circuit breakers.";

impl MetricsCollector {
    fn new(registry: BreakerRegistry) -> prometheus::Result<Self> {
        let desc = |name: &str, help: &str, label: &str| {
            Desc::new(
                name.to_owned(),
                help.to_owned(),
                vec!["breaker".to_owned(), label.to_owned()],
                Default::default(),
            )
        };
        Ok(Self {
            registry,
            descs: vec![
                desc(STATE, "Circuit breakers in each state.", "state")?,
                desc(
                    CALLS,
                    "Calls through circuit breakers by outcome.",
                    "outcome",
                )?,
                desc(
                    TRANSITIONS,
                    "Circuit breaker state transitions by target state.",
                    "to",
                )?,
                Desc::new(
                    STORE_ERRORS.to_owned(),
                    STORE_ERRORS_HELP.to_owned(),
                    vec!["breaker".to_owned()],
                    Default::default(),
                )?,
            ],
        })
    }
}

fn labels(breaker: &str, name: &str, value: &str) -> Vec<LabelPair> {
    let mut a = LabelPair::default();
    a.set_name("breaker".to_owned());
    a.set_value(breaker.to_owned());
    let mut b = LabelPair::default();
    b.set_name(name.to_owned());
    b.set_value(value.to_owned());
    vec![a, b]
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(breaker: &str, label: &str, value: &str, v: u64) -> Metric {
    let mut m = Metric::default();
    m.set_label(labels(breaker, label, value));
    let mut c = Counter::default();
    c.set_value(v as f64);
    m.set_counter(c);
    m
}

impl Collector for MetricsCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut states = Vec::new();
        let mut calls = Vec::new();
        let mut transitions = Vec::new();
        let mut store_errors = Vec::new();
        for (name, entry) in self.registry.entries() {
            let settings = match &entry {
                Entry::Single(b) => b.settings().clone(),
                Entry::Group(g) => g.settings.clone(),
            };
            if settings.shared {
                let mut m = Metric::default();
                let mut l = LabelPair::default();
                l.set_name("breaker".to_owned());
                l.set_value(name.clone());
                m.set_label(vec![l]);
                let mut c = Counter::default();
                c.set_value(settings.store_errors.load(Relaxed) as f64);
                m.set_counter(c);
                store_errors.push(m);
            }
            let (breakers, retired) = match &entry {
                Entry::Single(b) => (vec![b.clone()], None),
                Entry::Group(g) => {
                    g.run_pending();
                    (g.breakers(), Some(g.retired.clone()))
                }
            };
            let mut in_state = [0i64; 6];
            let mut by_outcome = [0u64; 5];
            let mut entered = [0u64; 6];
            for b in &breakers {
                let s = b.snapshot();
                in_state[s.state.as_gauge() as usize] += 1;
                by_outcome[0] += s.successful_calls;
                by_outcome[1] += s.failed_calls;
                by_outcome[2] += s.ignored_calls;
                by_outcome[3] += s.rejected_calls;
                by_outcome[4] += s.slow_calls;
                for (i, st) in State::all().into_iter().enumerate() {
                    entered[i] += b.times_entered(st);
                }
            }
            if let Some(r) = retired {
                by_outcome[0] += r.successful.load(Relaxed);
                by_outcome[1] += r.failed.load(Relaxed);
                by_outcome[2] += r.ignored.load(Relaxed);
                by_outcome[3] += r.rejected.load(Relaxed);
                by_outcome[4] += r.slow.load(Relaxed);
                for (i, e) in entered.iter_mut().enumerate() {
                    *e += r.entered[i].load(Relaxed);
                }
            }
            for (i, st) in State::all().into_iter().enumerate() {
                let mut m = Metric::default();
                m.set_label(labels(&name, "state", st.as_str()));
                let mut g = Gauge::default();
                g.set_value(in_state[i] as f64);
                m.set_gauge(g);
                states.push(m);
                transitions.push(counter(&name, "to", st.as_str(), entered[i]));
            }
            for (i, outcome) in ["success", "failure", "ignored", "rejected", "slow"]
                .into_iter()
                .enumerate()
            {
                calls.push(counter(&name, "outcome", outcome, by_outcome[i]));
            }
        }
        vec![
            family(
                STATE,
                "Circuit breakers in each state.",
                MetricType::GAUGE,
                states,
            ),
            family(
                CALLS,
                "Calls through circuit breakers by outcome.",
                MetricType::COUNTER,
                calls,
            ),
            family(
                TRANSITIONS,
                "Circuit breaker state transitions by target state.",
                MetricType::COUNTER,
                transitions,
            ),
            family(
                STORE_ERRORS,
                STORE_ERRORS_HELP,
                MetricType::COUNTER,
                store_errors,
            ),
        ]
    }
}
