//! A cache-only reverse proxy: `CacheLayer` in front of a hyper-util client.
//!
//! Run with
//! `cargo run -p palisade-cache --example cache_proxy -- 127.0.0.1:8001 http://127.0.0.1:8000`
//! (listen address, upstream base URL). Optional third argument: a Redis URL
//! for L2 (`redis://127.0.0.1:6379`).

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use palisade_cache::CacheLayer;
use std::convert::Infallible;
use tower::{Service, ServiceBuilder, ServiceExt};

type Body = BoxBody<Bytes, hyper::Error>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8001".into());
    let upstream: Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8000".into())
        .parse()?;
    let mut builder = CacheLayer::builder().name("proxy");
    if let Some(redis) = args.next() {
        builder = builder.store(palisade_store::Store::connect(&redis).await?);
    }
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let cached = ServiceBuilder::new()
        .layer(builder.build().unwrap())
        .service(client);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("cache_proxy: {listen} -> {upstream}");
    loop {
        let (stream, _) = listener.accept().await?;
        let cached = cached.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let cached = cached.clone();
                let upstream = upstream.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let mut uri = upstream.clone().into_parts();
                    uri.path_and_query = pq.parse().ok();
                    parts.uri = Uri::from_parts(uri).expect("valid upstream URI");
                    parts.headers.remove(header::HOST);
                    let req = Request::from_parts(parts, body.boxed());
                    let res = match cached.oneshot(req).await {
                        Ok(res) => res.map(|b| b.boxed_unsync()),
                        Err(e) => {
                            eprintln!("upstream error: {e}");
                            http::Response::builder()
                                .status(502)
                                .body(
                                    http_body_util::Full::new(Bytes::from_static(b"bad gateway"))
                                        .map_err(|never| match never {})
                                        .boxed_unsync(),
                                )
                                .expect("valid response")
                        }
                    };
                    Ok::<_, Infallible>(res)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

// Keep `Service` in scope for readers following the tower pattern.
#[allow(dead_code)]
fn _assert_service<S: Service<Request<Body>>>(_: &S) {}
