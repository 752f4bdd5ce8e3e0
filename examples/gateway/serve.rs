//! The client-facing listener: hyper's connection builder with a timer, so
//! a client that sends half a request head and stops is cut off after
//! `server.header_read_timeout`; a bound on connections served at once,
//! past which a new one gets `503` at once; graceful shutdown.

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use palisade::config::ServerSection;
use palisade::core::body::idle::IdleTimeoutBody;
use std::{future::Future, sync::Arc, time::Duration};
use tokio::{io::AsyncWriteExt, net::TcpListener, sync::Semaphore};
use tower::ServiceExt;

/// What a connection over the limit is told before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: 30\r\nconnection: close\r\n\r\ntoo many connections, retry\r\n\r\n";

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

/// Serves `app` on `listener` until `shutdown` resolves, then lets the
/// connections in flight finish (at most 30 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &ServerSection,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        // A head that does not fit is answered 431 by hyper.
        .max_buf_size(cfg.max_head_bytes.max(8192));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let limit = Arc::new(Semaphore::new(max_connections(cfg)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
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
            tokio::spawn(async move {
                let _ = stream.write_all(BUSY).await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body_idle = cfg.body_idle_timeout;
        let svc = app
            .clone()
            .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                // A client that stops sending its body is cut off (408).
                req.map(|body| IdleTimeoutBody::new(body, body_idle))
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 30 s after shutdown began");
    }
    Ok(())
}
