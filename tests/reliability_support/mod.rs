//! Helpers for the reliability, security and hostile-input tests: upstreams
//! that misbehave on purpose, bounded load loops that count every request,
//! the gateway's memory, and what Redis holds.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A pooled HTTP/1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

/// What a request came to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A full answer with this status.
    Status(u16),
    /// The connection failed or the body broke off.
    Error(String),
    /// No answer within the request timeout.
    TimedOut,
}

/// One request: its outcome, when it was sent and answered, and a header.
#[derive(Clone, Debug)]
pub struct Record {
    pub outcome: Outcome,
    pub sent: Instant,
    pub done: Instant,
    pub x_cache: Option<String>,
    pub body: Bytes,
}

/// Sends one request with a timeout and records what came back.
pub async fn one(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Record {
    let sent = Instant::now();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).expect("request");
    let fut = async {
        let res = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = res.status().as_u16();
        let x_cache = res
            .headers()
            .get("x-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok::<_, String>((status, x_cache, body))
    };
    let (outcome, x_cache, body) = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok((s, x, b))) => (Outcome::Status(s), x, b),
        Ok(Err(e)) => (Outcome::Error(e), None, Bytes::new()),
        Err(_) => (Outcome::TimedOut, None, Bytes::new()),
    };
    Record {
        outcome,
        sent,
        done: Instant::now(),
        x_cache,
        body,
    }
}

/// Counts of a finished load.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub sent: u64,
    pub answered: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: Vec<String>,
    pub timed_out: u64,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn from_records(records: &[Record], elapsed: Duration) -> Self {
        let mut r = LoadReport {
            sent: records.len() as u64,
            elapsed,
            ..Default::default()
        };
        for rec in records {
            match &rec.outcome {
                Outcome::Status(s) => {
                    r.answered += 1;
                    *r.statuses.entry(*s).or_default() += 1;
                }
                Outcome::Error(e) => r.errors.push(e.clone()),
                Outcome::TimedOut => r.timed_out += 1,
            }
        }
        r
    }

    pub fn missing(&self) -> u64 {
        self.sent - self.answered
    }

    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }
}

/// `total` GETs of `url_of(i)` with at most `concurrency` in flight.
pub async fn load<F>(url_of: F, total: u64, concurrency: usize) -> (LoadReport, Vec<Record>)
where
    F: Fn(u64) -> String,
{
    load_with(|i| (url_of(i), Vec::new()), total, concurrency).await
}

/// Same, with per-request headers: `req_of(i)` gives the URL and headers.
pub async fn load_with<F>(req_of: F, total: u64, concurrency: usize) -> (LoadReport, Vec<Record>)
where
    F: Fn(u64) -> (String, Vec<(String, String)>),
{
    use futures_util::StreamExt;
    let client = client();
    let started = Instant::now();
    let records: Vec<Record> = futures_util::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            let (url, headers) = req_of(i);
            async move {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                one(
                    &client,
                    Method::GET,
                    &url,
                    &headers,
                    Bytes::new(),
                    Duration::from_secs(15),
                )
                .await
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let report = LoadReport::from_records(&records, started.elapsed());
    (report, records)
}

/// A load that runs in the background until stopped (or until `max`
/// requests), recording every request.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl SteadyLoad {
    /// `workers` loops each sending GET `url_of(i)` (the i-th request), one
    /// after the other, until stopped or `max` requests were issued.
    pub fn start<F>(url_of: F, workers: usize, max: u64) -> SteadyLoad
    where
        F: Fn(u64) -> String + Send + Sync + 'static,
    {
        let url_of = Arc::new(url_of);
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let issued = Arc::new(AtomicU64::new(0));
        let client = client();
        let tasks = (0..workers)
            .map(|_| {
                let (stop, records, issued, client, url_of) = (
                    stop.clone(),
                    records.clone(),
                    issued.clone(),
                    client.clone(),
                    url_of.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let i = issued.fetch_add(1, Ordering::Relaxed);
                        if i >= max {
                            break;
                        }
                        let rec = one(
                            &client,
                            Method::GET,
                            &url_of(i),
                            &[],
                            Bytes::new(),
                            Duration::from_secs(15),
                        )
                        .await;
                        records.lock().unwrap().push(rec);
                    }
                })
            })
            .collect();
        SteadyLoad {
            stop,
            records,
            tasks,
            started: Instant::now(),
        }
    }

    /// Requests finished so far.
    pub fn done(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    /// A copy of the records so far.
    pub fn snapshot(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until `n` requests have finished (bounded by `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) {
        let until = Instant::now() + limit;
        while self.done() < n {
            assert!(
                Instant::now() < until,
                "load stalled at {} of {n} requests",
                self.done()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the loops, waits for the requests in flight, returns every record.
    pub async fn finish(self) -> (LoadReport, Vec<Record>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("load task");
        }
        let records = std::mem::take(&mut *self.records.lock().unwrap());
        (
            LoadReport::from_records(&records, self.started.elapsed()),
            records,
        )
    }
}

/// How a raw TCP upstream misbehaves once it has read a request head.
#[derive(Clone, Debug)]
pub enum Misbehaviour {
    /// Never answers (keeps the connection open).
    Hang,
    /// Closes with a TCP reset.
    Reset,
    /// Writes these bytes and closes.
    Write(Vec<u8>),
}

/// A raw TCP server on loopback; counts the requests it read.
pub struct RawUpstream {
    pub url: String,
    pub requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start(how: Misbehaviour) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (how, count) = (how.clone(), count.clone());
                tokio::spawn(async move { serve_raw(stream, how, count).await });
            }
        });
        RawUpstream {
            url: format!("http://{addr}"),
            requests,
            task,
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn serve_raw(mut stream: TcpStream, how: Misbehaviour, count: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    count.fetch_add(1, Ordering::SeqCst);
    match how {
        Misbehaviour::Hang => {
            // Hold the connection until the peer goes away.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
        Misbehaviour::Reset => {
            // A zero linger sends RST on close and never blocks the thread.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
        Misbehaviour::Write(bytes) => {
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// Serves an axum router on loopback; returns its URL.
pub async fn serve(router: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

/// The resident set size of a process, in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Every key of a Redis node (`redis-cli --scan`).
pub fn redis_keys(port: u16) -> Vec<String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--scan"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success(), "redis-cli --scan failed");
    let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect();
    keys.sort();
    keys
}

/// Polls `check` every 5 ms until it holds, for at most `limit`; returns
/// how long it took, or `None`.
pub async fn time_until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Prints a figure line the RELIABILITY.md tables are built from.
pub fn figure(test: &str, what: &str, value: impl std::fmt::Display) {
    println!("FIGURE | {test} | {what} | {value}");
}

pub fn status_of(rec: &Record) -> Option<StatusCode> {
    match rec.outcome {
        Outcome::Status(s) => StatusCode::from_u16(s).ok(),
        _ => None,
    }
}
