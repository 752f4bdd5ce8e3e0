//! The layer as services see it: flavours, per-key, fallback, tiers,
//! metrics, concurrency.

use palisade_breaker::{
    Breaker, BreakerRegistry, CircuitBreakerLayer, Config, State, TierFailure, TieredFallback,
};
use palisade_core::key::key_fn;
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt, service_fn};

type Io = std::io::Error;

async fn flaky(req: Result<u32, u32>) -> Result<u32, Io> {
    req.map_err(|e| Io::other(format!("boom {e}")))
}

#[tokio::test(start_paused = true)]
async fn generic_flavour_returns_typed_errors() {
    let layer = CircuitBreakerLayer::builder("g")
        .failure_threshold(2)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(flaky));
    for _ in 0..2 {
        let err = svc.clone().oneshot(Err(1)).await.unwrap_err();
        assert!(!err.is_open());
        assert_eq!(err.into_inner().unwrap().to_string(), "boom 1");
    }
    let err = svc.clone().oneshot(Ok(1)).await.unwrap_err();
    let open = err.as_open().unwrap();
    assert_eq!(open.breaker(), "g");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(60)));
    let core = palisade_core::Error::from(err);
    assert_eq!(core.http_status(), 503);
}

#[tokio::test(start_paused = true)]
async fn fallback_answers_an_open_circuit() {
    let layer = CircuitBreakerLayer::builder("fb")
        .fallback(service_fn(|_req: Result<u32, u32>| async {
            Ok::<_, Io>(999)
        }))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(flaky));
    assert_eq!(svc.clone().oneshot(Ok(1)).await.unwrap(), 1);
    layer.breaker().unwrap().force_open();
    assert_eq!(svc.clone().oneshot(Ok(1)).await.unwrap(), 999);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_trial_permit_back_when_configured() {
    let layer = CircuitBreakerLayer::builder("drop")
        .half_open(1, 1)
        .cancelled_failure_after(None)
        .build()
        .unwrap();
    let breaker = layer.breaker().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let mut svc = layer.layer(service_fn(move |_: ()| {
        let g = g.clone();
        async move {
            let _p = g.acquire().await.unwrap();
            Ok::<_, Io>(())
        }
    }));
    breaker.trip(Some(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_secs(1)).await;
    let pending = svc.ready().await.unwrap().call(());
    // The only trial permit is taken …
    assert!(
        svc.ready()
            .await
            .unwrap()
            .call(())
            .await
            .unwrap_err()
            .is_open()
    );
    // … and given back when the caller gives up.
    drop(pending);
    gate.add_permits(1);
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_permitted_trials_pass_among_1000_concurrent_calls() {
    let layer = CircuitBreakerLayer::builder("herd")
        .half_open(3, 2)
        .break_duration_fn(|_| Duration::from_nanos(1))
        .build()
        .unwrap();
    let breaker = layer.breaker().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let (g, e) = (gate.clone(), entered.clone());
    let svc = layer.layer(service_fn(move |_: ()| {
        let (g, e) = (g.clone(), e.clone());
        async move {
            e.fetch_add(1, Ordering::SeqCst);
            let _p = g.acquire().await.unwrap();
            Ok::<_, Io>(())
        }
    }));
    breaker.trip(None);
    let calls: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    // Wait until every call was either admitted or rejected.
    palisade_testkit::yield_until("every call admitted or rejected", || {
        entered.load(Ordering::SeqCst) + breaker.snapshot().rejected_calls as usize == 1000
    })
    .await;
    assert_eq!(entered.load(Ordering::SeqCst), 3);
    gate.add_permits(1000);
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(()) => ok += 1,
            Err(e) => assert!(e.is_open()),
        }
    }
    assert_eq!(ok, 3);
    assert_eq!(breaker.snapshot().rejected_calls, 997);
    assert_eq!(breaker.state(), State::Closed);
}

fn tool_request(tool: Option<&str>) -> http::Request<()> {
    let mut b = http::Request::builder().uri("/call");
    if let Some(t) = tool {
        b = b.header("x-tool", t);
    }
    b.body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn per_key_breakers_are_isolated_bounded_and_listed() {
    let registry = BreakerRegistry::new();
    let layer = CircuitBreakerLayer::builder("tools")
        .http()
        .failure_threshold(3)
        .per_key(key_fn(|r: &http::Request<()>| {
            r.headers()
                .get("x-tool")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }))
        .registry(&registry)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|r: http::Request<()>| async move {
        let status = if r.headers().contains_key("x-fail") {
            500
        } else {
            200
        };
        Ok::<_, Io>(http::Response::builder().status(status).body(()).unwrap())
    }));
    for _ in 0..3 {
        let mut req = tool_request(Some("search"));
        req.headers_mut().insert("x-fail", "1".parse().unwrap());
        assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), 500);
    }
    let status = |tool| {
        let svc = svc.clone();
        async move { svc.oneshot(tool_request(tool)).await.unwrap().status() }
    };
    assert_eq!(status(Some("search")).await, 503);
    assert_eq!(status(Some("weather")).await, 200);
    assert_eq!(status(None).await, 200);

    let snaps = registry.snapshot("tools");
    let search = snaps
        .iter()
        .find(|s| s.key.as_deref() == Some("search"))
        .unwrap();
    assert_eq!(search.state, State::Open);
    let weather = snaps
        .iter()
        .find(|s| s.key.as_deref() == Some("weather"))
        .unwrap();
    assert_eq!(weather.state, State::Closed);
    assert!(snaps.iter().any(|s| s.key.is_none()));

    // Resetting by name resets every key.
    registry.reset("tools");
    assert_eq!(status(Some("search")).await, 200);
}

#[tokio::test]
async fn per_key_breakers_are_bounded() {
    let layer = CircuitBreakerLayer::builder("bounded")
        .key_limits(4, Duration::from_secs(600))
        .per_key(key_fn(|n: &u32| Some(*n)))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Io>(n) }));
    for n in 0..100 {
        svc.clone().oneshot(n).await.unwrap();
    }
    let keyed = layer.breakers();
    // The key-less breaker plus at most 4 keyed ones.
    let live = keyed.breakers().len();
    assert!(live <= 1 + 4, "{live} breakers kept for a bound of 4");
    assert!(live >= 2, "recent keys are kept");
}

#[tokio::test(start_paused = true)]
async fn tiers_skip_open_circuits_and_name_every_failure() {
    let primary = Breaker::new("primary", Config::default()).unwrap();
    let secondary = Breaker::new("secondary", Config::default()).unwrap();
    let tertiary = Breaker::new("tertiary", Config::default()).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let tiers = TieredFallback::new()
        .tier(
            primary.clone(),
            service_fn(|_: u32| async { Err::<u32, _>(Io::other("refused")) }),
        )
        .tier(
            secondary.clone(),
            service_fn(move |x: u32| {
                h.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Io>(x * 2) }
            }),
        )
        .tier(
            tertiary.clone(),
            service_fn(|_: u32| async { Err::<u32, _>(Io::other("timeout")) }),
        );

    assert_eq!(tiers.clone().oneshot(21).await.unwrap(), 42);
    assert_eq!(primary.snapshot().failed_calls, 1);

    secondary.force_open();
    let err = tiers.clone().oneshot(1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "all tiers failed: primary: refused; secondary: circuit open; tertiary: timeout"
    );
    assert!(matches!(err.failures()[1], TierFailure::Open { .. }));
    assert_eq!(hits.load(Ordering::SeqCst), 1, "an open tier is not called");
    let core = palisade_core::Error::from(err);
    assert_eq!(core.http_status(), 503);
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_closes_an_open_breaker_early() {
    let b = Breaker::new("probed", Config::default()).unwrap();
    let healthy = Arc::new(AtomicUsize::new(0));
    let h = healthy.clone();
    let _probe = b.spawn_probe(Duration::from_secs(5), move || {
        let ok = h.load(Ordering::SeqCst) > 0;
        async move { if ok { Ok(()) } else { Err(()) } }
    });
    b.trip(None);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(b.state(), State::Open, "failed probes keep it open");
    healthy.store(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_calls_states_and_transitions() {
    let registry = BreakerRegistry::new();
    let layer = CircuitBreakerLayer::builder("m")
        .failure_threshold(2)
        .registry(&registry)
        .build()
        .unwrap();
    let prom = prometheus::Registry::new();
    registry.register_metrics(&prom).unwrap();
    let svc = layer.layer(service_fn(flaky));
    svc.clone().oneshot(Ok(1)).await.unwrap();
    for _ in 0..3 {
        let _ = svc.clone().oneshot(Err(1)).await;
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prom.gather())
        .unwrap();
    for line in [
        r#"palisade_breaker_calls_total{breaker="m",outcome="success"} 1"#,
        r#"palisade_breaker_calls_total{breaker="m",outcome="failure"} 2"#,
        r#"palisade_breaker_calls_total{breaker="m",outcome="rejected"} 1"#,
        r#"palisade_breaker_state{breaker="m",state="open"} 1"#,
        r#"palisade_breaker_state{breaker="m",state="closed"} 0"#,
        r#"palisade_breaker_transitions_total{breaker="m",to="open"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[test]
fn services_are_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>(_: &T) {}
    let layer = CircuitBreakerLayer::http("x");
    let svc = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, Io>(http::Response::new(()))
    }));
    check(&layer);
    check(&svc);
}

/// A call dropped while its request body was still arriving (the client
/// trickled it, then gave up) is the client's doing: not a failure, however
/// long it ran. Once the body has been sent, a dropped call that ran past
/// `cancelled_failure_after` is (an upstream that hangs).
#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_its_request_body_ended_is_not_a_failure() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use palisade_core::body::sent::track;
    let layer = CircuitBreakerLayer::builder("sent")
        .http()
        .failure_threshold(1)
        .cancelled_failure_after(Some(Duration::from_secs(1)))
        .build()
        .unwrap();
    let breaker = layer.breaker().unwrap();
    // An upstream that never answers.
    let svc = layer.layer(service_fn(|_req: http::Request<_>| async {
        std::future::pending::<Result<http::Response<http_body_util::Empty<Bytes>>, Io>>().await
    }));
    // A body that never ends.
    let never = http_body_util::StreamBody::new(futures_util::stream::pending::<
        Result<http_body::Frame<Bytes>, Io>,
    >());
    let call = svc
        .clone()
        .oneshot(track(http::Request::new(never.boxed_unsync())));
    let dropped = tokio::time::timeout(Duration::from_secs(5), call).await;
    assert!(dropped.is_err(), "the call hangs");
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the client never sent its body"
    );
    // A request whose body was sent (a GET), dropped after 5 s: a failure.
    let empty = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {});
    let sent = track(http::Request::new(empty.boxed_unsync()));
    let call = svc.clone().oneshot(sent);
    let dropped = tokio::time::timeout(Duration::from_secs(5), call).await;
    assert!(dropped.is_err(), "the call hangs");
    assert_eq!(
        breaker.state(),
        State::Open,
        "a hang after the request was sent"
    );
}
