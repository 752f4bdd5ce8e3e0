//! Dead-letter queue: calls that failed for good (after retries, or refused
//! by an open breaker) are recorded for later inspection — in-process in a
//! bounded ring, on Redis in a stream with a maximum length.
//!
//! # Example
//!
//! ```
//! use palisade::dlq::{DeadLetter, DeadLetterQueue};
//! use palisade::store::Store;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade::store::StoreError> {
//! let dlq = DeadLetterQueue::new(Store::in_memory());
//! dlq.record(DeadLetter::new("GET", "/tools/search", "circuit_open").status(503)).await?;
//! dlq.record(DeadLetter::new("POST", "/tools/run", "timeout").status(504)).await?;
//!
//! let stats = dlq.stats().await?;
//! assert_eq!(stats.total, 2);
//! assert_eq!(stats.by_error_class["timeout"], 1);
//! // Newest first.
//! assert_eq!(dlq.list(10).await?[0].letter.route, "/tools/run");
//! # Ok(())
//! # }
//! ```

mod layer;

use crate::store::{Store, StoreError, StreamEntry};
pub use layer::{DeadLetterLayer, DeadLetters, ResponseFuture};
use prometheus::{IntCounterVec, Registry};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    fmt,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

/// A function that masks text before it is stored (e.g. a PII masker).
pub type Masker = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// One failed call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// The request method (or the function name for non-HTTP calls).
    pub method: String,
    /// The route or path (masked when a masker is set).
    pub route: String,
    /// A short error class, e.g. `circuit_open`, `timeout`, `upstream_5xx`.
    pub error_class: String,
    /// The final HTTP status, if any.
    pub status: Option<u16>,
    /// A short description (masked when a masker is set).
    pub message: String,
}

impl DeadLetter {
    /// A dead letter for `method route` that failed with `error_class`.
    pub fn new(
        method: impl Into<String>,
        route: impl Into<String>,
        error_class: impl Into<String>,
    ) -> Self {
        Self {
            method: method.into(),
            route: route.into(),
            error_class: error_class.into(),
            status: None,
            message: String::new(),
        }
    }

    /// Sets the final status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Sets the description.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
}

/// A recorded dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetterEntry {
    /// The stream id.
    pub id: String,
    /// When it was recorded (Unix milliseconds).
    pub at_ms: u64,
    /// What failed.
    #[serde(flatten)]
    pub letter: DeadLetter,
}

/// Counts over the retained dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeadLetterStats {
    /// Entries retained.
    pub total: u64,
    /// Entries by route.
    pub by_route: BTreeMap<String, u64>,
    /// Entries by error class.
    pub by_error_class: BTreeMap<String, u64>,
}

/// The dead-letter queue (see the [module docs](self)). Cloning is cheap:
/// one reference count.
#[derive(Clone)]
pub struct DeadLetterQueue {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    store: Store,
    stream: String,
    max_len: usize,
    masker: Option<Masker>,
    recorded: Option<IntCounterVec>,
}

impl fmt::Debug for DeadLetterQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterQueue")
            .field("stream", &self.inner.stream)
            .field("max_len", &self.inner.max_len)
            .field("masked", &self.inner.masker.is_some())
            .finish_non_exhaustive()
    }
}

impl DeadLetterQueue {
    /// A queue named `default` on `store`, keeping the newest 10,000 entries.
    pub fn new(store: Store) -> Self {
        Self::named(store, "default")
    }

    /// A queue with its own name (one stream per name).
    pub fn named(store: Store, name: &str) -> Self {
        let stream = store.key("dlq", "stream", name, "v1");
        Self {
            inner: Arc::new(Inner {
                store,
                stream,
                max_len: 10_000,
                masker: None,
                recorded: None,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Inner)) -> Self {
        change(Arc::make_mut(&mut self.inner));
        self
    }

    /// Keeps about the newest `n` entries (at least 1).
    pub fn max_len(self, n: usize) -> Self {
        self.with(|i| i.max_len = n.max(1))
    }

    /// Masks route and message before they are stored, so PII never lands
    /// in the queue.
    pub fn mask_with(self, masker: impl Fn(&str) -> String + Send + Sync + 'static) -> Self {
        self.with(|i| i.masker = Some(Arc::new(masker)))
    }

    /// Counts recorded letters by error class in
    /// `palisade_dead_letters_total{error_class}`.
    pub fn register_metrics(self, registry: &Registry) -> prometheus::Result<Self> {
        let counter = palisade_core::metrics::register_counter_vec(
            registry,
            "palisade_dead_letters_total",
            "Calls recorded in the dead-letter queue, by error class.",
            &["error_class"],
        )?;
        Ok(self.with(|i| i.recorded = Some(counter)))
    }

    /// Records one failed call; returns its id.
    pub async fn record(&self, letter: DeadLetter) -> Result<String, StoreError> {
        let inner = &*self.inner;
        let (route, message) = match &inner.masker {
            Some(mask) => (mask(&letter.route), mask(&letter.message)),
            None => (letter.route, letter.message),
        };
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .to_string();
        let status = letter.status.map(|s| s.to_string()).unwrap_or_default();
        let fields: [(&str, &[u8]); 6] = [
            ("at", at.as_bytes()),
            ("method", letter.method.as_bytes()),
            ("route", route.as_bytes()),
            ("error_class", letter.error_class.as_bytes()),
            ("status", status.as_bytes()),
            ("message", message.as_bytes()),
        ];
        let id = inner
            .store
            .stream_append(&inner.stream, &fields, inner.max_len)
            .await?;
        if let Some(counter) = &inner.recorded {
            counter
                .with_label_values(&[letter.error_class.as_str()])
                .inc();
        }
        Ok(id)
    }

    /// The newest `count` entries, newest first.
    pub async fn list(&self, count: usize) -> Result<Vec<DeadLetterEntry>, StoreError> {
        let mut entries: Vec<_> = self
            .inner
            .store
            .stream_read(&self.inner.stream, count)
            .await?
            .iter()
            .map(decode)
            .collect::<Result<_, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// Counts by route and by error class over the retained entries.
    pub async fn stats(&self) -> Result<DeadLetterStats, StoreError> {
        let mut stats = DeadLetterStats::default();
        // Redis trims approximately (`MAXLEN ~`), so read what is retained.
        let Inner { store, stream, .. } = &*self.inner;
        let retained = store.stream_len(stream).await? as usize;
        for entry in store.stream_read(stream, retained).await? {
            let entry = decode(&entry)?;
            stats.total += 1;
            *stats.by_route.entry(entry.letter.route).or_default() += 1;
            *stats
                .by_error_class
                .entry(entry.letter.error_class)
                .or_default() += 1;
        }
        Ok(stats)
    }

    /// Removes every entry.
    pub async fn clear(&self) -> Result<(), StoreError> {
        self.inner
            .store
            .delete(&self.inner.stream)
            .await
            .map(|_| ())
    }
}

fn decode(entry: &StreamEntry) -> Result<DeadLetterEntry, StoreError> {
    let text = |name: &str| -> Result<String, StoreError> {
        let value = entry
            .get(name)
            .ok_or_else(|| StoreError::BadData(format!("dead letter without {name}")))?;
        String::from_utf8(value.to_vec())
            .map_err(|_| StoreError::BadData(format!("dead letter {name} is not UTF-8")))
    };
    let status = text("status")?;
    Ok(DeadLetterEntry {
        id: entry.id.clone(),
        at_ms: text("at")?.parse().unwrap_or(0),
        letter: DeadLetter {
            method: text("method")?,
            route: text("route")?,
            error_class: text("error_class")?,
            status: if status.is_empty() {
                None
            } else {
                Some(
                    status
                        .parse()
                        .map_err(|_| StoreError::BadData("bad status".into()))?,
                )
            },
            message: text("message")?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn exercise(store: Store) {
        let dlq = DeadLetterQueue::named(store, "test-exercise")
            .max_len(3)
            .mask_with(|s| s.replace("alice@example.com", "al***@example.com"));
        dlq.clear().await.unwrap();
        for i in 0..5u16 {
            let letter = DeadLetter::new(
                "GET",
                format!("/users/alice@example.com/{}", i % 2),
                "timeout",
            )
            .status(504)
            .message(format!("attempt {i} for alice@example.com"));
            dlq.record(letter).await.unwrap();
        }
        let list = dlq.list(10).await.unwrap();
        assert!(list.len() >= 3, "{list:?}");
        assert_eq!(list[0].letter.message, "attempt 4 for al***@example.com");
        assert_eq!(list[0].letter.route, "/users/al***@example.com/0");
        assert_eq!(list[0].letter.status, Some(504));
        assert!(list.iter().all(|e| !e.letter.route.contains("alice")));
        let stats = dlq.stats().await.unwrap();
        assert_eq!(stats.total as usize, list.len());
        assert_eq!(stats.by_error_class["timeout"], stats.total);
        dlq.clear().await.unwrap();
        assert_eq!(dlq.stats().await.unwrap().total, 0);
    }

    #[tokio::test]
    async fn in_process_queue_is_bounded_masked_and_counted() {
        exercise(Store::in_memory()).await;
        let dlq = DeadLetterQueue::new(Store::in_memory()).max_len(3);
        for _ in 0..5 {
            dlq.record(DeadLetter::new("GET", "/", "upstream_5xx"))
                .await
                .unwrap();
        }
        assert_eq!(dlq.stats().await.unwrap().total, 3);
    }

    #[tokio::test]
    async fn redis_stream_queue() {
        let Some(server) = palisade_testkit::RedisServer::start() else {
            return;
        };
        exercise(Store::connect(&server.url()).await.unwrap()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_cluster_stream_queue() {
        let Some(cluster) = palisade_testkit::RedisCluster::start(3) else {
            return;
        };
        exercise(Store::connect(&cluster.url()).await.unwrap()).await;
        // Two replicas' queues on the cluster are one queue.
        let a = DeadLetterQueue::named(Store::connect(&cluster.url()).await.unwrap(), "shared");
        let b = DeadLetterQueue::named(Store::connect(&cluster.url()).await.unwrap(), "shared");
        a.clear().await.unwrap();
        a.record(DeadLetter::new("GET", "/a", "timeout"))
            .await
            .unwrap();
        b.record(DeadLetter::new("GET", "/b", "upstream_5xx"))
            .await
            .unwrap();
        let stats = b.stats().await.unwrap();
        assert_eq!(stats.total, 2);
        let routes: Vec<String> = a
            .list(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.letter.route)
            .collect();
        assert_eq!(routes, ["/b", "/a"], "newest first, from both replicas");
    }

    #[tokio::test]
    async fn metrics_count_by_error_class() {
        let registry = Registry::new();
        let dlq = DeadLetterQueue::new(Store::in_memory())
            .register_metrics(&registry)
            .unwrap();
        dlq.record(DeadLetter::new("GET", "/", "circuit_open"))
            .await
            .unwrap();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains("palisade_dead_letters_total{error_class=\"circuit_open\"} 1"),
            "{text}"
        );
    }
}
