//! The fixtures start real servers, survive kill / restart, and form a cluster.

use palisade_testkit::{RedisCluster, RedisServer, command, ping};

#[test]
fn server_starts_kills_and_restarts_on_the_same_port() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(command(port, &["SET", "k", "v"]).unwrap(), "OK");
    assert_eq!(command(port, &["GET", "k"]).unwrap(), "v");
    // Persistence is off.
    assert_eq!(
        command(port, &["CONFIG", "GET", "appendonly"]).unwrap(),
        "appendonly\nno"
    );
    server.kill();
    assert!(!ping(port));
    server.restart();
    assert_eq!(server.port(), port);
    assert!(ping(port));
    // No data survives a restart (no persistence).
    assert_eq!(command(port, &["GET", "k"]).unwrap(), "");
}

#[test]
fn two_servers_get_distinct_ports_and_drop_kills() {
    let Some(a) = RedisServer::start() else {
        return;
    };
    let Some(b) = RedisServer::start() else {
        return;
    };
    assert_ne!(a.port(), b.port());
    let port = a.port();
    drop(a);
    assert!(!ping(port));
    assert!(ping(b.port()));
}

#[test]
fn cluster_forms_and_node_recovers() {
    let Some(mut cluster) = RedisCluster::start(3) else {
        return;
    };
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert!(ports.iter().all(|p| *p < 55_000));
    assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
    assert_eq!(cluster.url().matches(',').count(), 2);
    assert_eq!(cluster.node_urls().len(), 3);
    for p in &ports {
        let info = command(*p, &["CLUSTER", "INFO"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
    }
    cluster.kill_node(1);
    assert!(!ping(ports[1]));
    cluster.restart_node(1);
    assert!(ping(ports[1]));
    let info = command(ports[1], &["CLUSTER", "INFO"]).unwrap();
    assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    cluster.kill_all();
    assert!(ports.iter().all(|p| !ping(*p)));
    cluster.restart_all();
    assert!(ports.iter().all(|p| ping(*p)));
}
