//! Injected faults under the breaker, retry and timeout from the facade's
//! `StackBuilder`: each reacts to them as to the upstream's own failures.
#![cfg(all(feature = "fault", feature = "breaker", feature = "retry"))]

use http::{Request, Response};
use palisade::StackBuilder;
use palisade::breaker::CircuitBreakerLayer;
use palisade::core::ErrorKind;
use palisade::fault::{Fault, FaultLayer, FaultMetrics, Rule};
use palisade::retry::{ReplayBody, RetryLayer, timeout::TimeoutLayer};
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};
use tower::ServiceExt;

fn injected(registry: &prometheus::Registry, kind: &str) -> u64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == "palisade_fault_injected_total")
        .and_then(|f| {
            f.get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == kind))
                .map(|m| m.get_counter().get_value() as u64)
        })
        .unwrap_or(0)
}

fn faults(fault: Fault, seed: u64) -> (FaultLayer, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = FaultMetrics::register(&registry).unwrap();
    let layer = FaultLayer::builder()
        .seed(seed)
        .metrics(&metrics, "test")
        .rule(Rule::all().fault(fault))
        .build()
        .unwrap();
    (layer, registry)
}

#[tokio::test(start_paused = true)]
async fn retry_retries_injected_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let calls = calls.clone();
        move |_req: Request<ReplayBody<String>>| {
            calls.fetch_add(1, SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("real"))) }
        }
    };
    // Every attempt fails: three attempts, then the last 503.
    let (layer, registry) = faults(Fault::new().error(503, 100.0), 1);
    let svc = StackBuilder::new()
        .retry(RetryLayer::builder().max_attempts(3).build().unwrap())
        .fault(layer)
        .service_fn(upstream.clone());
    let res = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        injected(&registry, "error"),
        3,
        "each attempt met the fault"
    );
    assert_eq!(calls.load(SeqCst), 0);

    // Half the attempts fail: retries hide most of it, as with a flaky
    // upstream (all three fail for 1 call in 8).
    let (layer, registry) = faults(Fault::new().error(503, 50.0), 2);
    let svc = StackBuilder::new()
        .retry(
            RetryLayer::builder()
                .max_attempts(3)
                .no_budget()
                .build()
                .unwrap(),
        )
        .fault(layer)
        .service_fn(upstream);
    let mut ok = 0;
    for _ in 0..200 {
        if svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap()
            .status()
            == 200
        {
            ok += 1;
        }
    }
    assert!(ok > 150, "{ok} of 200 succeeded");
    assert_eq!(calls.load(SeqCst), ok, "one real call per success");
    assert!(injected(&registry, "error") >= 200 - ok as u64);
}

#[tokio::test]
async fn the_breaker_opens_on_injected_errors() {
    let (layer, registry) = faults(Fault::new().error(500, 100.0), 3);
    let breaker = CircuitBreakerLayer::builder("faulty")
        .failure_threshold(5)
        .http()
        .build()
        .unwrap();
    let svc = StackBuilder::new()
        .circuit_breaker(breaker)
        .fault(layer)
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::from("real")))
        });
    for _ in 0..5 {
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 500);
    }
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.extensions().get::<ErrorKind>(),
        Some(&ErrorKind::CircuitOpen)
    );
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        injected(&registry, "error"),
        5,
        "the open circuit calls nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn the_timeout_cuts_injected_latency() {
    let (layer, registry) = faults(Fault::new().delay(Duration::from_secs(10), 100.0), 4);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let svc = StackBuilder::new()
        .timeout(TimeoutLayer::new(Duration::from_secs(1)))
        .fault(layer)
        .service_fn(move |_req: Request<()>| {
            c.fetch_add(1, SeqCst);
            async { Ok::<_, Infallible>(Response::new(String::from("real"))) }
        });
    let start = tokio::time::Instant::now();
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(injected(&registry, "delay"), 1);
    assert_eq!(calls.load(SeqCst), 0, "cut before the delay ended");
}
