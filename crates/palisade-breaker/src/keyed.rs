//! Which breaker a call goes through: one for the layer, or one per key.

use crate::breaker::{Breaker, Settings};
use palisade_core::key::KeyExtractor;
use std::{
    any::Any,
    fmt,
    hash::Hash,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

/// Picks the breaker a request goes through.
///
/// Implemented by [`SingleBreaker`] (the default: one breaker per layer)
/// and [`KeyedBreakers`] (one per key, see [`Builder::per_key`](crate::Builder::per_key)).
pub trait Select<Req>: Clone + Send + Sync + 'static {
    /// The breaker for `req`.
    fn select(&self, req: &Req) -> Breaker;

    /// Why `req` must be refused rather than go through a breaker: the
    /// key extractor's [`KeyExtractor::refusal`] (a
    /// [`PeerIp`](palisade_core::key::PeerIp) with
    /// [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse) and
    /// no peer address on the request). The breaker service consults it
    /// before [`select`](Self::select) and, when it is `Some`, answers with
    /// the error without calling the inner service (see
    /// [`OnOpen::refused`](crate::respond::OnOpen::refused)). `None` by
    /// default: a single breaker never refuses.
    ///
    /// ```
    /// use palisade_breaker::{CircuitBreakerLayer, Select};
    /// use palisade_core::key::{MissingPeer, PeerIp};
    ///
    /// let layer = CircuitBreakerLayer::builder("upstreams")
    ///     .per_key(PeerIp::new().when_missing(MissingPeer::Refuse))
    ///     .build()
    ///     .unwrap();
    /// let req = http::Request::new(()); // no peer address
    /// let err = layer.breakers().refusal(&req).unwrap();
    /// assert_eq!(err.http_status(), 500);
    /// // The default policy shares one key instead of refusing.
    /// let lenient = CircuitBreakerLayer::builder("upstreams-lenient")
    ///     .per_key(PeerIp::new())
    ///     .build()
    ///     .unwrap();
    /// assert!(lenient.breakers().refusal(&req).is_none());
    /// ```
    #[inline]
    fn refusal(&self, req: &Req) -> Option<palisade_core::Error> {
        let _ = req;
        None
    }
}

/// One breaker for every call through the layer.
#[derive(Clone, Debug)]
pub struct SingleBreaker(pub(crate) Breaker);

impl<Req> Select<Req> for SingleBreaker {
    #[inline]
    fn select(&self, _req: &Req) -> Breaker {
        self.0.clone()
    }
}

/// A hook run on every breaker a group creates (registry, shared state).
pub(crate) type OnNew = Arc<dyn Fn(&Breaker) + Send + Sync>;

trait KeyMap: Send + Sync {
    fn breakers(&self) -> Vec<Breaker>;
    fn as_any(&self) -> &dyn Any;
    fn run_pending(&self);
}

struct TypedMap<K: Hash + Eq + Send + Sync + 'static> {
    cache: moka::sync::Cache<K, Breaker>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> KeyMap for TypedMap<K> {
    fn breakers(&self) -> Vec<Breaker> {
        self.cache.iter().map(|(_, b)| b).collect()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn run_pending(&self) {
        self.cache.run_pending_tasks();
    }
}

/// Totals of evicted per-key breakers, kept so counters never go down.
#[derive(Debug, Default)]
pub(crate) struct Retired {
    pub(crate) successful: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) ignored: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) slow: AtomicU64,
    pub(crate) entered: [AtomicU64; 6],
}

/// The per-key breakers of one layer.
pub(crate) struct Group {
    pub(crate) name: Arc<str>,
    pub(crate) settings: Arc<Settings>,
    /// The breaker of requests that have no key.
    pub(crate) keyless: Breaker,
    map: OnceLock<Box<dyn KeyMap>>,
    pub(crate) retired: Arc<Retired>,
    pub(crate) on_new: OnceLock<OnNew>,
}

impl Group {
    pub(crate) fn new(name: Arc<str>, settings: Arc<Settings>) -> Self {
        let keyless = Breaker::with_settings(name.clone(), None, settings.clone());
        Self {
            name,
            settings,
            keyless,
            map: OnceLock::new(),
            retired: Arc::default(),
            on_new: OnceLock::new(),
        }
    }

    fn map<K: Hash + Eq + Clone + Send + Sync + 'static>(&self) -> Option<&TypedMap<K>> {
        self.map
            .get_or_init(|| {
                let retired = self.retired.clone();
                let cfg = &self.settings.config;
                let cache = moka::sync::Cache::builder()
                    .max_capacity(cfg.max_keys)
                    .time_to_idle(cfg.key_idle_timeout)
                    .eviction_listener(move |_k, b: Breaker, _cause| {
                        let s = b.snapshot();
                        retired.successful.fetch_add(s.successful_calls, Relaxed);
                        retired.failed.fetch_add(s.failed_calls, Relaxed);
                        retired.ignored.fetch_add(s.ignored_calls, Relaxed);
                        retired.rejected.fetch_add(s.rejected_calls, Relaxed);
                        retired.slow.fetch_add(s.slow_calls, Relaxed);
                        for (i, st) in crate::State::all().into_iter().enumerate() {
                            retired.entered[i].fetch_add(b.times_entered(st), Relaxed);
                        }
                    })
                    .build();
                Box::new(TypedMap::<K> { cache })
            })
            .as_any()
            .downcast_ref::<TypedMap<K>>()
    }

    /// Every live breaker of the group, the key-less one first.
    pub(crate) fn breakers(&self) -> Vec<Breaker> {
        let mut all = vec![self.keyless.clone()];
        if let Some(map) = self.map.get() {
            map.run_pending();
            all.extend(map.breakers());
        }
        all
    }

    /// Applies pending evictions (moka runs them lazily).
    pub(crate) fn run_pending(&self) {
        if let Some(map) = self.map.get() {
            map.run_pending();
        }
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One breaker per key: requests are sorted by a [`KeyExtractor`];
/// requests without a key share one key-less breaker. At most
/// [`max_keys`](crate::Config::max_keys) breakers are kept; a key unused for
/// [`key_idle_timeout`](crate::Config::key_idle_timeout) is evicted (its
/// counts are kept in the metrics).
#[derive(Clone)]
pub struct KeyedBreakers<X> {
    pub(crate) extractor: X,
    pub(crate) group: Arc<Group>,
}

impl<X> KeyedBreakers<X> {
    /// The breaker of `key`, creating it if needed.
    pub fn get<K>(&self, key: K) -> Breaker
    where
        K: Hash + Eq + Clone + Send + Sync + fmt::Display + 'static,
    {
        self.group.get(key)
    }

    /// Every live breaker, the key-less one first.
    pub fn breakers(&self) -> Vec<Breaker> {
        self.group.breakers()
    }
}

impl Group {
    pub(crate) fn get<K>(&self, key: K) -> Breaker
    where
        K: Hash + Eq + Clone + Send + Sync + fmt::Display + 'static,
    {
        let Some(map) = self.map::<K>() else {
            return self.keyless.clone();
        };
        if let Some(b) = map.cache.get(&key) {
            return b;
        }
        let label: Arc<str> = key.to_string().into();
        let entry = map.cache.entry(key).or_insert_with(|| {
            let b = Breaker::with_settings(self.name.clone(), Some(label), self.settings.clone());
            if let Some(hook) = self.on_new.get() {
                hook(&b);
            }
            b
        });
        entry.into_value()
    }
}

impl<X: fmt::Debug> fmt::Debug for KeyedBreakers<X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakers")
            .field("extractor", &self.extractor)
            .field("name", &self.group.name)
            .finish()
    }
}

impl<Req, X> Select<Req> for KeyedBreakers<X>
where
    X: KeyExtractor<Req>,
{
    #[inline]
    fn select(&self, req: &Req) -> Breaker {
        match self.extractor.extract(req) {
            Some(key) => self.group.get(key),
            None => self.group.keyless.clone(),
        }
    }

    #[inline]
    fn refusal(&self, req: &Req) -> Option<palisade_core::Error> {
        self.extractor.refusal(req)
    }
}
