//! The listeners (client-facing and admin): hyper's connection builder with
//! a timer, and HTTP/1.1 heads checked before hyper reads them
//! ([`StrictHeads`]), so a client that sends half a request head and stops
//! is cut off after `server.header_read_timeout`; a connection with no
//! request in progress is closed after `server.keep_alive_timeout`; a bound on
//! connections served at once, in all and per client address, past which a
//! new one gets `503` at once; HTTP/2 limits on streams, header lists and
//! resets; request bodies bounded in size and in idle time; graceful
//! shutdown.

use crate::strict::{Refusal, StrictHeads};
use axum::{Router, body::Body, extract::ConnectInfo};
use dashmap::DashMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use palisade::config::ServerSection;
use palisade::core::BoxError;
use palisade::core::body::idle::{IdleTimeout, IdleTimeoutBody};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
};
use tower::ServiceExt;

/// What a connection over a limit is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: 30\r\nconnection: close\r\n\r\ntoo many connections, retry\r\n\r\n";

/// HTTP/2 streams a client may reset before the server has accepted them
/// (the rapid-reset attack, CVE-2023-44487) before the connection gets
/// `GOAWAY` (h2's own default, set here so it cannot change under us).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// HTTP/2 streams the server may reset because the client broke a rule
/// (a malformed request, say) before the connection gets `GOAWAY`.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// An HTTP/2 connection that has sent nothing this long is pinged; one that
/// does not answer the ping within `H2_PING_TIMEOUT` is closed (a peer that
/// vanished without closing).
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The listener metrics' families, registered once per registry.
#[derive(Clone)]
pub struct ServerMetricFamilies {
    open: IntGaugeVec,
    refused: IntCounterVec,
    timed_out: IntCounterVec,
}

impl ServerMetricFamilies {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        use palisade::core::metrics::{register_counter_vec, register_int_gauge_vec};
        Ok(Self {
            open: register_int_gauge_vec(
                registry,
                "palisade_server_connections_open",
                "Client connections open now, by listener.",
                &["listener"],
            )?,
            refused: register_counter_vec(
                registry,
                "palisade_server_refused_total",
                "Connections and requests refused by a listener limit (max_connections, \
                 max_connections_per_ip, max_body_bytes, cancelled_requests, strict_http1).",
                &["listener", "limit"],
            )?,
            timed_out: register_counter_vec(
                registry,
                "palisade_server_timeouts_total",
                "Connections closed and requests cut by a listener timeout \
                 (header_read_timeout, keep_alive_timeout, body_idle_timeout).",
                &["listener", "timeout"],
            )?,
        })
    }

    /// The metrics of the listener called `name`.
    pub fn listener(&self, name: &str) -> ServerMetrics {
        ServerMetrics {
            open: self.open.with_label_values(&[name]),
            refused_connections: self.refused.with_label_values(&[name, "max_connections"]),
            refused_per_ip: self
                .refused
                .with_label_values(&[name, "max_connections_per_ip"]),
            refused_body: self.refused.with_label_values(&[name, "max_body_bytes"]),
            refused_framing: self.refused.with_label_values(&[name, "strict_http1"]),
            refused_resets: self
                .refused
                .with_label_values(&[name, "cancelled_requests"]),
            header_read_timeout: self
                .timed_out
                .with_label_values(&[name, "header_read_timeout"]),
            keep_alive_timeout: self
                .timed_out
                .with_label_values(&[name, "keep_alive_timeout"]),
            body_idle_timeout: self
                .timed_out
                .with_label_values(&[name, "body_idle_timeout"]),
        }
    }
}

/// One listener's metrics.
#[derive(Clone)]
pub struct ServerMetrics {
    open: IntGauge,
    refused_connections: IntCounter,
    refused_per_ip: IntCounter,
    refused_resets: IntCounter,
    refused_framing: IntCounter,
    /// Also counted by the front door for a `Content-Length` over the limit.
    pub refused_body: IntCounter,
    pub header_read_timeout: IntCounter,
    keep_alive_timeout: IntCounter,
    body_idle_timeout: IntCounter,
}

/// How one listener serves, beyond the `[server]` section.
#[derive(Clone)]
pub struct Listener {
    pub metrics: ServerMetrics,
    /// Connections served at once (0: from the `[server]` section).
    pub max_connections: usize,
    /// Peers not limited per address (trusted proxies).
    pub exempt: Arc<dyn Fn(IpAddr) -> bool + Send + Sync>,
}

/// Connections served at once: the configured number, or three quarters of
/// the open-file limit (the rest is for upstream connections, Redis and
/// logs).
fn max_connections(cfg: &ServerSection) -> usize {
    if cfg.max_connections > 0 {
        return cfg.max_connections;
    }
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse::<usize>()
                .ok()
        })
        .unwrap_or(1024);
    (soft / 4 * 3).max(16)
}

/// Connections held per client address (IPv6: per /64; a sharded map: no
/// lock shared by every accept).
type PerIp = Arc<DashMap<IpAddr, usize>>;

/// What a served connection holds until it ends: its place under the
/// global limit, its address's count, the open-connections gauge.
struct Held {
    _permit: OwnedSemaphorePermit,
    per_ip: Option<(PerIp, IpAddr)>,
    open: IntGauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
        if let Some((map, ip)) = self.per_ip.take()
            && let dashmap::Entry::Occupied(mut count) = map.entry(ip)
        {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }
}

/// The key a client address is counted under: an IPv4 address, or an IPv6
/// address's /64 (one host usually holds a whole /64).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
    }
}

/// Takes a place for `ip` under `max` (0: no limit); `None` when it is full.
fn take_ip_slot(map: &PerIp, ip: IpAddr, max: usize) -> Option<Option<(PerIp, IpAddr)>> {
    if max == 0 {
        return Some(None);
    }
    let mut count = map.entry(ip).or_insert(0);
    if *count >= max {
        return None;
    }
    *count += 1;
    Some(Some((map.clone(), ip)))
}

/// Answers `503` and closes, off the accept loop.
fn refuse(mut stream: TcpStream, counter: &IntCounter) {
    counter.inc();
    tokio::spawn(async move {
        let _ = stream.write_all(BUSY).await;
        let _ = stream.shutdown().await;
    });
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the
/// connections in flight finish (at most 30 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &ServerSection,
    how: Listener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // `0s`: no limit (hyper's own default would be 30 s). With strict
        // heads they are timed by `StrictHeads` (hyper would also time an
        // idle keep-alive connection, which is `keep_alive_timeout`'s job).
        .header_read_timeout(
            (!cfg.header_read_timeout.is_zero() && !cfg.strict_http1)
                .then_some(cfg.header_read_timeout),
        )
        // A head that does not fit is answered 431 by hyper.
        .max_buf_size(max_head(cfg));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.max_concurrent_streams)
        // Also bounds the CONTINUATION frames h2 reads for one header
        // block (header list size / frame size); past it: GOAWAY.
        .max_header_list_size(cfg.max_header_list_size)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let builder = Arc::new(builder);
    let max = if how.max_connections > 0 {
        how.max_connections
    } else {
        max_connections(cfg)
    };
    let limit = Arc::new(Semaphore::new(max));
    let per_ip: PerIp = Arc::new(DashMap::new());
    let (stop, stopping) = watch::channel(false);
    let body_limit = match cfg.max_body_bytes {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of descriptors, or a connection reset before it
                    // was accepted: keep serving the others.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refuse(stream, &how.metrics.refused_connections);
            continue;
        };
        let ip = peer.ip().to_canonical();
        let per_ip_max = if (how.exempt)(ip) {
            0
        } else {
            cfg.max_connections_per_ip
        };
        let Some(ip_slot) = take_ip_slot(&per_ip, ip_key(ip), per_ip_max) else {
            drop(permit);
            refuse(stream, &how.metrics.refused_per_ip);
            continue;
        };
        how.metrics.open.inc();
        let held = Held {
            _permit: permit,
            per_ip: ip_slot,
            open: how.metrics.open.clone(),
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            builder.clone(),
            Settings {
                body_idle: cfg.body_idle_timeout,
                body_limit,
                keep_alive: cfg.keep_alive_timeout,
                strict: cfg.strict_http1,
                header_read: (!cfg.header_read_timeout.is_zero())
                    .then_some(cfg.header_read_timeout),
                max_head: max_head(cfg),
                metrics: how.metrics.clone(),
            },
            stopping.clone(),
            held,
        ));
    }
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    // Every connection holds a receiver until it ends.
    if tokio::time::timeout(Duration::from_secs(30), stop.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 30 s after shutdown began");
    }
    Ok(())
}

/// The largest request head hyper reads (`server.max_head_bytes`, at
/// least 8 KiB).
fn max_head(cfg: &ServerSection) -> usize {
    cfg.max_head_bytes.max(8192)
}

/// What each connection needs from the configuration.
struct Settings {
    body_idle: Duration,
    body_limit: usize,
    keep_alive: Duration,
    /// `server.strict_http1`: heads checked by [`StrictHeads`].
    strict: bool,
    /// `server.header_read_timeout` (`None`: off).
    header_read: Option<Duration>,
    max_head: usize,
    metrics: ServerMetrics,
}

/// The answer to a head [`StrictHeads`] refused.
fn refused_head(why: Refusal) -> http::Response<Body> {
    let status = http::StatusCode::BAD_REQUEST;
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": why.detail(),
    });
    let mut res = http::Response::new(Body::from(body.to_string()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    res
}

/// Requests on one connection the client cancelled before their answer
/// was ready (an HTTP/2 `RST_STREAM` after the server accepted the
/// stream), past which, when they are also most of its requests, the
/// connection is closed: rapid reset (CVE-2023-44487) on streams h2's own
/// limit (`MAX_PENDING_ACCEPT_RESET_STREAMS`) did not see, because they were
/// accepted before their reset arrived.
const MAX_CANCELLED_REQUESTS: usize = 100;

/// Requests in progress on one connection (head received, response body
/// not yet finished), and how many were answered or cancelled.
#[derive(Clone)]
struct Activity {
    active: Arc<watch::Sender<usize>>,
    answered: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    abusive: Arc<Notify>,
}

/// One request in progress; ends when dropped (with the response body).
struct Busy(Arc<watch::Sender<usize>>);

/// A request whose answer is not ready yet: dropped before `answered`, it
/// was cancelled by the client.
struct Pending {
    activity: Activity,
    answered: bool,
}

impl Pending {
    fn answer(mut self) {
        self.answered = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let a = &self.activity;
        if self.answered {
            a.answered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let cancelled = a.cancelled.fetch_add(1, Ordering::Relaxed) + 1;
        if cancelled > MAX_CANCELLED_REQUESTS && cancelled > a.answered.load(Ordering::Relaxed) {
            a.abusive.notify_one();
        }
    }
}

impl Activity {
    fn new() -> (Self, watch::Receiver<usize>) {
        let (tx, rx) = watch::channel(0usize);
        let activity = Self {
            active: Arc::new(tx),
            answered: Arc::default(),
            cancelled: Arc::default(),
            abusive: Arc::default(),
        };
        (activity, rx)
    }

    fn begin(&self) -> (Busy, Pending) {
        self.active.send_modify(|n| *n += 1);
        let pending = Pending {
            activity: self.clone(),
            answered: false,
        };
        (Busy(self.active.clone()), pending)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Resolves once no request has been in progress for `idle`.
async fn idle_for(active: &mut watch::Receiver<usize>, idle: Duration) {
    loop {
        if *active.borrow_and_update() == 0 {
            match tokio::time::timeout(idle, active.changed()).await {
                Err(_) => return,
                Ok(Ok(())) => {}
                Ok(Err(_)) => std::future::pending().await,
            }
        } else if active.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    s: Settings,
    mut stopping: watch::Receiver<bool>,
    held: Held,
) {
    let (activity, mut active) = Activity::new();
    let abusive = activity.abusive.clone();
    let (body_idle, body_limit, metrics) = (s.body_idle, s.body_limit, s.metrics.clone());
    let strict = s.strict;
    // Set on a `101`: from then on the connection carries another protocol.
    let switched = Arc::new(AtomicBool::new(false));
    let stream = StrictHeads::new(
        stream,
        s.strict,
        s.max_head,
        s.header_read,
        s.metrics.header_read_timeout.clone(),
        switched.clone(),
    );
    let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (busy, pending) = activity.begin();
        let metrics = metrics.clone();
        let refusal = if strict {
            crate::strict::refused(req.uri().path())
        } else {
            None
        };
        let switched = switched.clone();
        let mut req = req.map(|body| {
            // A client that stops sending its body is cut off (408); one
            // that sends more than the limit is refused (413).
            Body::new(
                Limited::new(IdleTimeoutBody::new(body, body_idle), body_limit).map_err(
                    move |err: BoxError| {
                        if err.is::<IdleTimeout>() {
                            metrics.body_idle_timeout.inc();
                        } else if err.is::<LengthLimitError>() {
                            metrics.refused_body.inc();
                        }
                        err
                    },
                ),
            )
        });
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            if let Some(why) = refusal {
                metrics.refused_framing.inc();
                pending.answer();
                drop(busy);
                return Ok(refused_head(why));
            }
            let res = app.oneshot(req).await?;
            if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                switched.store(true, Ordering::Release);
            }
            pending.answer();
            // The request is in progress until its answer is sent.
            Ok::<_, std::convert::Infallible>(res.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _busy = &busy;
                    frame
                }))
            }))
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc))
        .into_owned();
    tokio::pin!(conn);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            _ = stopping.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = abusive.notified() => {
                // Dropped, not drained: an abusive client gets no grace.
                s.metrics.refused_resets.inc();
                tracing::warn!(%peer, "connection closed: most of its requests were cancelled (rapid reset)");
                break Ok(());
            }
            () = idle_for(&mut active, s.keep_alive), if !closing && !s.keep_alive.is_zero() => {
                // HTTP/1.1: closed; HTTP/2: GOAWAY.
                closing = true;
                s.metrics.keep_alive_timeout.inc();
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(err) = result {
        // hyper's own limit (`StrictHeads` counts its own).
        let timed_out = err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout);
        if timed_out {
            s.metrics.header_read_timeout.inc();
        }
        tracing::debug!(error = %err, %peer, "connection ended with an error");
    }
    drop(stopping);
    drop(held);
}
