//! The HTTP cache against a real axum upstream that counts its hits.

mod support;

use axum::body::Body;
use palisade_cache::{CacheLayer, CacheMetrics};
use std::time::Duration;
use support::*;
use tower::{Service, ServiceBuilder, ServiceExt};

fn cached_client(layer: &CacheLayer) -> palisade_cache::Cache<HttpClient> {
    ServiceBuilder::new().layer(layer.clone()).service(client())
}

#[tokio::test]
async fn second_get_is_served_without_an_upstream_hit() {
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let layer = CacheLayer::new();
    let svc = cached_client(&layer);

    let (x1, b1) = text(svc.clone().oneshot(get(addr, "/fresh/1")).await.unwrap()).await;
    let (x2, b2) = text(svc.clone().oneshot(get(addr, "/fresh/1")).await.unwrap()).await;
    assert_eq!((x1.as_str(), x2.as_str()), ("MISS", "HIT"));
    assert_eq!(b1, b2);
    assert_eq!(up.hits("fresh"), 1);
    // Another URI (or query) is another entry.
    let (x3, _) = text(
        svc.clone()
            .oneshot(get(addr, "/fresh/1?page=2"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(x3, "MISS");
    assert_eq!(up.hits("fresh"), 2);
    let hit = svc.oneshot(get(addr, "/fresh/1")).await.unwrap();
    assert!(hit.headers().contains_key("age"));
    let stats = layer.handle().stats();
    assert_eq!((stats.hits, stats.misses), (2, 2));
    assert!((stats.hit_rate() - 0.5).abs() < 1e-9);
}

#[tokio::test]
async fn vary_splits_entries() {
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let svc = cached_client(&CacheLayer::new());
    let req = |lang: &str| {
        let mut r = get(addr, "/vary/1");
        r.headers_mut()
            .insert("accept-language", lang.parse().unwrap());
        r
    };
    for (lang, want) in [("en", "MISS"), ("fr", "MISS"), ("en", "HIT"), ("fr", "HIT")] {
        let (x, body) = text(svc.clone().oneshot(req(lang)).await.unwrap()).await;
        assert_eq!(x, want, "{lang}");
        assert!(body.ends_with(&format!("in {lang}")), "{body}");
    }
    // No Accept-Language is a variant of its own.
    let (x, body) = text(svc.oneshot(get(addr, "/vary/1")).await.unwrap()).await;
    assert_eq!(x, "MISS");
    assert!(body.ends_with("in none"));
    assert_eq!(up.hits("vary"), 3);
}

#[tokio::test]
async fn private_no_store_and_authorization_are_never_shared() {
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let svc = cached_client(&CacheLayer::new());
    let as_user = |path: &str, user: Option<&str>| {
        let mut r = get(addr, path);
        if let Some(u) = user {
            r.headers_mut().insert("authorization", u.parse().unwrap());
        }
        r
    };
    for kind in ["private", "nostore", "auth"] {
        let path = format!("/{kind}/1");
        let (_, a) = text(
            svc.clone()
                .oneshot(as_user(&path, Some("alice")))
                .await
                .unwrap(),
        )
        .await;
        let (xb, b) = text(
            svc.clone()
                .oneshot(as_user(&path, Some("bob")))
                .await
                .unwrap(),
        )
        .await;
        assert!(a.ends_with("for alice"), "{kind}: {a}");
        assert!(b.ends_with("for bob"), "{kind}: {b}");
        assert_eq!(xb, "MISS", "{kind}");
        assert_eq!(up.hits(kind), 2, "{kind}");
    }
    // Anonymous private / no-store responses are not stored either.
    for kind in ["private", "nostore"] {
        let path = format!("/{kind}/2");
        svc.clone().oneshot(as_user(&path, None)).await.unwrap();
        let (x, _) = text(svc.clone().oneshot(as_user(&path, None)).await.unwrap()).await;
        assert_eq!(x, "MISS", "{kind}");
    }
    // A stored anonymous response never answers an Authorization request...
    let (x, _) = text(svc.clone().oneshot(as_user("/auth/2", None)).await.unwrap()).await;
    assert_eq!(x, "MISS");
    let (x, body) = text(
        svc.clone()
            .oneshot(as_user("/auth/2", Some("carol")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(x, "MISS");
    assert!(body.ends_with("for carol"));
    // ...unless the response says it may (public).
    svc.clone()
        .oneshot(as_user("/public/1", Some("alice")))
        .await
        .unwrap();
    let (x, _) = text(
        svc.oneshot(as_user("/public/1", Some("bob")))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(x, "HIT");
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_call() {
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let layer = CacheLayer::new();
    let svc = cached_client(&layer);
    up.close_gate();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(
                async move { text(svc.oneshot(get(addr, "/slow/1")).await.unwrap()).await },
            )
        })
        .collect();
    // Every task has been polled once (joined the flight) after one yield;
    // wait for the leader to reach the upstream, then let it answer.
    palisade_testkit::yield_until("the leader reached the upstream", || up.hits("slow") > 0).await;
    up.open_gate();
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert_eq!(up.hits("slow"), 1);
    assert!(bodies.iter().all(|(_, b)| b == "slow/1 v1"));
    assert_eq!(bodies.iter().filter(|(x, _)| x == "MISS").count(), 1);
    assert_eq!(layer.handle().stats().coalesced, 99);
}

#[tokio::test]
async fn stale_if_error_serves_stale_when_the_upstream_is_down() {
    let up = Upstream::new();
    let (addr, server) = up.serve().await;
    let layer = CacheLayer::new();
    // No pooled connections: once the server is gone, calls fail.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let svc = ServiceBuilder::new().layer(layer.clone()).service(client);
    let (x, body) = text(svc.clone().oneshot(get(addr, "/aged/1")).await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "aged/1 v1"));
    server.abort();
    let _ = server.await;
    let (x, body) = text(svc.clone().oneshot(get(addr, "/aged/1")).await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("STALE", "aged/1 v1"));
    // Without a stored response the error reaches the caller.
    assert!(svc.oneshot(get(addr, "/aged/2")).await.is_err());
}

#[tokio::test]
async fn successful_unsafe_requests_invalidate_their_target() {
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let svc = cached_client(&CacheLayer::new());
    let (_, b1) = text(svc.clone().oneshot(get(addr, "/fresh/9")).await.unwrap()).await;
    let (x, _) = text(svc.clone().oneshot(get(addr, "/fresh/9")).await.unwrap()).await;
    assert_eq!(x, "HIT");
    let post = http::Request::post(format!("http://{addr}/fresh/9"))
        .body(http_body_util::Full::default())
        .unwrap();
    svc.clone().oneshot(post).await.unwrap();
    let (x, b2) = text(svc.oneshot(get(addr, "/fresh/9")).await.unwrap()).await;
    assert_eq!(x, "MISS");
    assert_ne!(b1, b2);
}

#[tokio::test]
async fn bodies_over_the_limit_stream_through_uncached() {
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let svc = cached_client(&CacheLayer::builder().max_body_bytes(1024).build().unwrap());
    for _ in 0..2 {
        let (x, body) = text(svc.clone().oneshot(get(addr, "/big/1")).await.unwrap()).await;
        assert_eq!(x, "MISS");
        assert_eq!(body.len(), 4096);
    }
    assert_eq!(up.hits("big"), 2);
}

// ---- in-process upstream (the layer in front of the router) on a paused clock ----

fn req(path: &str) -> http::Request<Body> {
    http::Request::get(path)
        .header("host", "upstream.test")
        .body(Body::empty())
        .unwrap()
}

async fn call<S>(svc: &mut S, r: http::Request<Body>) -> (String, String)
where
    S: Service<
            http::Request<Body>,
            Response = http::Response<palisade_core::PalisadeBody<Body>>,
            Error = std::convert::Infallible,
        >,
{
    let res = svc.ready().await.unwrap().call(r).await.unwrap();
    text(res).await
}

#[tokio::test(start_paused = true)]
async fn stale_entries_are_revalidated_with_a_304() {
    let up = Upstream::new();
    let mut svc = ServiceBuilder::new()
        .layer(CacheLayer::new())
        .service(up.router());
    assert_eq!(
        call(&mut svc, req("/etag/1")).await,
        ("MISS".into(), "etag/1 v1".into())
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(call(&mut svc, req("/etag/1")).await.0, "HIT");
    tokio::time::advance(Duration::from_secs(6)).await;
    let res = ServiceExt::<http::Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req("/etag/1"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-revalidated"],
        "yes",
        "304 headers are merged"
    );
    assert_eq!(text(res).await, ("REVALIDATED".into(), "etag/1 v1".into()));
    assert_eq!((up.hits("etag"), up.hits("etag-304")), (2, 1));
    // Fresh again for another max-age.
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(call(&mut svc, req("/etag/1")).await.0, "HIT");
    // A changed resource answers 200 and replaces the entry.
    up.version.store(2, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        call(&mut svc, req("/etag/1")).await,
        ("MISS".into(), "etag/1 v2".into())
    );
    assert_eq!(
        call(&mut svc, req("/etag/1")).await,
        ("HIT".into(), "etag/1 v2".into())
    );
    // The client's own conditional request is answered by the cache.
    let mut cond = req("/etag/1");
    cond.headers_mut()
        .insert("if-none-match", "\"v2\"".parse().unwrap());
    let res = ServiceExt::<http::Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(cond)
        .await
        .unwrap();
    assert_eq!(res.status(), 304);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let up = Upstream::new();
    let layer = CacheLayer::new();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(up.router());
    assert_eq!(call(&mut svc, req("/swr/1")).await.0, "MISS");
    let stored_v1 = layer.handle().stats().bytes;
    // Version 10: the refreshed body is one byte longer than v1's, so the
    // cache's byte count tells when the refresh has replaced the entry.
    up.version.store(10, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(15)).await;
    for _ in 0..5 {
        assert_eq!(
            call(&mut svc, req("/swr/1")).await,
            ("STALE".into(), "swr/1 v1".into())
        );
    }
    // Wait for the one background refresh to store its answer.
    palisade_testkit::yield_until("the refresh stored v10", || {
        layer.handle().stats().bytes > stored_v1
    })
    .await;
    assert_eq!(up.hits("swr"), 2);
    assert_eq!(
        call(&mut svc, req("/swr/1")).await,
        ("HIT".into(), "swr/1 v10".into())
    );
    // Past the stale-while-revalidate window: a plain miss.
    tokio::time::advance(Duration::from_secs(100)).await;
    assert_eq!(call(&mut svc, req("/swr/1")).await.0, "MISS");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_5xx_within_its_window() {
    let up = Upstream::new();
    let mut svc = ServiceBuilder::new()
        .layer(CacheLayer::new())
        .service(up.router());
    assert_eq!(call(&mut svc, req("/sie/1")).await.0, "MISS");
    up.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(15)).await;
    assert_eq!(
        call(&mut svc, req("/sie/1")).await,
        ("STALE".into(), "sie/1 v1".into())
    );
    tokio::time::advance(Duration::from_secs(60)).await;
    let res = ServiceExt::<http::Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(req("/sie/1"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn l1_ttl_request_directives_and_metrics() {
    let up = Upstream::new();
    let registry = prometheus::Registry::new();
    let layer = CacheLayer::builder()
        .l1_ttl(Duration::from_secs(30))
        .metrics(CacheMetrics::register(&registry).unwrap())
        .build()
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(up.router());
    assert_eq!(call(&mut svc, req("/fresh/1")).await.0, "MISS");
    assert_eq!(call(&mut svc, req("/fresh/1")).await.0, "HIT");
    // Past the L1 TTL (though still fresh by max-age=60): gone.
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(call(&mut svc, req("/fresh/1")).await.0, "MISS");
    // Request no-cache and max-age=0 go upstream.
    for cc in ["no-cache", "max-age=0"] {
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut r = req("/fresh/1");
        r.headers_mut().insert("cache-control", cc.parse().unwrap());
        assert_eq!(call(&mut svc, r).await.0, "MISS", "{cc}");
    }
    // only-if-cached on a miss: 504 without an upstream call.
    let before = up.hits("fresh");
    let mut r = req("/fresh/404");
    r.headers_mut()
        .insert("cache-control", "only-if-cached".parse().unwrap());
    let res = ServiceExt::<http::Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(r)
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(up.hits("fresh"), before);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains("palisade_cache_requests_total{cache=\"http\",outcome=\"hit\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("palisade_cache_requests_total{cache=\"http\",outcome=\"miss\"} 5"),
        "{text}"
    );
}

#[tokio::test]
async fn bounded_by_entries_and_invalidated_by_pattern() {
    let up = Upstream::new();
    let layer = CacheLayer::builder().l1_max_entries(10).build().unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(up.router());
    for i in 0..50 {
        call(&mut svc, req(&format!("/fresh/{i}"))).await;
    }
    let h = layer.handle();
    h.run_pending_tasks();
    let stats = h.stats();
    assert!(stats.entries <= 10, "{stats:?}");
    assert!(stats.evictions >= 40, "{stats:?}");
    assert!(stats.bytes > 0);
    h.clear().await.unwrap();
    for p in ["/fresh/a1", "/fresh/a2", "/fresh/b1"] {
        call(&mut svc, req(p)).await;
    }
    h.invalidate_matching("GET upstream.test/fresh/a*")
        .await
        .unwrap();
    assert_eq!(call(&mut svc, req("/fresh/a1")).await.0, "MISS");
    assert_eq!(call(&mut svc, req("/fresh/a2")).await.0, "MISS");
    assert_eq!(call(&mut svc, req("/fresh/b1")).await.0, "HIT");
    h.invalidate_prefix("GET upstream.test/fresh/b")
        .await
        .unwrap();
    assert_eq!(call(&mut svc, req("/fresh/b1")).await.0, "MISS");
    h.invalidate("GET upstream.test/fresh/b1").await.unwrap();
    assert_eq!(call(&mut svc, req("/fresh/b1")).await.0, "MISS");
}

#[tokio::test]
async fn custom_key_parts_separate_tenants_and_keyless_requests_bypass() {
    let up = Upstream::new();
    let layer = CacheLayer::new().key(palisade_core::key::HeaderKey::new("x-tenant"));
    let mut svc = ServiceBuilder::new().layer(layer).service(up.router());
    let t = |tenant: Option<&str>| {
        let mut r = req("/fresh/1");
        if let Some(t) = tenant {
            r.headers_mut().insert("x-tenant", t.parse().unwrap());
        }
        r
    };
    assert_eq!(call(&mut svc, t(Some("a"))).await.0, "MISS");
    assert_eq!(call(&mut svc, t(Some("b"))).await.0, "MISS");
    assert_eq!(call(&mut svc, t(Some("a"))).await.0, "HIT");
    assert_eq!(call(&mut svc, t(None)).await.0, "");
    assert_eq!(call(&mut svc, t(None)).await.0, "");
    assert_eq!(up.hits("fresh"), 4);
}

#[tokio::test]
async fn uncacheable_responses_are_not_stored_and_never_block_caching() {
    let up = Upstream::new();
    let (addr, _server) = up.serve().await;
    let layer = CacheLayer::new();
    let handle = layer.handle();
    let svc = cached_client(&layer);

    // No freshness, no validator: passed through, never stored, no Age.
    for n in 1..=3 {
        let res = svc.clone().oneshot(get(addr, "/plain/1")).await.unwrap();
        assert!(!res.headers().contains_key("age"), "request {n}");
        assert_eq!(text(res).await.0, "MISS");
        let res = svc
            .clone()
            .oneshot(get(addr, "/plainvary/1"))
            .await
            .unwrap();
        assert_eq!(text(res).await.0, "MISS");
    }
    assert_eq!((up.hits("plain"), up.hits("plainvary")), (3, 3));
    handle.run_pending_tasks();
    assert_eq!(handle.stats().entries, 0);

    // The origin starts sending max-age: the key, remembered as
    // uncacheable, is stored by the very next response...
    up.version.store(2, std::sync::atomic::Ordering::SeqCst);
    let (x, body) = text(svc.clone().oneshot(get(addr, "/plain/1")).await.unwrap()).await;
    assert_eq!((x.as_str(), body.as_str()), ("MISS", "plain/1 v2"));
    let (x, _) = text(svc.clone().oneshot(get(addr, "/plain/1")).await.unwrap()).await;
    assert_eq!(x, "HIT");
    assert_eq!(up.hits("plain"), 4);
    // ...and a varying one, keyed on request fields the memo path did not
    // keep, by the one after (never under the wrong variant).
    let mut fr = get(addr, "/plainvary/1");
    fr.headers_mut()
        .insert("accept-language", "fr".parse().unwrap());
    let (x, body) = text(svc.clone().oneshot(fr).await.unwrap()).await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("MISS", "plainvary/1 v2 in fr")
    );
    let (x, body) = text(
        svc.clone()
            .oneshot(get(addr, "/plainvary/1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("MISS", "plainvary/1 v2 in none")
    );
    let (x, body) = text(
        svc.clone()
            .oneshot(get(addr, "/plainvary/1"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (x.as_str(), body.as_str()),
        ("HIT", "plainvary/1 v2 in none")
    );
    assert_eq!(up.hits("plainvary"), 5);
}

/// A cacheable stream (server-sent events, no length) reaches the client
/// event by event, in lock-step with the upstream, and is stored once it
/// has ended: the next request is a hit with the whole stream.
#[tokio::test]
async fn a_cacheable_stream_is_forwarded_as_it_arrives_and_stored_on_the_side() {
    use bytes::Bytes;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    type Tx = mpsc::Sender<Result<Frame<Bytes>, std::convert::Infallible>>;
    let senders: Arc<Mutex<Vec<Tx>>> = Arc::default();
    let s2 = senders.clone();
    let upstream = tower::service_fn(move |_req: http::Request<Body>| {
        let (tx, mut rx) = mpsc::channel(1);
        s2.lock().unwrap().push(tx);
        let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        async move {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .header("cache-control", "public, max-age=60")
                    .body(Body::new(body))
                    .unwrap(),
            )
        }
    });
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new())
        .service(upstream);
    let res = tokio::time::timeout(Duration::from_secs(10), svc.clone().oneshot(req("/events")))
        .await
        .expect("the head comes before the stream ends")
        .unwrap();
    assert_eq!(res.headers()["x-cache"], "MISS");
    let tx = senders.lock().unwrap().pop().unwrap();
    let mut body = res.into_body();
    for i in 0..3 {
        let event = format!("data: {i}\n\n");
        tx.send(Ok(Frame::data(Bytes::from(event.clone()))))
            .await
            .unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap_or_else(|_| panic!("event {i} held back by the cache"))
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), event);
    }
    drop(tx);
    assert!(body.frame().await.is_none());

    let hit = svc.oneshot(req("/events")).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    let all = hit.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(all, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    assert_eq!(senders.lock().unwrap().len(), 0, "one upstream call");
}
