//! Fault injection: percentages over many calls (seeded), latency on a
//! paused clock, error answers (HTTP and gRPC), aborts, and the rule that
//! an untrusted request can never turn a fault on.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use palisade_core::{GrpcCode, key::PeerAddr};
use palisade_fault::{Fault, FaultConfig, FaultError, FaultLayer, FaultMetrics, Rule, RuleConfig};
use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tower::{Layer, ServiceExt};

/// An upstream that counts its calls and asserts no fault header reaches it.
fn upstream(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |req: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        assert!(
            req.headers().get("x-palisade-fault").is_none(),
            "header stripped"
        );
        assert!(
            req.headers().get("x-palisade-fault-token").is_none(),
            "token stripped"
        );
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("real")))) }
    })
}

fn req(path: &str) -> Request<()> {
    Request::builder().uri(path).body(()).unwrap()
}

fn counter(registry: &prometheus::Registry, kind: &str) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == "palisade_fault_injected_total")
        .and_then(|f| {
            f.get_metric()
                .iter()
                .find(|m| m.get_label().iter().any(|l| l.value() == kind))
                .map(|m| m.get_counter().get_value())
        })
        .unwrap_or(0.0)
}

#[tokio::test(start_paused = true)]
async fn percentages_hold_over_many_calls() {
    const N: usize = 20_000;
    let registry = prometheus::Registry::new();
    let metrics = FaultMetrics::register(&registry).unwrap();
    let layer = FaultLayer::builder()
        .seed(42)
        .metrics(&metrics, "test")
        .rule(
            Rule::all().fault(
                Fault::new()
                    .delay(Duration::from_millis(1), 10.0)
                    .error(503, 30.0)
                    .abort(5.0),
            ),
        )
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(upstream(calls.clone()));
    let (mut errors, mut aborts, mut ok) = (0usize, 0usize, 0usize);
    for _ in 0..N {
        let res = svc.clone().oneshot(req("/")).await.unwrap();
        match res.status().as_u16() {
            503 => errors += 1,
            502 => aborts += 1,
            200 => ok += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    // Binomial: 3 standard deviations are about 1 % of N at these rates.
    let within = |got: usize, percent: f64| {
        let want = N as f64 * percent / 100.0;
        (got as f64 - want).abs() < N as f64 * 0.01
    };
    assert!(within(aborts, 5.0), "aborts {aborts}");
    // An error is drawn only when no abort was: 30 % of the other 95 %.
    assert!(within(errors, 30.0 * 0.95), "errors {errors}");
    assert_eq!(
        ok,
        calls.load(Ordering::SeqCst),
        "only real calls reach the upstream"
    );
    let delays = counter(&registry, "delay") as usize;
    assert!(within(delays, 10.0), "delays {delays}");
    assert_eq!(counter(&registry, "error") as usize, errors);
    assert_eq!(counter(&registry, "abort") as usize, aborts);

    // The same seed gives the same sequence.
    let again = |seed| {
        let layer = FaultLayer::builder()
            .seed(seed)
            .rule(Rule::all().fault(Fault::new().error(500, 50.0)))
            .build()
            .unwrap();
        let svc = layer.layer(upstream(Arc::new(AtomicUsize::new(0))));
        async move {
            let mut seq = Vec::new();
            for _ in 0..64 {
                seq.push(
                    svc.clone()
                        .oneshot(req("/"))
                        .await
                        .unwrap()
                        .status()
                        .as_u16(),
                );
            }
            seq
        }
    };
    assert_eq!(again(7).await, again(7).await);
    assert_ne!(again(7).await, again(8).await);
}

#[tokio::test(start_paused = true)]
async fn latency_is_added_on_the_clock() {
    let layer = FaultLayer::builder()
        .rule(Rule::path_prefix("/slow").fault(Fault::new().delay(Duration::from_secs(5), 100.0)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(upstream(calls.clone()));
    let start = tokio::time::Instant::now();
    let slow = tokio::spawn(svc.clone().oneshot(req("/slow/a")));
    tokio::time::sleep(Duration::from_millis(4_999)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "not called during the delay"
    );
    assert!(!slow.is_finished());
    let res = slow.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "real");
    // Another route is not delayed.
    let start = tokio::time::Instant::now();
    svc.oneshot(req("/fast")).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn error_answers_speak_http_and_grpc() {
    let layer = FaultLayer::builder()
        .rule(Rule::path_prefix("/a").fault(Fault::new().error(429, 100.0)))
        .rule(
            Rule::path_prefix("/b").fault(
                Fault::new()
                    .error(503, 100.0)
                    .grpc_code(GrpcCode::ResourceExhausted),
            ),
        )
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(upstream(calls.clone()));
    let res = svc.clone().oneshot(req("/a")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("\"status\":429")
    );

    let grpc = |path: &str| {
        Request::builder()
            .uri(path)
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    let res = svc.clone().oneshot(grpc("/a")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["grpc-status"],
        "8",
        "429 is RESOURCE_EXHAUSTED"
    );
    let res = svc.clone().oneshot(grpc("/b")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "8", "the configured code");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_abort_fails_the_body_and_generic_calls() {
    let layer = FaultLayer::builder()
        .rule(Rule::all().fault(Fault::new().abort(100.0)))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let res = layer
        .clone()
        .layer(upstream(calls.clone()))
        .oneshot(req("/"))
        .await
        .unwrap();
    assert_eq!(res.status(), 502);
    let err = res.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("aborted"), "{err}");

    let svc = layer
        .for_services()
        .layer(tower::service_fn(|n: u32| async move {
            Ok::<_, std::io::Error>(n)
        }));
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(matches!(err, FaultError::Aborted));
    assert!(err.is_injected());
    let err: palisade_core::Error = err.into();
    assert_eq!(err.http_status(), 502);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rules_by_key_for_generic_services() {
    use palisade_core::key::key_fn;
    let layer = FaultLayer::builder()
        .key(key_fn(|(tenant, _): &(&'static str, u32)| Some(*tenant)))
        .rule(
            Rule::all()
                .key("canary")
                .fault(Fault::new().error(503, 100.0)),
        )
        .build()
        .unwrap();
    let svc = layer.for_services().layer(tower::service_fn(
        |(_, n): (&'static str, u32)| async move { Ok::<_, std::io::Error>(n) },
    ));
    assert_eq!(svc.clone().oneshot(("stable", 1)).await.unwrap(), 1);
    let err = svc.oneshot(("canary", 2)).await.unwrap_err();
    match err {
        FaultError::Injected(answer) => assert_eq!(answer.status, 503),
        other => panic!("{other:?}"),
    }
}

fn with_header(peer: &str, fault: &str, token: Option<&str>, xff: Option<&str>) -> Request<()> {
    let mut b = Request::builder()
        .uri("/x")
        .header("x-palisade-fault", fault);
    if let Some(t) = token {
        b = b.header("x-palisade-fault-token", t);
    }
    if let Some(x) = xff {
        b = b.header("x-forwarded-for", x);
    }
    let mut req = b.body(()).unwrap();
    req.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
    req
}

#[tokio::test]
async fn an_untrusted_request_can_never_turn_a_fault_on() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Off (the default, and what an unconfigured config gives): the header
    // does nothing, whoever sends it, and is stripped.
    let configured = FaultLayer::from_config(&FaultConfig::default()).unwrap();
    assert!(!configured.is_active());
    let off = FaultLayer::off();
    assert!(!off.is_active());
    for svc in [
        tower::util::BoxCloneSyncService::new(configured.layer(upstream(calls.clone()))),
        tower::util::BoxCloneSyncService::new(off.layer(upstream(calls.clone()))),
    ] {
        for peer in ["127.0.0.1:1", "10.0.0.1:1"] {
            let res = svc
                .clone()
                .oneshot(with_header(peer, "status=500", None, None))
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
        }
    }
    // Trusted peers and a token: only they are honoured.
    let layer = FaultLayer::builder()
        .trust_peers(["10.0.0.0/8".parse().unwrap()])
        .trust_token("s3cret")
        .build()
        .unwrap();
    let svc = layer.layer(upstream(calls.clone()));
    let status = |req| {
        let svc = svc.clone();
        async move { svc.oneshot(req).await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status(with_header("10.2.3.4:1", "status=500", None, None)).await,
        500
    );
    assert_eq!(
        status(with_header("203.0.113.9:1", "status=500", None, None)).await,
        200
    );
    // A forwarded address naming a trusted network does not make a caller trusted.
    assert_eq!(
        status(with_header(
            "203.0.113.9:1",
            "status=500",
            None,
            Some("10.0.0.1")
        ))
        .await,
        200
    );
    assert_eq!(
        status(with_header(
            "203.0.113.9:1",
            "status=500",
            Some("wrong"),
            None
        ))
        .await,
        200
    );
    assert_eq!(
        status(with_header(
            "203.0.113.9:1",
            "status=500",
            Some("s3cret"),
            None
        ))
        .await,
        500
    );
    assert_eq!(
        status(with_header("10.2.3.4:1", "abort", None, None)).await,
        502
    );
    // A header that does not parse is ignored.
    assert_eq!(
        status(with_header("10.2.3.4:1", "status=lots", None, None)).await,
        200
    );
    // A request without a peer address is not trusted by address.
    let mut req = with_header("10.2.3.4:1", "status=500", None, None);
    req.extensions_mut().remove::<PeerAddr>();
    assert_eq!(status(req).await, 200);
}

#[tokio::test]
async fn configured_rules_select_by_key_header() {
    let cfg: FaultConfig = serde_json::from_str(
        r#"{"enabled": true, "key_header": "x-tenant",
            "rules": [{"key": "canary", "status": 503}]}"#,
    )
    .unwrap();
    let svc = FaultLayer::from_config(&cfg)
        .unwrap()
        .layer(upstream(Arc::new(AtomicUsize::new(0))));
    let tenant = |t: &str| Request::builder().header("x-tenant", t).body(()).unwrap();
    assert_eq!(
        svc.clone()
            .oneshot(tenant("canary"))
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        svc.clone()
            .oneshot(tenant("stable"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(svc.oneshot(req("/")).await.unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_trusted_header_adds_latency() {
    let layer = FaultLayer::builder().trust_token("t").build().unwrap();
    let svc = layer.layer(upstream(Arc::new(AtomicUsize::new(0))));
    let start = tokio::time::Instant::now();
    let res = svc
        .oneshot(with_header(
            "203.0.113.9:1",
            "delay=1500ms",
            Some("t"),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_millis(1500));
}

#[test]
fn config_is_off_by_default_and_errors_name_the_field() {
    let cfg: FaultConfig =
        serde_json::from_str(r#"{"rules": [{"path_prefix": "/", "status": 503}]}"#).unwrap();
    assert!(!cfg.enabled);
    assert!(
        !FaultLayer::from_config(&cfg).unwrap().is_active(),
        "rules need enabled"
    );

    let bad = |rule: RuleConfig| {
        let mut cfg = FaultConfig::default();
        cfg.enabled = true;
        cfg.rules = vec![RuleConfig::default(), rule];
        FaultLayer::from_config(&cfg).unwrap_err().field
    };
    let mut r = RuleConfig::default();
    r.status = Some(200);
    assert_eq!(bad(r), "rules[1].status");
    let mut r = RuleConfig::default();
    r.delay = Some(Duration::from_secs(1));
    r.delay_percent = 101.0;
    assert_eq!(bad(r), "rules[1].delay_percent");
    let mut r = RuleConfig::default();
    r.grpc_code = Some(99);
    assert_eq!(bad(r), "rules[1].grpc_code");
    let mut r = RuleConfig::default();
    r.abort_percent = -1.0;
    assert_eq!(bad(r), "rules[1].abort_percent");
    let mut r = RuleConfig::default();
    r.key = Some("canary".into());
    assert_eq!(bad(r), "rules[1].key", "a key needs key_header");
    let err = serde_json::from_str::<FaultConfig>(r#"{"rulez": []}"#).unwrap_err();
    assert!(err.to_string().contains("rulez"));
}
