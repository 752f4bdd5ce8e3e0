//! The whole stack in-process (rate limit, shape, cache, PII masking, retry,
//! breaker over an upstream service, no sockets) against the bare upstream,
//! in one run:
//!
//! - `text_2b`: a 2-byte `text/plain` answer (layer overhead only);
//! - `json_pii`: a ~300-byte JSON answer full of PII (masked and compacted);
//! - `sse_first_event`: the time until the first event of a server-sent
//!   event stream comes out of the stack;
//! - `json_pii_shape_and_mask`: MB/s of a 64 KiB JSON document through PII
//!   masking and shaping together.
//!
//! Before the timings, it counts heap allocations per request (the
//! `allocation-counter` crate's counting allocator; 10 000 requests each,
//! built beforehand, first body frame polled) for the
//! bare upstream, each layer alone over it, and the full stack, on the
//! 2-byte text and the JSON answers, and prints them as `ALLOCS` lines.
//!
//! `cargo bench --bench stack`

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use palisade::StackBuilder;
use palisade::breaker::CircuitBreakerLayer;
use palisade::cache::CacheLayer;
use palisade::core::key::ConstKey;
use palisade::pii::PiiMaskLayer;
use palisade::ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter};
use palisade::retry::RetryLayer;
use palisade::shape::{ShapeResponseLayer, ShapeRules};
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

const USER: &str = r#"{"id":7,"name":"Asha Rao","email":"asha.rao@example.com","phone":"9876543210","card":"4111 1111 1111 1111","password":"hunter2","address":{"city":"Pune","zip":"411001","note":null},"tags":[],"ip":"192.168.1.20"}"#;

/// What the upstream answers.
#[derive(Clone, Copy)]
enum Answer {
    Text,
    Json,
    Events,
    Big,
}

/// An upstream service that answers at once, for any request body type.
#[derive(Clone)]
struct Upstream {
    answer: Answer,
    big: Bytes,
}

type UpBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

impl<B> Service<Request<B>> for Upstream {
    type Response = Response<UpBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<UpBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        let res = Response::builder().header("cache-control", "private");
        let res = match self.answer {
            Answer::Text => res
                .header("content-type", "text/plain")
                .header("content-length", "2")
                .body(Full::new(Bytes::from_static(b"ok")).boxed_unsync()),
            Answer::Json => res
                .header("content-type", "application/json")
                .header("content-length", USER.len())
                .body(Full::new(Bytes::from_static(USER.as_bytes())).boxed_unsync()),
            Answer::Big => res
                .header("content-type", "application/json")
                .header("content-length", self.big.len())
                .body(Full::new(self.big.clone()).boxed_unsync()),
            Answer::Events => {
                // The first event is ready; the stream then stays open.
                let first: Result<Frame<Bytes>, Infallible> = Ok(Frame::data(Bytes::from_static(
                    b"data: {\"email\":\"asha.rao@example.com\"}\n\n",
                )));
                let stream =
                    futures_util::stream::iter([first]).chain(futures_util::stream::pending());
                res.header("content-type", "text/event-stream")
                    .body(StreamBody::new(stream).boxed_unsync())
            }
        };
        ready(Ok(res.expect("valid response")))
    }
}

use futures_util::StreamExt as _;

fn big_json() -> Bytes {
    let mut s = String::from("[");
    while s.len() < 64 * 1024 {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(USER);
    }
    s.push(']');
    Bytes::from(s)
}

/// The full stack, as the gateway composes it, over `upstream`.
fn full(
    upstream: Upstream,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<impl Body<Data = Bytes, Error = impl std::fmt::Debug> + Send>,
    Error = impl std::fmt::Debug,
    Future = impl Send,
> + Clone {
    let limiter = RateLimiter::builder()
        .limit(Limit::new(
            "all",
            ConstKey("all"),
            Quota::per_second(1_000_000_000),
        ))
        .build()
        .expect("limiter");
    StackBuilder::new()
        .rate_limit(RateLimitLayer::new(limiter))
        .shape_response(ShapeResponseLayer::new(ShapeRules::new()).expect("shape"))
        .cache(CacheLayer::new())
        .mask_pii(PiiMaskLayer::default())
        .retry(RetryLayer::builder().build().unwrap())
        .circuit_breaker(CircuitBreakerLayer::http("upstream"))
        .service(upstream)
}

fn request() -> Request<Full<Bytes>> {
    Request::get("http://upstream.test/users/7")
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// Heap allocations per request through `svc` (after a warm-up), the
/// first body frame polled, the request built outside the count.
fn allocations_per_request<S, B>(rt: &tokio::runtime::Runtime, svc: S) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body + Unpin,
{
    const N: usize = 10_000;
    rt.block_on(async {
        for _ in 0..100 {
            let res = svc.clone().oneshot(request()).await.expect("answer");
            let _ = res.into_body().frame().await;
        }
    });
    let requests: Vec<_> = (0..N).map(|_| request()).collect();
    let info = allocation_counter::measure(|| {
        rt.block_on(async {
            for req in requests {
                let res = svc.clone().oneshot(req).await.expect("answer");
                let mut body = res.into_body();
                let _ = body.frame().await;
            }
        })
    });
    info.count_total as f64 / N as f64
}

/// Prints the allocation counts (see the module docs).
fn allocations(rt: &tokio::runtime::Runtime) {
    for (name, answer) in [("text_2b", Answer::Text), ("json_pii", Answer::Json)] {
        let up = Upstream {
            answer,
            big: Bytes::new(),
        };
        let limiter = RateLimiter::builder()
            .limit(Limit::new(
                "all",
                ConstKey("all"),
                Quota::per_second(1_000_000_000),
            ))
            .build()
            .expect("limiter");
        let rows = [
            ("bare upstream", allocations_per_request(rt, up.clone())),
            (
                "rate limit",
                allocations_per_request(rt, RateLimitLayer::new(limiter).layer(up.clone())),
            ),
            (
                "breaker",
                allocations_per_request(
                    rt,
                    CircuitBreakerLayer::http("upstream").layer(up.clone()),
                ),
            ),
            (
                "retry",
                allocations_per_request(
                    rt,
                    RetryLayer::builder().build().unwrap().layer(up.clone()),
                ),
            ),
            (
                "cache (uncacheable answer)",
                allocations_per_request(rt, CacheLayer::new().layer(up.clone())),
            ),
            (
                "pii",
                allocations_per_request(rt, PiiMaskLayer::default().layer(up.clone())),
            ),
            (
                "shape",
                allocations_per_request(
                    rt,
                    ShapeResponseLayer::new(ShapeRules::new())
                        .expect("shape")
                        .layer(up.clone()),
                ),
            ),
            ("full stack", allocations_per_request(rt, full(up))),
        ];
        for (setup, n) in rows {
            println!("ALLOCS | {name} | {setup} | {n:.1}");
        }
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    allocations(&rt);
    let big = big_json();
    for (name, answer) in [
        ("text_2b", Answer::Text),
        ("json_pii", Answer::Json),
        ("sse_first_event", Answer::Events),
    ] {
        let up = Upstream {
            answer,
            big: big.clone(),
        };
        let mut g = c.benchmark_group(format!("stack/{name}"));
        let bare = up.clone();
        g.bench_function("bare upstream", |b| {
            b.to_async(&rt).iter(|| {
                let svc = bare.clone();
                async move {
                    let res = svc.oneshot(request()).await.expect("answer");
                    let mut body = res.into_body();
                    black_box(body.frame().await)
                }
            })
        });
        let stack = full(up);
        g.bench_function("full stack", |b| {
            b.to_async(&rt).iter(|| {
                let svc = stack.clone();
                async move {
                    let res = svc.oneshot(request()).await.expect("answer");
                    let mut body = res.into_body();
                    // The first frame: the whole answer, or the first event.
                    black_box(body.frame().await.map(|f| f.expect("frame")))
                }
            })
        });
        g.finish();
    }

    let mut g = c.benchmark_group("stack/json_64k_mask_and_shape");
    g.throughput(Throughput::Bytes(big.len() as u64));
    let stack = full(Upstream {
        answer: Answer::Big,
        big: big.clone(),
    });
    g.bench_function("full stack", |b| {
        b.to_async(&rt).iter(|| {
            let svc = stack.clone();
            async move {
                let res = svc.oneshot(request()).await.expect("answer");
                black_box(res.into_body().collect().await.map(|c| c.to_bytes().len()))
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
