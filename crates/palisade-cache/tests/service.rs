//! The generic service cache (tool / LLM / gRPC-style calls).

use palisade_cache::{CacheBuilder, CacheServiceLayer};
use palisade_core::key::key_fn;
use serde::{Deserialize, Serialize};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};
use tokio::sync::watch;
use tower::{Service, ServiceBuilder, ServiceExt};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Completion {
    text: String,
    tokens: u32,
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_their_ttl_and_errors_are_not_cached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer: CacheServiceLayer<Completion, _> = CacheServiceLayer::new(
        CacheBuilder::default()
            .name("llm")
            .default_ttl(Duration::from_secs(30)),
        key_fn(|prompt: &String| (!prompt.is_empty()).then(|| prompt.clone())),
    )
    .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |prompt: String| {
            let n = c.fetch_add(1, SeqCst);
            async move {
                if prompt == "fail" {
                    return Err("upstream down");
                }
                Ok(Completion {
                    text: format!("{prompt} #{n}"),
                    tokens: 3,
                })
            }
        });
    let first = svc.ready().await.unwrap().call("hi".into()).await.unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(
        svc.ready().await.unwrap().call("hi".into()).await.unwrap(),
        first
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_ne!(
        svc.ready().await.unwrap().call("hi".into()).await.unwrap(),
        first
    );
    assert_eq!(calls.load(SeqCst), 2);
    for _ in 0..2 {
        assert!(
            svc.ready()
                .await
                .unwrap()
                .call("fail".into())
                .await
                .is_err()
        );
    }
    assert_eq!(calls.load(SeqCst), 4);
    // No key: not cached.
    svc.ready()
        .await
        .unwrap()
        .call(String::new())
        .await
        .unwrap();
    svc.ready()
        .await
        .unwrap()
        .call(String::new())
        .await
        .unwrap();
    assert_eq!(calls.load(SeqCst), 6);
    let s = layer.handle().stats();
    assert_eq!((s.hits, s.bypassed), (1, 2));
}

#[tokio::test]
async fn concurrent_calls_for_one_key_make_one_call() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (gate, rx) = watch::channel(false);
    let c = calls.clone();
    let layer: CacheServiceLayer<String, _> = CacheServiceLayer::new(
        CacheBuilder::default(),
        key_fn(|q: &String| Some(q.clone())),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(move |q: String| {
            c.fetch_add(1, SeqCst);
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|open| *open).await;
                Ok::<_, std::convert::Infallible>(format!("result for {q}"))
            }
        });
    let call = |parked: Option<Arc<AtomicUsize>>| {
        let mut fut = Box::pin(svc.clone().oneshot("tool:weather".to_string()));
        let mut first = true;
        tokio::spawn(async move {
            // Counts the call as parked when its first poll is pending:
            // without a store there is nothing to wait for before joining
            // the leader's flight, so that is the call waiting for it.
            std::future::poll_fn(|cx| {
                let poll = fut.as_mut().poll(cx);
                if std::mem::take(&mut first)
                    && poll.is_pending()
                    && let Some(parked) = &parked
                {
                    parked.fetch_add(1, SeqCst);
                }
                poll
            })
            .await
            .unwrap()
        })
    };
    let mut tasks = vec![call(None)];
    palisade_testkit::yield_until("the leader called", || calls.load(SeqCst) > 0).await;
    let parked = Arc::new(AtomicUsize::new(0));
    tasks.extend((0..49).map(|_| call(Some(parked.clone()))));
    palisade_testkit::yield_until("49 calls wait for the leader", || parked.load(SeqCst) == 49)
        .await;
    gate.send_replace(true);
    for t in tasks {
        assert_eq!(t.await.unwrap(), "result for tool:weather");
    }
    assert_eq!(calls.load(SeqCst), 1);
    assert_eq!(layer.handle().stats().coalesced, 49);
}
