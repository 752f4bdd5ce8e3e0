//! palisade on a plain hyper server (no axum): a per-IP rate limit keyed by
//! the connected peer, which hyper does not know — the accept loop does.
//! One line hands it to the layers:
//!
//! ```text
//! req.extensions_mut().insert(PeerAddr(peer));
//! ```
//!
//! The example serves on loopback, calls itself four times from one address
//! and prints each status (the limit is 2 a minute), then what happens when
//! a request carries no peer address at all: it shares one key with every
//! other such request instead of skipping the limit.
//!
//! Run with `cargo run --example hyper_server`.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use palisade::core::key::{PeerAddr, PeerIp};
use palisade::ratelimit::{Limit, Quota, RateLimitLayer, RateLimiter};
use std::convert::Infallible;
use tower::{ServiceBuilder, ServiceExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let limiter = RateLimiter::builder()
        .limit(Limit::new("ip", PeerIp::new(), Quota::per_minute(2)))
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_limiter = limiter.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let svc = ServiceBuilder::new()
                // The one line: the accept loop knows the peer, the layers
                // read it from the request.
                .map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(PeerAddr(peer));
                    req
                })
                .layer(RateLimitLayer::new(server_limiter.clone()))
                .service_fn(hello);
            tokio::spawn(async move {
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(svc))
                    .await;
            });
        }
    });

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for i in 1..=4 {
        let res = client.get(format!("http://{addr}/").parse()?).await?;
        let status = res.status();
        let _ = res.into_body().collect().await?;
        println!("request {i} from 127.0.0.1: {status}");
    }

    // A server that forgot the line: no peer address on the request. The
    // per-IP limit is not skipped: all such requests share one key.
    let forgetful = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .service_fn(|_req: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
        });
    for i in 1..=3 {
        let res = forgetful
            .clone()
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await?;
        println!("request {i} without a peer address: {}", res.status());
    }
    println!(
        "requests seen without a peer address: {}",
        PeerIp::missing_count()
    );
    Ok(())
}
