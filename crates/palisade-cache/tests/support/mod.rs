//! A real axum upstream that counts its hits, and a hyper-util client.
#![allow(dead_code)]

use axum::{
    Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, Response, StatusCode},
    routing,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
};
use tokio::sync::watch;

#[derive(Clone)]
pub struct Upstream {
    hits: Arc<Mutex<HashMap<String, usize>>>,
    pub version: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
    gate: watch::Sender<bool>,
}

impl Upstream {
    pub fn new() -> Self {
        Self {
            hits: Arc::default(),
            version: Arc::new(AtomicUsize::new(1)),
            failing: Arc::default(),
            gate: watch::channel(true).0,
        }
    }

    /// Hits of `/kind/...` routes (by kind, e.g. "fresh").
    pub fn hits(&self, kind: &str) -> usize {
        self.hits.lock().unwrap().get(kind).copied().unwrap_or(0)
    }

    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/{kind}/{id}",
                routing::get(handle).post(mutate).delete(mutate),
            )
            .with_state(self.clone())
    }

    /// Serves the router on 127.0.0.1:0.
    pub async fn serve(&self) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = self.router();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (addr, task)
    }
}

async fn mutate(
    State(up): State<Upstream>,
    Path((kind, _id)): Path<(String, String)>,
) -> Response<Body> {
    *up.hits
        .lock()
        .unwrap()
        .entry(format!("{kind}-mutate"))
        .or_default() += 1;
    up.version.fetch_add(1, SeqCst);
    Response::builder()
        .status(200)
        .body(Body::from("done"))
        .unwrap()
}

async fn handle(
    State(up): State<Upstream>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response<Body> {
    *up.hits.lock().unwrap().entry(kind.clone()).or_default() += 1;
    let v = up.version.load(SeqCst);
    let r = Response::builder();
    let body = format!("{kind}/{id} v{v}");
    match kind.as_str() {
        "fresh" => r
            .header("cache-control", "max-age=60")
            .body(Body::from(body)),
        "public" => r
            .header("cache-control", "public, max-age=60")
            .body(Body::from(format!("{body} for {}", user(&headers)))),
        "vary" => {
            let lang = headers
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            r.header("cache-control", "max-age=60")
                .header("vary", "Accept-Language")
                .body(Body::from(format!("{body} in {lang}")))
        }
        "private" => r
            .header("cache-control", "private, max-age=60")
            .body(Body::from(format!("{body} for {}", user(&headers)))),
        "nostore" => r
            .header("cache-control", "no-store")
            .body(Body::from(format!("{body} for {}", user(&headers)))),
        "auth" => r
            .header("cache-control", "max-age=60")
            .body(Body::from(format!("{body} for {}", user(&headers)))),
        "etag" => {
            let etag = format!("\"v{v}\"");
            if headers.get("if-none-match").and_then(|h| h.to_str().ok()) == Some(etag.as_str()) {
                *up.hits
                    .lock()
                    .unwrap()
                    .entry("etag-304".into())
                    .or_default() += 1;
                return r
                    .status(StatusCode::NOT_MODIFIED)
                    .header("etag", etag)
                    .header("cache-control", "max-age=10")
                    .header("x-revalidated", "yes")
                    .body(Body::empty())
                    .unwrap();
            }
            r.header("cache-control", "max-age=10")
                .header("etag", etag)
                .body(Body::from(body))
        }
        "swr" => r
            .header("cache-control", "max-age=10, stale-while-revalidate=60")
            .body(Body::from(body)),
        // Stale as soon as stored (Age > max-age) but usable while it is
        // refreshed; held at the gate like "slow".
        "slowswr" => {
            let mut gate = up.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            r.header("cache-control", "max-age=1, stale-while-revalidate=600")
                .header("age", "5")
                .body(Body::from(body))
        }
        "sie" => {
            if up.failing.load(SeqCst) {
                return r.status(503).body(Body::from("down")).unwrap();
            }
            r.header("cache-control", "max-age=10, stale-if-error=60")
                .body(Body::from(body))
        }
        // Already stale when stored (Age > max-age), usable on error.
        "aged" => r
            .header("cache-control", "max-age=1, stale-if-error=600")
            .header("age", "5")
            .body(Body::from(body)),
        "slow" => {
            let mut gate = up.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            r.header("cache-control", "max-age=60")
                .body(Body::from(body))
        }
        "slowprivate" => {
            let mut gate = up.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            r.header("cache-control", "private, max-age=60")
                .body(Body::from(body))
        }
        "big" => r
            .header("cache-control", "max-age=60")
            .body(Body::from(vec![b'x'; 4096])),
        // A health check: nothing to store or revalidate with, until the
        // version is bumped to 2 (then fresh for a minute).
        "plain" if v < 2 => r
            .header("content-type", "text/plain")
            .body(Body::from(body)),
        "plain" => r
            .header("cache-control", "max-age=60")
            .body(Body::from(body)),
        "plainvary" if v < 2 => r.body(Body::from(body)),
        "plainvary" => {
            let lang = headers
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            r.header("cache-control", "max-age=60")
                .header("vary", "Accept-Language")
                .body(Body::from(format!("{body} in {lang}")))
        }
        _ => r.status(404).body(Body::from("no such kind")),
    }
    .unwrap()
}

fn user(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned()
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn get(addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

pub async fn text<B>(res: http::Response<B>) -> (String, String)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let x = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (x, String::from_utf8(body.to_vec()).unwrap())
}
