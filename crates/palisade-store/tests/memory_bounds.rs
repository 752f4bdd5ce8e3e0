//! The in-process store stays within its bounds, dropping expired entries
//! first and then the least recently used (paused clock).

use std::time::Duration;

use bytes::Bytes;
use palisade_store::{GcraRule, MemoryConfig, Store};

#[tokio::test(start_paused = true)]
async fn entry_bound_evicts_least_recently_used() {
    let store = Store::in_memory_with(MemoryConfig {
        max_entries: 100,
        ..MemoryConfig::default()
    });
    for i in 0..100 {
        store
            .set(&format!("k{i}"), Bytes::from_static(b"v"), None)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert_eq!(store.memory_stats().unwrap().entries, 100);
    // k0 is used again, so it is the most recent.
    assert!(store.get("k0").await.unwrap().is_some());
    tokio::time::advance(Duration::from_millis(1)).await;
    store
        .set("new", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    let stats = store.memory_stats().unwrap();
    assert_eq!(stats.entries, 90, "swept down to 90 %");
    assert_eq!(stats.evictions, 11);
    assert!(
        store.get("k0").await.unwrap().is_some(),
        "recently used survives"
    );
    assert!(store.get("new").await.unwrap().is_some());
    for i in 1..=11 {
        assert_eq!(
            store.get(&format!("k{i}")).await.unwrap(),
            None,
            "k{i} was the oldest"
        );
    }
    assert!(store.get("k12").await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn expired_entries_go_before_live_ones() {
    let store = Store::in_memory_with(MemoryConfig {
        max_entries: 50,
        ..MemoryConfig::default()
    });
    for i in 0..30 {
        store
            .set(&format!("live{i}"), Bytes::from_static(b"v"), None)
            .await
            .unwrap();
    }
    for i in 0..20 {
        store
            .set(
                &format!("tmp{i}"),
                Bytes::from_static(b"v"),
                Some(Duration::from_secs(1)),
            )
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    store
        .set("one-more", Bytes::from_static(b"v"), None)
        .await
        .unwrap();
    assert_eq!(store.memory_stats().unwrap().entries, 31);
    for i in 0..30 {
        assert!(store.get(&format!("live{i}")).await.unwrap().is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn byte_bound_holds() {
    let max_bytes = 64 * 1024;
    let store = Store::in_memory_with(MemoryConfig {
        max_entries: 1_000_000,
        max_bytes,
    });
    let value = Bytes::from(vec![7u8; 1024]);
    for i in 0..1000 {
        store
            .set(&format!("big{i}"), value.clone(), None)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_micros(10)).await;
        assert!(
            store.memory_stats().unwrap().bytes <= max_bytes + 2048,
            "over the bound at {i}"
        );
    }
    assert!(store.get("big999").await.unwrap().is_some());
    assert_eq!(store.get("big0").await.unwrap(), None);
    // Deleting and overwriting keep the accounting exact.
    let before = store.memory_stats().unwrap();
    store
        .set("big999", Bytes::from_static(b"x"), None)
        .await
        .unwrap();
    let after = store.memory_stats().unwrap();
    assert_eq!(before.bytes - after.bytes, 1023);
    assert!(store.delete("big999").await.unwrap());
    assert_eq!(store.memory_stats().unwrap().entries, after.entries - 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_state_expires_with_its_reset_time() {
    let store = Store::in_memory();
    let rule = GcraRule::per_second(10);
    for _ in 0..10 {
        assert!(store.rate_limit("rl", rule, 1).await.unwrap().allowed);
    }
    assert!(!store.rate_limit("rl", rule, 1).await.unwrap().allowed);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        store.get("rl").await.unwrap(),
        None,
        "state gone after reset_after"
    );
    assert_eq!(store.rate_limit("rl", rule, 1).await.unwrap().remaining, 9);
}
