//! Test fixtures for palisade: a real `redis-server` and a real Redis Cluster,
//! started on free loopback ports, each in its own temporary directory.
//!
//! Everything here is synchronous (`std::process`, `std::net`), so tests in
//! any async runtime (including a paused tokio clock) can use it.
//!
//! # Skipping and CI
//!
//! When `redis-server` (or, for a cluster, `redis-cli`) is not on `PATH`,
//! [`RedisServer::start`] and [`RedisCluster::start`] print
//! `skipping: redis-server not found` to stderr and return `None`, so the
//! test can return early. When the environment variable `CI` is set (to
//! anything but empty) a missing binary is a hard failure: they panic
//! instead. Set
//! `PALISADE_REDIS_SERVER` / `PALISADE_REDIS_CLI` to point at other binaries.
//!
//! # Example
//!
//! ```
//! use palisade_testkit::RedisServer;
//!
//! let Some(server) = RedisServer::start() else { return };
//! assert!(server.url().starts_with("redis://127.0.0.1:"));
//! assert!(palisade_testkit::ping(server.port()));
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long to wait for a server to answer PING, or for a cluster to be ok.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Cluster bus ports are `port + 10000`, so data ports must stay below this.
const MAX_CLUSTER_PORT: u16 = 55_000;
/// Attempts at finding a free port and starting a server on it.
const PORT_ATTEMPTS: usize = 20;

/// Yields to the runtime until `cond` holds, and panics (naming `what`)
/// after 100 000 yields instead of hanging. Works on a paused tokio clock,
/// where a time limit would never fire while tasks are runnable.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
/// let f = flag.clone();
/// tokio::spawn(async move { f.store(true, std::sync::atomic::Ordering::SeqCst) });
/// palisade_testkit::yield_until("the task ran", || flag.load(std::sync::atomic::Ordering::SeqCst)).await;
/// # }
/// ```
pub async fn yield_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("{what}: still not true after 100 000 yields");
}

/// Checks `cond` every millisecond of wall-clock time until it holds, and
/// panics (naming `what`) after `limit` instead of hanging.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let start = std::time::Instant::now();
/// palisade_testkit::eventually("5 ms passed", std::time::Duration::from_secs(5), || {
///     start.elapsed() >= std::time::Duration::from_millis(5)
/// })
/// .await;
/// # }
/// ```
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: still not true after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether the current run is CI (`CI` set to anything but empty, as CI
/// services set it: `true`, `1`, `yes` …), where missing binaries fail.
pub fn is_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

fn binary(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn require_binary(env: &str, name: &str) -> Option<PathBuf> {
    match binary(env, name) {
        Some(p) => Some(p),
        None if is_ci() => panic!(
            "{name} not found on PATH (or via ${env}) and CI=true: \
             install Redis (e.g. `apt-get install redis-server`) so the Redis tests run"
        ),
        None => {
            eprintln!("skipping: {name} not found (install redis-server, or set CI=true to fail)");
            None
        }
    }
}

/// Whether `redis-server` is available.
///
/// Returns `true` when it is on `PATH` (or `PALISADE_REDIS_SERVER` names it).
/// When it is missing: prints `skipping: redis-server not found` to stderr and
/// returns `false`, unless `CI=true`, where it panics with a clear message.
///
/// ```
/// if !palisade_testkit::require_redis_server() {
///     return; // skipped
/// }
/// ```
pub fn require_redis_server() -> bool {
    require_binary("PALISADE_REDIS_SERVER", "redis-server").is_some()
}

/// Sends one command to `127.0.0.1:port` and returns the reply rendered as
/// text (simple strings and bulk strings as-is, integers in decimal, arrays
/// joined by newlines). Errors (`-ERR ...`) come back as `Err`.
///
/// A tiny synchronous RESP client for fixtures and assertions; not for
/// production use.
///
/// ```
/// # let Some(server) = palisade_testkit::RedisServer::start() else { return };
/// let pong = palisade_testkit::command(server.port(), &["PING"]).unwrap();
/// assert_eq!(pong, "PONG");
/// ```
pub fn command(port: u16, args: &[&str]) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    stream.write_all(&out)?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)
}

fn read_reply(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(1.min(line.len()));
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad RESP line {line:?}"),
        )
    };
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(io::Error::other(rest.to_owned())),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len < 0 {
                return Ok(String::new());
            }
            let len = usize::try_from(len).map_err(|_| bad())?;
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(len);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            let mut parts = Vec::new();
            for _ in 0..n.max(0) {
                parts.push(read_reply(r)?);
            }
            Ok(parts.join("\n"))
        }
        _ => Err(bad()),
    }
}

/// Whether a Redis on `127.0.0.1:port` answers `PING` with `PONG`.
///
/// ```
/// // Nothing listens on port 1.
/// assert!(!palisade_testkit::ping(1));
/// ```
pub fn ping(port: u16) -> bool {
    matches!(command(port, &["PING"]), Ok(ref s) if s == "PONG")
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

fn port_bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A free loopback port; for clusters also below 55000 with `port + 10000` free.
fn free_port(cluster: bool) -> io::Result<u16> {
    for _ in 0..1000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        if !cluster {
            return Ok(port);
        }
        if port < MAX_CLUSTER_PORT && port_bindable(port + 10_000) {
            return Ok(port);
        }
        // Ephemeral ports are usually above 32768; also try a port derived
        // from this one that falls below the limit.
        let alt = 20_000 + port % 30_000;
        if port_bindable(alt) && port_bindable(alt + 10_000) {
            return Ok(alt);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free loopback port found",
    ))
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` process: port, directory and the child handle.
struct Node {
    bin: PathBuf,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Spawns the server and waits until it answers PING. `Ok(false)` when the
    /// process exited early (most often: the port was taken meanwhile).
    fn spawn(&mut self) -> io::Result<bool> {
        let log = std::fs::File::create(self.dir.join("redis.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut child = cmd.spawn()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ping(self.port) {
                self.child = Some(child);
                return Ok(true);
            }
            if child.try_wait()?.is_some() {
                return Ok(false);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} did not answer PING: {}",
                        self.port,
                        self.log()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on unix
            let _ = child.wait();
        }
        wait_until(Duration::from_secs(10), || !port_open(self.port));
    }

    fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        // The port may linger briefly (or be grabbed): retry a few times.
        for _ in 0..50 {
            match self.spawn() {
                Ok(true) => return,
                Ok(false) => last = self.log(),
                Err(e) => last = e.to_string(),
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "could not restart redis-server on port {}: {last}",
            self.port
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts a node on a free port (retrying on collisions) in `dir`.
fn start_node(bin: &Path, dir: PathBuf, extra: Vec<String>, cluster: bool) -> Node {
    let mut last = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = match free_port(cluster) {
            Ok(p) => p,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let mut node = Node {
            bin: bin.to_owned(),
            port,
            dir: dir.clone(),
            extra: extra.clone(),
            child: None,
        };
        match node.spawn() {
            Ok(true) => return node,
            Ok(false) => last = node.log(),
            Err(e) => last = e.to_string(),
        }
    }
    panic!("could not start redis-server after {PORT_ATTEMPTS} attempts: {last}");
}

/// A `redis-server` on a free `127.0.0.1` port, with persistence off
/// (`--save "" --appendonly no`) and its own temporary directory.
/// Dropping it kills the process.
///
/// ```
/// use palisade_testkit::RedisServer;
///
/// let Some(mut server) = RedisServer::start() else { return };
/// palisade_testkit::command(server.port(), &["SET", "k", "v"]).unwrap();
/// server.kill();
/// assert!(!palisade_testkit::ping(server.port()));
/// server.restart();
/// assert!(palisade_testkit::ping(server.port()));
/// ```
pub struct RedisServer {
    node: Node,
    _dir: TempDir,
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.node.port)
            .finish_non_exhaustive()
    }
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    ///
    /// `None` when `redis-server` is missing and `CI` is not `"true"` (a
    /// message is printed); panics when it is missing under `CI=true`, or
    /// when the server cannot be started.
    pub fn start() -> Option<RedisServer> {
        let bin = require_binary("PALISADE_REDIS_SERVER", "redis-server")?;
        let dir = tempfile::Builder::new()
            .prefix("palisade-redis-")
            .tempdir()
            .expect("create temp dir for redis-server");
        let node = start_node(&bin, dir.path().to_owned(), Vec::new(), false);
        Some(RedisServer { node, _dir: dir })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.node.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.node.port
    }

    /// Kills the server with SIGKILL and waits until the port is closed.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts the server again on the same port (killing it first if it
    /// runs) and waits until it answers PING. Data is not kept.
    pub fn restart(&mut self) {
        self.node.restart();
    }
}

/// A Redis Cluster of `masters` masters (no replicas), each a
/// `redis-server --cluster-enabled yes` on a free loopback port below 55000
/// (the bus port, `port + 10000`, is free too), joined with
/// `redis-cli --cluster create`.
///
/// Nodes run with `cluster-node-timeout 1000` and
/// `cluster-require-full-coverage no`, so killing one master only makes its
/// own slots unavailable. A restarted node keeps its `nodes.conf` and so its
/// identity and slots (but not its data).
///
/// ```no_run
/// use palisade_testkit::RedisCluster;
///
/// let Some(mut cluster) = RedisCluster::start(3) else { return };
/// assert!(cluster.url().starts_with("redis+cluster://127.0.0.1:"));
/// assert_eq!(cluster.node_urls().len(), 3);
/// cluster.kill_node(1);
/// cluster.restart_node(1);
/// ```
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dirs: Vec<TempDir>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<u16> = self.nodes.iter().map(|n| n.port).collect();
        f.debug_struct("RedisCluster")
            .field("ports", &ports)
            .finish_non_exhaustive()
    }
}

fn cluster_ok(port: u16) -> bool {
    command(port, &["CLUSTER", "INFO"])
        .map(|s| s.contains("cluster_state:ok"))
        .unwrap_or(false)
}

impl RedisCluster {
    /// Starts `masters` nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok`.
    ///
    /// `None` when `redis-server` or `redis-cli` is missing and `CI` is not
    /// `"true"`. Panics when `masters < 3` (Redis needs three masters), when
    /// a binary is missing under `CI=true`, or when the cluster cannot form.
    pub fn start(masters: usize) -> Option<RedisCluster> {
        assert!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters, got {masters}"
        );
        let server = require_binary("PALISADE_REDIS_SERVER", "redis-server")?;
        let cli = require_binary("PALISADE_REDIS_CLI", "redis-cli")?;
        let mut nodes = Vec::with_capacity(masters);
        let mut dirs = Vec::with_capacity(masters);
        let extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
        ]
        .map(String::from)
        .to_vec();
        for i in 0..masters {
            let dir = tempfile::Builder::new()
                .prefix(&format!("palisade-cluster-{i}-"))
                .tempdir()
                .expect("create temp dir for cluster node");
            nodes.push(start_node(
                &server,
                dir.path().to_owned(),
                extra.clone(),
                true,
            ));
            dirs.push(dir);
        }
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let out = create
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dirs: dirs };
        cluster.wait_ok();
        Some(cluster)
    }

    fn wait_ok(&self) {
        for n in &self.nodes {
            assert!(
                wait_until(READY_TIMEOUT, || cluster_ok(n.port)),
                "cluster node on port {} did not reach cluster_state:ok",
                n.port
            );
        }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// `redis://127.0.0.1:<port>` for every node, in start order.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The data port of every node, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Kills node `i` with SIGKILL and waits until its port is closed.
    ///
    /// Panics when `i` is out of range.
    pub fn kill_node(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Kills every node (SIGKILL) and waits until their ports are closed.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Restarts every node on its port with its `nodes.conf`, then waits
    /// until every node reports `cluster_state:ok` again.
    ///
    /// Panics when the cluster does not recover.
    pub fn restart_all(&mut self) {
        for n in &mut self.nodes {
            n.restart();
        }
        self.wait_ok();
    }

    /// Restarts node `i` on the same port with the same `nodes.conf`, then
    /// waits until every node reports `cluster_state:ok` again.
    ///
    /// Panics when `i` is out of range or the cluster does not recover.
    pub fn restart_node(&mut self, i: usize) {
        self.nodes[i].restart();
        self.wait_ok();
    }
}
