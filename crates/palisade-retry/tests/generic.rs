//! Retries of generic services (`Req: Clone`), with typed errors.

use palisade_core::{Error, ErrorKind};
use palisade_retry::{
    LastFailure, RetryError, RetryLayer, RetryOnBoxErrors, RetryOnErrors, RetryReason, StopReason,
    Verdict, retry_fn,
};
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};
use tower::{ServiceBuilder, ServiceExt};

fn retry() -> RetryLayer {
    RetryLayer::builder()
        .backoff(Duration::from_millis(10), 2.0, Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn exhausted_holds_the_last_error_and_the_attempt_count() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(retry().for_services(RetryOnErrors))
        .service_fn(move |_: u8| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                Err::<(), _>(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("reset {n}"),
                ))
            }
        });
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert!(
        err.to_string()
            .starts_with("gave up after 3 attempts (max_attempts)"),
        "{err}"
    );
    let RetryError::Exhausted(x) = err else {
        panic!()
    };
    assert_eq!(x.reason(), StopReason::MaxAttempts);
    assert_eq!(x.retry_reason(), RetryReason::Error);
    let LastFailure::Error(last) = x.into_last() else {
        panic!()
    };
    assert_eq!(last.to_string(), "reset 2", "the last error is kept");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_errors_pass_through_at_once() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let svc = ServiceBuilder::new()
        .layer(retry().for_services(RetryOnBoxErrors))
        .service_fn(move |_: u8| {
            seen.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<(), palisade_core::BoxError>(Error::new(ErrorKind::BadRequest, "bad").into())
            }
        });
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(matches!(err, RetryError::Inner(_)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let core: Error = err.into();
    assert_eq!(core.kind(), ErrorKind::BadRequest);
}

#[tokio::test(start_paused = true)]
async fn responses_can_ask_for_retries_and_delays_follow_the_backoff() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let classifier = retry_fn(|r: Result<&&str, &io::Error>| match r {
        Ok(&"busy") => Verdict::retry(RetryReason::Error),
        _ => Verdict::Done,
    });
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .max_attempts(4)
                .backoff(Duration::from_secs(1), 2.0, Duration::from_secs(10))
                .build()
                .unwrap()
                .for_services(classifier),
        )
        .service_fn(move |_: u8| {
            let n = seen.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, io::Error>(if n < 3 { "busy" } else { "done" }) }
        });
    let start = tokio::time::Instant::now();
    assert_eq!(svc.oneshot(1).await.unwrap(), "done");
    // 1 s + 2 s + 4 s of backoff.
    assert_eq!(start.elapsed().as_secs(), 7);
}

#[tokio::test(start_paused = true)]
async fn last_response_is_returned_when_retries_run_out() {
    let svc = ServiceBuilder::new()
        .layer(
            retry().for_services(retry_fn(|r: Result<&u32, &io::Error>| match r {
                Ok(n) if *n < 10 => Verdict::retry(RetryReason::Error),
                _ => Verdict::Done,
            })),
        )
        .service_fn({
            let calls = Arc::new(AtomicU32::new(0));
            move |_: u8| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, io::Error>(n) }
            }
        });
    assert_eq!(svc.oneshot(1).await.unwrap(), 2, "third and last response");
}

#[tokio::test(start_paused = true)]
async fn delay_fn_sees_the_outcome() {
    let delays = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = delays.clone();
    let layer = RetryLayer::builder()
        .backoff(Duration::from_secs(1), 2.0, Duration::from_secs(5))
        .delay_fn(move |c| {
            log.lock().unwrap().push((c.retry, c.reason, c.delay));
            c.delay * 10
        })
        .build()
        .unwrap()
        .for_services(RetryOnErrors);
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_: u8| async { Err::<(), _>(io::Error::from(io::ErrorKind::TimedOut)) });
    let start = tokio::time::Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert!(err.is_exhausted());
    assert_eq!(
        *delays.lock().unwrap(),
        [
            (1, RetryReason::Timeout, Duration::from_secs(1)),
            (2, RetryReason::Timeout, Duration::from_secs(2)),
        ]
    );
    // 10 s and 20 s, each capped at 5 s.
    assert_eq!(start.elapsed().as_secs(), 10);
}
