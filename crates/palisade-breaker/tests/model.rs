//! Property: random outcome sequences drive the breaker and a simple
//! reference model to the same admissions and states.

use palisade_breaker::{Breaker, Config, SlidingWindow, State};
use palisade_core::classify::Outcome;
use proptest::prelude::*;
use std::{collections::VecDeque, time::Duration};

const CONSECUTIVE: u32 = 3;
const WINDOW: usize = 6;
const MIN_CALLS: usize = 4;
const RECOVERY: u64 = 10;
const TRIALS: u32 = 3;
const SUCCESSES: u32 = 2;

#[derive(Clone, Copy, Debug)]
enum Op {
    Call(Outcome),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Call(Outcome::Success)),
        4 => Just(Op::Call(Outcome::Failure)),
        1 => Just(Op::Call(Outcome::Ignored)),
        2 => (0u64..15).prop_map(Op::Advance),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum M {
    Closed,
    Open { until: u64 },
    Half { permits: u32, successes: u32 },
}

struct Model {
    state: M,
    consecutive: u32,
    window: VecDeque<bool>,
    now: u64,
}

impl Model {
    fn trip(&mut self) {
        self.state = M::Open {
            until: self.now + RECOVERY,
        };
    }

    fn refresh(&mut self) {
        if let M::Open { until } = self.state
            && self.now >= until
        {
            self.state = M::Half {
                permits: TRIALS,
                successes: 0,
            };
        }
    }

    /// Whether the call is admitted.
    fn call(&mut self, outcome: Outcome) -> bool {
        self.refresh();
        match self.state {
            M::Open { .. } => false,
            M::Closed => {
                match outcome {
                    Outcome::Ignored => {}
                    Outcome::Success => {
                        self.consecutive = 0;
                        self.push(false);
                    }
                    Outcome::Failure => {
                        self.consecutive += 1;
                        if self.consecutive >= CONSECUTIVE {
                            self.trip();
                        } else {
                            self.push(true);
                            let fails = self.window.iter().filter(|f| **f).count();
                            if self.window.len() >= MIN_CALLS && fails * 2 >= self.window.len() {
                                self.trip();
                            }
                        }
                    }
                }
                true
            }
            M::Half { permits, successes } => {
                if permits == 0 {
                    return false;
                }
                match outcome {
                    Outcome::Ignored => {}
                    Outcome::Failure => self.trip(),
                    Outcome::Success if successes + 1 >= SUCCESSES => {
                        self.state = M::Closed;
                        self.consecutive = 0;
                        self.window.clear();
                    }
                    Outcome::Success => {
                        self.state = M::Half {
                            permits: permits - 1,
                            successes: successes + 1,
                        }
                    }
                }
                true
            }
        }
    }

    fn push(&mut self, failure: bool) {
        self.window.push_back(failure);
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
    }

    fn state(&mut self) -> State {
        self.refresh();
        match self.state {
            M::Closed => State::Closed,
            M::Open { .. } => State::Open,
            M::Half { .. } => State::HalfOpen,
        }
    }
}

fn config() -> Config {
    let mut c = Config::default();
    c.failure_threshold = CONSECUTIVE;
    c.failure_rate_threshold = Some(0.5);
    c.sliding_window = SlidingWindow::Count {
        size: WINDOW as u32,
    };
    c.minimum_calls = MIN_CALLS as u32;
    c.recovery_timeout = Duration::from_secs(RECOVERY);
    c.half_open_max_calls = TRIALS;
    c.success_threshold = SUCCESSES;
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn breaker_matches_the_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let breaker = Breaker::new("model", config()).unwrap();
            let mut model = Model {
                state: M::Closed,
                consecutive: 0,
                window: VecDeque::new(),
                now: 0,
            };
            let (mut admitted, mut rejected) = (0u64, 0u64);
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    Op::Advance(secs) => {
                        tokio::time::advance(Duration::from_secs(secs)).await;
                        model.now += secs;
                    }
                    Op::Call(outcome) => {
                        let expected = model.call(outcome);
                        match breaker.try_acquire() {
                            Ok(permit) => {
                                prop_assert!(expected, "step {i}: admitted, model rejects");
                                permit.record(outcome);
                                admitted += 1;
                            }
                            Err(_) => {
                                prop_assert!(!expected, "step {i}: rejected, model admits");
                                rejected += 1;
                            }
                        }
                    }
                }
                prop_assert_eq!(breaker.state(), model.state(), "step {}", i);
            }
            let snap = breaker.snapshot();
            prop_assert_eq!(snap.total_calls, admitted);
            prop_assert_eq!(snap.rejected_calls, rejected);
            Ok(())
        })?;
    }
}
