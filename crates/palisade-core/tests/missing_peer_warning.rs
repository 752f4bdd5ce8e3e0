//! Requests without a peer address are logged once per process, not once
//! per request. Its own test binary: the warning is process-wide, and the
//! subscriber that counts it is global.

use palisade_core::key::{KeyExtractor, MissingPeer, PeerIp};
use std::sync::atomic::{AtomicUsize, Ordering};
use tracing::{Event, Level, Metadata, Subscriber, span};

static WARNINGS: AtomicUsize = AtomicUsize::new(0);
static NAMES_SETUP: AtomicUsize = AtomicUsize::new(0);

/// Counts warning events, and those whose message names the setup to fix.
struct CountWarnings;

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{value:?} "));
    }
}

impl Subscriber for CountWarnings {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, event: &Event<'_>) {
        if *event.metadata().level() == Level::WARN {
            WARNINGS.fetch_add(1, Ordering::SeqCst);
            let mut message = Message(String::new());
            event.record(&mut message);
            if message.0.contains("PeerAddr")
                && message.0.contains("into_make_service_with_connect_info")
            {
                NAMES_SETUP.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[test]
fn missing_peers_warn_once_and_count_every_time() {
    tracing::subscriber::set_global_default(CountWarnings).unwrap();
    let before = PeerIp::missing_count();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let req = http::Request::new(());
                for policy in [
                    MissingPeer::SharedKey,
                    MissingPeer::Skip,
                    MissingPeer::Refuse,
                ] {
                    for _ in 0..25 {
                        let key = PeerIp::new().when_missing(policy);
                        // As a layer does: a refusal, or else a key.
                        if key.refusal(&req).is_none() {
                            let _ = key.extract(&req);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(
        PeerIp::missing_count() - before,
        300,
        "every request counted"
    );
    assert_eq!(
        WARNINGS.load(Ordering::SeqCst),
        1,
        "one warning, not one per request"
    );
    assert_eq!(NAMES_SETUP.load(Ordering::SeqCst), 1);
}
