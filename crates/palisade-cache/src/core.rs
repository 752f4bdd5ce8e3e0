//! The two tiers, request coalescing, stats and invalidation, shared by the
//! HTTP cache and the generic service cache.

use crate::replicas::Purge;
use crate::{CacheError, metrics::Resolved};
use bytes::Bytes;
use dashmap::DashMap;
use palisade_store::{Backend, Store};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime},
};
use tokio::{sync::watch, time::Instant};

/// A value kept by the tiers.
pub(crate) trait Value: Clone + Send + Sync + 'static {
    /// Approximate size in bytes.
    fn weight(&self) -> usize;
    /// Bytes for L2.
    fn encode(&self) -> Bytes;
    /// Back from L2; `None` on bad data.
    fn decode(bytes: Bytes) -> Option<Self>;
}

#[derive(Clone)]
struct Slot<V> {
    value: V,
    stored_at: Instant,
    weight: u32,
}

/// Wall-clock time that moves with tokio's clock (so paused-clock tests can
/// age entries), anchored to `SystemTime` at construction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Self {
            base_ms: crate::policy::to_ms(SystemTime::now()),
            base: Instant::now(),
        }
    }

    /// Unix milliseconds.
    #[inline]
    pub(crate) fn now_ms(&self) -> u64 {
        self.ms_at(Instant::now())
    }

    /// Unix milliseconds at `at`.
    #[inline]
    pub(crate) fn ms_at(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.base);
        self.base_ms
            .saturating_add(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) revalidations: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) store_errors: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) uncacheable: AtomicU64,
    pub(crate) remote_waits: AtomicU64,
}

/// A snapshot of a cache's counters.
///
/// ```
/// let stats = palisade_cache::CacheStats::default();
/// assert_eq!(stats.hit_rate(), 0.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Answers served fresh from the cache (`X-Cache: HIT`).
    pub hits: u64,
    /// Cacheable requests sent upstream (`X-Cache: MISS`).
    pub misses: u64,
    /// Stale answers served (`stale-while-revalidate`, `stale-if-error`,
    /// `max-stale`; `X-Cache: STALE`).
    pub stale: u64,
    /// Stored responses revalidated with a 304 (`X-Cache: REVALIDATED`).
    pub revalidations: u64,
    /// Requests that waited for another request's upstream call.
    pub coalesced: u64,
    /// Requests that bypassed the cache (no key, store down, not cacheable).
    pub bypassed: u64,
    /// L1 entries evicted for room.
    pub evictions: u64,
    /// L2 store operations that failed (the cache was bypassed).
    pub store_errors: u64,
    /// Requests that found another replica filling their key (Redis lock
    /// held) and polled L2 for its answer.
    pub remote_waits: u64,
    /// L1 entries now.
    pub entries: u64,
    /// L1 bytes now.
    pub bytes: u64,
}

impl CacheStats {
    /// Share of lookups answered from the cache (hits and stale serves).
    pub fn hit_rate(&self) -> f64 {
        let served = self.hits + self.stale;
        let total = served + self.misses + self.revalidations;
        if total == 0 {
            0.0
        } else {
            served as f64 / total as f64
        }
    }
}

/// Outcome of trying to take the cross-replica fill lock.
pub(crate) enum Lock {
    Acquired(String),
    Held,
    Unavailable,
}

/// L2 settings.
pub(crate) struct L2 {
    pub(crate) store: Store,
    pub(crate) ttl: Duration,
    pub(crate) namespace: String,
    pub(crate) version: String,
    pub(crate) entity: String,
    /// L2 is skipped until this instant after a failure (unix ms).
    down_until: AtomicU64,
}

/// Everything the tiers need.
pub(crate) struct Core<V> {
    pub(crate) name: String,
    l1: moka::sync::Cache<Arc<str>, Slot<V>>,
    l1_ttl: Duration,
    pub(crate) l2: Option<L2>,
    flights: DashMap<Arc<str>, watch::Receiver<()>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) metrics: Option<Resolved>,
    pub(crate) clock: Clock,
    pub(crate) coalesce: bool,
    pub(crate) coalesce_timeout: Duration,
    pub(crate) poll_interval: Duration,
    /// Itself, for the purge listener (which must not keep it alive).
    me: std::sync::Weak<Self>,
    /// The purge listener runs (or is starting).
    listening: std::sync::atomic::AtomicBool,
    /// This replica's id in purge messages (its own are skipped).
    origin: u64,
}

/// Tier settings given to [`Core::new`].
pub(crate) struct TierSettings {
    pub(crate) name: String,
    pub(crate) l1_max_entries: u64,
    pub(crate) l1_max_bytes: u64,
    pub(crate) l1_ttl: Duration,
    pub(crate) store: Option<Store>,
    pub(crate) l2_ttl: Duration,
    pub(crate) namespace: String,
    pub(crate) version: String,
    pub(crate) entity: &'static str,
    pub(crate) coalesce: bool,
    pub(crate) coalesce_timeout: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) metrics: Option<crate::CacheMetrics>,
}

const STORE_BACKOFF_MS: u64 = 1_000;

impl<V: Value> Core<V> {
    /// The tiers; with a store, purges are shared with every replica (see
    /// [`crate::replicas`]) from the first moment a tokio runtime is there.
    pub(crate) fn new(s: TierSettings) -> Arc<Self> {
        let core = Arc::new_cyclic(|me| Self::with_self(s, me.clone()));
        core.ensure_listening();
        core
    }

    fn with_self(s: TierSettings, me: std::sync::Weak<Self>) -> Self {
        let counters = Arc::new(Counters::default());
        let metrics = s.metrics.map(|m| m.resolve(&s.name));
        // Each entry weighs at least max_bytes / max_entries, so the moka
        // weight bound enforces both the byte and the entry bound.
        let entries = s.l1_max_entries.max(1);
        let floor = (s.l1_max_bytes / entries).clamp(1, u64::from(u32::MAX));
        let c = counters.clone();
        let m = metrics.clone();
        let l1 = moka::sync::Cache::builder()
            .max_capacity(s.l1_max_bytes.max(floor))
            .weigher(move |_k: &Arc<str>, v: &Slot<V>| {
                u32::try_from(u64::from(v.weight).max(floor)).unwrap_or(u32::MAX)
            })
            .time_to_live(s.l1_ttl.max(Duration::from_millis(1)))
            .support_invalidation_closures()
            .eviction_listener(move |_k, v: Slot<V>, cause| {
                c.bytes.fetch_sub(u64::from(v.weight), Relaxed);
                if cause == moka::notification::RemovalCause::Size {
                    c.evictions.fetch_add(1, Relaxed);
                    if let Some(m) = &m {
                        m.evictions.inc();
                    }
                }
                if let Some(m) = &m {
                    m.bytes
                        .set(i64::try_from(c.bytes.load(Relaxed)).unwrap_or(i64::MAX));
                }
            })
            .build();
        let l2 = s.store.map(|store| L2 {
            store,
            ttl: s.l2_ttl,
            namespace: s.namespace,
            version: s.version,
            entity: s.entity.to_owned(),
            down_until: AtomicU64::new(0),
        });
        Self {
            name: s.name,
            l1,
            l1_ttl: s.l1_ttl,
            l2,
            flights: DashMap::new(),
            counters,
            metrics,
            clock: Clock::new(),
            coalesce: s.coalesce,
            coalesce_timeout: s.coalesce_timeout,
            poll_interval: s.poll_interval,
            me,
            listening: std::sync::atomic::AtomicBool::new(false),
            origin: std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                std::process::id(),
            ),
        }
    }

    /// Starts the purge listener once, when there is a store and a runtime
    /// (a cache built before the runtime starts listens at its first put).
    #[inline]
    fn ensure_listening(&self) {
        if self.listening.load(Relaxed) {
            return;
        }
        let Some(l2) = &self.l2 else { return };
        if tokio::runtime::Handle::try_current().is_err() || self.listening.swap(true, Relaxed) {
            return;
        }
        crate::replicas::listen(
            self.me.clone(),
            l2.store.clone(),
            purge_channel(l2),
            self.origin,
        );
    }

    /// Applies a purge another replica made to this one's L1.
    pub(crate) fn apply_purge(&self, purge: &Purge) {
        match purge {
            Purge::Key(k) => self.l1.invalidate(k.as_str()),
            Purge::Prefix(p) => {
                let p = p.clone();
                let _ = self
                    .l1
                    .invalidate_entries_if(move |k, _| k.starts_with(p.as_str()));
            }
            Purge::Matching(m) => {
                let m = store_glob(m);
                let _ = self
                    .l1
                    .invalidate_entries_if(move |k, _| Store::glob_match(&m, k.as_bytes()));
            }
            Purge::All => self.l1.invalidate_all(),
        }
    }

    /// Tells the other replicas about a purge made here.
    async fn announce(&self, purge: Purge) {
        let Some(l2) = &self.l2 else { return };
        if let Err(e) = l2
            .store
            .publish(&purge_channel(l2), purge.encode(self.origin))
            .await
        {
            self.store_failed("publish", &e);
        }
    }

    /// The L1 value at `key`, if present and younger than the L1 TTL.
    #[inline]
    pub(crate) fn l1_get(&self, key: &str) -> Option<V> {
        self.l1_get_at(key, Instant::now())
    }

    /// [`l1_get`](Self::l1_get) judged at `now` (one clock read per request).
    #[inline]
    pub(crate) fn l1_get_at(&self, key: &str, now: Instant) -> Option<V> {
        let slot = self.l1.get(key)?;
        if now.saturating_duration_since(slot.stored_at) >= self.l1_ttl {
            // Too old for L1 (judged on tokio's clock). Left in place: a
            // refill replaces it, and moka's own TTL drops it otherwise.
            return None;
        }
        Some(slot.value)
    }

    pub(crate) fn l1_put(&self, key: Arc<str>, value: V) {
        self.ensure_listening();
        let weight = u32::try_from(value.weight()).unwrap_or(u32::MAX);
        self.counters.bytes.fetch_add(u64::from(weight), Relaxed);
        self.l1.insert(
            key,
            Slot {
                value,
                stored_at: Instant::now(),
                weight,
            },
        );
        if let Some(m) = &self.metrics {
            m.bytes
                .set(i64::try_from(self.counters.bytes.load(Relaxed)).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn l1_remove(&self, key: &str) {
        self.l1.invalidate(key);
    }

    fn l2_live(&self) -> Option<&L2> {
        let l2 = self.l2.as_ref()?;
        let until = l2.down_until.load(Relaxed);
        if until != 0 && self.clock.now_ms() < until {
            return None;
        }
        Some(l2)
    }

    fn store_failed(&self, op: &str, err: &palisade_store::StoreError) {
        self.counters.store_errors.fetch_add(1, Relaxed);
        if let Some(m) = &self.metrics {
            m.store_errors.inc();
        }
        if let Some(l2) = &self.l2
            && (err.is_unavailable() || err.is_timeout())
        {
            l2.down_until
                .store(self.clock.now_ms() + STORE_BACKOFF_MS, Relaxed);
        }
        tracing::warn!(cache = %self.name, op, error = %err, "cache store failed; bypassing L2");
    }

    /// The L2 key of a logical key.
    pub(crate) fn l2_key(&self, l2: &L2, key: &str) -> String {
        l2.store.key(&l2.namespace, &l2.entity, key, &l2.version)
    }

    /// The L2 value at `key` (which then fills L1).
    pub(crate) async fn l2_get(&self, key: &str) -> Option<V> {
        let l2 = self.l2_live()?;
        match l2.store.get(&self.l2_key(l2, key)).await {
            Ok(Some(bytes)) => match V::decode(bytes) {
                Some(v) => {
                    self.l1_put(Arc::from(key), v.clone());
                    Some(v)
                }
                None => {
                    tracing::warn!(cache = %self.name, "undecodable L2 entry ignored");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.store_failed("get", &e);
                None
            }
        }
    }

    pub(crate) async fn l2_put(&self, key: &str, value: &V) {
        let Some(l2) = self.l2_live() else { return };
        if let Err(e) = l2
            .store
            .set(&self.l2_key(l2, key), value.encode(), Some(l2.ttl))
            .await
        {
            self.store_failed("set", &e);
        }
    }

    /// Stores in both tiers.
    pub(crate) async fn put(&self, key: Arc<str>, value: V) {
        self.l1_put(key.clone(), value.clone());
        self.l2_put(&key, &value).await;
    }

    /// Removes `key` from both tiers.
    pub(crate) async fn remove(&self, key: &str) -> Result<(), CacheError> {
        self.l1_remove(key);
        self.announce(Purge::Key(key.to_owned())).await;
        if let Some(l2) = &self.l2
            && let Err(e) = l2.store.delete(&self.l2_key(l2, key)).await
        {
            self.store_failed("delete", &e);
            return Err(CacheError::Store(e));
        }
        Ok(())
    }

    /// Tries to take the cross-replica fill lock for `key` (Redis only).
    pub(crate) async fn lock(&self, key: &str) -> Lock {
        let Some(l2) = self.l2_live() else {
            return Lock::Unavailable;
        };
        if l2.store.backend() == Backend::Memory {
            return Lock::Unavailable;
        }
        let lock_key = l2.store.key(&l2.namespace, "lock", key, &l2.version);
        match l2
            .store
            .set_if_absent(
                &lock_key,
                Bytes::from_static(b"1"),
                Some(self.coalesce_timeout),
            )
            .await
        {
            Ok(true) => Lock::Acquired(lock_key),
            Ok(false) => {
                self.counters.remote_waits.fetch_add(1, Relaxed);
                Lock::Held
            }
            Err(e) => {
                self.store_failed("lock", &e);
                Lock::Unavailable
            }
        }
    }

    /// Whether the other replica's fill lock for `key` is gone (it finished
    /// without storing anything we can use): stop waiting for it.
    pub(crate) async fn lock_released(&self, key: &str) -> bool {
        let Some(l2) = self.l2_live() else {
            return true;
        };
        matches!(l2.store.get(&lock_key(l2, key)).await, Ok(None))
    }

    pub(crate) async fn unlock(&self, lock_key: &str) {
        if let Some(l2) = &self.l2
            && let Err(e) = l2.store.delete(lock_key).await
        {
            self.store_failed("unlock", &e);
        }
    }

    /// Joins the in-process flight for `key`: the first caller leads.
    pub(crate) fn join(self: &Arc<Self>, key: &Arc<str>) -> Join<V> {
        use dashmap::mapref::entry::Entry;
        match self.flights.entry(key.clone()) {
            Entry::Occupied(e) => Join::Follower(e.get().clone()),
            Entry::Vacant(e) => {
                let (tx, rx) = watch::channel(());
                e.insert(rx.clone());
                Join::Leader(Flight {
                    core: self.clone(),
                    key: key.clone(),
                    rx,
                    _tx: tx,
                })
            }
        }
    }

    /// Waits for a flight to end; `false` on timeout.
    pub(crate) async fn wait(&self, mut rx: watch::Receiver<()>) -> bool {
        // The sender never sends: the flight ends when it is dropped.
        tokio::time::timeout(self.coalesce_timeout, rx.changed())
            .await
            .is_ok()
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Relaxed),
            misses: c.misses.load(Relaxed),
            stale: c.stale.load(Relaxed),
            revalidations: c.revalidations.load(Relaxed),
            coalesced: c.coalesced.load(Relaxed),
            bypassed: c.bypassed.load(Relaxed),
            evictions: c.evictions.load(Relaxed),
            store_errors: c.store_errors.load(Relaxed),
            remote_waits: c.remote_waits.load(Relaxed),
            entries: self.l1.entry_count(),
            bytes: c.bytes.load(Relaxed),
        }
    }

    /// Removes every key starting with `prefix` from both tiers.
    pub(crate) async fn invalidate_prefix(&self, prefix: &str) -> Result<u64, CacheError> {
        let owned = prefix.to_owned();
        self.l1
            .invalidate_entries_if(move |k, _| k.starts_with(owned.as_str()))
            .map_err(|e| CacheError::Invalid(e.to_string()))?;
        self.announce(Purge::Prefix(prefix.to_owned())).await;
        let Some(l2) = &self.l2 else { return Ok(0) };
        let mut pattern = escaped_head(l2);
        pattern.push_str(&escape_part(l2, prefix));
        pattern.push('*');
        self.l2_delete_matching(l2, &pattern).await
    }

    /// Removes every key matching the glob `pattern` (`*`, `?`, `\`
    /// escapes) from both tiers.
    pub(crate) async fn invalidate_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        let glob = store_glob(pattern);
        self.l1
            .invalidate_entries_if(move |k, _| Store::glob_match(&glob, k.as_bytes()))
            .map_err(|e| CacheError::Invalid(e.to_string()))?;
        self.announce(Purge::Matching(pattern.to_owned())).await;
        let Some(l2) = &self.l2 else { return Ok(0) };
        // Translate: literal runs are escaped like key components; `*` and
        // `?` stay wildcards; the trailing `:<version>` must match too.
        let mut out = escaped_head(l2);
        let mut literal = String::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                '*' | '?' => {
                    out.push_str(&Store::glob_escape(&escape_part(l2, &literal)));
                    literal.clear();
                    out.push(c);
                }
                '\\' => literal.extend(chars.next()),
                c => literal.push(c),
            }
        }
        out.push_str(&Store::glob_escape(&escape_part(l2, &literal)));
        out.push(':');
        out.push_str(&escape_part(l2, &l2.version));
        self.l2_delete_matching(l2, &out).await
    }

    async fn l2_delete_matching(&self, l2: &L2, pattern: &str) -> Result<u64, CacheError> {
        l2.store.delete_matching(pattern).await.map_err(|e| {
            self.store_failed("delete_matching", &e);
            CacheError::Store(e)
        })
    }

    /// Drops every L1 entry (L2 entries of this cache too).
    pub(crate) async fn clear(&self) -> Result<u64, CacheError> {
        self.l1.invalidate_all();
        self.announce(Purge::All).await;
        let Some(l2) = &self.l2 else { return Ok(0) };
        let pattern = format!("{}*", escaped_head(l2));
        self.l2_delete_matching(l2, &pattern).await
    }

    pub(crate) fn run_pending_tasks(&self) {
        self.l1.run_pending_tasks();
    }
}

/// The channel purges of this cache's entries go on: one per namespace,
/// entity and version (the caches that share entries share purges).
fn purge_channel(l2: &L2) -> String {
    l2.store
        .key(&l2.namespace, "purge", &l2.entity, &l2.version)
}

fn lock_key(l2: &L2, key: &str) -> String {
    l2.store.key(&l2.namespace, "lock", key, &l2.version)
}

/// `<prefix>:<ns>:<entity>:` with components escaped.
fn escaped_head(l2: &L2) -> String {
    let base = l2.store.key(&l2.namespace, &l2.entity, "", "v");
    // base = head + ":" + "" + ":v"  →  keep "head:"
    base[..base.len() - 2].to_owned()
}

/// `part` escaped as the store escapes key components.
fn escape_part(l2: &L2, part: &str) -> String {
    let base = l2.store.key("n", "e", "", "v");
    let full = l2.store.key("n", "e", part, "v");
    full[base.len() - 2..full.len() - 2].to_owned()
}

/// A purge pattern (`*`, `?`, `\x` escapes; everything else literal) as a
/// store glob, for [`Store::glob_match`]: `[` and `]` are escaped, and a
/// trailing lone `\` (which escapes nothing, so the pattern matches no key)
/// becomes an empty class, which matches nothing either.
fn store_glob(pattern: &str) -> Vec<u8> {
    let pattern = pattern.as_bytes();
    let mut out = Vec::with_capacity(pattern.len() + 2);
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'\\' if i + 1 < pattern.len() => {
                out.extend_from_slice(&pattern[i..i + 2]);
                i += 2;
                continue;
            }
            b'\\' => out.extend_from_slice(b"[]"),
            c @ (b'[' | b']') => out.extend_from_slice(&[b'\\', c]),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Whether the L1 key `text` matches the purge `pattern`.
#[cfg(test)]
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let pattern = std::str::from_utf8(pattern).expect("patterns are strings");
    Store::glob_match(&store_glob(pattern), text)
}

/// The leader's hold on a flight; followers wake when it drops.
pub(crate) struct Flight<V: Value> {
    core: Arc<Core<V>>,
    key: Arc<str>,
    rx: watch::Receiver<()>,
    _tx: watch::Sender<()>,
}

impl<V: Value> Drop for Flight<V> {
    fn drop(&mut self) {
        let rx = &self.rx;
        self.core
            .flights
            .remove_if(&self.key, |_, other| other.same_channel(rx));
    }
}

impl<V: Value> fmt::Debug for Flight<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flight").field("key", &self.key).finish()
    }
}

/// Result of [`Core::join`].
pub(crate) enum Join<V: Value> {
    Leader(Flight<V>),
    Follower(watch::Receiver<()>),
}

/// Object-safe operations behind [`crate::CacheHandle`].
pub(crate) trait Ops: Send + Sync + 'static {
    fn stats(&self) -> CacheStats;
    fn name(&self) -> &str;
    fn remove<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), CacheError>>;
    fn prefix<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<u64, CacheError>>;
    fn matching<'a>(&'a self, pattern: &'a str) -> BoxFut<'a, Result<u64, CacheError>>;
    fn clear(&self) -> BoxFut<'_, Result<u64, CacheError>>;
    fn sync(&self);
}

pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl<V: Value> Ops for Core<V> {
    fn stats(&self) -> CacheStats {
        Core::stats(self)
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn remove<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), CacheError>> {
        Box::pin(Core::remove(self, key))
    }
    fn prefix<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<u64, CacheError>> {
        Box::pin(self.invalidate_prefix(prefix))
    }
    fn matching<'a>(&'a self, pattern: &'a str) -> BoxFut<'a, Result<u64, CacheError>> {
        Box::pin(self.invalidate_matching(pattern))
    }
    fn clear(&self) -> BoxFut<'_, Result<u64, CacheError>> {
        Box::pin(Core::clear(self))
    }
    fn sync(&self) {
        self.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"GET host/a*", b"GET host/a/b"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a?c", b"abc"));
        assert!(!glob(b"a?c", b"ac"));
        assert!(glob(b"a\\*c", b"a*c"));
        assert!(!glob(b"a\\*c", b"abc"));
        assert!(glob(b"*x*y", b"aaxbby"));
        assert!(!glob(b"*x*y", b"aaxbb"));
        // No classes: brackets are literal.
        assert!(glob(b"a[b]*", b"a[b]c"));
        assert!(!glob(b"a[b]*", b"abc"));
        assert!(glob(b"a\\[*", b"a[x"));
        // A trailing lone backslash escapes nothing: no key matches.
        assert!(!glob(b"a\\", b"a\\"));
        assert!(!glob(b"*\\", b"a"));
        assert!(!glob(b"*\\", b""));
    }
}
