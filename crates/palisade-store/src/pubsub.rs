//! Messages to every replica: [`Store::publish`](crate::Store::publish) and
//! [`Store::subscribe`](crate::Store::subscribe).
//!
//! On Redis it is Redis pub/sub: a subscription keeps its own connection
//! (on a cluster, to one node: classic pub/sub reaches every node) and
//! reconnects by itself. Pub/sub does not replay what was sent while a
//! subscriber was away, so after a reconnect the subscription yields
//! [`Notice::Gap`]: the subscriber must assume it missed messages (a cache
//! drops its in-process tier). In-process, subscribers of one store see
//! each other's messages.

use crate::StoreError;
use bytes::Bytes;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// What a [`Subscription`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A message published on the channel.
    Message(Bytes),
    /// Messages may have been missed (the connection was lost and is back,
    /// or the subscriber fell behind): resynchronise.
    Gap,
}

/// Messages published on one channel, by any replica; see the [module
/// docs](self). Dropping it ends the subscription and its connection.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<Notice>,
}

impl Subscription {
    /// The next notice; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Notice> {
        self.rx.recv().await
    }
}

/// Notices buffered per subscription before it counts as falling behind.
const BUFFER: usize = 1024;

/// A subscription fed by an in-process broadcast channel.
pub(crate) fn memory(mut source: broadcast::Receiver<Bytes>) -> Subscription {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        loop {
            let notice = match source.recv().await {
                Ok(m) => Notice::Message(m),
                Err(broadcast::error::RecvError::Lagged(_)) => Notice::Gap,
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(notice).await.is_err() {
                return;
            }
        }
    });
    Subscription { rx }
}

/// A subscription on Redis: `urls` are tried in order (one node is enough).
/// Resolves once the first subscription is in place, so a message published
/// after it returns is received.
pub(crate) async fn redis(
    urls: Vec<String>,
    channel: String,
    connect_timeout: Duration,
) -> Result<Subscription, StoreError> {
    let first = connect(&urls, &channel, connect_timeout).await?;
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut pubsub = first;
        let mut backoff = Duration::from_millis(50);
        loop {
            {
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    if tx.send(Notice::Message(payload)).await.is_err() {
                        return;
                    }
                }
            }
            tracing::warn!(%channel, "store subscription lost; reconnecting");
            pubsub = loop {
                if tx.is_closed() {
                    return;
                }
                match connect(&urls, &channel, connect_timeout).await {
                    Ok(p) => break p,
                    Err(err) => {
                        tracing::debug!(%channel, error = %err, "store subscription: reconnect failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            backoff = Duration::from_millis(50);
            tracing::info!(%channel, "store subscription back");
            if tx.send(Notice::Gap).await.is_err() {
                return;
            }
        }
    });
    Ok(Subscription { rx })
}

async fn connect(
    urls: &[String],
    channel: &str,
    timeout: Duration,
) -> Result<redis::aio::PubSub, StoreError> {
    let mut last = StoreError::InvalidConfig("no Redis node to subscribe on".into());
    for url in urls {
        let attempt = async {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| StoreError::InvalidConfig(e.to_string()))?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, StoreError>(pubsub)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(p)) => return Ok(p),
            Ok(Err(e)) => last = e,
            Err(_) => last = StoreError::Timeout(timeout),
        }
    }
    Err(last)
}
