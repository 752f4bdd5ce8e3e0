//! The HTTP retry layer against a real upstream on 127.0.0.1, called
//! through a real hyper-util client.

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use palisade_retry::{LastFailure, RetryError, RetryLayer, RetryMetrics, RetryReason, StopReason};
use std::{convert::Infallible, time::Duration};
use support::{Action, client, counter, status, upstream, with_header};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

fn fast() -> palisade_retry::RetryLayerBuilder {
    RetryLayer::builder().backoff(10 * MS, 2.0, Duration::from_secs(10))
}

fn get(uri: String) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

#[tokio::test]
async fn flaky_upstream_is_retried_to_success() {
    let up = upstream(|n, _| if n < 2 { status(503) } else { status(200) }).await;
    let registry = prometheus::Registry::new();
    let metrics = RetryMetrics::register(&registry).unwrap();
    let svc = ServiceBuilder::new()
        .layer(fast().metrics(&metrics, "up").build().unwrap())
        .service(client());
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "status 200"
    );
    assert_eq!(up.hits(), 3);
    let c = |n, l: &[(&str, &str)]| counter(&registry, n, l);
    assert_eq!(c("palisade_retry_attempts_total", &[("kind", "first")]), 1);
    assert_eq!(c("palisade_retry_attempts_total", &[("kind", "retry")]), 2);
    assert_eq!(
        c("palisade_retry_retries_total", &[("reason", "status")]),
        2
    );
    assert_eq!(c("palisade_retry_stopped_total", &[]), 0);
}

#[tokio::test]
async fn exhausted_returns_the_last_response() {
    let up = upstream(|_, _| status(502)).await;
    let registry = prometheus::Registry::new();
    let metrics = RetryMetrics::register(&registry).unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            fast()
                .max_attempts(4)
                .metrics(&metrics, "up")
                .build()
                .unwrap(),
        )
        .service(client());
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(up.hits(), 4);
    assert_eq!(
        counter(
            &registry,
            "palisade_retry_stopped_total",
            &[("reason", "max_attempts")]
        ),
        1
    );
}

#[tokio::test]
async fn post_is_not_retried_by_default_but_can_opt_in() {
    let up = upstream(|_, _| status(503)).await;
    let post = || {
        Request::post(up.uri("/"))
            .body(Full::new(Bytes::from("x")))
            .unwrap()
    };
    let res = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client())
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 1, "POST is not idempotent");

    // An Idempotency-Key makes it safe.
    let keyed = Request::post(up.uri("/"))
        .header("idempotency-key", "k-1")
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let _ = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client())
        .oneshot(keyed)
        .await
        .unwrap();
    assert_eq!(up.hits(), 1 + 3);

    let _ = ServiceBuilder::new()
        .layer(fast().retry_non_idempotent(true).build().unwrap())
        .service(client())
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(up.hits(), 4 + 3);
}

#[tokio::test]
async fn the_idempotency_extension_decides_over_the_method() {
    use palisade_core::Idempotency;
    let up = upstream(|_, _| status(503)).await;
    let marked = |mark: Idempotency, key: bool| {
        let mut req = Request::post(up.uri("/"));
        if key {
            req = req.header("idempotency-key", "k-1");
        }
        let mut req = req.body(Full::new(Bytes::from("x"))).unwrap();
        req.extensions_mut().insert(mark);
        req
    };
    // A POST marked idempotent (a read-only MCP tool) is retried.
    let res = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client())
        .oneshot(marked(Idempotency::Idempotent, false))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 3);
    // One marked not idempotent (a destructive tool) never is: not with
    // `retry_non_idempotent`, not with an `Idempotency-Key`.
    for key in [false, true] {
        let res = ServiceBuilder::new()
            .layer(fast().retry_non_idempotent(true).build().unwrap())
            .service(client())
            .oneshot(marked(Idempotency::NotIdempotent, key))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(up.hits(), 3 + 2);
    // A GET marked not idempotent is not retried either.
    let mut get = get(up.uri("/"));
    get.extensions_mut().insert(Idempotency::NotIdempotent);
    let _ = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client())
        .oneshot(get)
        .await
        .unwrap();
    assert_eq!(up.hits(), 3 + 2 + 1);
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let up = upstream(|_, _| status(400)).await;
    let svc = ServiceBuilder::new()
        .layer(fast().retry_statuses([400, 404, 503]).build().unwrap())
        .service(client());
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_honoured() {
    let up = upstream(|n, _| {
        if n == 0 {
            with_header(503, "retry-after", "3")
        } else {
            status(200)
        }
    })
    .await;
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client());
    let start = Instant::now();
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.hits(), 2);
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_and_rate_limit_reset_are_honoured() {
    let up = upstream(|n, _| match n {
        0 => {
            let at = std::time::SystemTime::now() + Duration::from_secs(4);
            with_header(503, "retry-after", &httpdate::fmt_http_date(at))
        }
        1 => with_header(429, "x-ratelimit-reset", "2"),
        _ => status(200),
    })
    .await;
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client());
    let start = Instant::now();
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.hits(), 3);
    // The date has a one-second resolution: at least 3 s, then 2 s.
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_cap_is_returned_not_waited_for() {
    let up = upstream(|_, _| with_header(503, "retry-after", "60")).await;
    let registry = prometheus::Registry::new();
    let metrics = RetryMetrics::register(&registry).unwrap();
    let svc = ServiceBuilder::new()
        .layer(fast().metrics(&metrics, "up").build().unwrap())
        .service(client());
    let start = Instant::now();
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "60");
    assert_eq!(up.hits(), 1);
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(
        counter(
            &registry,
            "palisade_retry_stopped_total",
            &[("reason", "retry_after_too_long")]
        ),
        1
    );
}

type Frames = std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>;

fn chunked(data: &[u8], chunk: usize) -> StreamBody<futures_util::stream::Iter<Frames>> {
    let frames: Vec<_> = data
        .chunks(chunk)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

fn payload(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..len).map(|_| rng.u8(..)).collect()
}

#[tokio::test]
async fn body_is_replayed_byte_for_byte() {
    let data = payload(40 * 1024);
    let up = upstream(|n, _| if n < 2 { status(503) } else { status(200) }).await;
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client());
    let req = Request::put(up.uri("/tool"))
        .body(chunked(&data, 1000))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let bodies = up.bodies();
    assert_eq!(bodies.len(), 3);
    for b in bodies {
        assert_eq!(b.as_ref(), data.as_slice());
    }
}

#[tokio::test]
async fn oversize_body_is_streamed_once_whole() {
    let data = payload(100 * 1024);
    let up = upstream(|_, _| status(503)).await;
    let registry = prometheus::Registry::new();
    let metrics = RetryMetrics::register(&registry).unwrap();
    let svc = ServiceBuilder::new()
        .layer(fast().metrics(&metrics, "up").build().unwrap())
        .service(client());
    let req = Request::put(up.uri("/tool"))
        .body(chunked(&data, 4096))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 1, "not replayable: sent once");
    assert_eq!(up.bodies()[0].as_ref(), data.as_slice(), "nothing cut");
    let c = |n, l: &[(&str, &str)]| counter(&registry, n, l);
    assert_eq!(c("palisade_retry_not_replayable_total", &[]), 1);
    assert_eq!(
        c(
            "palisade_retry_stopped_total",
            &[("reason", "body_too_large")]
        ),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn budget_stops_a_retry_storm() {
    async fn storm(layer: RetryLayer) -> u32 {
        let up = upstream(|_, _| status(503)).await;
        let svc = ServiceBuilder::new().layer(layer).service(client());
        for _ in 0..100 {
            let res = svc.clone().oneshot(get(up.uri("/"))).await.unwrap();
            assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        up.hits()
    }
    let layer = || fast().backoff(MS, 2.0, 10 * MS);
    let unbounded = storm(layer().no_budget().build().unwrap()).await;
    assert_eq!(
        unbounded, 300,
        "without a budget every call is tried 3 times"
    );
    let registry = prometheus::Registry::new();
    let metrics = RetryMetrics::register(&registry).unwrap();
    let budgeted = storm(
        layer()
            .budget(0.2, 1, Duration::from_secs(10))
            .metrics(&metrics, "up")
            .build()
            .unwrap(),
    )
    .await;
    // 100 calls, 20 % of them as retries, plus the floor of 1/s over 10 s.
    assert!(budgeted <= 100 + 20 + 10 + 2, "{budgeted}");
    assert!(budgeted >= 100 + 20, "{budgeted}");
    assert!(counter(&registry, "palisade_retry_budget_denied_total", &[]) >= 60);
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_against_a_hanging_upstream() {
    let up = upstream(|_, _| Action::Hang).await;
    let svc = ServiceBuilder::new()
        .layer(
            fast()
                .attempt_timeout(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .service(client());
    let start = Instant::now();
    let err = svc.oneshot(get(up.uri("/"))).await.unwrap_err();
    let RetryError::Exhausted(x) = err else {
        panic!("expected exhausted, got {err:?}")
    };
    assert_eq!(x.attempts(), 3);
    assert_eq!(x.reason(), StopReason::MaxAttempts);
    assert_eq!(x.retry_reason(), RetryReason::Timeout);
    assert!(matches!(x.last(), LastFailure::TimedOut));
    assert_eq!(up.hits(), 3);
    // 3 × 1 s of attempts plus 10 ms + 20 ms of backoff.
    assert!(
        start.elapsed() >= Duration::from_millis(3030),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_attempts_and_retries() {
    let up = upstream(|_, _| Action::Hang).await;
    let svc = ServiceBuilder::new()
        .layer(
            fast()
                .backoff(100 * MS, 2.0, Duration::from_secs(1))
                .attempt_timeout(Duration::from_secs(1))
                .deadline(Duration::from_millis(1500))
                .build()
                .unwrap(),
        )
        .service(client());
    let start = Instant::now();
    let err = svc.oneshot(get(up.uri("/"))).await.unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    let RetryError::Exhausted(x) = err else {
        unreachable!()
    };
    // 0 – 1 s first attempt, 1.1 s second attempt cut at the 1.5 s deadline,
    // and no time is left for a third.
    assert_eq!(x.attempts(), 2);
    assert_eq!(x.reason(), StopReason::Deadline);
    assert_eq!(up.hits(), 2);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let core: palisade_core::Error = RetryError::Exhausted(x).into();
    assert_eq!(core.http_status(), StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test]
async fn dropped_connections_are_retried_for_idempotent_requests_only() {
    let up = upstream(|n, _| if n < 2 { Action::Drop } else { status(200) }).await;
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client());
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.hits(), 3);

    let up = upstream(|_, _| Action::Drop).await;
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client());
    let req = Request::post(up.uri("/"))
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    let RetryError::Exhausted(x) = err else {
        panic!("expected exhausted, got {err:?}")
    };
    assert_eq!(x.reason(), StopReason::NotIdempotent);
    assert_eq!(x.retry_reason(), RetryReason::Transport);
    assert_eq!(
        up.hits(),
        1,
        "a POST that may have been processed is not resent"
    );
}

#[tokio::test]
async fn connect_errors_are_retried_even_for_post() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client());
    let req = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    let RetryError::Exhausted(x) = err else {
        panic!("expected exhausted, got {err:?}")
    };
    assert_eq!(x.retry_reason(), RetryReason::Connect);
    assert_eq!(x.attempts(), 3);
    assert!(matches!(x.last(), LastFailure::Error(e) if e.is_connect()));
}

#[tokio::test]
async fn grpc_unavailable_is_retried_other_codes_are_not() {
    let grpc = |code: &str| {
        Action::Respond(
            http::Response::builder()
                .header("content-type", "application/grpc")
                .header("grpc-status", code)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
    };
    let up = upstream(move |n, parts| match (parts.uri.path(), n) {
        ("/pkg.Svc/Flaky", 0) => grpc("14"),
        ("/pkg.Svc/Flaky", _) => grpc("0"),
        _ => grpc("3"),
    })
    .await;
    let call = |path: &str| {
        Request::post(up.uri(path))
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let svc = ServiceBuilder::new()
        .layer(fast().build().unwrap())
        .service(client());
    let res = svc.clone().oneshot(call("/pkg.Svc/Flaky")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "0");
    assert_eq!(up.hits(), 2);
    let res = svc.oneshot(call("/pkg.Svc/Bad")).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "3");
    assert_eq!(up.hits(), 3, "INVALID_ARGUMENT is not retried");
}

#[tokio::test(start_paused = true)]
async fn hedging_takes_the_first_good_answer() {
    let up = upstream(|n, _| if n == 0 { Action::Hang } else { status(200) }).await;
    let registry = prometheus::Registry::new();
    let metrics = RetryMetrics::register(&registry).unwrap();
    let svc = ServiceBuilder::new()
        .layer(
            fast()
                .hedge(100 * MS)
                .metrics(&metrics, "up")
                .build()
                .unwrap(),
        )
        .service(client());
    let start = Instant::now();
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.hits(), 2);
    assert!(start.elapsed() >= 100 * MS);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        counter(
            &registry,
            "palisade_retry_attempts_total",
            &[("kind", "hedge")]
        ),
        1
    );
}
