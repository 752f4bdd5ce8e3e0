//! A real upstream on 127.0.0.1 that answers by script, and a real
//! hyper-util client.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Response, request::Parts};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};
use tokio::net::TcpListener;

/// What the upstream does with one request.
pub enum Action {
    Respond(Response<Full<Bytes>>),
    /// Close the connection without answering.
    Drop,
    /// Never answer.
    Hang,
}

pub fn status(code: u16) -> Action {
    Action::Respond(
        Response::builder()
            .status(code)
            .body(Full::new(Bytes::from(format!("status {code}"))))
            .unwrap(),
    )
}

pub fn with_header(code: u16, name: &'static str, value: &str) -> Action {
    Action::Respond(
        Response::builder()
            .status(code)
            .header(name, value)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
}

pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicU32>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl Upstream {
    /// Requests that reached the upstream (their head at least).
    pub fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }

    /// The bodies received, in order.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.bodies.lock().unwrap().clone()
    }

    pub fn uri(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Starts an upstream; `script(n, parts)` decides the answer to the n-th
/// request (0-based).
pub async fn upstream<F>(script: F) -> Upstream
where
    F: Fn(u32, &Parts) -> Action + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU32::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(script);
    let (h, b) = (hits.clone(), bodies.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (h, b, script) = (h.clone(), b.clone(), script.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (h, b, script) = (h.clone(), b.clone(), script.clone());
                        async move {
                            let n = h.fetch_add(1, Ordering::SeqCst);
                            let (parts, body) = req.into_parts();
                            let action = script(n, &parts);
                            if let Action::Drop = action {
                                return Err(std::io::Error::other("dropped on purpose"));
                            }
                            let body = body.collect().await.map_err(std::io::Error::other)?;
                            b.lock().unwrap().push(body.to_bytes());
                            match action {
                                Action::Respond(res) => Ok(res),
                                Action::Hang => std::future::pending().await,
                                Action::Drop => unreachable!(),
                            }
                        }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits, bodies }
}

/// A hyper-util client that opens a connection per request (so a dropped
/// connection never poisons the next attempt).
pub fn client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// The value of a counter series in the registry.
pub fn counter(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}
