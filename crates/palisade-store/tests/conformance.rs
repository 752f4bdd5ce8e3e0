//! One conformance suite, run against every backend: in-process (on a paused
//! tokio clock), a real `redis-server`, and a real 3-master Redis Cluster.
//!
//! Each case is a generic async fn over a [`Ctx`]. The in-process and Redis
//! backends get one `#[tokio::test]` per case (a fresh server each); the
//! cluster, which takes seconds to form, runs every case in one test.

use std::collections::HashSet;
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use futures_util::future::join_all;
use palisade_store::{Backend, GcraRule, Store, StoreError, TokenRule};
use palisade_testkit::{RedisCluster, RedisServer, command};

/// What a case needs: the store, a unique namespace, and a way to read the
/// remaining TTL / move time for the backend at hand.
struct Ctx {
    store: Store,
    ns: String,
    ports: Vec<u16>,
}

impl Ctx {
    fn key(&self, entity: &str, id: &str) -> String {
        self.store.key(&self.ns, entity, id, "v1")
    }

    fn memory(&self) -> bool {
        self.store.backend() == Backend::Memory
    }

    /// PTTL of `key` in ms, asked of whichever node owns it.
    fn pttl(&self, key: &str) -> i64 {
        for p in &self.ports {
            if let Ok(v) = command(*p, &["PTTL", key]) {
                return v.parse().expect("PTTL is an integer");
            }
        }
        panic!("no node answered PTTL {key}");
    }

    /// Waits until `key` is gone: advancing the paused clock in-process,
    /// polling (bounded) on Redis.
    async fn wait_expired(&self, key: &str, ttl: Duration) {
        if self.memory() {
            tokio::time::advance(ttl + Duration::from_millis(1)).await;
            assert_eq!(self.store.get(key).await.unwrap(), None);
            return;
        }
        let deadline = StdInstant::now() + ttl + Duration::from_secs(5);
        while self.store.get(key).await.unwrap().is_some() {
            assert!(StdInstant::now() < deadline, "{key} never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn case_get_set(c: &Ctx) {
    let k = c.key("kv", "a");
    assert_eq!(c.store.get(&k).await.unwrap(), None);
    c.store.set(&k, b("one"), None).await.unwrap();
    assert_eq!(c.store.get(&k).await.unwrap(), Some(b("one")));
    c.store.set(&k, b("two"), None).await.unwrap();
    assert_eq!(c.store.get(&k).await.unwrap(), Some(b("two")));
    let bin = Bytes::from_static(&[0, 255, 10, 13, 0]);
    c.store.set(&k, bin.clone(), None).await.unwrap();
    assert_eq!(c.store.get(&k).await.unwrap(), Some(bin));
    c.store.set(&k, Bytes::new(), None).await.unwrap();
    assert_eq!(c.store.get(&k).await.unwrap(), Some(Bytes::new()));
    assert!(matches!(
        c.store.set(&k, b("x"), Some(Duration::ZERO)).await,
        Err(StoreError::InvalidInput(_))
    ));
    c.store.ping().await.unwrap();
}

async fn case_ttl_expiry(c: &Ctx) {
    let k = c.key("ttl", "a");
    let ttl = Duration::from_millis(1000);
    c.store.set(&k, b("v"), Some(ttl)).await.unwrap();
    assert_eq!(c.store.get(&k).await.unwrap(), Some(b("v")));
    if c.memory() {
        tokio::time::advance(ttl - Duration::from_millis(1)).await;
        assert_eq!(
            c.store.get(&k).await.unwrap(),
            Some(b("v")),
            "alive just before the TTL"
        );
    } else {
        let pttl = c.pttl(&k);
        assert!(pttl > 0 && pttl <= 1000, "PTTL {pttl}");
    }
    c.wait_expired(&k, ttl).await;

    // A plain set removes an earlier TTL.
    c.store.set(&k, b("v"), Some(ttl)).await.unwrap();
    c.store.set(&k, b("w"), None).await.unwrap();
    if c.memory() {
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(c.store.get(&k).await.unwrap(), Some(b("w")));
    } else {
        assert_eq!(c.pttl(&k), -1);
    }
}

async fn case_set_if_absent(c: &Ctx) {
    let k = c.key("lock", "a");
    let ttl = Some(Duration::from_millis(1000));
    assert!(c.store.set_if_absent(&k, b("me"), ttl).await.unwrap());
    assert!(!c.store.set_if_absent(&k, b("you"), ttl).await.unwrap());
    assert_eq!(c.store.get(&k).await.unwrap(), Some(b("me")));
    if !c.memory() {
        let pttl = c.pttl(&k);
        assert!(pttl > 0 && pttl <= 1000, "PTTL {pttl}");
    }
    c.wait_expired(&k, Duration::from_millis(1000)).await;
    assert!(c.store.set_if_absent(&k, b("you"), None).await.unwrap());
    assert!(c.store.delete(&k).await.unwrap());
    // Exactly one of many concurrent lockers wins.
    let wins = join_all((0..50).map(|i| {
        let s = c.store.clone();
        let k = k.clone();
        async move {
            s.set_if_absent(&k, Bytes::from(i.to_string()), None)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1);
}

async fn case_many(c: &Ctx) {
    let keys: Vec<String> = (0..60).map(|i| c.key("many", &i.to_string())).collect();
    let entries: Vec<(&str, Bytes)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.as_str(), Bytes::from(format!("v{i}"))))
        .collect();
    c.store
        .set_many(&entries, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let missing = c.key("many", "missing");
    let mut ask: Vec<&str> = keys.iter().map(String::as_str).collect();
    ask.insert(7, &missing);
    let got = c.store.get_many(&ask).await.unwrap();
    assert_eq!(got.len(), 61);
    assert_eq!(got[7], None);
    for (i, v) in got.iter().enumerate().filter(|(i, _)| *i != 7) {
        let n = if i < 7 { i } else { i - 1 };
        assert_eq!(v.as_deref(), Some(format!("v{n}").as_bytes()));
    }
    if !c.memory() {
        let pttl = c.pttl(&keys[42]);
        assert!(pttl > 50_000 && pttl <= 60_000, "PTTL {pttl}");
    }
    assert!(c.store.get_many(&[]).await.unwrap().is_empty());
    c.store.set_many(&[], None).await.unwrap();
}

async fn case_increments(c: &Ctx) {
    let k = c.key("ctr", "a");
    let results = join_all((0..1000).map(|_| {
        let s = c.store.clone();
        let k = k.clone();
        tokio::spawn(async move { s.increment(&k, 1, None).await.unwrap() })
    }))
    .await;
    let mut seen: Vec<i64> = results.into_iter().map(Result::unwrap).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=1000).collect::<Vec<_>>(),
        "every increment saw a distinct value"
    );
    assert_eq!(c.store.get(&k).await.unwrap(), Some(b("1000")));
    assert_eq!(c.store.increment(&k, -1001, None).await.unwrap(), -1);

    // TTL only when the key is created.
    let t = c.key("ctr", "ttl");
    let ttl = Duration::from_secs(5);
    assert_eq!(c.store.increment(&t, 5, Some(ttl)).await.unwrap(), 5);
    if c.memory() {
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(c.store.increment(&t, 1, Some(ttl)).await.unwrap(), 6);
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert_eq!(c.store.get(&t).await.unwrap(), None, "TTL was not extended");
    } else {
        let first = c.pttl(&t);
        assert!(first > 0 && first <= 5000, "PTTL {first}");
        assert_eq!(
            c.store
                .increment(&t, 1, Some(Duration::from_secs(100)))
                .await
                .unwrap(),
            6
        );
        let second = c.pttl(&t);
        assert!(
            second > 0 && second <= first,
            "TTL not reset: {second} vs {first}"
        );
    }

    let s = c.key("ctr", "str");
    c.store.set(&s, b("not a number"), None).await.unwrap();
    let err = c.store.increment(&s, 1, None).await.unwrap_err();
    assert!(err.is_bad_data(), "{err:?}");
    assert!(
        c.store
            .increment(&s, 1, Some(ttl))
            .await
            .unwrap_err()
            .is_bad_data()
    );
}

async fn case_delete(c: &Ctx) {
    let k = c.key("del", "a");
    assert!(!c.store.delete(&k).await.unwrap());
    c.store.set(&k, b("v"), None).await.unwrap();
    assert!(c.store.delete(&k).await.unwrap());
    assert_eq!(c.store.get(&k).await.unwrap(), None);
    assert!(!c.store.delete(&k).await.unwrap());
}

async fn case_delete_matching(c: &Ctx) {
    let doomed: Vec<String> = (0..300)
        .map(|i| c.store.key(&c.ns, "user", &i.to_string(), "v1"))
        .collect();
    let kept: Vec<String> = (0..40)
        .map(|i| c.store.key(&c.ns, "tool", &i.to_string(), "v1"))
        .collect();
    for k in doomed.iter().chain(&kept) {
        c.store.set(k, b("v"), None).await.unwrap();
    }
    if c.store.backend() == Backend::Cluster {
        // The keys really are spread over every master.
        for p in &c.ports {
            let n: u64 = command(*p, &["DBSIZE"]).unwrap().parse().unwrap();
            assert!(n > 0, "node {p} holds none of the keys");
        }
    }
    let pattern = c.store.pattern(&c.ns, Some("user"));
    assert_eq!(c.store.delete_matching(&pattern).await.unwrap(), 300);
    for k in &doomed {
        assert_eq!(c.store.get(k).await.unwrap(), None, "{k}");
    }
    for k in &kept {
        assert_eq!(c.store.get(k).await.unwrap(), Some(b("v")), "{k}");
    }
    assert_eq!(c.store.delete_matching(&pattern).await.unwrap(), 0);
    // A literal pattern from user input matches only itself.
    let star = c.store.key(&c.ns, "tool", "*", "v1");
    assert_eq!(
        c.store
            .delete_matching(&Store::glob_escape(&star))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        c.store
            .delete_matching(&c.store.pattern(&c.ns, None))
            .await
            .unwrap(),
        40
    );
}

async fn case_compare_and_swap(c: &Ctx) {
    let k = c.key("cas", "a");
    assert!(
        !c.store
            .compare_and_swap(&k, Some(b"x"), b("y"), None)
            .await
            .unwrap()
    );
    // Exactly one of N racers creates it.
    let wins = join_all((0..50).map(|i| {
        let s = c.store.clone();
        let k = k.clone();
        async move {
            s.compare_and_swap(&k, None, Bytes::from(format!("w{i}")), None)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1);
    // N racers each move the same value from "0" on: exactly one wins.
    c.store.set(&k, b("0"), None).await.unwrap();
    let wins = join_all((0..50).map(|i| {
        let s = c.store.clone();
        let k = k.clone();
        async move {
            s.compare_and_swap(&k, Some(b"0"), Bytes::from(format!("n{i}")), None)
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1);
    // Read-CAS loops lose no update.
    c.store.set(&k, b("0"), None).await.unwrap();
    join_all((0..20).map(|_| {
        let s = c.store.clone();
        let k = k.clone();
        tokio::spawn(async move {
            loop {
                let cur = s.get(&k).await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&cur).unwrap().parse().unwrap();
                if s.compare_and_swap(&k, Some(&cur), Bytes::from((n + 1).to_string()), None)
                    .await
                    .unwrap()
                {
                    break;
                }
            }
        })
    }))
    .await;
    assert_eq!(c.store.get(&k).await.unwrap(), Some(b("20")));
    // With a TTL.
    assert!(
        c.store
            .compare_and_swap(
                &k,
                Some(b"20"),
                b("open"),
                Some(Duration::from_millis(1000))
            )
            .await
            .unwrap()
    );
    if !c.memory() {
        let pttl = c.pttl(&k);
        assert!(pttl > 0 && pttl <= 1000, "PTTL {pttl}");
    }
    c.wait_expired(&k, Duration::from_millis(1000)).await;
}

/// Asserts `d` within `slack` of `want` (0 in-process, where the clock is
/// paused; the measured elapsed time on Redis, whose clock runs).
fn near(d: Duration, want: Duration, slack: Duration, what: &str) {
    assert!(
        d <= want && want - d <= slack,
        "{what}: got {d:?}, want {want:?} (slack {slack:?})"
    );
}

async fn case_gcra(c: &Ctx) {
    let k = c.key("rl", "a");
    let rule = GcraRule::per_minute(10); // T = 6 s, tau = 60 s
    let t = Duration::from_secs(6);
    let start = StdInstant::now();
    for i in 0..10u32 {
        let d = c.store.rate_limit(&k, rule, 1).await.unwrap();
        let slack = if c.memory() {
            Duration::ZERO
        } else {
            start.elapsed()
        };
        assert!(d.allowed, "request {i}");
        assert_eq!(d.limit, 10);
        assert_eq!(d.remaining, 9 - i);
        assert_eq!(d.retry_after, None);
        near(d.reset_after, t * (i + 1), slack, "reset_after");
    }
    let d = c.store.rate_limit(&k, rule, 1).await.unwrap();
    let slack = if c.memory() {
        Duration::ZERO
    } else {
        start.elapsed()
    };
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    near(d.retry_after.unwrap(), t, slack, "retry_after");
    near(
        d.reset_after,
        Duration::from_secs(60),
        slack,
        "reset_after when denied",
    );
    if !c.memory() {
        let pttl = c.pttl(&k);
        assert!(pttl > 50_000 && pttl <= 60_000, "PTTL {pttl}");
    }
    // Cost: 3 units need 18 s.
    let d = c.store.rate_limit(&k, rule, 3).await.unwrap();
    near(
        d.retry_after.unwrap(),
        Duration::from_secs(18),
        slack + start.elapsed(),
        "retry_after cost 3",
    );
    if c.memory() {
        tokio::time::advance(t).await;
        let d = c.store.rate_limit(&k, rule, 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        assert!(!c.store.rate_limit(&k, rule, 1).await.unwrap().allowed);
        // A full period later the burst is back.
        tokio::time::advance(Duration::from_secs(60)).await;
        let d = c.store.rate_limit(&k, rule, 0).await.unwrap();
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after),
            (true, 10, Duration::ZERO)
        );
    }
    // A fast rule on Redis: after retry_after (real time) it allows again.
    let fast = c.key("rl", "fast");
    let rule = GcraRule::new(2, Duration::from_millis(200));
    assert!(c.store.rate_limit(&fast, rule, 2).await.unwrap().allowed);
    let d = c.store.rate_limit(&fast, rule, 1).await.unwrap();
    assert!(!d.allowed);
    let wait = d.retry_after.unwrap();
    assert!(wait <= Duration::from_millis(100));
    if c.memory() {
        tokio::time::advance(wait).await;
    } else {
        tokio::time::sleep(wait).await;
    }
    assert!(c.store.rate_limit(&fast, rule, 1).await.unwrap().allowed);

    // Concurrent callers never exceed the burst.
    let burst = c.key("rl", "burst");
    let rule = GcraRule::per_hour(100);
    let ds = join_all((0..300).map(|_| {
        let s = c.store.clone();
        let k = burst.clone();
        tokio::spawn(async move { s.rate_limit(&k, rule, 1).await.unwrap() })
    }))
    .await;
    assert_eq!(
        ds.iter().filter(|d| d.as_ref().unwrap().allowed).count(),
        100
    );

    // Bad input and bad data.
    assert!(matches!(
        c.store.rate_limit(&k, GcraRule::per_second(0), 1).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        c.store.rate_limit(&k, GcraRule::per_second(2), 3).await,
        Err(StoreError::InvalidInput(_))
    ));
    let junk = c.key("rl", "junk");
    c.store.set(&junk, b("abc"), None).await.unwrap();
    assert!(
        c.store
            .rate_limit(&junk, GcraRule::per_second(2), 1)
            .await
            .unwrap_err()
            .is_bad_data()
    );
}

async fn case_rate_limit_many(c: &Ctx, grouped: bool) {
    let key = |id: &str| {
        if grouped {
            c.store.grouped_key("req", &c.ns, "rlm", id, "v1")
        } else {
            c.key("rlm", id)
        }
    };
    let (user, tool) = (key("user"), key("tool"));
    let loose = GcraRule::per_hour(100);
    let tight = GcraRule::per_hour(2);
    let checks = [(user.as_str(), loose, 1), (tool.as_str(), tight, 1)];
    for i in 0..2u32 {
        let ds = c.store.rate_limit_many(&checks).await.unwrap();
        assert!(ds.iter().all(|d| d.allowed), "round {i}: {ds:?}");
        assert_eq!(ds[0].remaining, 99 - i);
        assert_eq!(ds[1].remaining, 1 - i);
    }
    // The tight one denies: nothing is taken from the loose one.
    for _ in 0..3 {
        let ds = c.store.rate_limit_many(&checks).await.unwrap();
        assert!(ds[0].allowed && !ds[1].allowed, "{ds:?}");
        assert_eq!(ds[0].remaining, 98, "reported against the untouched state");
        assert!(ds[1].retry_after.is_some());
    }
    let peek = c.store.rate_limit(&user, loose, 0).await.unwrap();
    assert_eq!(peek.remaining, 98, "the denied batches consumed nothing");
    // Same key twice sees the first check's cost.
    let twice = key("twice");
    let ds = c
        .store
        .rate_limit_many(&[(&twice, tight, 1), (&twice, tight, 1)])
        .await
        .unwrap();
    assert!(ds.iter().all(|d| d.allowed));
    assert_eq!((ds[0].remaining, ds[1].remaining), (1, 0));
    assert!(c.store.rate_limit_many(&[]).await.unwrap().is_empty());
}

async fn case_rate_limit_many_race(c: &Ctx) {
    // 30 concurrent batches: a loose key (100/h) and a tight one (5/h) in
    // different slots. Exactly 5 batches pass, and the loose key is charged
    // for exactly those 5 (denied batches, including ones that lost a race
    // on a cluster and were refunded, cost nothing).
    let loose = c.key("race", "loose");
    let tight = c.key("race", "tight");
    let (lr, tr) = (GcraRule::per_hour(100), GcraRule::per_hour(5));
    let ds = join_all((0..30).map(|_| {
        let s = c.store.clone();
        let (loose, tight) = (loose.clone(), tight.clone());
        tokio::spawn(async move {
            s.rate_limit_many(&[(&loose, lr, 1), (&tight, tr, 1)])
                .await
                .unwrap()
        })
    }))
    .await;
    let passed = ds
        .iter()
        .filter(|d| d.as_ref().unwrap().iter().all(|d| d.allowed))
        .count();
    assert_eq!(passed, 5);
    assert_eq!(
        c.store.rate_limit(&loose, lr, 0).await.unwrap().remaining,
        95
    );
    assert_eq!(
        c.store.rate_limit(&tight, tr, 0).await.unwrap().remaining,
        0
    );
}

async fn case_tokens(c: &Ctx) {
    // 1000 tokens a day: refill is 86.4 s a token, negligible while a case
    // runs, so the figures are exact on every backend.
    let k = c.key("tok", "a");
    let rule = TokenRule::per_day(1000);
    let slack = Duration::from_secs(5);
    let a = c.store.token_reserve(&k, rule, 600).await.unwrap();
    assert_eq!((a.quota, a.remaining), (1000, 400));
    assert_eq!(a.retry_after, None);
    let a = a.reservation.expect("600 of 1000 fit");
    let refused = c.store.token_reserve(&k, rule, 500).await.unwrap();
    assert!(!refused.admitted());
    assert_eq!(refused.remaining, 400);
    // 100 tokens short: 100 × 86.4 s.
    near(
        refused.retry_after.unwrap(),
        Duration::from_secs(8640),
        slack,
        "retry_after",
    );
    // Used less than reserved: the rest comes back.
    let s = c.store.token_settle(&k, rule, &a, 250).await.unwrap();
    assert_eq!(
        (s.held, s.charged, s.refunded, s.remaining),
        (true, 250, 350, 750)
    );
    // Settling twice charges again (the lease is gone): callers settle once.
    let b = c
        .store
        .token_reserve(&k, rule, 700)
        .await
        .unwrap()
        .reservation
        .unwrap();
    // Used more than reserved: charged, the level goes over the quota by the
    // difference, and nothing more is admitted.
    let s = c.store.token_settle(&k, rule, &b, 760).await.unwrap();
    assert_eq!((s.held, s.refunded, s.remaining), (true, 0, 0));
    assert!(!c.store.token_reserve(&k, rule, 1).await.unwrap().admitted());
    assert!(matches!(
        c.store.token_reserve(&k, rule, 1001).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        c.store.token_reserve(&k, TokenRule::per_day(0), 1).await,
        Err(StoreError::InvalidInput(_))
    ));
    if !c.memory() {
        let pttl = c.pttl(&k);
        assert!(
            pttl > 80_000_000,
            "the bucket lives until it refills: PTTL {pttl}"
        );
    }
}

async fn case_token_lease_expiry(c: &Ctx) {
    // A reservation never settled (its replica died) comes back after its
    // lease; settling it late charges the true amount in full.
    let k = c.key("tok", "lease");
    let lease = Duration::from_millis(300);
    let rule = TokenRule::per_day(1000).lease(lease);
    let held = c
        .store
        .token_reserve(&k, rule, 900)
        .await
        .unwrap()
        .reservation
        .unwrap();
    assert!(
        !c.store
            .token_reserve(&k, rule, 200)
            .await
            .unwrap()
            .admitted()
    );
    let again = if c.memory() {
        tokio::time::advance(lease).await;
        c.store.token_reserve(&k, rule, 1000).await.unwrap()
    } else {
        let deadline = StdInstant::now() + lease + Duration::from_secs(5);
        loop {
            let d = c.store.token_reserve(&k, rule, 1000).await.unwrap();
            if d.admitted() {
                break d;
            }
            assert!(StdInstant::now() < deadline, "the lease never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(again.remaining, 0, "all 1000 back, all 1000 reserved again");
    let fresh = again.reservation.unwrap();
    assert_ne!(fresh.id(), held.id());
    let s = c.store.token_settle(&k, rule, &fresh, 0).await.unwrap();
    assert_eq!((s.held, s.refunded, s.remaining), (true, 1000, 1000));
    let s = c.store.token_settle(&k, rule, &held, 120).await.unwrap();
    assert_eq!(
        (s.held, s.charged, s.refunded, s.remaining),
        (false, 120, 0, 880)
    );
}

async fn case_token_race(c: &Ctx) {
    // 40 concurrent reservations of 100 against 1000: exactly 10 admitted.
    let k = c.key("tok", "race");
    let rule = TokenRule::per_day(1000);
    let ds = join_all((0..40).map(|_| {
        let s = c.store.clone();
        let k = k.clone();
        tokio::spawn(async move { s.token_reserve(&k, rule, 100).await.unwrap() })
    }))
    .await;
    let admitted: Vec<_> = ds
        .into_iter()
        .filter_map(|d| d.unwrap().reservation)
        .collect();
    assert_eq!(admitted.len(), 10);
    let ids: HashSet<_> = admitted.iter().map(|r| r.id().to_owned()).collect();
    assert_eq!(ids.len(), 10, "ids are unique");
    // Settling each at 40 refunds 60 each.
    for r in &admitted {
        c.store.token_settle(&k, rule, r, 40).await.unwrap();
    }
    let d = c.store.token_reserve(&k, rule, 600).await.unwrap();
    assert_eq!((d.admitted(), d.remaining), (true, 0));
    // A grouped key (hash tag) works on a cluster too.
    let g = c.store.grouped_key("team-7", &c.ns, "tok", "g", "v1");
    let r = c
        .store
        .token_reserve(&g, rule, 10)
        .await
        .unwrap()
        .reservation
        .unwrap();
    assert!(c.store.token_settle(&g, rule, &r, 10).await.unwrap().held);
}

async fn case_streams(c: &Ctx) {
    let s = c.key("dlq", "stream");
    assert_eq!(c.store.stream_len(&s).await.unwrap(), 0);
    assert!(c.store.stream_read(&s, 10).await.unwrap().is_empty());
    let mut ids = Vec::new();
    for i in 0..20 {
        let n = i.to_string();
        ids.push(
            c.store
                .stream_append(&s, &[("n", n.as_bytes()), ("err", b"timeout")], 5)
                .await
                .unwrap(),
        );
    }
    let len = c.store.stream_len(&s).await.unwrap();
    if c.memory() {
        assert_eq!(len, 5);
    } else {
        assert!(
            (5..=20).contains(&len),
            "MAXLEN ~ keeps at least max_len: {len}"
        );
    }
    let got = c.store.stream_read(&s, 3).await.unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        ids[17..].to_vec(),
        "newest last"
    );
    assert_eq!(
        got[2].fields,
        vec![
            ("n".to_string(), b("19")),
            ("err".to_string(), b("timeout"))
        ]
    );
    assert_eq!(got[0].get("n"), Some(&b("17")));
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 20);
    assert!(c.store.stream_read(&s, 0).await.unwrap().is_empty());
    // A stream is not a string.
    assert!(c.store.get(&s).await.unwrap_err().is_bad_data());
    assert!(matches!(
        c.store.stream_append(&s, &[], 5).await,
        Err(StoreError::InvalidInput(_))
    ));
    let k = c.key("dlq", "str");
    c.store.set(&k, b("x"), None).await.unwrap();
    assert!(
        c.store
            .stream_append(&k, &[("a", b"b")], 5)
            .await
            .unwrap_err()
            .is_bad_data()
    );
}

/// Pub/sub: what is published reaches the channel's subscribers, in order,
/// and no other channel's.
async fn case_pubsub(c: &Ctx) {
    use palisade_store::Notice;
    let a = c.key("chan", "a");
    let other = c.key("chan", "b");
    let mut sub_a = c.store.subscribe(&a).await.unwrap();
    let mut sub_b = c.store.subscribe(&other).await.unwrap();
    for m in ["one", "two", "three"] {
        c.store.publish(&a, b(m)).await.unwrap();
    }
    for m in ["one", "two", "three"] {
        let got = tokio::time::timeout(Duration::from_secs(10), sub_a.next())
            .await
            .expect("a published message arrives");
        assert_eq!(got, Some(Notice::Message(b(m))));
    }
    c.store.publish(&other, b("for b")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), sub_b.next())
        .await
        .expect("b's message arrives");
    assert_eq!(got, Some(Notice::Message(b("for b"))), "b saw none of a's");
    // Publishing with nobody listening is fine.
    c.store
        .publish(&c.key("chan", "nobody"), b("x"))
        .await
        .unwrap();
}

macro_rules! memory_and_redis {
    ($($name:ident => $body:expr;)*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    let c = Ctx { store: Store::in_memory(), ns: "t".into(), ports: vec![] };
                    let f: &dyn Fn(&Ctx) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> = &$body;
                    f(&c).await;
                }
            )*
        }
        mod redis {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(server) = RedisServer::start() else { return };
                    let store = Store::connect(&server.url()).await.unwrap();
                    assert_eq!(store.backend(), Backend::Redis);
                    let c = Ctx { store, ns: "t".into(), ports: vec![server.port()] };
                    let f: &dyn Fn(&Ctx) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> = &$body;
                    f(&c).await;
                }
            )*
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn cluster_runs_every_case() {
            let Some(cluster) = RedisCluster::start(3) else { return };
            let store = Store::connect(&cluster.url()).await.unwrap();
            assert_eq!(store.backend(), Backend::Cluster);
            $(
                eprintln!("cluster case: {}", stringify!($name));
                let c = Ctx { store: store.clone(), ns: stringify!($name).into(), ports: cluster.ports() };
                let f: &dyn Fn(&Ctx) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> = &$body;
                f(&c).await;
            )*
        }
    };
}

memory_and_redis! {
    get_set => |c| Box::pin(case_get_set(c));
    ttl_expiry => |c| Box::pin(case_ttl_expiry(c));
    set_if_absent => |c| Box::pin(case_set_if_absent(c));
    many => |c| Box::pin(case_many(c));
    increments => |c| Box::pin(case_increments(c));
    delete => |c| Box::pin(case_delete(c));
    delete_matching => |c| Box::pin(case_delete_matching(c));
    compare_and_swap => |c| Box::pin(case_compare_and_swap(c));
    gcra => |c| Box::pin(case_gcra(c));
    rate_limit_many_ungrouped => |c| Box::pin(case_rate_limit_many(c, false));
    rate_limit_many_grouped => |c| Box::pin(case_rate_limit_many(c, true));
    rate_limit_many_race => |c| Box::pin(case_rate_limit_many_race(c));
    tokens => |c| Box::pin(case_tokens(c));
    token_lease_expiry => |c| Box::pin(case_token_lease_expiry(c));
    token_race => |c| Box::pin(case_token_race(c));
    streams => |c| Box::pin(case_streams(c));
    pubsub => |c| Box::pin(case_pubsub(c));
}
