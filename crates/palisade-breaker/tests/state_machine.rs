//! The state machine on a paused clock.

use palisade_breaker::{
    Breaker, BreakerRegistry, CircuitBreakerLayer, Config, IdleTarget, InitialMode, Reason,
    RecoveryBackoff, SlidingWindow, State,
};
use palisade_core::classify::Outcome;
use std::time::Duration;
use tokio::time::advance;

fn cfg(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    c.failure_rate_threshold = None;
    f(&mut c);
    c
}

fn fail(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").failure();
    }
}

fn succeed(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_acquire().expect("admitted").success();
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_and_a_success_resets_the_run() {
    let b = Breaker::new("t", cfg(|_| {})).unwrap();
    fail(&b, 4);
    succeed(&b, 1);
    fail(&b, 4);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
    let open = b.try_acquire().unwrap_err();
    assert_eq!(open.retry_after(), Some(Duration::from_secs(60)));
    let s = b.snapshot();
    assert_eq!(
        (s.failed_calls, s.successful_calls, s.rejected_calls),
        (9, 1, 1)
    );
    assert_eq!(s.times_opened, 1);
}

#[tokio::test(start_paused = true)]
async fn recovery_then_half_open_trials_close_it() {
    let b = Breaker::new("t", cfg(|_| {})).unwrap();
    fail(&b, 5);
    advance(Duration::from_secs(59)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.snapshot().retry_after, Some(Duration::from_secs(1)));
    advance(Duration::from_secs(1)).await;
    // Exactly 3 trial calls are admitted; the 4th is rejected.
    let p1 = b.try_acquire().unwrap();
    let p2 = b.try_acquire().unwrap();
    let p3 = b.try_acquire().unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    assert!(b.try_acquire().is_err());
    p1.success();
    assert_eq!(b.state(), State::HalfOpen);
    p2.success();
    assert_eq!(b.state(), State::Closed);
    // A trial finishing after the close is not counted against the new state.
    p3.failure();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().consecutive_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_reopens() {
    let b = Breaker::new("t", cfg(|_| {})).unwrap();
    fail(&b, 5);
    advance(Duration::from_secs(60)).await;
    b.try_acquire().unwrap().success();
    b.try_acquire().unwrap().failure();
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.times_entered(State::Open), 2);
}

#[tokio::test(start_paused = true)]
async fn cancelled_and_ignored_trials_give_their_permit_back() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.half_open_max_calls = 1;
            c.success_threshold = 1;
            c.cancelled_failure_after = None;
        }),
    )
    .unwrap();
    fail(&b, 5);
    advance(Duration::from_secs(60)).await;
    let p = b.try_acquire().unwrap();
    assert!(b.try_acquire().is_err());
    drop(p); // cancelled
    let p = b.try_acquire().unwrap();
    p.record(Outcome::Ignored);
    assert_eq!(b.state(), State::HalfOpen);
    b.try_acquire().unwrap().success();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_are_failures_once_they_ran_a_second() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.half_open_max_calls = 1;
            c.success_threshold = 1;
        }),
    )
    .unwrap();
    // Callers that hang up at once (a healthy upstream) are not counted …
    for _ in 0..10 {
        drop(b.try_acquire().unwrap());
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failed_calls, 0);
    // … five calls cut after a second (an upstream that hangs, cut by a
    // timeout outside) open the circuit …
    let hung: Vec<_> = (0..5).map(|_| b.try_acquire().unwrap()).collect();
    advance(Duration::from_secs(1)).await;
    drop(hung);
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.snapshot().failed_calls, 5);
    // … and a half-open trial that hangs too re-opens it.
    advance(Duration::from_secs(60)).await;
    let trial = b.try_acquire().unwrap();
    assert_eq!(b.state(), State::HalfOpen);
    advance(Duration::from_secs(1)).await;
    drop(trial);
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.times_entered(State::Open), 2);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_a_count_window() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.failure_threshold = 0;
            c.failure_rate_threshold = Some(0.5);
            c.sliding_window = SlidingWindow::Count { size: 10 };
            c.minimum_calls = 10;
        }),
    )
    .unwrap();
    // 4 failures in 10: 40 %.
    for i in 0..10 {
        let p = b.try_acquire().unwrap();
        if matches!(i, 2 | 3 | 7 | 8) {
            p.failure()
        } else {
            p.success()
        }
    }
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failure_rate, Some(0.4));
    // One more failure replaces a success: 5 in the last 10.
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_hold_the_rate_back() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.failure_threshold = 0;
            c.failure_rate_threshold = Some(0.5);
            c.minimum_calls = 5;
        }),
    )
    .unwrap();
    fail(&b, 4);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().failure_rate, None);
    fail(&b, 1);
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.failure_threshold = 0;
            c.failure_rate_threshold = Some(0.5);
            c.sliding_window = SlidingWindow::Time {
                duration: Duration::from_secs(10),
            };
            c.minimum_calls = 4;
        }),
    )
    .unwrap();
    fail(&b, 3);
    advance(Duration::from_secs(11)).await;
    // The three old failures left the window (else this would be 4 of 6).
    succeed(&b, 2);
    fail(&b, 1);
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.snapshot().window_calls, 3);
    fail(&b, 1); // 2 failures in 4 calls: 50 %
    assert_eq!(b.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_on_their_rate() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.failure_threshold = 0;
            c.slow_call_threshold = Some(Duration::from_secs(1));
            c.slow_call_rate_threshold = 0.5;
            c.minimum_calls = 4;
        }),
    )
    .unwrap();
    let mut events = b.subscribe();
    succeed(&b, 2);
    for _ in 0..2 {
        let p = b.try_acquire().unwrap();
        advance(Duration::from_secs(2)).await;
        p.success();
    }
    assert_eq!(b.state(), State::Open);
    assert_eq!(b.snapshot().slow_calls, 2);
    let change = events.recv().await.unwrap();
    assert_eq!(change.reason, Reason::SlowCallRate);
    assert_eq!((change.from, change.to), (State::Closed, State::Open));
}

#[tokio::test(start_paused = true)]
async fn open_time_grows_on_repeated_trips_and_resets_on_close() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.recovery_timeout = Duration::from_secs(10);
            c.recovery_backoff = Some(RecoveryBackoff {
                multiplier: 2.0,
                max: Duration::from_secs(35),
                jitter: 0.0,
            });
        }),
    )
    .unwrap();
    fail(&b, 5);
    let mut expected = vec![10, 20, 35, 35];
    expected.reverse();
    while let Some(secs) = expected.pop() {
        assert_eq!(
            b.try_acquire().unwrap_err().retry_after(),
            Some(Duration::from_secs(secs))
        );
        advance(Duration::from_secs(secs)).await;
        b.try_acquire().unwrap().failure(); // trial fails: open again
    }
    advance(Duration::from_secs(35)).await;
    succeed(&b, 2);
    assert_eq!(b.state(), State::Closed);
    fail(&b, 5);
    assert_eq!(
        b.try_acquire().unwrap_err().retry_after(),
        Some(Duration::from_secs(10))
    );
}

fn open_times(jitter: f64, trips: usize) -> Vec<Duration> {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.recovery_timeout = Duration::from_secs(100);
            c.recovery_backoff = Some(RecoveryBackoff {
                multiplier: 1.0,
                max: Duration::from_secs(1000),
                jitter,
            });
        }),
    )
    .unwrap();
    (0..trips)
        .map(|_| {
            b.trip(None);
            let after = b.try_acquire().unwrap_err().retry_after().unwrap();
            b.reset();
            after
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_spread_and_fills_it() {
    let times = open_times(0.2, 400);
    for after in &times {
        assert!(
            (Duration::from_secs(80)..=Duration::from_secs(120)).contains(after),
            "{after:?}"
        );
    }
    // Jitter that is really there: the waits differ, and cover the spread
    // (±20 %: 80 s to 120 s) rather than huddle around 100 s. Uniform over
    // the spread, 400 trips all above 90 s (or all below 110 s) happen with
    // a probability of 0.75^400.
    let distinct: std::collections::BTreeSet<_> = times.iter().collect();
    assert!(distinct.len() > 200, "no jitter: {distinct:?}");
    let (min, max) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(*min < Duration::from_secs(90), "never low: {min:?}");
    assert!(*max > Duration::from_secs(110), "never high: {max:?}");
    // Without jitter every trip waits the same.
    let exact = open_times(0.0, 20);
    assert!(
        exact.iter().all(|t| *t == Duration::from_secs(100)),
        "{exact:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_busy_half_open_breaker_says_when_to_come_back() {
    let b = Breaker::new(
        "t",
        cfg(|c| {
            c.half_open_max_calls = 1;
            c.success_threshold = 1;
        }),
    )
    .unwrap();
    fail(&b, 5);
    advance(Duration::from_secs(60)).await;
    let trial = b.try_acquire().unwrap();
    let busy = b.try_acquire().unwrap_err();
    assert_eq!(busy.retry_after(), Some(Duration::from_secs(1)));
    trial.success();
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn idle_half_open_goes_back_as_configured() {
    for (target, expected) in [
        (IdleTarget::Open, State::Open),
        (IdleTarget::Closed, State::Closed),
    ] {
        let b = Breaker::new(
            "t",
            cfg(|c| {
                c.half_open_idle_timeout = Some(Duration::from_secs(30));
                c.half_open_idle_state = target;
            }),
        )
        .unwrap();
        fail(&b, 5);
        advance(Duration::from_secs(60)).await;
        b.try_acquire().unwrap().success();
        assert_eq!(b.state(), State::HalfOpen);
        advance(Duration::from_secs(29)).await;
        assert_eq!(b.state(), State::HalfOpen);
        advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(), expected);
    }
}

#[tokio::test(start_paused = true)]
async fn manual_states() {
    let b = Breaker::new("t", cfg(|_| {})).unwrap();
    b.force_open();
    advance(Duration::from_secs(3600)).await;
    let open = b.try_acquire().unwrap_err();
    assert!(open.is_forced());
    // Every rejection says when to come back: forced open, a recovery
    // period.
    assert_eq!(open.retry_after(), Some(Duration::from_secs(60)));
    let core = palisade_core::Error::from(open);
    assert_eq!(core.retry_after(), Some(Duration::from_secs(60)));

    b.disable();
    fail(&b, 100);
    assert_eq!(b.state(), State::Disabled);

    b.metrics_only();
    fail(&b, 100);
    assert_eq!(b.state(), State::MetricsOnly);
    assert_eq!(b.snapshot().consecutive_failures, 100);

    b.reset();
    assert_eq!(b.state(), State::Closed);
    fail(&b, 5);
    assert_eq!(b.state(), State::Open);

    let forced = Breaker::new("f", cfg(|c| c.initial_mode = InitialMode::ForcedOpen)).unwrap();
    assert!(forced.try_acquire().is_err());
}

#[tokio::test(start_paused = true)]
async fn registry_snapshots_controls_and_events() {
    let registry = BreakerRegistry::new();
    let mut events = registry.subscribe();
    let layer = CircuitBreakerLayer::builder("inventory")
        .failure_threshold(2)
        .registry(&registry)
        .build()
        .unwrap();
    assert!(
        CircuitBreakerLayer::builder("inventory")
            .registry(&registry)
            .build()
            .is_err(),
        "duplicate names are refused"
    );
    let b = layer.breaker().unwrap();
    fail(&b, 2);
    let snap = &registry.snapshot("inventory")[0];
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.failed_calls, 2);
    assert_eq!(snap.retry_after, Some(Duration::from_secs(60)));
    let e = events.recv().await.unwrap();
    assert_eq!(
        (&*e.breaker, e.to, e.reason),
        ("inventory", State::Open, Reason::ConsecutiveFailures)
    );

    assert!(registry.reset("inventory"));
    assert_eq!(b.state(), State::Closed);
    assert!(registry.disable("inventory"));
    assert_eq!(b.state(), State::Disabled);
    assert!(registry.force_open("inventory"));
    assert_eq!(b.state(), State::ForcedOpen);
    assert!(!registry.reset("nope"));
    assert_eq!(registry.snapshots().len(), 1);
}

#[test]
fn from_config_rejects_bad_config_by_field() {
    let mut c = Config::default();
    c.success_threshold = 9;
    let err = CircuitBreakerLayer::from_config("x", &c).unwrap_err();
    assert!(err.to_string().contains("success_threshold"), "{err}");
}
