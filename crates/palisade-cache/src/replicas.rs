//! Invalidations reach every replica: a purge on one replica is published
//! on the store (Redis pub/sub) and every other replica sharing the store
//! drops the same entries from its in-process tier (L1), so no replica
//! keeps serving what another purged. A replica whose subscription was
//! interrupted drops its whole L1 once it is back (it may have missed
//! purges); L2 is shared and needs nothing.

use crate::core::{Core, Value};
use bytes::{BufMut, Bytes, BytesMut};
use palisade_store::{Notice, Store};
use std::sync::Weak;
use std::time::Duration;

/// One purge, as sent between replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Purge {
    /// One key.
    Key(String),
    /// Every key starting with this.
    Prefix(String),
    /// Every key matching this glob.
    Matching(String),
    /// Everything.
    All,
}

impl Purge {
    /// `origin` (the sending replica) then the purge.
    pub(crate) fn encode(&self, origin: u64) -> Bytes {
        let (op, arg) = match self {
            Purge::Key(k) => (b'k', k.as_str()),
            Purge::Prefix(p) => (b'p', p.as_str()),
            Purge::Matching(m) => (b'm', m.as_str()),
            Purge::All => (b'a', ""),
        };
        let mut b = BytesMut::with_capacity(9 + arg.len());
        b.put_u64(origin);
        b.put_u8(op);
        b.put_slice(arg.as_bytes());
        b.freeze()
    }

    /// The sender and the purge; `None` for a message this version cannot
    /// read.
    pub(crate) fn decode(msg: &[u8]) -> Option<(u64, Purge)> {
        let origin = u64::from_be_bytes(msg.get(..8)?.try_into().ok()?);
        let arg = std::str::from_utf8(msg.get(9..)?).ok()?.to_owned();
        let purge = match *msg.get(8)? {
            b'k' => Purge::Key(arg),
            b'p' => Purge::Prefix(arg),
            b'm' => Purge::Matching(arg),
            b'a' => Purge::All,
            _ => return None,
        };
        Some((origin, purge))
    }
}

/// Applies other replicas' purges to `core`'s L1 until `core` is dropped.
/// Subscribing is retried (with backoff) while the store is unreachable.
pub(crate) fn listen<V: Value>(core: Weak<Core<V>>, store: Store, channel: String, origin: u64) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut sub = loop {
            match store.subscribe(&channel).await {
                Ok(sub) => break sub,
                Err(err) => {
                    if core.strong_count() == 0 {
                        return;
                    }
                    tracing::debug!(%channel, error = %err, "cache: cannot subscribe to purges yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        while let Some(notice) = sub.next().await {
            let Some(core) = core.upgrade() else { return };
            match notice {
                Notice::Message(msg) => match Purge::decode(&msg) {
                    Some((from, purge)) if from != origin => core.apply_purge(&purge),
                    Some(_) => {}
                    None => tracing::debug!(%channel, "cache: unreadable purge message ignored"),
                },
                Notice::Gap => {
                    tracing::info!(cache = %core.name, "purges may have been missed: L1 dropped");
                    core.apply_purge(&Purge::All);
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purges_round_trip() {
        for p in [
            Purge::Key("GET:/users/7".into()),
            Purge::Prefix("GET:/users".into()),
            Purge::Matching("*:/users/*".into()),
            Purge::All,
        ] {
            assert_eq!(Purge::decode(&p.encode(42)), Some((42, p)));
        }
        assert_eq!(Purge::decode(b"short"), None);
        assert_eq!(Purge::decode(b"\0\0\0\0\0\0\0\x01zx"), None);
    }
}
