//! Retry goes outside the circuit breaker: an open circuit's 503 is not
//! retried at once; its Retry-After is honoured, or the 503 is returned when
//! it asks for longer than the delay cap. The breaker here is a tiny inline
//! fake (this crate must not depend on palisade-breaker).

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use palisade_core::{Error, ErrorKind, PalisadeBody};
use palisade_retry::{RetryError, RetryLayer, RetryOnErrors, StopReason};
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use support::{client, status, upstream};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

#[derive(Default)]
struct BreakerState {
    open_until: Option<Instant>,
    rejected: u32,
}

/// Opens after one 5xx, for `open_for`; while open answers 503 with the
/// time left as Retry-After (as palisade-breaker does).
#[derive(Clone)]
struct FakeBreakerLayer {
    state: Arc<Mutex<BreakerState>>,
    open_for: Duration,
}

#[derive(Clone)]
struct FakeBreaker<S> {
    inner: S,
    layer: FakeBreakerLayer,
}

impl<S> Layer<S> for FakeBreakerLayer {
    type Service = FakeBreaker<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FakeBreaker {
            inner,
            layer: self.clone(),
        }
    }
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for FakeBreaker<S>
where
    S: Service<Request<B>, Response = Response<Incoming>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<PalisadeBody<Incoming>>;
    type Error = S::Error;
    type Future = BoxFut<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let now = Instant::now();
        let mut state = self.layer.state.lock().unwrap();
        if let Some(until) = state.open_until.filter(|u| *u > now) {
            state.rejected += 1;
            let res = Error::new(ErrorKind::CircuitOpen, "circuit open")
                .with_retry_after(until - now)
                .into_http_response(false);
            return Box::pin(async move { Ok(res) });
        }
        drop(state);
        let fut = self.inner.call(req);
        let layer = self.layer.clone();
        Box::pin(async move {
            let res = fut.await?;
            if res.status().is_server_error() {
                layer.state.lock().unwrap().open_until = Some(Instant::now() + layer.open_for);
            }
            Ok(res.map(PalisadeBody::inner))
        })
    }
}

fn breaker(open_for: Duration) -> FakeBreakerLayer {
    FakeBreakerLayer {
        state: Arc::default(),
        open_for,
    }
}

fn get(uri: String) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).unwrap()
}

fn retry() -> RetryLayer {
    RetryLayer::builder()
        .backoff(Duration::from_millis(10), 2.0, Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn open_circuit_longer_than_the_cap_is_returned_not_hammered() {
    let up = upstream(|_, _| status(503)).await;
    let breaker = breaker(Duration::from_secs(30));
    let svc = ServiceBuilder::new()
        .layer(retry())
        .layer(breaker.clone())
        .service(client());

    let res = svc.clone().oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "30");
    assert_eq!(up.hits(), 1, "the second attempt met the open circuit");
    assert_eq!(breaker.state.lock().unwrap().rejected, 1);

    // Later calls cost one rejected attempt each, never a burst.
    for _ in 0..5 {
        let res = svc.clone().oneshot(get(up.uri("/"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(up.hits(), 1);
    assert_eq!(breaker.state.lock().unwrap().rejected, 6);
}

#[tokio::test(start_paused = true)]
async fn open_circuit_retry_after_within_the_cap_is_waited_for() {
    let up = upstream(|n, _| if n == 0 { status(503) } else { status(200) }).await;
    let breaker = breaker(Duration::from_secs(2));
    let svc = ServiceBuilder::new()
        .layer(retry())
        .layer(breaker.clone())
        .service(client());
    let start = Instant::now();
    let res = svc.oneshot(get(up.uri("/"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(up.hits(), 2);
    assert_eq!(
        breaker.state.lock().unwrap().rejected,
        1,
        "one attempt met the open circuit"
    );
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn generic_services_honour_a_circuit_open_error() {
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(retry().for_services(RetryOnErrors))
        .service_fn(move |_: ()| {
            *seen.lock().unwrap() += 1;
            async {
                Err::<(), _>(
                    Error::new(ErrorKind::CircuitOpen, "open")
                        .with_retry_after(Duration::from_secs(45)),
                )
            }
        });
    let err = svc.oneshot(()).await.unwrap_err();
    let RetryError::Exhausted(x) = err else {
        panic!("{err:?}")
    };
    assert_eq!(x.reason(), StopReason::RetryAfterTooLong);
    assert_eq!(x.attempts(), 1);
    assert_eq!(*calls.lock().unwrap(), 1);
    let core: Error = RetryError::Exhausted(x).into();
    assert_eq!(core.kind(), ErrorKind::CircuitOpen);
    assert_eq!(core.retry_after(), Some(Duration::from_secs(45)));
}
