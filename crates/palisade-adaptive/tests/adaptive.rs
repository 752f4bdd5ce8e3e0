//! The adaptive limit against a simulated upstream whose capacity changes
//! (paused clock), refusals, the queue, body measurement and metrics.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use palisade_adaptive::{AdaptiveError, AdaptiveLayer, AdaptiveMetrics, Algorithm, Measure};
use palisade_core::ErrorKind;
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};

/// An upstream that serves `capacity` calls at once. Past it, it either
/// refuses (503 at once, `refuse`) or slows down (latency grows with the
/// queue, as a saturated server's does).
#[derive(Clone)]
struct Upstream {
    capacity: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    refuse: bool,
}

impl Upstream {
    fn new(capacity: usize, refuse: bool) -> Self {
        Self {
            capacity: Arc::new(AtomicUsize::new(capacity)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            refuse,
        }
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let me = self.clone();
        tower::service_fn(move |_req: Request<()>| {
            let me = me.clone();
            async move {
                let n = me.in_flight.fetch_add(1, SeqCst) + 1;
                let cap = me.capacity.load(SeqCst);
                let res = if n > cap && me.refuse {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    Response::builder()
                        .status(503)
                        .body(Full::default())
                        .unwrap()
                } else {
                    let load = (n as f64 / cap as f64).max(1.0);
                    tokio::time::sleep(Duration::from_secs_f64(0.010 * load)).await;
                    Response::new(Full::new(Bytes::from("ok")))
                };
                me.in_flight.fetch_sub(1, SeqCst);
                Ok(res)
            }
        })
    }
}

/// Runs `workers` callers in a loop until `stop`; a caller refused by the
/// layer waits 10 ms before its next call.
fn load<S>(svc: S, workers: usize, stop: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>>
where
    S: Service<
            Request<()>,
            Response = Response<palisade_core::PalisadeBody<Full<Bytes>>>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    (0..workers)
        .map(|_| {
            let (svc, stop) = (svc.clone(), stop.clone());
            tokio::spawn(async move {
                while !*stop.borrow() {
                    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
                    if res.extensions().get::<ErrorKind>() == Some(&ErrorKind::Overloaded) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect()
}

/// Runs phases of (capacity, duration) and returns the limit at the end of
/// each, and the lowest and highest limit seen over each phase's second half.
async fn follow(
    algorithm: Algorithm,
    refuse: bool,
    phases: &[(usize, u64)],
) -> Vec<(usize, usize, usize)> {
    let upstream = Upstream::new(phases[0].0, refuse);
    let layer = AdaptiveLayer::builder()
        .algorithm(algorithm)
        .limits(2, 20, 200)
        .build()
        .unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let workers = load(layer.layer(upstream.service()), 150, stop);
    let mut out = Vec::new();
    for &(capacity, secs) in phases {
        upstream.capacity.store(capacity, SeqCst);
        tokio::time::sleep(Duration::from_secs(secs) / 2).await;
        let (mut lo, mut hi) = (usize::MAX, 0);
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_secs(secs) / 100).await;
            lo = lo.min(layer.limit());
            hi = hi.max(layer.limit());
        }
        out.push((layer.limit(), lo, hi));
    }
    stop_tx.send_replace(true);
    for w in workers {
        w.await.unwrap();
    }
    out
}

#[tokio::test(start_paused = true)]
async fn aimd_follows_a_refusing_upstream_up_and_down() {
    let phases = [(40, 10), (10, 10), (80, 20)];
    let seen = follow(Algorithm::aimd(), true, &phases).await;
    eprintln!("aimd: {seen:?}");
    for (&(capacity, _), &(_, lo, hi)) in phases.iter().zip(&seen) {
        // Stated bound: over a phase's second half the limit stays within
        // half and one and a half times the upstream's capacity.
        assert!(
            lo * 2 >= capacity && hi * 2 <= capacity * 3,
            "capacity {capacity}: {lo}..{hi}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn gradient_follows_a_slowing_upstream_up_and_down() {
    let phases = [(40, 10), (10, 10), (80, 20)];
    let seen = follow(Algorithm::gradient(), false, &phases).await;
    eprintln!("gradient: {seen:?}");
    for (&(capacity, _), &(_, lo, hi)) in phases.iter().zip(&seen) {
        // Stated bound: the gradient settles where latency is `tolerance`
        // (1.5) times the no-load latency plus a queue of √limit calls, so
        // over a phase's second half the limit stays between the capacity
        // and 1.5 · capacity + 2 · √(2 · capacity).
        let top = 1.5 * capacity as f64 + 2.0 * (2.0 * capacity as f64).sqrt();
        assert!(
            lo >= capacity && hi as f64 <= top,
            "capacity {capacity}: {lo}..{hi}"
        );
    }
}

/// A service that holds each call until `open` turns true, counting entries.
fn gated(
    open: watch::Receiver<bool>,
    entered: Arc<AtomicUsize>,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: Request<()>| {
        entered.fetch_add(1, SeqCst);
        let mut open = open.clone();
        async move {
            let _ = open.wait_for(|o| *o).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn past_the_limit_calls_are_refused_or_queued_with_a_deadline() {
    let registry = prometheus::Registry::new();
    let metrics = AdaptiveMetrics::register(&registry).unwrap();
    let layer = AdaptiveLayer::builder()
        .limits(1, 1, 1)
        .queue(1, Duration::from_secs(2))
        .metrics(&metrics, "test")
        .build()
        .unwrap();
    let (gate, open) = watch::channel(false);
    let entered = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(gated(open, entered.clone()));
    let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
    while entered.load(SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    let queued = tokio::spawn(svc.clone().oneshot(Request::new(())));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(gauge(&registry, "palisade_adaptive_queued"), 1.0);
    assert_eq!(gauge(&registry, "palisade_adaptive_in_flight"), 1.0);
    // The queue (of one) is full: refused at once, 503 + Retry-After.
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    let grpc = Request::builder()
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let res = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "8", "RESOURCE_EXHAUSTED");
    // The first call ends: the queued one gets its slot.
    gate.send_replace(true);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(queued.await.unwrap().unwrap().status(), 200);
    assert_eq!(entered.load(SeqCst), 2);

    // A queued call whose deadline passes is refused.
    let (gate, open) = watch::channel(false);
    let svc = layer.layer(gated(open, entered.clone()));
    let holder = tokio::spawn(svc.clone().oneshot(Request::new(())));
    while entered.load(SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    let start = tokio::time::Instant::now();
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    gate.send_replace(true);
    holder.await.unwrap().unwrap();
    assert_eq!(counter(&registry, "palisade_adaptive_refused_total"), 3.0);
    assert_eq!(gauge(&registry, "palisade_adaptive_queued"), 0.0);
    assert_eq!(gauge(&registry, "palisade_adaptive_in_flight"), 0.0);
}

fn gauge(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.get_metric()[0].get_gauge().get_value())
        .unwrap()
}

fn counter(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.get_metric()[0].get_counter().get_value())
        .unwrap()
}

#[tokio::test]
async fn body_measurement_holds_the_slot_until_the_body_ends() {
    let inner = tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("streamed answer"))))
    });
    for (measure, refused_while_reading) in [(Measure::Body, true), (Measure::Head, false)] {
        let layer = AdaptiveLayer::builder()
            .limits(1, 1, 1)
            .measure(measure)
            .build()
            .unwrap();
        let svc = layer.layer(inner);
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 200);
        let second = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(second.status() == 503, refused_while_reading, "{measure:?}");
        drop(second);
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes(),
            "streamed answer"
        );
        assert_eq!(layer.in_flight(), 0);
        let third = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(third.status(), 200, "{measure:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn generic_errors_shrink_the_limit_and_keys_learn_apart() {
    use palisade_core::key::key_fn;
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let layer = AdaptiveLayer::builder()
        .limits(1, 20, 100)
        .key(key_fn(|(upstream, _): &(&'static str, u32)| {
            Some(*upstream)
        }))
        .build()
        .unwrap();
    let svc = layer.clone().for_services().layer(tower::service_fn(
        move |(upstream, n): (&'static str, u32)| {
            let fail = upstream == "bad" && f.load(SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if fail {
                    Err(std::io::Error::other("overloaded"))
                } else {
                    Ok(n)
                }
            }
        },
    ));
    for i in 0..30 {
        let err = svc.clone().oneshot(("bad", i)).await.unwrap_err();
        assert!(matches!(err, AdaptiveError::Inner(_)));
        tokio::time::sleep(Duration::from_millis(1)).await;
        svc.clone().oneshot(("good", i)).await.unwrap();
    }
    // Each failure is its own congestion (calls one at a time): 20 · 0.9^30.
    assert_eq!(layer.limit_of(&"bad"), 1, "at its floor");
    assert_eq!(
        layer.limit_of(&"good"),
        20,
        "an idle limit is not grown, nor cut"
    );
    // With the limit at its floor, a second concurrent call is refused.
    failing.store(false, SeqCst);
    let a = tokio::spawn(svc.clone().oneshot(("bad", 1)));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(("bad", 2)).await.unwrap_err();
    assert!(
        matches!(err, AdaptiveError::Refused { limit: 1 }),
        "{err:?}"
    );
    a.await.unwrap().unwrap();
}

#[test]
fn bad_settings_are_errors_naming_the_field() {
    use palisade_adaptive::AdaptiveConfig;
    let mut cfg = AdaptiveConfig::default();
    cfg.max_limit = 5;
    assert_eq!(cfg.validate().unwrap_err().field, "max_limit");
    let mut cfg = AdaptiveConfig::default();
    cfg.backoff_ratio = 1.5;
    assert_eq!(cfg.validate().unwrap_err().field, "backoff_ratio");
    let mut cfg: AdaptiveConfig = serde_json::from_str(r#"{"algorithm": "gradient"}"#).unwrap();
    cfg.tolerance = 0.5;
    assert_eq!(cfg.validate().unwrap_err().field, "tolerance");
    assert!(serde_json::from_str::<AdaptiveConfig>(r#"{"algorithm": "vegas"}"#).is_err());
}
