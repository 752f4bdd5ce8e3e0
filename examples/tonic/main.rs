//! palisade on a tonic gRPC server and client, speaking gRPC status codes:
//!
//! - the server has a rate limit (5 calls a minute per `x-client` metadata
//!   value) that refuses with `RESOURCE_EXHAUSTED`, and a circuit breaker
//!   that opens after 3 failed calls in a row and then answers `UNAVAILABLE`
//!   without calling the service;
//! - the client retries `UNAVAILABLE` with a short backoff.
//!
//! The layers are the HTTP ones: they recognise gRPC requests by their
//! content type and answer with `grpc-status`. The service and its messages
//! are written by hand in `greeter.rs`, so no `protoc` is needed.
//!
//! Run with `cargo run --example tonic`. It starts the server on a free
//! loopback port, makes a few calls, prints each status and exits.

mod greeter;

use greeter::{GreeterClient, GreeterServer, HelloReply, HelloRequest};
use palisade::breaker::CircuitBreakerLayer;
use palisade::core::{BoxError, key::HeaderKey};
use palisade::ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter};
use palisade::retry::{ReplayBody, RetryLayer};
use std::{
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};
use tonic::{
    Request, Response, Status,
    body::Body,
    transport::{Endpoint, Server, server::TcpIncoming},
};
use tower::{ServiceBuilder, util::BoxCloneService};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The client's transport, boxed so that it has a name.
type Transport = BoxCloneService<http::Request<Body>, http::Response<Body>, BoxError>;

/// How often `SayHello` really ran for "flaky" and "broken".
static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);
static BROKEN_CALLS: AtomicU32 = AtomicU32::new(0);

/// `SayHello`: "broken" always fails, "flaky" fails every other call.
async fn say_hello(req: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
    let name = req.into_inner().name;
    let message = match name.as_str() {
        "broken" => {
            BROKEN_CALLS.fetch_add(1, Ordering::SeqCst);
            return Err(Status::internal("the database is down"));
        }
        "flaky" => {
            let attempt = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
            if attempt % 2 == 1 {
                return Err(Status::unavailable("warming up, try again"));
            }
            format!("hello flaky (attempt {attempt})")
        }
        _ => format!("hello {name}"),
    };
    Ok(Response::new(HelloReply { message }))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // The server: rate limit outermost, then the breaker, then the service.
    let limiter = RateLimiter::builder()
        .limit(Limit::new(
            "client",
            HeaderKey::new("x-client"),
            Quota::per_minute(5),
        ))
        .build()?;
    let breaker = CircuitBreakerLayer::builder("greeter")
        .failure_threshold(3)
        .recovery_timeout(Duration::from_secs(30))
        .http()
        .build()?;
    let greeter_breaker = breaker.breaker().expect("a single breaker");
    let greeter = GreeterServer::new(tower::service_fn(say_hello));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .layer(RateLimitLayer::new(limiter))
        .layer(breaker)
        .add_service(greeter)
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(server);
    println!("gRPC server on http://{addr}");

    // The client: a tonic channel behind palisade's retry. The retry layer
    // buffers request bodies (`ReplayBody`) so an attempt can be sent again.
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let retry = RetryLayer::builder()
        .backoff(Duration::from_millis(50), 2.0, Duration::from_secs(1))
        .build()?;
    let transport: Transport = ServiceBuilder::new()
        .boxed_clone()
        .map_err(BoxError::from)
        .layer(retry)
        .map_request(|req: http::Request<ReplayBody<Body>>| req.map(Body::new))
        .service(channel);
    let mut client = GreeterClient::new(transport);

    println!("-- a normal call");
    call(&mut client, "alice", "world").await;
    println!("-- UNAVAILABLE once, retried by the client");
    call(&mut client, "alice", "flaky").await;
    println!("-- one client over its rate limit");
    for _ in 0..6 {
        call(&mut client, "bob", "again").await;
    }
    println!("-- a failing method trips the breaker");
    for _ in 0..4 {
        call(&mut client, "carol", "broken").await;
    }
    let ran = BROKEN_CALLS.load(Ordering::SeqCst);
    let breaker = greeter_breaker.snapshot();
    println!(
        "SayHello(broken) ran {ran} time(s); breaker {}, {} call(s) rejected",
        breaker.state, breaker.rejected_calls
    );
    Ok(())
}

/// Calls `SayHello(name)` as `client` and prints the outcome.
async fn call(greeter: &mut GreeterClient<Transport>, client: &'static str, name: &str) {
    let mut req = Request::new(HelloRequest {
        name: name.to_owned(),
    });
    req.metadata_mut()
        .insert("x-client", client.parse().expect("ASCII"));
    match greeter.say_hello(req).await {
        Ok(res) => println!(
            "{client}: SayHello({name}) -> OK: {}",
            res.into_inner().message
        ),
        Err(status) => println!(
            "{client}: SayHello({name}) -> {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}
