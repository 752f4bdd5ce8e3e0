//! Circuit state shared across replicas through palisade-store: in-process
//! on a paused clock (exact timing), then on a real redis-server and a real
//! 3-master Redis Cluster (bounded polling, outages).

use palisade_breaker::{
    Breaker, BreakerRegistry, CircuitBreakerLayer, ConfigError, KeyedBreakers, State,
};
use palisade_core::key::key_fn;
use palisade_store::Store;
use palisade_testkit::{RedisCluster, RedisServer};
use std::time::Duration;
use tokio::time::advance;

const POLL: Duration = Duration::from_secs(1);

/// Each replica's completed rounds with the store so far.
fn syncs(replicas: &[&Breaker]) -> Vec<u64> {
    replicas.iter().map(|b| b.store_syncs()).collect()
}

/// Waits (bounded; the paused clock does not move) until every replica
/// has completed a round with the store since `before` was taken: its
/// local changes made before then are written, a poll then due is read.
async fn synced(replicas: &[&Breaker], before: &[u64]) {
    palisade_testkit::yield_until("a round with the store", || {
        replicas
            .iter()
            .zip(before)
            .all(|(b, n)| b.store_syncs() > *n)
    })
    .await;
}

/// Waits until every replica's task has made its first round (the poll at
/// its start).
async fn started(replicas: &[&Breaker]) {
    synced(replicas, &vec![0; replicas.len()]).await;
}

fn fail(b: &Breaker, n: usize) {
    for _ in 0..n {
        let _ = b.call_sync(|| Err::<(), _>("down"));
    }
}

fn replica(store: &Store, registry: &BreakerRegistry, poll: Duration) -> Breaker {
    CircuitBreakerLayer::builder("payments")
        .failure_threshold(2)
        .recovery_timeout(Duration::from_secs(10))
        .shared_poll_interval(poll)
        .registry(registry)
        .shared(store)
        .build()
        .unwrap()
        .breaker()
        .unwrap()
}

fn store_errors(registry: &BreakerRegistry) -> f64 {
    let prom = prometheus::Registry::new();
    registry.register_metrics(&prom).unwrap();
    prom.gather()
        .iter()
        .find(|f| f.name() == "palisade_breaker_store_errors_total")
        .map_or(0.0, |f| f.get_metric()[0].get_counter().get_value())
}

#[tokio::test(start_paused = true)]
async fn a_trip_reaches_the_other_replica_at_its_next_poll_exactly() {
    let store = Store::in_memory();
    let (ra, rb) = (BreakerRegistry::new(), BreakerRegistry::new());
    let a = replica(&store, &ra, POLL);
    let b = replica(&store, &rb, POLL);
    started(&[&a, &b]).await;

    advance(Duration::from_millis(500)).await;
    let before = syncs(&[&a]);
    fail(&a, 2);
    assert_eq!(a.state(), State::Open);
    synced(&[&a], &before).await;
    // A's trip is in the store. B counts locally and has not polled yet:
    // it still lets calls through.
    assert_eq!(b.state(), State::Closed);
    assert!(b.call_sync(|| Ok::<_, ()>(())).is_ok());

    advance(Duration::from_millis(499)).await;
    assert_eq!(b.state(), State::Closed, "before B's poll at t = 1 s");

    let before = syncs(&[&b]);
    advance(Duration::from_millis(1)).await;
    synced(&[&b], &before).await;
    assert_eq!(b.state(), State::Open, "at B's poll, one interval later");
    let open = b.try_acquire().unwrap_err();
    // A opened at t = 0.5 s for 10 s; B shares the end (to the millisecond).
    let left = open.retry_after().unwrap();
    assert!(
        (Duration::from_millis(9_499)..=Duration::from_millis(9_500)).contains(&left),
        "{left:?}"
    );
    assert_eq!(b.snapshot().consecutive_failures, 0);

    // Both go half-open on their own when the shared open time ends.
    let before = syncs(&[&a, &b]);
    advance(Duration::from_millis(9_501)).await;
    synced(&[&a, &b], &before).await;
    assert_eq!(a.state(), State::HalfOpen);
    assert_eq!(b.state(), State::HalfOpen);
    // B's trials succeed: B closes, and A follows at its next poll.
    let before = syncs(&[&b]);
    for _ in 0..2 {
        b.call_sync(|| Ok::<_, ()>(())).unwrap();
    }
    assert_eq!(b.state(), State::Closed);
    synced(&[&b], &before).await;
    let before = syncs(&[&a]);
    advance(POLL).await;
    synced(&[&a], &before).await;
    assert_eq!(a.state(), State::Closed);
    assert_eq!(store_errors(&ra), 0.0);
}

#[tokio::test(start_paused = true)]
async fn reset_force_open_and_disable_through_the_registry_are_shared() {
    let store = Store::in_memory();
    let (ra, rb) = (BreakerRegistry::new(), BreakerRegistry::new());
    let a = replica(&store, &ra, POLL);
    let b = replica(&store, &rb, POLL);
    started(&[&a, &b]).await;

    // A change on A is written, then read by B at its next poll.
    let step = async |f: &dyn Fn(), want: State| {
        let before = syncs(&[&a]);
        f();
        synced(&[&a], &before).await;
        let before = syncs(&[&b]);
        advance(POLL).await;
        synced(&[&b], &before).await;
        assert_eq!(b.state(), want);
    };
    step(&|| fail(&a, 2), State::Open).await;
    step(&|| assert!(ra.reset("payments")), State::Closed).await;
    step(&|| assert!(ra.force_open("payments")), State::ForcedOpen).await;
    assert!(b.try_acquire().unwrap_err().is_forced());
    step(&|| assert!(ra.disable("payments")), State::Disabled).await;
    step(&|| assert!(ra.metrics_only("payments")), State::MetricsOnly).await;
    step(&|| assert!(ra.reset("payments")), State::Closed).await;
    // And back: a manual change on B reaches A.
    let before = syncs(&[&b]);
    rb.force_open("payments");
    synced(&[&b], &before).await;
    let before = syncs(&[&a]);
    advance(POLL).await;
    synced(&[&a], &before).await;
    assert_eq!(a.state(), State::ForcedOpen);
}

#[tokio::test(start_paused = true)]
async fn a_trip_does_not_undo_a_forced_open_elsewhere_and_a_close_gives_way() {
    let store = Store::in_memory();
    let (ra, rb) = (BreakerRegistry::new(), BreakerRegistry::new());
    // A long poll, so both replicas act before either reads the other.
    let a = replica(&store, &ra, Duration::from_secs(3600));
    let b = replica(&store, &rb, Duration::from_secs(3600));
    started(&[&a, &b]).await;
    let before = syncs(&[&b]);
    b.force_open();
    synced(&[&b], &before).await;
    // A trips without having seen B's forced open: its write loses the
    // compare-and-swap, and A adopts the forced-open state.
    let before = syncs(&[&a]);
    fail(&a, 2);
    synced(&[&a], &before).await;
    assert_eq!(a.state(), State::ForcedOpen);

    // A manual reset wins over anything.
    let before = syncs(&[&a]);
    a.reset();
    synced(&[&a], &before).await;
    let before = syncs(&[&a, &b]);
    advance(Duration::from_secs(3600)).await;
    synced(&[&a, &b], &before).await;
    assert_eq!(b.state(), State::Closed);

    // B opens for 1 s and goes half-open; meanwhile A trips (B's open time
    // is over, so A's trip is written over it).
    let before = syncs(&[&b]);
    b.trip(Some(Duration::from_secs(1)));
    synced(&[&b], &before).await;
    advance(Duration::from_secs(1)).await;
    assert_eq!(b.state(), State::HalfOpen);
    let before = syncs(&[&a]);
    fail(&a, 2);
    synced(&[&a], &before).await;
    // B's trials succeed, but its close loses the compare-and-swap against
    // A's newer trip: B gives way and opens for A's time.
    let before = syncs(&[&b]);
    for _ in 0..2 {
        b.call_sync(|| Ok::<_, ()>(())).unwrap();
    }
    synced(&[&b], &before).await;
    assert_eq!(b.state(), State::Open);
    let left = b.snapshot().retry_after.unwrap();
    assert!(left > Duration::from_millis(9_990), "{left:?}");
    assert_eq!(a.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn per_key_breakers_share_by_key_and_new_keys_read_at_once() {
    let store = Store::in_memory();
    let layer = || {
        CircuitBreakerLayer::builder("tools")
            .per_key(key_fn(|r: &String| Some(r.clone())))
            .shared_poll_interval(POLL)
            .shared(&store)
            .build()
            .unwrap()
    };
    let (a, b) = (layer(), layer());
    let (ka, kb): (&KeyedBreakers<_>, &KeyedBreakers<_>) = (a.breakers(), b.breakers());
    // Per-key breakers count their group's rounds; the key-less one stands
    // for each group.
    let (sa, sb) = (ka.breakers()[0].clone(), kb.breakers()[0].clone());
    started(&[&sa, &sb]).await;
    let before = syncs(&[&sa]);
    ka.get("search".to_owned()).trip(None);
    synced(&[&sa], &before).await;
    // B has no breaker for "search" yet: creating it reads the store at
    // once, without waiting for the poll.
    let before = syncs(&[&sb]);
    let b_search = kb.get("search".to_owned());
    synced(&[&sb], &before).await;
    assert_eq!(b_search.state(), State::Open);
    let before = syncs(&[&sb]);
    assert_eq!(kb.get("fetch".to_owned()).state(), State::Closed);
    synced(&[&sb], &before).await;
    // An existing key follows at the next poll, not before.
    let before = syncs(&[&sa]);
    ka.get("fetch".to_owned()).force_open();
    synced(&[&sa], &before).await;
    assert_eq!(kb.get("fetch".to_owned()).state(), State::Closed);
    let before = syncs(&[&sb]);
    advance(POLL).await;
    synced(&[&sb], &before).await;
    assert_eq!(kb.get("fetch".to_owned()).state(), State::ForcedOpen);
    // The key-less breaker is its own circuit.
    assert_eq!(kb.breakers()[0].state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn bad_data_in_the_store_is_counted_and_overwritten() {
    let store = Store::in_memory();
    let registry = BreakerRegistry::new();
    let key = store.key("breaker", "payments", "_", "v1");
    store
        .set(&key, bytes::Bytes::from_static(b"garbage"), None)
        .await
        .unwrap();
    let a = replica(&store, &registry, POLL);
    started(&[&a]).await;
    assert_eq!(store_errors(&registry), 1.0);
    assert!(a.call_sync(|| Ok::<_, ()>(())).is_ok());
    let before = syncs(&[&a]);
    fail(&a, 2);
    synced(&[&a], &before).await;
    let raw = store.get(&key).await.unwrap().unwrap();
    assert!(raw.starts_with(b"1 open "), "{raw:?}");
}

#[tokio::test(start_paused = true)]
async fn the_background_task_ends_with_the_layer() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let store = Store::in_memory();
    let registry = BreakerRegistry::new();
    let single = CircuitBreakerLayer::builder("one")
        .registry(&registry)
        .shared(&store)
        .build()
        .unwrap();
    let keyed = CircuitBreakerLayer::builder("many")
        .per_key(key_fn(|r: &String| Some(r.clone())))
        .shared(&store)
        .build()
        .unwrap();
    let k = keyed.breakers().get("x".to_owned());
    let alive = async |n: usize, what: &str| {
        palisade_testkit::yield_until(what, || metrics.num_alive_tasks() == n).await;
    };
    alive(2, "both tasks run").await;
    drop(keyed);
    // A per-key breaker handle alone does not keep the group's task.
    alive(1, "the group's task ended").await;
    drop(k);
    drop(single);
    // The registry still names "one": its task stays until it is removed,
    // and still polls.
    let one = || registry.get("one").expect("registered");
    let before = syncs(&[&one()]);
    advance(one().config().shared_poll_interval).await;
    palisade_testkit::yield_until("the task of \"one\" polled", || {
        one().store_syncs() > before[0]
    })
    .await;
    assert_eq!(metrics.num_alive_tasks(), 1);
    registry.remove("one");
    alive(0, "the task of \"one\" ended").await;
}

#[test]
fn a_shared_breaker_needs_a_runtime() {
    let store = Store::in_memory();
    let err = CircuitBreakerLayer::builder("x")
        .shared(&store)
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::NoRuntime);
}

// ---- Real Redis: real time, bounded polling, no fixed sleeps ----------

const FAST: Duration = Duration::from_millis(50);

/// Checks `cond` every 20 ms, at most 500 times (10 s).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not observed within 500 polls: {what}");
}

enum Fixture {
    Server(RedisServer),
    Cluster(RedisCluster),
}

impl Fixture {
    fn url(&self) -> String {
        match self {
            Self::Server(s) => s.url(),
            Self::Cluster(c) => c.url(),
        }
    }
    fn kill(&mut self) {
        match self {
            Self::Server(s) => s.kill(),
            Self::Cluster(c) => c.kill_all(),
        }
    }
    fn restart(&mut self) {
        match self {
            Self::Server(s) => s.restart(),
            Self::Cluster(c) => c.restart_all(),
        }
    }
}

async fn two_replicas_on(mut fixture: Fixture) {
    let url = fixture.url();
    // Two replicas: two processes' worth of state, each its own connection.
    let (sa, sb) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    let (ra, rb) = (BreakerRegistry::new(), BreakerRegistry::new());
    let a = replica(&sa, &ra, FAST);
    let b = replica(&sb, &rb, FAST);

    // Tripping A makes B reject.
    fail(&a, 2);
    eventually("B open after A tripped", || b.state() == State::Open).await;
    assert!(b.call_sync(|| Ok::<_, ()>(())).unwrap_err().is_open());
    // Reset on B closes A.
    rb.reset("payments");
    eventually("A closed after B's reset", || a.state() == State::Closed).await;
    // Force-open through A's registry reaches B.
    ra.force_open("payments");
    eventually("B forced open", || b.state() == State::ForcedOpen).await;
    ra.reset("payments");
    eventually("B closed again", || b.state() == State::Closed).await;

    // The store goes away: calls keep working on local state.
    fixture.kill();
    for _ in 0..10 {
        assert!(b.call_sync(|| Ok::<_, ()>(())).is_ok());
    }
    fail(&a, 2);
    assert_eq!(a.state(), State::Open);
    assert!(a.call_sync(|| Ok::<_, ()>(())).unwrap_err().is_open());
    eventually("store errors counted", || store_errors(&ra) > 0.0).await;
    assert!(
        b.call_sync(|| Ok::<_, ()>(())).is_ok(),
        "B keeps its own state"
    );
    assert_eq!(b.state(), State::Closed);

    // Back (empty): A's unwritten trip is written and B follows.
    fixture.restart();
    eventually("B open after the store came back", || {
        b.state() == State::Open
    })
    .await;
    assert_eq!(a.state(), State::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    two_replicas_on(Fixture::Server(server)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    two_replicas_on(Fixture::Cluster(cluster)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_breakers_on_a_redis_cluster() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let url = cluster.url();
    let layer = async || {
        CircuitBreakerLayer::builder("tools")
            .per_key(key_fn(|r: &String| Some(r.clone())))
            .shared_poll_interval(FAST)
            .shared(&Store::connect(&url).await.unwrap())
            .build()
            .unwrap()
    };
    let (a, b) = (layer().await, layer().await);
    // Keys spread over the cluster's slots.
    let keys: Vec<String> = (0..12).map(|i| format!("tool-{i}")).collect();
    let b_breakers: Vec<Breaker> = keys.iter().map(|k| b.breakers().get(k.clone())).collect();
    for k in keys.iter().step_by(2) {
        a.breakers().get(k.clone()).trip(None);
    }
    eventually("every tripped key open on B", || {
        b_breakers
            .iter()
            .step_by(2)
            .all(|x| x.state() == State::Open)
    })
    .await;
    assert!(
        b_breakers
            .iter()
            .skip(1)
            .step_by(2)
            .all(|x| x.state() == State::Closed)
    );
}
