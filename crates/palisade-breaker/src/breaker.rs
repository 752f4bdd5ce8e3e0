//! The state machine of one breaker, lock-free while closed.

use crate::{
    config::{Config, ConfigError, IdleTarget, InitialMode, SlidingWindow},
    error::{BreakerError, CircuitOpen},
    window::{Totals, Window},
};
use palisade_core::body::sent::RequestSent;
use palisade_core::classify::{Classify, ErrorsAsFailures, Outcome};
use std::{
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{
            AtomicU32, AtomicU64,
            Ordering::{AcqRel, Acquire, Relaxed, Release},
        },
    },
    time::Duration,
};
use tokio::{sync::broadcast, time::Instant};

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum State {
    /// Calls pass and are counted.
    Closed,
    /// Calls are rejected until the recovery timeout ends.
    Open,
    /// A limited number of trial calls pass; the rest are rejected.
    HalfOpen,
    /// Every call is rejected until an operator resets the breaker.
    ForcedOpen,
    /// Every call passes; nothing is counted toward tripping.
    Disabled,
    /// Calls pass and are counted, but the breaker never trips.
    MetricsOnly,
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;
const METRICS_ONLY: u64 = 5;

impl State {
    const ALL: [State; 6] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
        State::MetricsOnly,
    ];

    fn code(self) -> u64 {
        match self {
            Self::Closed => CLOSED,
            Self::Open => OPEN,
            Self::HalfOpen => HALF_OPEN,
            Self::ForcedOpen => FORCED_OPEN,
            Self::Disabled => DISABLED,
            Self::MetricsOnly => METRICS_ONLY,
        }
    }

    fn from_code(code: u64) -> Self {
        Self::ALL[(code & 0xff) as usize % 6]
    }

    /// A short snake_case name (for logs and metric labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
            Self::ForcedOpen => "forced_open",
            Self::Disabled => "disabled",
            Self::MetricsOnly => "metrics_only",
        }
    }

    /// The value of the `palisade_breaker_state` gauge (0 closed, 1 open,
    /// 2 half-open, 3 forced open, 4 disabled, 5 metrics-only).
    pub const fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
            Self::ForcedOpen => 3,
            Self::Disabled => 4,
            Self::MetricsOnly => 5,
        }
    }

    pub(crate) fn all() -> [State; 6] {
        Self::ALL
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// The failure rate over the window crossed its threshold.
    FailureRate,
    /// The slow-call rate over the window crossed its threshold.
    SlowCallRate,
    /// The recovery timeout ended: trial calls are admitted.
    RecoveryTimeout,
    /// A trial call failed.
    TrialFailed,
    /// Enough trial calls succeeded.
    TrialsSucceeded,
    /// A half-open breaker saw no call for its idle timeout.
    HalfOpenIdle,
    /// An operator (or the registry) asked for it.
    Manual,
    /// A health probe succeeded while open.
    ProbeSucceeded,
    /// Another replica tripped or closed the shared circuit.
    Remote,
}

impl Reason {
    /// A short snake_case name (for logs).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ConsecutiveFailures => "consecutive_failures",
            Self::FailureRate => "failure_rate",
            Self::SlowCallRate => "slow_call_rate",
            Self::RecoveryTimeout => "recovery_timeout",
            Self::TrialFailed => "trial_failed",
            Self::TrialsSucceeded => "trials_succeeded",
            Self::HalfOpenIdle => "half_open_idle",
            Self::Manual => "manual",
            Self::ProbeSucceeded => "probe_succeeded",
            Self::Remote => "remote",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change, as sent on the event stream ([`Breaker::subscribe`],
/// [`BreakerRegistry::subscribe`](crate::BreakerRegistry::subscribe)).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StateChange {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The key, for a per-key breaker.
    pub key: Option<Arc<str>>,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// For a change to open: how long it stays open.
    pub open_for: Option<Duration>,
}

/// A point-in-time view of a breaker.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The breaker's name.
    pub name: String,
    /// The key, for a per-key breaker.
    pub key: Option<String>,
    /// Its state.
    pub state: State,
    /// Calls that passed (successful + failed + ignored).
    pub total_calls: u64,
    /// Calls classified as successes.
    pub successful_calls: u64,
    /// Calls classified as failures.
    pub failed_calls: u64,
    /// Calls classified as neither.
    pub ignored_calls: u64,
    /// Calls rejected without reaching the service.
    pub rejected_calls: u64,
    /// Calls slower than the slow-call threshold.
    pub slow_calls: u64,
    /// Calls in the current sliding window.
    pub window_calls: u32,
    /// Failure rate over the window (0 ..= 1), once the minimum number of
    /// calls is seen.
    pub failure_rate: Option<f64>,
    /// Slow-call rate over the window, once the minimum number of calls is
    /// seen.
    pub slow_call_rate: Option<f64>,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Time until trial calls are admitted, while open.
    #[serde(with = "humantime_serde")]
    pub retry_after: Option<Duration>,
    /// Times the breaker has opened.
    pub times_opened: u64,
}

pub(crate) type BreakFn = Arc<dyn Fn(u32) -> Duration + Send + Sync>;
pub(crate) type TransitionHook = Box<dyn Fn(&Breaker, &StateChange) + Send + Sync>;

/// What breakers of one layer (or one key group) share.
pub(crate) struct Settings {
    pub(crate) config: Config,
    pub(crate) break_fn: Option<BreakFn>,
    min_calls: u32,
    window_secs: Option<u32>,
    pub(crate) events: broadcast::Sender<StateChange>,
    /// Whether the breakers are shared through a store.
    pub(crate) shared: bool,
    /// Failed store operations of the shared state (never fail calls).
    pub(crate) store_errors: AtomicU64,
    /// Rounds the shared-state task has completed.
    pub(crate) store_syncs: AtomicU64,
}

impl Settings {
    pub(crate) fn new(
        config: Config,
        break_fn: Option<BreakFn>,
        events: Option<broadcast::Sender<StateChange>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let (min_calls, window_secs) = match config.sliding_window {
            SlidingWindow::Count { size } => (config.minimum_calls.min(size), None),
            SlidingWindow::Time { duration } => {
                (config.minimum_calls, Some(duration.as_secs() as u32))
            }
        };
        Ok(Self {
            config,
            break_fn,
            min_calls,
            window_secs,
            events: events.unwrap_or_else(|| broadcast::channel(64).0),
            shared: false,
            store_errors: AtomicU64::new(0),
            store_syncs: AtomicU64::new(0),
        })
    }

    fn window(&self) -> Window {
        match (self.window_secs, self.config.sliding_window) {
            (Some(secs), _) => Window::time(secs),
            (None, SlidingWindow::Count { size }) => Window::count(size),
            (None, _) => Window::count(100),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Cold {
    /// Trips in a row (reset when the breaker closes).
    trips: u32,
}

struct Inner {
    // Hot: read or written on every call.
    state: AtomicU64,
    consecutive: AtomicU32,
    /// Calls of the closed (or metrics-only) state with an outcome: numbers
    /// the count window's slots; successes are derived from it.
    calls: AtomicU64,
    window: Window,
    needs_clock: bool,
    /// Calls carry their start time (for the window, slow calls, or to
    /// judge a cancelled call).
    stamp: bool,
    // Counters read by snapshots.
    normal_failed: AtomicU64,
    other_successful: AtomicU64,
    other_failed: AtomicU64,
    ignored: AtomicU64,
    rejected: AtomicU64,
    slow: AtomicU64,
    entered: [AtomicU64; 6],
    // Open and half-open.
    open_until: AtomicU64,
    half_permits: AtomicU32,
    half_successes: AtomicU32,
    last_activity: AtomicU64,
    // Cold.
    cold: Mutex<Cold>,
    base: Instant,
    name: Arc<str>,
    key: Option<Arc<str>>,
    settings: Arc<Settings>,
    hook: OnceLock<TransitionHook>,
}

/// One circuit breaker: the state machine a [`CircuitBreaker`](crate::CircuitBreaker)
/// service drives, usable directly around any call (a client, a tool call).
///
/// Cheap to clone (an `Arc`); clones share the state. While closed, a call
/// costs one load of the state word to admit it and, for a success, one
/// relaxed `fetch_add` and two loads to record it: no lock, no allocation,
/// no clock read unless a time window or a slow-call threshold needs one.
///
/// # Example
///
/// ```
/// use palisade_breaker::{Breaker, Config, State};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut cfg = Config::default();
/// cfg.failure_threshold = 2;
/// let breaker = Breaker::new("search-tool", cfg).unwrap();
///
/// for _ in 0..2 {
///     let r = breaker.call(async { Err::<(), _>("upstream down") }).await;
///     assert!(!r.unwrap_err().is_open());
/// }
/// assert_eq!(breaker.state(), State::Open);
/// let r = breaker.call(async { Ok::<_, &str>(()) }).await;
/// assert!(r.unwrap_err().is_open()); // rejected without running the call
/// # }
/// ```
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

/// A breaker that does not keep its state alive (background tasks).
#[derive(Clone)]
pub(crate) struct WeakBreaker(std::sync::Weak<Inner>);

impl WeakBreaker {
    pub(crate) fn upgrade(&self) -> Option<Breaker> {
        self.0.upgrade().map(|inner| Breaker { inner })
    }

    pub(crate) fn same(&self, other: &WeakBreaker) -> bool {
        self.0.ptr_eq(&other.0)
    }

    pub(crate) fn is(&self, b: &Breaker) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(&b.inner))
    }
}

/// Admission of one call, held until its outcome is known: two words, no
/// padding (copies of it stay cheap on the hot path). What kind of call it
/// is follows from the state it was admitted in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    /// The state word at admission; [`SPENT`] once reported.
    state: u64,
    /// When the call started (nanoseconds since the breaker's base), or
    /// [`NO_START`] when no clock is needed.
    start: u64,
}

const NO_START: u64 = u64::MAX;
/// The state word of a ticket already reported (code 0xff is no state).
const SPENT: u64 = u64::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TicketKind {
    Normal,
    Trial,
    Untracked,
}

impl Ticket {
    #[inline(always)]
    fn kind(&self) -> TicketKind {
        match code(self.state) {
            CLOSED | METRICS_ONLY => TicketKind::Normal,
            HALF_OPEN => TicketKind::Trial,
            _ => TicketKind::Untracked,
        }
    }

    /// Takes the ticket out, leaving a spent one.
    #[inline(always)]
    fn take(&mut self) -> Option<Ticket> {
        (self.state != SPENT)
            .then(|| std::mem::replace(&mut self.state, SPENT))
            .map(|state| Ticket {
                state,
                start: self.start,
            })
    }
}

fn pack(epoch: u64, code: u64) -> u64 {
    (epoch << 8) | code
}

fn code(word: u64) -> u64 {
    word & 0xff
}

fn epoch(word: u64) -> u64 {
    word >> 8
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Breaker {
    /// A breaker named `name` (a bounded label: the upstream, route or tool
    /// it guards), checking `config`.
    pub fn new(name: impl Into<Arc<str>>, config: Config) -> Result<Self, ConfigError> {
        Ok(Self::with_settings(
            name.into(),
            None,
            Arc::new(Settings::new(config, None, None)?),
        ))
    }

    pub(crate) fn with_settings(
        name: Arc<str>,
        key: Option<Arc<str>>,
        settings: Arc<Settings>,
    ) -> Self {
        let window = settings.window();
        let initial = match settings.config.initial_mode {
            _ if !settings.config.enabled => DISABLED,
            InitialMode::Closed => CLOSED,
            InitialMode::Disabled => DISABLED,
            InitialMode::MetricsOnly => METRICS_ONLY,
            InitialMode::ForcedOpen => FORCED_OPEN,
        };
        let needs_clock = window.needs_clock() || settings.config.slow_call_threshold.is_some();
        // A start time tells a hang cut by a timeout from a caller that gave
        // up early.
        let stamp = needs_clock
            || settings
                .config
                .cancelled_failure_after
                .is_some_and(|d| !d.is_zero());
        Self {
            inner: Arc::new(Inner {
                state: AtomicU64::new(pack(0, initial)),
                consecutive: AtomicU32::new(0),
                calls: AtomicU64::new(0),
                window,
                needs_clock,
                stamp,
                normal_failed: AtomicU64::new(0),
                other_successful: AtomicU64::new(0),
                other_failed: AtomicU64::new(0),
                ignored: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                slow: AtomicU64::new(0),
                entered: Default::default(),
                open_until: AtomicU64::new(0),
                half_permits: AtomicU32::new(0),
                half_successes: AtomicU32::new(0),
                last_activity: AtomicU64::new(0),
                cold: Mutex::new(Cold::default()),
                base: Instant::now(),
                name,
                key,
                settings,
                hook: OnceLock::new(),
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The key, for a per-key breaker.
    pub fn key(&self) -> Option<&str> {
        self.inner.key.as_deref()
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.inner.settings.config
    }

    pub(crate) fn name_arc(&self) -> &Arc<str> {
        &self.inner.name
    }

    pub(crate) fn settings(&self) -> &Arc<Settings> {
        &self.inner.settings
    }

    /// Installs the transition hook (once; later calls are ignored).
    pub(crate) fn set_hook(&self, hook: TransitionHook) {
        let _ = self.inner.hook.set(hook);
    }

    pub(crate) fn downgrade(&self) -> WeakBreaker {
        WeakBreaker(Arc::downgrade(&self.inner))
    }

    /// The state as shared with other replicas, and for open, the time
    /// left. Runs no timed transition.
    pub(crate) fn shared_view(&self) -> (State, Option<Duration>) {
        let word = self.inner.state.load(Acquire);
        let state = State::from_code(code(word));
        let left = (state == State::Open).then(|| {
            Duration::from_nanos(
                self.inner
                    .open_until
                    .load(Acquire)
                    .saturating_sub(self.now()),
            )
        });
        (state, left)
    }

    /// Moves to `to` (open for `open_for`) because another replica did,
    /// unless already there.
    pub(crate) fn apply_remote(&self, to: State, open_for: Option<Duration>) {
        loop {
            let word = self.inner.state.load(Acquire);
            if code(word) == to.code() {
                return;
            }
            if self.transition_with(word, to, Reason::Remote, open_for) {
                return;
            }
        }
    }

    #[inline]
    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.inner.base))
    }

    /// Asks to make one call: a [`Permit`] to report its outcome on, or the
    /// rejection. Dropping the permit unreported is a cancelled call: a
    /// failure when it ran at least
    /// [`cancelled_failure_after`](Config::cancelled_failure_after) (1 s by
    /// default), otherwise not counted (a half-open trial permit is given
    /// back).
    ///
    /// ```
    /// use palisade_breaker::{Breaker, Config};
    /// use palisade_core::classify::Outcome;
    ///
    /// let breaker = Breaker::new("db", Config::default()).unwrap();
    /// let permit = breaker.try_acquire().unwrap();
    /// // ... make the call ...
    /// permit.record(Outcome::Success);
    /// assert_eq!(breaker.snapshot().successful_calls, 1);
    /// ```
    #[inline]
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        self.acquire().map(|ticket| Permit {
            breaker: self.clone(),
            ticket,
            sending: None,
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), consuming the handle (no
    /// reference count traffic when the caller already owns a clone).
    #[inline]
    pub(crate) fn into_permit(self) -> Result<Permit, CircuitOpen> {
        match self.acquire() {
            Ok(ticket) => Ok(Permit {
                breaker: self,
                ticket,
                sending: None,
            }),
            Err(open) => Err(open),
        }
    }

    /// The closed-state fast path, inlined into the caller: one load of
    /// the state word. Everything else (a clock to read, another state) is
    /// out of line.
    #[inline(always)]
    pub(crate) fn acquire(&self) -> Result<Ticket, CircuitOpen> {
        let inner = &*self.inner;
        let word = inner.state.load(Acquire);
        if matches!(code(word), CLOSED | METRICS_ONLY) && !inner.stamp {
            return Ok(Ticket {
                state: word,
                start: NO_START,
            });
        }
        self.acquire_slow()
    }

    #[inline(never)]
    fn acquire_slow(&self) -> Result<Ticket, CircuitOpen> {
        let inner = &*self.inner;
        loop {
            let word = inner.state.load(Acquire);
            match code(word) {
                CLOSED | METRICS_ONLY => {
                    return Ok(Ticket {
                        state: word,
                        start: if inner.stamp { self.now() } else { NO_START },
                    });
                }
                DISABLED => {
                    return Ok(Ticket {
                        state: word,
                        start: NO_START,
                    });
                }
                OPEN => {
                    let now = self.now();
                    let until = inner.open_until.load(Acquire);
                    if now >= until {
                        self.transition(word, State::HalfOpen, Reason::RecoveryTimeout);
                        continue;
                    }
                    return Err(self.reject());
                }
                HALF_OPEN => {
                    let now = self.now();
                    if let Some(idle) = inner.settings.config.half_open_idle_timeout
                        && now.saturating_sub(inner.last_activity.load(Acquire)) >= nanos(idle)
                    {
                        let to = match inner.settings.config.half_open_idle_state {
                            IdleTarget::Closed => State::Closed,
                            _ => State::Open,
                        };
                        self.transition(word, to, Reason::HalfOpenIdle);
                        continue;
                    }
                    if inner
                        .half_permits
                        .fetch_update(AcqRel, Acquire, |p| p.checked_sub(1))
                        .is_ok()
                    {
                        if inner.state.load(Acquire) != word {
                            // The state moved on under us: give the permit back.
                            inner.half_permits.fetch_add(1, AcqRel);
                            continue;
                        }
                        inner.last_activity.store(now, Release);
                        return Ok(Ticket {
                            state: word,
                            start: if inner.stamp { self.now() } else { NO_START },
                        });
                    }
                    return Err(self.reject());
                }
                _ => return Err(self.reject()),
            }
        }
    }

    #[cold]
    fn reject(&self) -> CircuitOpen {
        self.inner.rejected.fetch_add(1, Relaxed);
        CircuitOpen {
            breaker: self.clone(),
        }
    }

    /// Time until trial calls, while open (no timed transition is run).
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self.shared_view() {
            // Until the trials start (at least a second: a client that
            // honours it is never early).
            (State::Open, left) => Some(left.unwrap_or_default().max(Duration::from_secs(1))),
            // The trials in flight decide soon.
            (State::HalfOpen, _) => Some(Duration::from_secs(1)),
            // Until an operator resets it: no sooner than a recovery period.
            (State::ForcedOpen, _) => Some(self.inner.settings.config.recovery_timeout),
            _ => None,
        }
    }

    pub(crate) fn is_forced_open(&self) -> bool {
        code(self.inner.state.load(Acquire)) == FORCED_OPEN
    }

    /// The closed-state fast path, inlined into the caller: a success that
    /// changes nothing but the call count (no failure run to reset, the
    /// window slot it replaces already a success) costs one `fetch_add`
    /// and two loads.
    #[inline(always)]
    pub(crate) fn record(&self, ticket: Ticket, outcome: Outcome) {
        if ticket.kind() == TicketKind::Normal
            && outcome == Outcome::Success
            && !self.inner.needs_clock
        {
            let inner = &*self.inner;
            let seq = inner.calls.fetch_add(1, Relaxed);
            if inner.consecutive.load(Relaxed) == 0 && inner.window.success_is_noop(seq) {
                return;
            }
            return self.record_normal(ticket, outcome, false, seq);
        }
        self.record_slow(ticket, outcome);
    }

    #[inline(never)]
    fn record_slow(&self, ticket: Ticket, outcome: Outcome) {
        let inner = &*self.inner;
        let slow = match (ticket.start, inner.settings.config.slow_call_threshold) {
            (start, Some(threshold)) if start != NO_START => {
                self.now().saturating_sub(start) >= nanos(threshold)
            }
            _ => false,
        };
        if outcome == Outcome::Ignored {
            inner.ignored.fetch_add(1, Relaxed);
        } else if slow {
            inner.slow.fetch_add(1, Relaxed);
        }
        match ticket.kind() {
            TicketKind::Untracked | TicketKind::Trial => match outcome {
                Outcome::Success => {
                    inner.other_successful.fetch_add(1, Relaxed);
                }
                Outcome::Failure => {
                    inner.other_failed.fetch_add(1, Relaxed);
                }
                Outcome::Ignored => {}
            },
            TicketKind::Normal => {}
        }
        match ticket.kind() {
            TicketKind::Untracked => {}
            TicketKind::Normal => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let seq = inner.calls.fetch_add(1, Relaxed);
                self.record_normal(ticket, outcome, slow, seq);
            }
            TicketKind::Trial => {
                let word = inner.state.load(Acquire);
                if word != ticket.state {
                    return;
                }
                inner.last_activity.store(self.now(), Release);
                let slow_fails = slow && inner.settings.config.slow_call_threshold.is_some();
                match outcome {
                    Outcome::Ignored => {
                        inner.half_permits.fetch_add(1, AcqRel);
                    }
                    Outcome::Failure => {
                        self.transition(word, State::Open, Reason::TrialFailed);
                    }
                    Outcome::Success if slow_fails => {
                        self.transition(word, State::Open, Reason::SlowCallRate);
                    }
                    Outcome::Success => {
                        let n = inner.half_successes.fetch_add(1, AcqRel) + 1;
                        if n >= inner.settings.config.success_threshold {
                            self.transition(word, State::Closed, Reason::TrialsSucceeded);
                        }
                    }
                }
            }
        }
    }

    /// A closed (or metrics-only) call with an outcome, numbered `seq`.
    fn record_normal(&self, ticket: Ticket, outcome: Outcome, slow: bool, seq: u64) {
        let inner = &*self.inner;
        let failure = outcome == Outcome::Failure;
        if failure {
            inner.normal_failed.fetch_add(1, Relaxed);
        }
        if inner.state.load(Acquire) != ticket.state {
            return;
        }
        let cfg = &inner.settings.config;
        let can_trip = code(ticket.state) == CLOSED;
        if failure {
            let n = inner.consecutive.fetch_add(1, Relaxed) + 1;
            if can_trip && cfg.failure_threshold > 0 && n >= cfg.failure_threshold {
                self.transition(ticket.state, State::Open, Reason::ConsecutiveFailures);
                return;
            }
        } else if inner.consecutive.load(Relaxed) != 0 {
            inner.consecutive.store(0, Relaxed);
        }
        let secs = if inner.window.needs_clock() {
            self.now() / 1_000_000_000
        } else {
            0
        };
        inner.window.record(seq, failure, slow, secs);
        if can_trip && (failure || slow) {
            self.check_rates(ticket.state, secs);
        }
    }

    #[cold]
    fn check_rates(&self, word: u64, secs: u64) {
        let inner = &*self.inner;
        let cfg = &inner.settings.config;
        let t = inner.window.totals(secs);
        if t.calls < inner.settings.min_calls || t.calls == 0 {
            return;
        }
        let calls = f64::from(t.calls);
        if let Some(threshold) = cfg.failure_rate_threshold
            && f64::from(t.failures) / calls >= threshold
        {
            self.transition(word, State::Open, Reason::FailureRate);
        } else if cfg.slow_call_threshold.is_some()
            && f64::from(t.slow) / calls >= cfg.slow_call_rate_threshold
        {
            self.transition(word, State::Open, Reason::SlowCallRate);
        }
    }

    #[inline]
    pub(crate) fn cancel(&self, ticket: Ticket) {
        if let Some(after) = self.inner.settings.config.cancelled_failure_after
            && (after.is_zero()
                || (ticket.start != NO_START
                    && self.now().saturating_sub(ticket.start) >= nanos(after)))
        {
            // A hang that a timeout outside (or the caller) gave up on.
            self.record_slow(ticket, Outcome::Failure);
            return;
        }
        self.release(ticket);
    }

    /// A call that ends with no outcome: a half-open trial's permit goes
    /// back.
    pub(crate) fn release(&self, ticket: Ticket) {
        if ticket.kind() == TicketKind::Trial && self.inner.state.load(Acquire) == ticket.state {
            self.inner.half_permits.fetch_add(1, AcqRel);
        }
    }

    fn break_duration(&self, trips: u32) -> Duration {
        let settings = &self.inner.settings;
        if let Some(f) = &settings.break_fn {
            return f(trips);
        }
        let base = settings.config.recovery_timeout;
        let Some(b) = settings.config.recovery_backoff else {
            return base;
        };
        let grown =
            base.as_secs_f64() * b.multiplier.powi(trips.saturating_sub(1).min(1024) as i32);
        let capped = grown.min(b.max.as_secs_f64());
        let jittered = if b.jitter > 0.0 {
            capped * (1.0 + b.jitter * (fastrand::f64() * 2.0 - 1.0))
        } else {
            capped
        };
        Duration::from_secs_f64(jittered.clamp(0.001, b.max.as_secs_f64()))
    }

    /// Moves from the state word `expected` to `to`; false when another
    /// thread moved first.
    #[cold]
    fn transition(&self, expected: u64, to: State, reason: Reason) -> bool {
        self.transition_with(expected, to, reason, None)
    }

    fn transition_with(
        &self,
        expected: u64,
        to: State,
        reason: Reason,
        open_for: Option<Duration>,
    ) -> bool {
        let inner = &*self.inner;
        let mut cold = inner.cold.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.state.load(Acquire) != expected {
            return false;
        }
        let from = State::from_code(code(expected));
        let now = self.now();
        let mut opened_for = None;
        match to {
            State::Open => {
                cold.trips = cold.trips.saturating_add(1);
                let d = open_for.unwrap_or_else(|| self.break_duration(cold.trips));
                inner
                    .open_until
                    .store(now.saturating_add(nanos(d)), Release);
                opened_for = Some(d);
            }
            State::HalfOpen => {
                inner
                    .half_permits
                    .store(inner.settings.config.half_open_max_calls, Release);
                inner.half_successes.store(0, Release);
                inner.last_activity.store(now, Release);
            }
            State::Closed | State::MetricsOnly => {
                if to == State::Closed {
                    cold.trips = 0;
                }
                inner.consecutive.store(0, Relaxed);
                inner.window.reset();
            }
            State::ForcedOpen | State::Disabled => {}
        }
        inner
            .state
            .store(pack(epoch(expected) + 1, to.code()), Release);
        inner.entered[to.code() as usize].fetch_add(1, Relaxed);
        drop(cold);
        let change = StateChange {
            breaker: inner.name.clone(),
            key: inner.key.clone(),
            from,
            to,
            reason,
            open_for: opened_for,
        };
        match to {
            State::Open | State::ForcedOpen => tracing::warn!(
                breaker = %inner.name,
                key = inner.key.as_deref(),
                from = %from,
                to = %to,
                reason = %reason,
                open_for = ?opened_for,
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                breaker = %inner.name,
                key = inner.key.as_deref(),
                from = %from,
                to = %to,
                reason = %reason,
                "circuit breaker state changed"
            ),
        }
        if let Some(hook) = inner.hook.get() {
            hook(self, &change);
        }
        let _ = inner.settings.events.send(change);
        true
    }

    /// Moves to `to` whatever the current state (manual operations).
    fn force(&self, to: State, reason: Reason) {
        loop {
            let word = self.inner.state.load(Acquire);
            if self.transition(word, to, reason) {
                return;
            }
        }
    }

    /// Runs lazy transitions that are due (open → half-open after the
    /// recovery timeout, idle half-open), without admitting a call.
    fn refresh(&self) {
        let inner = &*self.inner;
        let word = inner.state.load(Acquire);
        let now = self.now();
        match code(word) {
            OPEN if now >= inner.open_until.load(Acquire) => {
                self.transition(word, State::HalfOpen, Reason::RecoveryTimeout);
            }
            HALF_OPEN => {
                if let Some(idle) = inner.settings.config.half_open_idle_timeout
                    && now.saturating_sub(inner.last_activity.load(Acquire)) >= nanos(idle)
                {
                    let to = match inner.settings.config.half_open_idle_state {
                        IdleTarget::Closed => State::Closed,
                        _ => State::Open,
                    };
                    self.transition(word, to, Reason::HalfOpenIdle);
                }
            }
            _ => {}
        }
    }

    /// The current state (after any due timed transition).
    pub fn state(&self) -> State {
        self.refresh();
        State::from_code(code(self.inner.state.load(Acquire)))
    }

    /// Back to closed, counters of the window cleared (totals are kept).
    pub fn reset(&self) {
        self.force(State::Closed, Reason::Manual);
    }

    /// Rejects every call until [`reset`](Self::reset).
    pub fn force_open(&self) {
        self.force(State::ForcedOpen, Reason::Manual);
    }

    /// Lets every call pass, uncounted, until [`reset`](Self::reset).
    pub fn disable(&self) {
        self.force(State::Disabled, Reason::Manual);
    }

    /// Counts calls but never trips, until [`reset`](Self::reset).
    pub fn metrics_only(&self) {
        self.force(State::MetricsOnly, Reason::Manual);
    }

    /// Opens the breaker now, as a trip would (for `open_for`, or the
    /// configured recovery timeout).
    pub fn trip(&self, open_for: Option<Duration>) {
        self.open_with(Reason::Manual, open_for);
    }

    pub(crate) fn open_with(&self, reason: Reason, open_for: Option<Duration>) -> bool {
        loop {
            let word = self.inner.state.load(Acquire);
            if matches!(code(word), FORCED_OPEN | DISABLED) {
                return false;
            }
            if self.transition_with(word, State::Open, reason, open_for) {
                return true;
            }
        }
    }

    /// Closes an open or half-open breaker early (a probe succeeded, another
    /// replica closed it); false when it was in another state.
    pub(crate) fn close_with(&self, reason: Reason) -> bool {
        loop {
            let word = self.inner.state.load(Acquire);
            if !matches!(code(word), OPEN | HALF_OPEN) {
                return false;
            }
            if self.transition(word, State::Closed, reason) {
                return true;
            }
        }
    }

    /// Events of this breaker (and of the breakers sharing its registry or
    /// its per-key group); each names its breaker.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.inner.settings.events.subscribe()
    }

    pub(crate) fn window_totals(&self) -> Totals {
        let secs = self.now() / 1_000_000_000;
        self.inner.window.totals(secs)
    }

    /// A point-in-time view: state, counters, rates, time until retry.
    pub fn snapshot(&self) -> Snapshot {
        let state = self.state();
        let inner = &*self.inner;
        let t = self.window_totals();
        let rate = |n: u32| {
            (t.calls >= inner.settings.min_calls && t.calls > 0)
                .then(|| f64::from(n) / f64::from(t.calls))
        };
        let normal_failed = inner.normal_failed.load(Relaxed);
        let successful = inner.calls.load(Relaxed).saturating_sub(normal_failed)
            + inner.other_successful.load(Relaxed);
        let failed = normal_failed + inner.other_failed.load(Relaxed);
        let ignored = inner.ignored.load(Relaxed);
        let retry_after = (state == State::Open).then(|| {
            Duration::from_nanos(inner.open_until.load(Acquire).saturating_sub(self.now()))
        });
        Snapshot {
            name: inner.name.to_string(),
            key: inner.key.as_deref().map(str::to_owned),
            state,
            total_calls: successful + failed + ignored,
            successful_calls: successful,
            failed_calls: failed,
            ignored_calls: ignored,
            rejected_calls: inner.rejected.load(Relaxed),
            slow_calls: inner.slow.load(Relaxed),
            window_calls: t.calls,
            failure_rate: rate(t.failures),
            slow_call_rate: inner
                .settings
                .config
                .slow_call_threshold
                .and_then(|_| rate(t.slow)),
            consecutive_failures: inner.consecutive.load(Relaxed),
            retry_after,
            times_opened: inner.entered[OPEN as usize].load(Relaxed),
        }
    }

    /// How many rounds with the store the background task of a shared
    /// breaker has completed (0 for a breaker that is not shared; per-key
    /// breakers count their group's rounds).
    ///
    /// A round writes the local changes made before it started and reads
    /// the store (every breaker on a poll, new per-key breakers on a
    /// wake-up), failed or not. So "one more round than before" is the
    /// event to wait for after a local change, or once a poll is due.
    ///
    /// ```
    /// use palisade_breaker::{CircuitBreakerLayer, State};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let store = palisade_store::Store::in_memory();
    /// let shared = || {
    ///     CircuitBreakerLayer::builder("payments")
    ///         .shared(&store)
    ///         .build()
    ///         .unwrap()
    ///         .breaker()
    ///         .unwrap()
    /// };
    /// let a = shared();
    /// let before = a.store_syncs();
    /// a.trip(None);
    /// palisade_testkit::yield_until("the trip was written", || a.store_syncs() > before).await;
    /// // A replica created now reads the trip at once.
    /// let b = shared();
    /// palisade_testkit::yield_until("b read the store", || b.store_syncs() > 0).await;
    /// assert_eq!(b.state(), State::Open);
    /// # }
    /// ```
    pub fn store_syncs(&self) -> u64 {
        self.inner.settings.store_syncs.load(Relaxed)
    }

    /// How many times the breaker entered `state`.
    pub fn times_entered(&self, state: State) -> u64 {
        self.inner.entered[state.code() as usize].load(Relaxed)
    }

    /// Runs `call` through the breaker: rejected at once when open, else
    /// `Err` counts as a failure and `Ok` as a success.
    pub async fn call<F, T, E>(&self, call: F) -> Result<T, BreakerError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        self.call_classified(&ErrorsAsFailures, call).await
    }

    /// Runs `call` through the breaker, its result judged by `classifier`.
    ///
    /// ```
    /// use palisade_breaker::{Breaker, Config};
    /// use palisade_core::classify::{Outcome, classify_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let breaker = Breaker::new("llm", Config::default()).unwrap();
    /// // A "busy" answer is not the upstream's fault: ignore it.
    /// let c = classify_fn(|r: Result<&&str, &()>| match r {
    ///     Ok(&"busy") => Outcome::Ignored,
    ///     Ok(_) => Outcome::Success,
    ///     Err(_) => Outcome::Failure,
    /// });
    /// breaker.call_classified(&c, async { Ok::<_, ()>("busy") }).await.unwrap();
    /// assert_eq!(breaker.snapshot().ignored_calls, 1);
    /// # }
    /// ```
    pub async fn call_classified<C, F, T, E>(
        &self,
        classifier: &C,
        call: F,
    ) -> Result<T, BreakerError<E>>
    where
        C: Classify<T, E>,
        F: Future<Output = Result<T, E>>,
    {
        let guard = Guard {
            breaker: self,
            ticket: self.acquire().map_err(BreakerError::Open)?,
        };
        let result = call.await;
        guard.record(classifier.classify(result.as_ref()));
        result.map_err(BreakerError::Inner)
    }

    /// Runs a synchronous call through the breaker: rejected at once when
    /// open, else `Err` counts as a failure and `Ok` as a success.
    ///
    /// ```
    /// use palisade_breaker::{Breaker, Config};
    ///
    /// let breaker = Breaker::new("parser", Config::default()).unwrap();
    /// let n = breaker.call_sync(|| "42".parse::<u32>()).unwrap();
    /// assert_eq!(n, 42);
    /// assert!(breaker.call_sync(|| "x".parse::<u32>()).is_err());
    /// assert_eq!(breaker.snapshot().failed_calls, 1);
    /// ```
    #[inline]
    pub fn call_sync<T, E>(
        &self,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, BreakerError<E>> {
        let guard = Guard {
            breaker: self,
            ticket: self.acquire().map_err(BreakerError::Open)?,
        };
        let result = call();
        guard.record(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result.map_err(BreakerError::Inner)
    }

    /// Spawns a health probe: every `interval`, while the breaker is open,
    /// runs `probe`; an `Ok` closes the breaker early. The task stops when
    /// the returned handle is dropped.
    ///
    /// ```
    /// use palisade_breaker::{Breaker, Config, State};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let breaker = Breaker::new("primary", Config::default()).unwrap();
    /// let _probe = breaker.spawn_probe(Duration::from_secs(5), || async { Ok::<_, ()>(()) });
    /// breaker.trip(None);
    /// tokio::time::sleep(Duration::from_secs(6)).await;
    /// assert_eq!(breaker.state(), State::Closed);
    /// # }
    /// ```
    pub fn spawn_probe<P, Fut, T, E>(&self, interval: Duration, probe: P) -> ProbeHandle
    where
        P: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        let breaker = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let word = breaker.inner.state.load(Acquire);
                if code(word) != OPEN {
                    continue;
                }
                if probe().await.is_ok() {
                    breaker.close_with(Reason::ProbeSucceeded);
                } else {
                    tracing::debug!(breaker = %breaker.inner.name, "health probe failed");
                }
            }
        });
        ProbeHandle(task)
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.inner.name)
            .field("key", &self.inner.key)
            .field(
                "state",
                &State::from_code(code(self.inner.state.load(Relaxed))),
            )
            .finish_non_exhaustive()
    }
}

/// A borrowed permit: no reference count traffic.
struct Guard<'a> {
    breaker: &'a Breaker,
    ticket: Ticket,
}

impl Guard<'_> {
    #[inline]
    fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.record(ticket, outcome);
        }
    }
}

impl Drop for Guard<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.cancel(ticket);
        }
    }
}

/// Stops a health probe task (see [`Breaker::spawn_probe`]) when dropped.
#[derive(Debug)]
pub struct ProbeHandle(tokio::task::JoinHandle<()>);

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The right to make one call; report its outcome with
/// [`record`](Self::record). Dropping it unreported is a cancelled call: a
/// failure once it ran long enough (see [`Config::cancelled_failure_after`]).
pub struct Permit {
    breaker: Breaker,
    ticket: Ticket,
    /// The call's request body, when known to be still arriving: a call
    /// dropped before it ended was given up on by its client, not by a
    /// timeout waiting on the upstream.
    sending: Option<RequestSent>,
}

impl Permit {
    /// A call dropped while `sending` has not ended is not a failure (see
    /// [`palisade_core::body::sent`]).
    #[inline]
    pub(crate) fn sending(mut self, sending: Option<RequestSent>) -> Self {
        self.sending = sending;
        self
    }

    /// Reports the call's outcome.
    #[inline]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.record(ticket, outcome);
        }
    }

    /// Reports a success.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// Reports a failure.
    pub fn failure(self) {
        self.record(Outcome::Failure);
    }

    /// The breaker this permit belongs to.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            if self.sending.as_ref().is_some_and(|s| !s.is_sent()) {
                // The client never finished sending the request.
                self.breaker.release(ticket);
            } else {
                self.breaker.cancel(ticket);
            }
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.inner.name)
            .field(
                "trial",
                &(self.ticket.state != SPENT && self.ticket.kind() == TicketKind::Trial),
            )
            .finish()
    }
}
