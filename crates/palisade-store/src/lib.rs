//! The shared state behind every palisade layer: rate-limit counters, cached
//! responses, circuit state and the dead-letter stream.
//!
//! One async API, [`Store`], over a backend chosen at run time:
//!
//! - **in-process** (`memory://`, the default): concurrent, TTL-aware and
//!   bounded by entries and bytes ([`MemoryConfig`]). All expiry and GCRA
//!   arithmetic uses [`tokio::time::Instant`], so tests on a paused tokio
//!   clock (`#[tokio::test(start_paused = true)]`) see TTLs and rate limits
//!   move with `tokio::time::advance`.
//! - **Redis** (`redis://…`, `rediss://…`): one multiplexed connection that
//!   reconnects by itself; concurrent calls share it.
//! - **Redis Cluster** (`redis+cluster://h1:p1,h2:p2,…`): a connection per
//!   node, slot-aware routing, SCAN on every master for pattern deletes.
//!
//! Every Redis call is bounded by a per-operation timeout (default 250 ms).
//! Errors tell "could not reach the store" ([`StoreError::is_unavailable`])
//! from "the data is not what was expected" ([`StoreError::is_bad_data`]).
//!
//! Rate limiting is GCRA, one atomic round trip per decision on Redis (a Lua
//! script using the server's clock); the arithmetic is documented on
//! [`GcraRule`]'s module, [`gcra`].
//!
//! # Keys
//!
//! [`Store::key`] builds `<prefix>:<namespace>:<entity>:<id>:<version>` and
//! escapes every component, so user input cannot inject `:`, hash-tag braces
//! or glob characters, and distinct inputs never collide.
//! [`Store::grouped_key`] adds a `{group}` hash tag: keys of one group live
//! in one Redis Cluster slot, so multi-key operations on them
//! ([`Store::rate_limit_many`]) stay a single atomic round trip.
//!
//! # Example
//!
//! ```
//! use palisade_store::{GcraRule, Store};
//! use bytes::Bytes;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_store::StoreError> {
//! let store = Store::connect("memory://").await?;
//! let key = store.key("cache", "user", "42", "v1");
//! assert_eq!(key, "palisade:cache:user:42:v1");
//!
//! store.set(&key, Bytes::from_static(b"alice"), Some(Duration::from_secs(60))).await?;
//! assert_eq!(store.get(&key).await?, Some(Bytes::from_static(b"alice")));
//!
//! let limit = store.key("rl", "ip", "10.0.0.1", "v1");
//! let decision = store.rate_limit(&limit, GcraRule::per_minute(60), 1).await?;
//! assert!(decision.allowed);
//! assert_eq!(decision.remaining, 59);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

mod config;
mod error;
pub mod gcra;
mod key;
mod memory;
pub mod pubsub;
mod redis_backend;
pub mod tokens;

pub use config::{Backend, MemoryConfig, StoreConfig};
pub use error::{BoxError, StoreError};
pub use gcra::{GcraRule, RateDecision};
pub use memory::MemoryStats;
pub use pubsub::{Notice, Subscription};
pub use tokens::{TokenDecision, TokenReservation, TokenRule, TokenSettlement};

use memory::MemoryStore;
use redis_backend::RedisStore;

/// One entry of a stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_store::StoreError> {
/// let store = palisade_store::Store::in_memory();
/// store.stream_append("dlq", &[("error", b"timeout")], 100).await?;
/// let entries = store.stream_read("dlq", 10).await?;
/// assert_eq!(entries[0].fields[0].0, "error");
/// assert_eq!(entries[0].get("error").unwrap().as_ref(), b"timeout");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id (`<milliseconds>-<sequence>`), increasing within a stream.
    pub id: String,
    /// Field / value pairs, in the order they were appended.
    pub fields: Vec<(String, Bytes)>,
}

impl StreamEntry {
    /// The value of the first field named `name`.
    pub fn get(&self, name: &str) -> Option<&Bytes> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

#[derive(Debug)]
enum Inner {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// A handle on the store: cheap to clone, shared by every layer.
///
/// See the [crate docs](crate) for the backends.
///
/// ```
/// use palisade_store::Store;
/// use bytes::Bytes;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_store::StoreError> {
/// let store = Store::in_memory();
/// let breaker = store.key("breaker", "upstream", "api.example.com", "v1");
/// // Shared circuit state: move closed -> open only if nobody else did.
/// store.set(&breaker, Bytes::from_static(b"closed"), None).await?;
/// let swapped = store
///     .compare_and_swap(&breaker, Some(b"closed"), Bytes::from_static(b"open"), Some(Duration::from_secs(60)))
///     .await?;
/// assert!(swapped);
/// let hits = store.increment(&store.key("stats", "cache", "hits", "v1"), 1, None).await?;
/// assert_eq!(hits, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Inner>,
    prefix: Arc<str>,
}

macro_rules! dispatch {
    ($self:ident, $m:ident => $mem:expr, $r:ident => $red:expr) => {
        match &*$self.inner {
            Inner::Memory($m) => $mem,
            Inner::Redis($r) => $red,
        }
    };
}

impl Store {
    /// An in-process store with the default bounds and prefix.
    pub fn in_memory() -> Store {
        Store::in_memory_with(MemoryConfig::default())
    }

    /// An in-process store with the given bounds (zero bounds are raised to 1).
    pub fn in_memory_with(cfg: MemoryConfig) -> Store {
        let cfg = MemoryConfig {
            max_entries: cfg.max_entries.max(1),
            max_bytes: cfg.max_bytes.max(1),
        };
        Store {
            inner: Arc::new(Inner::Memory(MemoryStore::new(cfg))),
            prefix: "palisade".into(),
        }
    }

    /// Connects to `url` with the default settings: `memory://`,
    /// `redis://host:port[/db]`, `rediss://…` or
    /// `redis+cluster://h1:p1,h2:p2,…`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = palisade_store::Store::connect("memory://").await.unwrap();
    /// assert_eq!(store.backend(), palisade_store::Backend::Memory);
    /// assert!(palisade_store::Store::connect("ftp://x").await.is_err());
    /// # }
    /// ```
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Store::connect_with(StoreConfig::new(url)).await
    }

    /// Connects with full settings; see [`StoreConfig`]. Fails with
    /// [`StoreError::InvalidConfig`] on a bad URL or prefix, and with an
    /// unavailable error when the server cannot be reached within the
    /// connect timeout.
    pub async fn connect_with(cfg: StoreConfig) -> Result<Store, StoreError> {
        cfg.validate()?;
        let inner = if cfg.url == "memory://" || cfg.url == "memory" {
            Inner::Memory(MemoryStore::new(cfg.memory.clone()))
        } else if [
            "redis://",
            "rediss://",
            "redis+cluster://",
            "rediss+cluster://",
            "redis+unix://",
            "unix://",
        ]
        .iter()
        .any(|s| cfg.url.starts_with(s))
        {
            Inner::Redis(RedisStore::connect(&cfg).await?)
        } else {
            return Err(StoreError::InvalidConfig(format!(
                "unsupported store URL {:?}: use memory://, redis://, rediss:// or redis+cluster://",
                cfg.url
            )));
        };
        Ok(Store {
            inner: Arc::new(inner),
            prefix: cfg.prefix.into(),
        })
    }

    /// Which backend this store talks to.
    pub fn backend(&self) -> Backend {
        dispatch!(self, _m => Backend::Memory, r => r.backend())
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// In-process usage figures; `None` for Redis backends.
    pub fn memory_stats(&self) -> Option<MemoryStats> {
        dispatch!(self, m => Some(m.stats()), _r => None)
    }

    /// `<prefix>:<namespace>:<entity>:<id>:<version>`.
    ///
    /// Every component is escaped (`%XX` for `:` `{` `}` `*` `?` `[` `]`
    /// `\` `%` `^`, whitespace and control characters), so user input in
    /// `id` cannot add a separator, a hash tag or a glob, and two different
    /// inputs never give the same key.
    ///
    /// ```
    /// let store = palisade_store::Store::in_memory();
    /// assert_eq!(store.key("rl", "user", "a:b*", "v1"), "palisade:rl:user:a%3Ab%2A:v1");
    /// ```
    pub fn key(&self, namespace: &str, entity: &str, id: &str, version: &str) -> String {
        key::build(&self.prefix, None, namespace, entity, id, version)
    }

    /// Like [`key`](Store::key), with a Redis Cluster hash tag for `group`
    /// right after the prefix: `<prefix>:{<group>}:<namespace>:…`. Every key
    /// of one group maps to the same cluster slot.
    ///
    /// ```
    /// let store = palisade_store::Store::in_memory();
    /// let a = store.grouped_key("req-1", "rl", "user", "7", "v1");
    /// assert_eq!(a, "palisade:{req-1}:rl:user:7:v1");
    /// ```
    pub fn grouped_key(
        &self,
        group: &str,
        namespace: &str,
        entity: &str,
        id: &str,
        version: &str,
    ) -> String {
        key::build(&self.prefix, Some(group), namespace, entity, id, version)
    }

    /// A glob pattern matching every key of `namespace` (optionally only of
    /// `entity`), for [`delete_matching`](Store::delete_matching). The
    /// components are escaped as in [`key`](Store::key).
    ///
    /// ```
    /// let store = palisade_store::Store::in_memory();
    /// assert_eq!(store.pattern("cache", Some("user")), "palisade:cache:user:*");
    /// assert_eq!(store.pattern("cache", None), "palisade:cache:*");
    /// ```
    pub fn pattern(&self, namespace: &str, entity: Option<&str>) -> String {
        let mut out = String::with_capacity(self.prefix.len() + namespace.len() + 16);
        out.push_str(&self.prefix);
        for part in std::iter::once(namespace).chain(entity) {
            out.push(':');
            key::push_escaped(&mut out, part);
        }
        out.push_str(":*");
        out
    }

    /// Escapes `s` so that it matches only itself inside a glob pattern.
    ///
    /// ```
    /// assert_eq!(palisade_store::Store::glob_escape("a*b"), "a\\*b");
    /// ```
    pub fn glob_escape(s: &str) -> String {
        key::glob_escape(s)
    }

    /// Whether `text` matches the glob `pattern` as Redis matches keys
    /// (`SCAN MATCH`, [`delete_matching`](Store::delete_matching) on every
    /// backend): `*`, `?`, `[abc]`, `[^a]`, `[a-z]` and `\x` escapes,
    /// byte-wise.
    ///
    /// ```
    /// use palisade_store::Store;
    ///
    /// assert!(Store::glob_match(b"user:[0-9]*", b"user:42"));
    /// assert!(!Store::glob_match(b"a\\*", b"ab"));
    /// assert!(Store::glob_match(Store::glob_escape("a*").as_bytes(), b"a*"));
    /// ```
    pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
        key::glob_match(pattern, text)
    }

    /// The value at `key`, or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        dispatch!(self, m => m.get(key), r => r.get(key).await)
    }

    /// Sets `key` to `value`, replacing any TTL with `ttl` (`None` = keep
    /// forever). A zero TTL is [`StoreError::InvalidInput`].
    pub async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        dispatch!(self, m => m.set(key, value, ttl), r => r.set(key, value, ttl).await)
    }

    /// Sets `key` only when it does not exist (`SET NX PX`): `true` when set.
    /// The building block of locks.
    pub async fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        dispatch!(self, m => m.set_if_absent(key, value, ttl), r => r.set_if_absent(key, value, ttl).await)
    }

    /// The values at `keys`, in order (one round trip per node on Redis).
    pub async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Bytes>>, StoreError> {
        dispatch!(self,
            m => keys.iter().map(|k| m.get(k)).collect(),
            r => r.get_many(keys).await)
    }

    /// Sets every entry with the same TTL. On Redis one atomic transaction;
    /// on a cluster one transaction per slot, sent in parallel.
    pub async fn set_many(
        &self,
        entries: &[(&str, Bytes)],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        dispatch!(self,
            m => entries.iter().try_for_each(|(k, v)| m.set(k, v.clone(), ttl)),
            r => r.set_many(entries, ttl).await)
    }

    /// Adds `delta` to the integer at `key` (absent = 0) and returns the new
    /// value. `ttl` is applied only when this call creates the key.
    /// A non-integer value is [`StoreError::BadData`].
    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        dispatch!(self, m => m.increment(key, delta, ttl), r => r.increment(key, delta, ttl).await)
    }

    /// Deletes `key`: `true` when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        dispatch!(self, m => Ok(m.delete(key)), r => r.delete(key).await)
    }

    /// Sends `message` to every current subscriber of `channel`, on every
    /// replica (Redis pub/sub; see [`pubsub`]). Nobody listening is not an
    /// error.
    pub async fn publish(&self, channel: &str, message: Bytes) -> Result<(), StoreError> {
        dispatch!(self, m => {
            m.publish(channel, message);
            Ok(())
        }, r => r.publish(channel, &message).await)
    }

    /// Receives what any replica publishes on `channel` from now on; see
    /// [`pubsub`] for what happens when the connection is lost.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use palisade_store::{Notice, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), palisade_store::StoreError> {
    /// let store = Store::in_memory();
    /// let channel = store.key("cache", "invalidate", "api", "v1");
    /// let mut sub = store.subscribe(&channel).await?;
    /// store.publish(&channel, Bytes::from_static(b"/users/7")).await?;
    /// assert_eq!(sub.next().await, Some(Notice::Message(Bytes::from_static(b"/users/7"))));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, StoreError> {
        dispatch!(self, m => Ok(pubsub::memory(m.subscribe(channel))), r => r.subscribe(channel).await)
    }

    /// Deletes every key matching the glob `pattern` (Redis syntax: `*`,
    /// `?`, `[…]`, `\` escapes) and returns how many were deleted.
    ///
    /// On Redis it walks the keyspace with `SCAN` (never `KEYS`) and unlinks
    /// what it finds; on a cluster it does so on every master. Keys written
    /// while it runs may or may not be deleted.
    pub async fn delete_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        dispatch!(self, m => Ok(m.delete_matching(pattern)), r => r.delete_matching(pattern).await)
    }

    /// Sets `key` to `new` only if its current value is `expected` (`None`:
    /// only if absent). Returns whether it swapped. Atomic on every backend.
    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        dispatch!(self,
            m => m.compare_and_swap(key, expected, new, ttl),
            r => r.compare_and_swap(key, expected, new, ttl).await)
    }

    /// One GCRA decision for `cost` units on `key` (see [`gcra`]); counted
    /// when allowed. One round trip on Redis. A rule with a zero limit, a
    /// sub-microsecond emission interval, or a `cost` above the limit is
    /// [`StoreError::InvalidInput`]. `cost` 0 peeks without counting.
    pub async fn rate_limit(
        &self,
        key: &str,
        rule: GcraRule,
        cost: u32,
    ) -> Result<RateDecision, StoreError> {
        let p = rule.params(cost)?;
        dispatch!(self, m => m.rate_limit(key, p), r => r.rate_limit(key, p).await)
    }

    /// Several GCRA checks, all or nothing: when every check allows, all are
    /// counted and each decision is what [`rate_limit`](Store::rate_limit)
    /// would have returned in order (a key named twice sees the first
    /// check's cost); when any check denies, **nothing** is counted — the
    /// denying checks have `allowed: false` and a `retry_after`, the others
    /// `allowed: true` with `remaining` / `reset_after` of the untouched
    /// state. The request is allowed only when every decision is.
    ///
    /// - In-process and single Redis: atomic; one Lua script, one round trip.
    /// - Redis Cluster, all keys in one slot (e.g. built with
    ///   [`grouped_key`](Store::grouped_key)): the same, one round trip.
    /// - Redis Cluster across slots: no script can span slots, so the checks
    ///   are grouped by slot and run in two parallel phases — peek every
    ///   group (nothing counted; any denial ends here), then consume every
    ///   group. If a concurrent caller made a group deny between the two
    ///   phases, the groups that did count are refunded and the denial is
    ///   returned. Two round trips per group instead of one, never counts a
    ///   denied request, but is not linearizable under contention (a refund
    ///   can briefly make concurrent callers see less room than there is).
    pub async fn rate_limit_many(
        &self,
        checks: &[(&str, GcraRule, u32)],
    ) -> Result<Vec<RateDecision>, StoreError> {
        let checks: Vec<(&str, gcra::Params)> = checks
            .iter()
            .map(|(k, rule, cost)| Ok((*k, rule.params(*cost)?)))
            .collect::<Result<_, StoreError>>()?;
        dispatch!(self, m => m.rate_limit_many(&checks), r => r.rate_limit_many(&checks).await)
    }

    /// Reserves `amount` tokens of `rule`'s budget at `key` (see [`tokens`]):
    /// admitted when they fit in what is left (the decision then holds the
    /// [`TokenReservation`] to settle), refused with a `retry_after`
    /// otherwise. Leases expired on the key are given back first. One
    /// atomic script, one round trip on Redis and Redis Cluster. An amount
    /// above the quota, which could never fit, or an invalid rule is
    /// [`StoreError::InvalidInput`].
    ///
    /// ```
    /// use palisade_store::{Store, TokenRule};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_store::StoreError> {
    /// let store = Store::in_memory();
    /// let key = store.key("tokens", "user", "alice", "v1");
    /// let rule = TokenRule::per_minute(10_000);
    /// let d = store.token_reserve(&key, rule, 1_500).await?;
    /// assert!(d.admitted());
    /// assert_eq!(d.remaining, 8_500);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn token_reserve(
        &self,
        key: &str,
        rule: TokenRule,
        amount: u64,
    ) -> Result<TokenDecision, StoreError> {
        let p = rule.params()?;
        if amount > p.quota {
            return Err(StoreError::InvalidInput(format!(
                "{amount} tokens exceed the quota {} and could never be admitted",
                p.quota
            )));
        }
        dispatch!(self, m => m.token_reserve(key, p, amount), r => r.token_reserve(key, p, amount).await)
    }

    /// Settles `reservation` with the `actual` tokens used: the difference is
    /// charged or refunded. When the lease had expired (its tokens already
    /// given back) the whole `actual` is charged. One atomic script, one
    /// round trip on Redis and Redis Cluster. `actual` above
    /// [`tokens::MAX_SETTLE`] is [`StoreError::InvalidInput`].
    ///
    /// ```
    /// use palisade_store::{Store, TokenRule};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), palisade_store::StoreError> {
    /// let store = Store::in_memory();
    /// let rule = TokenRule::per_minute(10_000);
    /// let r = store.token_reserve("k", rule, 4_000).await?.reservation.unwrap();
    /// let s = store.token_settle("k", rule, &r, 1_000).await?;
    /// assert_eq!((s.refunded, s.remaining), (3_000, 9_000));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn token_settle(
        &self,
        key: &str,
        rule: TokenRule,
        reservation: &TokenReservation,
        actual: u64,
    ) -> Result<TokenSettlement, StoreError> {
        let p = rule.params()?;
        if actual > tokens::MAX_SETTLE {
            return Err(StoreError::InvalidInput(format!(
                "{actual} tokens is more than one call can be charged"
            )));
        }
        dispatch!(self,
            m => m.token_settle(key, p, reservation.id(), actual),
            r => r.token_settle(key, p, reservation, actual).await)
    }

    /// Appends an entry to `stream` and trims it to about `max_len` entries
    /// (`XADD MAXLEN ~`: Redis may keep somewhat more, trimming whole
    /// internal nodes; in-process it is an exact ring). Returns the new id.
    /// `fields` must not be empty and `max_len` must be at least 1.
    pub async fn stream_append(
        &self,
        stream: &str,
        fields: &[(&str, &[u8])],
        max_len: usize,
    ) -> Result<String, StoreError> {
        if fields.is_empty() {
            return Err(StoreError::InvalidInput(
                "a stream entry needs at least one field".into(),
            ));
        }
        if max_len == 0 {
            return Err(StoreError::InvalidInput(
                "stream max_len must be at least 1".into(),
            ));
        }
        dispatch!(self, m => m.stream_append(stream, fields, max_len), r => r.stream_append(stream, fields, max_len).await)
    }

    /// The newest `count` entries of `stream`, oldest first (newest last).
    pub async fn stream_read(
        &self,
        stream: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        dispatch!(self, m => m.stream_read(stream, count), r => r.stream_read(stream, count).await)
    }

    /// The number of entries in `stream` (0 when absent).
    pub async fn stream_len(&self, stream: &str) -> Result<u64, StoreError> {
        dispatch!(self, m => m.stream_len(stream), r => r.stream_len(stream).await)
    }

    /// Checks that the store answers (on a cluster: every node).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, _m => Ok(()), r => r.ping().await)
    }
}
