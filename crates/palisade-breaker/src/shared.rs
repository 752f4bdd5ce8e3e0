//! Circuit state shared across replicas through a [`Store`].
//!
//! Each replica counts calls locally: the hot path never touches the store.
//! What is shared is the outcome — a trip, a close, a manual state — as one
//! small value per breaker under
//! `Store::key("breaker", <name>, <key>, "v1")`:
//!
//! ```text
//! <generation> <state> <open until, Unix ms>
//! ```
//!
//! - A local change (anything but half-open, which each replica reaches on
//!   its own when the shared open time ends) wakes the layer's background
//!   task, which writes it with `compare_and_swap` against the value it last
//!   saw, the generation one above.
//! - When the swap fails another replica wrote first. A manual change
//!   (reset, force-open, disable, metrics-only) is written on top; a trip is
//!   written on top unless the circuit is already open there; a close gives
//!   way (the newer state is applied locally instead).
//! - Every `shared_poll_interval` the task reads the values of all the
//!   layer's breakers (one `get_many`) and applies any it did not write or
//!   see before ([`Reason::Remote`]). A per-key breaker created since the
//!   last poll is read at once.
//! - A store error never fails a call: it is logged and counted
//!   (`palisade_breaker_store_errors_total`), the local state stands, and
//!   unwritten changes are written on a later poll.
//! - The task holds no strong reference to the layer: it is aborted when
//!   the last handle to the breaker(s) — layer, services, registry — is
//!   dropped.

use crate::{
    breaker::{Breaker, Reason, Settings, State, StateChange, WeakBreaker},
    config::ConfigError,
    keyed::Group,
};
use bytes::Bytes;
use palisade_store::{Store, StoreError};
use std::{
    collections::HashMap,
    mem,
    sync::{Arc, Mutex, OnceLock, PoisonError, Weak, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{sync::Notify, task::AbortHandle};

/// What the hooks of one layer share with its background task.
struct Link {
    /// Breakers with a local change not yet written, and whether any of
    /// those changes was manual.
    pending: Mutex<Vec<(WeakBreaker, bool)>>,
    /// Per-key breakers created since the last poll.
    fresh: Mutex<Vec<WeakBreaker>>,
    wake: Arc<Notify>,
    task: OnceLock<AbortHandle>,
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    fn on_change(&self, breaker: &Breaker, change: &StateChange) {
        if change.reason == Reason::Remote || change.to == State::HalfOpen {
            return;
        }
        let manual = change.reason == Reason::Manual;
        let mut pending = lock(&self.pending);
        match pending.iter_mut().find(|(w, _)| w.is(breaker)) {
            Some(entry) => entry.1 |= manual,
            None => pending.push((breaker.downgrade(), manual)),
        }
        drop(pending);
        self.wake.notify_one();
    }

    fn on_new(&self, breaker: &Breaker) {
        lock(&self.fresh).push(breaker.downgrade());
        self.wake.notify_one();
    }

    /// A hook that owns the link (and so the task's life).
    fn owning_hook(self: &Arc<Self>) -> crate::breaker::TransitionHook {
        let link = self.clone();
        Box::new(move |b, change| link.on_change(b, change))
    }

    /// A hook for a breaker that must not keep the task alive (a per-key
    /// breaker may outlive its group in a caller's hands).
    fn weak_hook(self: &Arc<Self>) -> crate::breaker::TransitionHook {
        let link = Arc::downgrade(self);
        Box::new(move |b, change| {
            if let Some(link) = link.upgrade() {
                link.on_change(b, change);
            }
        })
    }
}

/// The breakers a task keeps in step.
enum Target {
    Single(WeakBreaker),
    Group(Weak<Group>),
}

impl Target {
    /// Every live breaker; `None` once the layer is gone.
    fn breakers(&self) -> Option<Vec<Breaker>> {
        match self {
            Self::Single(w) => w.upgrade().map(|b| vec![b]),
            Self::Group(g) => g.upgrade().map(|g| g.breakers()),
        }
    }
}

fn spawn(
    link: &Arc<Link>,
    target: Target,
    settings: Arc<Settings>,
    store: Store,
    poll: Duration,
) -> Result<(), ConfigError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
    let task = Task {
        link: Arc::downgrade(link),
        wake: link.wake.clone(),
        target,
        settings,
        store,
        poll,
        seen: HashMap::new(),
        failing: false,
    };
    let join = handle.spawn(task.run());
    let _ = link.task.set(join.abort_handle());
    Ok(())
}

fn new_link() -> Arc<Link> {
    Arc::new(Link {
        pending: Mutex::new(Vec::new()),
        fresh: Mutex::new(Vec::new()),
        wake: Arc::new(Notify::new()),
        task: OnceLock::new(),
    })
}

/// Shares one breaker through `store`.
pub(crate) fn attach_single(breaker: &Breaker, store: Store) -> Result<(), ConfigError> {
    let link = new_link();
    breaker.set_hook(link.owning_hook());
    let poll = breaker.config().shared_poll_interval;
    spawn(
        &link,
        Target::Single(breaker.downgrade()),
        breaker.settings().clone(),
        store,
        poll,
    )
}

/// Shares every breaker of a per-key group through `store`.
pub(crate) fn attach_group(group: &Arc<Group>, store: Store) -> Result<(), ConfigError> {
    let link = new_link();
    // The group owns the link through its `on_new` hook; its breakers
    // only point at it.
    group.keyless.set_hook(link.weak_hook());
    let on_new = link.clone();
    let _ = group.on_new.set(Arc::new(move |b: &Breaker| {
        b.set_hook(on_new.weak_hook());
        on_new.on_new(b);
    }));
    let poll = group.settings.config.shared_poll_interval;
    spawn(
        &link,
        Target::Group(Arc::downgrade(group)),
        group.settings.clone(),
        store,
        poll,
    )
}

/// The shared value of one breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Value {
    generation: u64,
    state: State,
    /// Unix milliseconds; 0 unless open.
    open_until: u64,
}

impl Value {
    fn encode(&self) -> Bytes {
        Bytes::from(format!(
            "{} {} {}",
            self.generation, self.state, self.open_until
        ))
    }

    fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        let bad = || {
            StoreError::BadData(format!(
                "not a shared breaker state: {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(64)])
            ))
        };
        let text = std::str::from_utf8(raw).map_err(|_| bad())?;
        let mut parts = text.split_ascii_whitespace();
        let (Some(generation), Some(state), Some(until), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let state = State::all()
            .into_iter()
            .find(|s| s.as_str() == state && *s != State::HalfOpen)
            .ok_or_else(bad)?;
        Ok(Self {
            generation: generation.parse().map_err(|_| bad())?,
            state,
            open_until: until.parse().map_err(|_| bad())?,
        })
    }

    /// Time left open, if open and not yet over.
    fn open_left(&self, now_ms: u64) -> Option<Duration> {
        (self.state == State::Open && self.open_until > now_ms)
            .then(|| Duration::from_millis(self.open_until - now_ms))
    }
}

/// Wall-clock milliseconds, advancing with tokio's clock (so a paused test
/// clock moves it too): one anchor per process, then tokio's monotonic time.
fn wall_ms() -> u64 {
    static ANCHOR: OnceLock<(u128, std::time::Instant)> = OnceLock::new();
    let (wall, mono) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        (wall, std::time::Instant::now())
    });
    let now = tokio::time::Instant::now().into_std();
    let ms = match now.checked_duration_since(mono) {
        Some(ahead) => wall + ahead.as_millis(),
        None => wall.saturating_sub(mono.duration_since(now).as_millis()),
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

fn store_key(store: &Store, b: &Breaker) -> String {
    let id = match b.key() {
        None => "_".to_owned(),
        Some(k) => format!("k_{k}"),
    };
    store.key("breaker", b.name(), &id, "v1")
}

/// What the task last saw (or wrote) at one key.
#[derive(Default)]
struct Seen {
    raw: Option<Bytes>,
    generation: u64,
}

/// Whether a local change is written over `remote`, a value another replica
/// wrote since this one last looked.
fn overwrites(local: State, manual: bool, remote: Option<&Value>, now_ms: u64) -> bool {
    if manual {
        return true;
    }
    match local {
        State::Open => !matches!(
            remote,
            Some(v) if v.state == State::ForcedOpen || v.open_left(now_ms).is_some()
        ),
        State::Closed => false,
        _ => true,
    }
}

/// Applies a value another replica wrote.
fn apply(b: &Breaker, remote: &Value, now_ms: u64) {
    match remote.state {
        State::Open => {
            if let Some(left) = remote.open_left(now_ms) {
                b.apply_remote(State::Open, Some(left));
            }
        }
        State::HalfOpen => {}
        to => b.apply_remote(to, None),
    }
}

struct Task {
    link: Weak<Link>,
    wake: Arc<Notify>,
    target: Target,
    /// Where completed rounds are counted (`Breaker::store_syncs`).
    settings: Arc<Settings>,
    store: Store,
    poll: Duration,
    seen: HashMap<String, Seen>,
    failing: bool,
}

impl Task {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let full = tokio::select! {
                _ = tick.tick() => true,
                () = self.wake.notified() => false,
            };
            let Some(link) = self.link.upgrade() else {
                return;
            };
            if !self.round(&link, full).await {
                return;
            }
            self.settings.store_syncs.fetch_add(1, Relaxed);
        }
    }

    /// One round: write local changes, then read (everything on a tick,
    /// only new per-key breakers on a wake-up). False once the layer is gone.
    async fn round(&mut self, link: &Link, full: bool) -> bool {
        let mut ok = true;
        let pending = mem::take(&mut *lock(&link.pending));
        let mut retry = Vec::new();
        for (weak, manual) in pending {
            // After one failure the store is down for this round: keep the
            // rest for the next one rather than wait out a timeout each.
            if !ok {
                retry.push((weak, manual));
                continue;
            }
            let Some(b) = weak.upgrade() else { continue };
            if let Err(e) = self.publish(&b, manual).await {
                self.failed(&b, &e);
                ok = false;
                retry.push((weak, manual));
            }
        }
        let fresh = mem::take(&mut *lock(&link.fresh));
        let read: Vec<Breaker> = if full {
            match self.target.breakers() {
                Some(all) => all,
                None => return false,
            }
        } else {
            fresh.iter().filter_map(WeakBreaker::upgrade).collect()
        };
        if !ok {
            if !full {
                lock(&link.fresh).extend(fresh);
            }
        } else if !read.is_empty()
            && let Err(e) = self.poll(&read, full).await
        {
            self.failed(&read[0], &e);
            ok = false;
            if !full {
                lock(&link.fresh).extend(fresh);
            }
        }
        if !retry.is_empty() {
            let mut pending = lock(&link.pending);
            for (weak, manual) in retry {
                match pending.iter_mut().find(|(w, _)| w.same(&weak)) {
                    Some(entry) => entry.1 |= manual,
                    None => pending.push((weak, manual)),
                }
            }
        }
        if ok && self.failing {
            self.failing = false;
            tracing::info!(
                breaker = %read.first().map_or("", |b| b.name()),
                "circuit breaker store reachable again; shared state resynced"
            );
        }
        true
    }

    fn failed(&mut self, b: &Breaker, e: &StoreError) {
        b.settings().store_errors.fetch_add(1, Relaxed);
        if self.failing {
            tracing::debug!(breaker = %b.name(), error = %e, "circuit breaker store still failing");
        } else {
            self.failing = true;
            tracing::warn!(
                breaker = %b.name(),
                error = %e,
                "circuit breaker store failed: keeping local state, retrying next poll"
            );
        }
    }

    /// Writes `b`'s local state, unless another replica's newer value wins.
    async fn publish(&mut self, b: &Breaker, manual: bool) -> Result<(), StoreError> {
        let (state, left) = b.shared_view();
        if state == State::HalfOpen {
            return Ok(());
        }
        let key = store_key(&self.store, b);
        let cfg = b.config();
        let now = wall_ms();
        // Kept while the key may be in use, and for a few polls at least so
        // every replica reads it.
        let keep = cfg.key_idle_timeout.max(self.poll.saturating_mul(3));
        let (open_until, ttl) = match (state, left) {
            (State::Open, Some(left)) => (
                now.saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
                Some(left.saturating_add(keep)),
            ),
            (State::Closed, _) => (0, Some(keep)),
            _ => (0, None),
        };
        let seen = self.seen.entry(key.clone()).or_default();
        let mut expected = seen.raw.clone();
        for _ in 0..4 {
            let base = expected
                .as_deref()
                .and_then(|r| Value::decode(r).ok())
                .map_or(0, |v| v.generation);
            let value = Value {
                generation: seen.generation.max(base) + 1,
                state,
                open_until,
            };
            let raw = value.encode();
            if self
                .store
                .compare_and_swap(&key, expected.as_deref(), raw.clone(), ttl)
                .await?
            {
                seen.raw = Some(raw);
                seen.generation = value.generation;
                return Ok(());
            }
            let current = self.store.get(&key).await?;
            let remote = match current.as_deref().map(Value::decode) {
                Some(Ok(v)) => Some(v),
                Some(Err(e)) => {
                    tracing::warn!(breaker = %b.name(), key = %key, error = %e, "overwriting bad shared breaker state");
                    b.settings().store_errors.fetch_add(1, Relaxed);
                    None
                }
                None => None,
            };
            if !overwrites(state, manual, remote.as_ref(), wall_ms()) {
                if let Some(v) = &remote {
                    seen.generation = seen.generation.max(v.generation);
                    apply(b, v, wall_ms());
                }
                seen.raw = current;
                return Ok(());
            }
            expected = current;
        }
        // Lost four races in a row: the other writers are busy; try again
        // on the next round.
        Err(StoreError::Unavailable {
            message: "shared breaker state kept changing under compare-and-swap".into(),
            source: None,
        })
    }

    /// Reads the values of `breakers` and applies the ones not seen before.
    async fn poll(&mut self, breakers: &[Breaker], full: bool) -> Result<(), StoreError> {
        let keys: Vec<String> = breakers.iter().map(|b| store_key(&self.store, b)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let values = self.store.get_many(&refs).await?;
        let now = wall_ms();
        for ((b, key), raw) in breakers.iter().zip(&keys).zip(values) {
            let seen = self.seen.entry(key.clone()).or_default();
            if seen.raw == raw {
                continue;
            }
            match raw.as_deref().map(Value::decode) {
                Some(Ok(v)) => {
                    seen.generation = seen.generation.max(v.generation);
                    apply(b, &v, now);
                }
                Some(Err(e)) => {
                    tracing::warn!(breaker = %b.name(), key = %key, error = %e, "ignoring bad shared breaker state");
                    b.settings().store_errors.fetch_add(1, Relaxed);
                }
                None => {}
            }
            seen.raw = raw;
        }
        if full {
            // Forget evicted keys.
            self.seen.retain(|k, _| keys.contains(k));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_ones_are_errors() {
        let v = Value {
            generation: 7,
            state: State::Open,
            open_until: 1_700_000_000_123,
        };
        assert_eq!(&v.encode()[..], b"7 open 1700000000123");
        assert_eq!(Value::decode(&v.encode()).unwrap(), v);
        for bad in [
            &b""[..],
            b"7 open",
            b"7 open 1 2",
            b"x open 1",
            b"7 ajar 1",
            b"7 half_open 1",
            b"\xff",
        ] {
            assert!(Value::decode(bad).unwrap_err().is_bad_data(), "{bad:?}");
        }
    }

    #[test]
    fn conflicts_resolve_as_documented() {
        let open = Value {
            generation: 2,
            state: State::Open,
            open_until: 2_000,
        };
        let closed = Value {
            state: State::Closed,
            open_until: 0,
            ..open
        };
        // Manual changes always win.
        assert!(overwrites(State::Closed, true, Some(&open), 1_000));
        // A trip does not rewrite a circuit already open elsewhere ...
        assert!(!overwrites(State::Open, false, Some(&open), 1_000));
        // ... but does rewrite a close, or an open time that is over.
        assert!(overwrites(State::Open, false, Some(&closed), 1_000));
        assert!(overwrites(State::Open, false, Some(&open), 3_000));
        assert!(overwrites(State::Open, false, None, 1_000));
        // A close gives way to anything newer.
        assert!(!overwrites(State::Closed, false, Some(&open), 1_000));
    }
}
