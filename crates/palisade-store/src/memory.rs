//! The in-process backend.
//!
//! A [`DashMap`] (sharded `RwLock<HashMap>`): single-key operations run under
//! the shard's lock for that key, so read-modify-write (increment, CAS, GCRA)
//! is atomic without a global lock, and reads of existing keys allocate
//! nothing. DashMap rather than moka because every operation here is a
//! read-modify-write on entries that carry their own `tokio::time::Instant`
//! based expiry (moka's clock does not follow a paused tokio clock), and
//! because moka's TinyLFU admission may refuse to store a new rate-limit
//! counter under pressure; bounding is done here instead, by an amortised
//! sweep (see [`MemoryConfig`]).
//!
//! Multi-key rate limits lock a fixed set of striped mutexes (in index
//! order, so no deadlock) to exclude single-key rate limits on the same keys
//! while they decide all-or-nothing.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;
use tokio::time::Instant;

use crate::gcra::{self, Params};
use crate::key::glob_match;
use crate::tokens::{Ledger, TokenParams};
use crate::{MemoryConfig, RateDecision, StoreError, StreamEntry};
use crate::{TokenDecision, TokenSettlement};

/// Fixed bookkeeping bytes counted per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 64;
const STRIPES: usize = 64;

pub(crate) enum Value {
    Bytes(Bytes),
    Int(i64),
    Stream(Box<MemStream>),
    Ledger(Box<Ledger>),
}

impl Value {
    fn size(&self) -> usize {
        match self {
            Value::Bytes(b) => b.len(),
            Value::Int(_) => 8,
            Value::Stream(s) => s.bytes + 32,
            Value::Ledger(l) => l.size(),
        }
    }

    /// The value as Redis would return it from GET.
    fn to_bytes(&self) -> Result<Bytes, StoreError> {
        match self {
            Value::Bytes(b) => Ok(b.clone()),
            Value::Int(i) => Ok(Bytes::from(i.to_string())),
            Value::Stream(_) | Value::Ledger(_) => Err(wrong_type()),
        }
    }

    fn eq_bytes(&self, other: &[u8]) -> bool {
        match self {
            Value::Bytes(b) => b.as_ref() == other,
            Value::Int(i) => i.to_string().as_bytes() == other,
            Value::Stream(_) | Value::Ledger(_) => false,
        }
    }

    fn as_int(&self) -> Result<i64, StoreError> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bytes(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| StoreError::BadData("value is not an integer".into())),
            Value::Stream(_) | Value::Ledger(_) => Err(wrong_type()),
        }
    }
}

fn wrong_type() -> StoreError {
    StoreError::BadData("WRONGTYPE operation against a key holding the wrong kind of value".into())
}

pub(crate) struct MemStream {
    entries: VecDeque<StreamEntry>,
    last: (u64, u64),
    bytes: usize,
}

fn stream_entry_size(e: &StreamEntry) -> usize {
    e.id.len()
        + e.fields
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
        + 32
}

/// A live value and its expiry (micros since the store's base instant;
/// `u64::MAX` = never).
pub(crate) struct Cell {
    value: Value,
    expires_at: u64,
}

const DEAD: Cell = Cell {
    value: Value::Int(0),
    expires_at: 0,
};

struct Entry {
    cell: Cell,
    last_access: AtomicU64,
    size: usize,
}

impl Entry {
    fn alive(&self, now: u64) -> bool {
        self.cell.expires_at > now
    }
}

fn entry_size(key: &str, value: &Value) -> usize {
    key.len() + value.size() + ENTRY_OVERHEAD
}

/// Store memory usage (approximate under concurrent writes).
///
/// ```
/// let store = palisade_store::Store::in_memory();
/// let stats = store.memory_stats().unwrap();
/// assert_eq!(stats.entries, 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryStats {
    /// Keys held, including expired ones not yet swept.
    pub entries: usize,
    /// Bytes accounted (keys, values, per-entry overhead).
    pub bytes: usize,
    /// Entries dropped by the bounds so far (expired or least recently used).
    pub evictions: u64,
}

pub(crate) struct MemoryStore {
    map: DashMap<String, Entry>,
    base: Instant,
    cfg: MemoryConfig,
    entries: AtomicUsize,
    bytes: AtomicUsize,
    evictions: AtomicU64,
    evicting: AtomicBool,
    /// Source of token reservation ids, unique for the store's life.
    token_ids: AtomicU64,
    stripes: Box<[Mutex<()>]>,
    /// Pub/sub channels of this store.
    channels: DashMap<String, tokio::sync::broadcast::Sender<bytes::Bytes>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish()
    }
}

pub(crate) fn ttl_us(ttl: Duration) -> Result<u64, StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::InvalidInput("ttl must be non-zero".into()));
    }
    Ok(u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX))
}

impl MemoryStore {
    pub(crate) fn new(cfg: MemoryConfig) -> Self {
        MemoryStore {
            map: DashMap::new(),
            base: Instant::now(),
            cfg,
            entries: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            evicting: AtomicBool::new(false),
            token_ids: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            channels: DashMap::new(),
        }
    }

    /// Sends `message` to this store's subscribers of `channel`.
    pub(crate) fn publish(&self, channel: &str, message: bytes::Bytes) {
        if let Some(tx) = self.channels.get(channel) {
            // No receiver: nobody listens, nothing to deliver.
            let _ = tx.send(message);
        }
    }

    /// A receiver of `channel`'s future messages.
    pub(crate) fn subscribe(
        &self,
        channel: &str,
    ) -> tokio::sync::broadcast::Receiver<bytes::Bytes> {
        self.channels
            .entry(channel.to_owned())
            .or_insert_with(|| tokio::sync::broadcast::channel(1024).0)
            .subscribe()
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }

    /// Micros since the base instant, on tokio's (possibly paused) clock.
    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.base)
                .as_micros(),
        )
        .unwrap_or(u64::MAX)
    }

    fn expiry(now: u64, ttl: Option<Duration>) -> Result<u64, StoreError> {
        match ttl {
            None => Ok(u64::MAX),
            Some(ttl) => Ok(now.saturating_add(ttl_us(ttl)?)),
        }
    }

    fn resize(&self, old: usize, new: usize) {
        if new >= old {
            self.bytes.fetch_add(new - old, Ordering::Relaxed);
        } else {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
        }
    }

    fn removed(&self, size: usize) {
        self.entries.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(size, Ordering::Relaxed);
    }

    /// Applies `f` to the live cell of `key` (`None` when absent or expired)
    /// under the key's shard lock. Whatever `f` leaves in the option is
    /// stored; taking a live cell out deletes it.
    fn update<R>(&self, key: &str, f: impl FnOnce(&mut Option<Cell>) -> R) -> R {
        let now = self.now();
        let apply = |e: &mut Entry, f: &mut dyn FnMut(&mut Option<Cell>) -> R| -> R {
            let mut slot = if e.alive(now) {
                Some(std::mem::replace(&mut e.cell, DEAD))
            } else {
                None
            };
            let r = f(&mut slot);
            if let Some(cell) = slot {
                e.cell = cell;
                e.last_access.store(now, Ordering::Relaxed);
            }
            let old = e.size;
            e.size = entry_size(key, &e.cell.value);
            self.resize(old, e.size);
            r
        };
        let mut f = Some(f);
        let mut call = |slot: &mut Option<Cell>| (f.take().expect("called once"))(slot);
        let (r, inserted) = if let Some(mut e) = self.map.get_mut(key) {
            (apply(&mut e, &mut call), false)
        } else {
            match self.map.entry(key.to_owned()) {
                MapEntry::Occupied(mut o) => (apply(o.get_mut(), &mut call), false),
                MapEntry::Vacant(v) => {
                    let mut slot = None;
                    let r = call(&mut slot);
                    match slot {
                        Some(cell) => {
                            let size = entry_size(key, &cell.value);
                            v.insert(Entry {
                                cell,
                                last_access: AtomicU64::new(now),
                                size,
                            });
                            self.entries.fetch_add(1, Ordering::Relaxed);
                            self.bytes.fetch_add(size, Ordering::Relaxed);
                            (r, true)
                        }
                        None => (r, false),
                    }
                }
            }
        };
        if inserted || self.over_bounds() {
            self.maybe_evict();
        }
        r
    }

    fn over_bounds(&self) -> bool {
        self.entries.load(Ordering::Relaxed) > self.cfg.max_entries
            || self.bytes.load(Ordering::Relaxed) > self.cfg.max_bytes
    }

    fn maybe_evict(&self) {
        if !self.over_bounds()
            || self
                .evicting
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let now = self.now();
        // First the expired entries.
        self.map.retain(|_, e| {
            let keep = e.alive(now);
            if !keep {
                self.removed(e.size);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        let target_entries = self.cfg.max_entries / 10 * 9;
        let target_bytes = self.cfg.max_bytes / 10 * 9;
        let (entries, bytes) = (
            self.entries.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        );
        if entries > self.cfg.max_entries || bytes > self.cfg.max_bytes {
            // Then the least recently used, down to 90 % of both bounds.
            let mut stamps: Vec<(u64, usize)> = self
                .map
                .iter()
                .map(|e| (e.last_access.load(Ordering::Relaxed), e.size))
                .collect();
            stamps.sort_unstable_by_key(|s| s.0);
            let need_entries = entries.saturating_sub(target_entries);
            let need_bytes = bytes.saturating_sub(target_bytes);
            let (mut n, mut b, mut cutoff) = (0usize, 0usize, 0u64);
            for (stamp, size) in stamps {
                if n >= need_entries && b >= need_bytes {
                    break;
                }
                n += 1;
                b += size;
                cutoff = stamp;
            }
            self.map.retain(|_, e| {
                let keep = e.last_access.load(Ordering::Relaxed) > cutoff;
                if !keep {
                    self.removed(e.size);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                keep
            });
        }
        self.evicting.store(false, Ordering::Release);
    }

    pub(crate) fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let now = self.now();
        if let Some(e) = self.map.get(key) {
            if e.alive(now) {
                e.last_access.store(now, Ordering::Relaxed);
                return e.cell.value.to_bytes().map(Some);
            }
            drop(e);
            if let Some((_, e)) = self.map.remove_if(key, |_, e| !e.alive(now)) {
                self.removed(e.size);
            }
        }
        Ok(None)
    }

    pub(crate) fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let expires_at = Self::expiry(self.now(), ttl)?;
        self.update(key, |slot| {
            *slot = Some(Cell {
                value: Value::Bytes(value),
                expires_at,
            })
        });
        Ok(())
    }

    pub(crate) fn set_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let expires_at = Self::expiry(self.now(), ttl)?;
        Ok(self.update(key, |slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(Cell {
                value: Value::Bytes(value),
                expires_at,
            });
            true
        }))
    }

    pub(crate) fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StoreError> {
        let expires_at = Self::expiry(self.now(), ttl)?;
        self.update(key, |slot| match slot {
            None => {
                *slot = Some(Cell {
                    value: Value::Int(delta),
                    expires_at,
                });
                Ok(delta)
            }
            Some(cell) => {
                let n = cell.value.as_int()?.checked_add(delta).ok_or_else(|| {
                    StoreError::BadData("increment or decrement would overflow".into())
                })?;
                cell.value = Value::Int(n);
                Ok(n)
            }
        })
    }

    pub(crate) fn delete(&self, key: &str) -> bool {
        let now = self.now();
        match self.map.remove(key) {
            Some((_, e)) => {
                self.removed(e.size);
                e.alive(now)
            }
            None => false,
        }
    }

    pub(crate) fn delete_matching(&self, pattern: &str) -> u64 {
        let now = self.now();
        let count = AtomicU64::new(0);
        self.map.retain(|k, e| {
            if !glob_match(pattern.as_bytes(), k.as_bytes()) {
                return true;
            }
            self.removed(e.size);
            if e.alive(now) {
                count.fetch_add(1, Ordering::Relaxed);
            }
            false
        });
        count.into_inner()
    }

    pub(crate) fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let expires_at = Self::expiry(self.now(), ttl)?;
        self.update(key, |slot| {
            if let Some(Cell {
                value: Value::Stream(_),
                ..
            }) = slot
            {
                return Err(wrong_type());
            }
            let matches = match (&*slot, expected) {
                (None, None) => true,
                (Some(cell), Some(exp)) => cell.value.eq_bytes(exp),
                _ => false,
            };
            if matches {
                *slot = Some(Cell {
                    value: Value::Bytes(new),
                    expires_at,
                });
            }
            Ok(matches)
        })
    }

    fn stripe(&self, key: &str) -> usize {
        (self.map.hasher().hash_one(key) as usize) % STRIPES
    }

    fn lock(&self, i: usize) -> MutexGuard<'_, ()> {
        // The mutex guards no data; a poisoned one is still a valid lock.
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_tat(value: Option<&Value>) -> Result<u64, StoreError> {
        match value {
            None => Ok(0),
            Some(v) => u64::try_from(v.as_int()?)
                .map_err(|_| StoreError::BadData("rate-limit state is negative".into())),
        }
    }

    /// The stored TAT of `key` (0 when absent or expired), without creating it.
    fn tat_of(&self, key: &str) -> Result<u64, StoreError> {
        let now = self.now();
        match self.map.get(key) {
            Some(e) if e.alive(now) => Self::read_tat(Some(&e.cell.value)),
            _ => Ok(0),
        }
    }

    fn write_tat(slot: &mut Option<Cell>, tat: u64, now: u64) {
        let tat_i = i64::try_from(tat).unwrap_or(i64::MAX);
        *slot = Some(Cell {
            value: Value::Int(tat_i),
            expires_at: tat.max(now + 1),
        });
    }

    pub(crate) fn rate_limit(&self, key: &str, p: Params) -> Result<RateDecision, StoreError> {
        let _g = self.lock(self.stripe(key));
        let now = self.now();
        self.update(key, |slot| {
            let tat = Self::read_tat(slot.as_ref().map(|c| &c.value))?;
            let (d, new_tat) = gcra::decide(tat, now, p);
            if let Some(t) = new_tat {
                Self::write_tat(slot, t, now);
            }
            Ok(d)
        })
    }

    pub(crate) fn rate_limit_many(
        &self,
        checks: &[(&str, Params)],
    ) -> Result<Vec<RateDecision>, StoreError> {
        let mut stripes: Vec<usize> = checks.iter().map(|(k, _)| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let _guards: Vec<_> = stripes.into_iter().map(|i| self.lock(i)).collect();
        let now = self.now();
        let mut err = None;
        let indexed: Vec<(usize, Params)> = checks
            .iter()
            .enumerate()
            .map(|(i, (k, p))| (checks.iter().position(|(k2, _)| k2 == k).unwrap_or(i), *p))
            .collect();
        let (decisions, writes) = gcra::decide_batch(&indexed, now, |i| {
            self.tat_of(checks[i].0).unwrap_or_else(|e| {
                err.get_or_insert(e);
                0
            })
        });
        if let Some(e) = err {
            return Err(e);
        }
        for (i, tat) in writes.unwrap_or_default() {
            self.update(checks[i].0, |slot| Self::write_tat(slot, tat, now));
        }
        Ok(decisions)
    }

    /// Applies `f` to the ledger of `key` (a new one when absent) and
    /// stores it back with its expiry.
    fn with_ledger<R>(
        &self,
        key: &str,
        f: impl FnOnce(&mut Ledger, u64) -> R,
    ) -> Result<R, StoreError> {
        let _g = self.lock(self.stripe(key));
        let now = self.now();
        self.update(key, |slot| {
            let mut ledger = match slot.take() {
                None => Box::new(Ledger::new()),
                Some(Cell {
                    value: Value::Ledger(l),
                    ..
                }) => l,
                Some(other) => {
                    *slot = Some(other);
                    return Err(wrong_type());
                }
            };
            let r = f(&mut ledger, now);
            let expires_at = ledger.expires_at(now);
            *slot = Some(Cell {
                value: Value::Ledger(ledger),
                expires_at,
            });
            Ok(r)
        })
    }

    pub(crate) fn token_reserve(
        &self,
        key: &str,
        p: TokenParams,
        amount: u64,
    ) -> Result<TokenDecision, StoreError> {
        let ids = &self.token_ids;
        self.with_ledger(key, |l, now| {
            l.reserve(now, p, amount, |_| {
                format!("{now}-{}", ids.fetch_add(1, Ordering::Relaxed) + 1)
            })
        })
    }

    pub(crate) fn token_settle(
        &self,
        key: &str,
        p: TokenParams,
        id: &str,
        actual: u64,
    ) -> Result<TokenSettlement, StoreError> {
        self.with_ledger(key, |l, now| l.settle(now, p, id, actual))
    }

    pub(crate) fn stream_append(
        &self,
        stream: &str,
        fields: &[(&str, &[u8])],
        max_len: usize,
    ) -> Result<String, StoreError> {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.update(stream, |slot| {
            let cell = slot.get_or_insert_with(|| Cell {
                value: Value::Stream(Box::new(MemStream {
                    entries: VecDeque::new(),
                    last: (0, 0),
                    bytes: 0,
                })),
                expires_at: u64::MAX,
            });
            let Value::Stream(s) = &mut cell.value else {
                return Err(wrong_type());
            };
            s.last = if ms > s.last.0 {
                (ms, 0)
            } else {
                (s.last.0, s.last.1 + 1)
            };
            let id = format!("{}-{}", s.last.0, s.last.1);
            let entry = StreamEntry {
                id: id.clone(),
                fields: fields
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Bytes::copy_from_slice(v)))
                    .collect(),
            };
            s.bytes += stream_entry_size(&entry);
            s.entries.push_back(entry);
            while s.entries.len() > max_len {
                if let Some(old) = s.entries.pop_front() {
                    s.bytes -= stream_entry_size(&old);
                }
            }
            Ok(id)
        })
    }

    fn with_stream<R>(
        &self,
        stream: &str,
        f: impl FnOnce(&MemStream) -> R,
    ) -> Result<Option<R>, StoreError> {
        let now = self.now();
        match self.map.get(stream) {
            Some(e) if e.alive(now) => match &e.cell.value {
                Value::Stream(s) => Ok(Some(f(s))),
                _ => Err(wrong_type()),
            },
            _ => Ok(None),
        }
    }

    pub(crate) fn stream_read(
        &self,
        stream: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, StoreError> {
        Ok(self
            .with_stream(stream, |s| {
                let skip = s.entries.len().saturating_sub(count);
                s.entries.iter().skip(skip).cloned().collect()
            })?
            .unwrap_or_default())
    }

    pub(crate) fn stream_len(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self
            .with_stream(stream, |s| s.entries.len() as u64)?
            .unwrap_or(0))
    }
}
