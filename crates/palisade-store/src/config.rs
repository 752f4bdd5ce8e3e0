//! Store configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Which backend a [`Store`](crate::Store) talks to.
///
/// ```
/// use palisade_store::{Backend, Store};
/// assert_eq!(Store::in_memory().backend(), Backend::Memory);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// In-process, in this replica's memory.
    Memory,
    /// A single Redis server.
    Redis,
    /// A Redis Cluster.
    Cluster,
}

/// Bounds of the in-process store.
///
/// The bounds are soft: when an insert pushes the store over either one, the
/// inserting call first drops expired entries and then the least recently
/// used ones until the store is back under 90 % of both bounds (so the cost
/// of a sweep is spread over many inserts). Every kind of entry counts,
/// rate-limit state included, exactly as with Redis `allkeys-lru`: size the
/// store so that the live working set fits.
///
/// ```
/// use palisade_store::{MemoryConfig, Store};
///
/// let store = Store::in_memory_with(MemoryConfig { max_entries: 1_000, ..MemoryConfig::default() });
/// # let _ = store;
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Maximum number of keys (default 100 000).
    pub max_entries: usize,
    /// Maximum bytes of keys plus values plus a fixed per-entry overhead
    /// (default 64 MiB).
    pub max_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_entries: 100_000,
            max_bytes: 64 << 20,
        }
    }
}

/// How to reach the store. Deserializable (durations in humantime form,
/// every field optional):
///
/// ```
/// use palisade_store::StoreConfig;
/// use std::time::Duration;
///
/// let cfg: StoreConfig = toml::from_str(r#"
///     url = "redis://127.0.0.1:6379"
///     op_timeout = "100ms"
///     memory = { max_entries = 5000 }
/// "#).unwrap();
/// assert_eq!(cfg.op_timeout, Duration::from_millis(100));
/// assert_eq!(cfg.prefix, "palisade");
/// assert_eq!(cfg.memory.max_entries, 5000);
/// ```
///
/// ```
/// use palisade_store::StoreConfig;
/// use std::time::Duration;
///
/// let cfg = StoreConfig::new("redis://127.0.0.1:6379")
///     .prefix("myapp")
///     .op_timeout(Duration::from_millis(100));
/// assert_eq!(cfg.prefix, "myapp");
/// assert_eq!(StoreConfig::default().url, "memory://");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory://`, `redis://host:port[/db]`, `rediss://…` (TLS, when the
    /// `redis` crate is built with a TLS feature) or
    /// `redis+cluster://h1:p1,h2:p2,…` (also `rediss+cluster://`).
    pub url: String,
    /// Prefix of every key built by [`Store::key`](crate::Store::key)
    /// (default `palisade`). Must be non-empty, without `:` `{` `}`, glob
    /// characters or whitespace.
    pub prefix: String,
    /// Timeout of every single store operation (default 250 ms).
    #[serde(with = "humantime_serde")]
    pub op_timeout: Duration,
    /// Timeout of establishing a connection (default 2 s).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bounds when the URL is `memory://`.
    pub memory: MemoryConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: "memory://".into(),
            prefix: "palisade".into(),
            op_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(2),
            memory: MemoryConfig::default(),
        }
    }
}

impl StoreConfig {
    /// Defaults with the given URL.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            ..StoreConfig::default()
        }
    }

    /// Sets the key prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the per-operation timeout.
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the in-process bounds.
    pub fn memory(mut self, memory: MemoryConfig) -> Self {
        self.memory = memory;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let bad = |c: char| {
            matches!(
                c,
                ':' | '{' | '}' | '*' | '?' | '[' | ']' | '\\' | '%' | '^'
            ) || c.is_whitespace()
                || c.is_control()
        };
        if self.prefix.is_empty() || self.prefix.chars().any(bad) {
            return Err(StoreError::InvalidConfig(format!(
                "key prefix {:?} must be non-empty and free of ':', braces, glob characters and whitespace",
                self.prefix
            )));
        }
        if self.op_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(StoreError::InvalidConfig(
                "timeouts must be non-zero".into(),
            ));
        }
        if self.memory.max_entries == 0 || self.memory.max_bytes == 0 {
            return Err(StoreError::InvalidConfig(
                "memory bounds must be non-zero".into(),
            ));
        }
        Ok(())
    }
}
