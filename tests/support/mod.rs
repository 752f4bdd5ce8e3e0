//! Helpers for tests that run the gateway binary: start it, read the
//! addresses it prints, speak HTTP to it.
#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A Python that can `import` `modules` (a protocol peer from a package
/// registry): `PALISADE_PYTHON`, or the venv `.ci/run` makes under
/// `target/`. Missing: a failure under CI, a skip (`None`) elsewhere;
/// `what` names the package in the message.
pub fn python_with(modules: &str, what: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("PALISADE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python")
        });
    let ok = Command::new(&candidate)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    if palisade_testkit::is_ci() {
        panic!(
            "{} with {what} is needed under CI (.ci/run makes target/pyvenv)",
            candidate.display()
        );
    }
    eprintln!("skipping: no Python with {what} (set PALISADE_PYTHON)");
    None
}

/// The gateway example's binary, built by `cargo test` next to the tests.
pub fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let bin = profile_dir.join("examples").join("gateway");
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test` (which builds examples)",
        bin.display()
    );
    // `cargo test --test NAME` does not rebuild examples: never test an old
    // binary against new code.
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .expect("binary mtime");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // The sources the binary is built from: the facade, the example, and
    // each crate's `src`.
    let mut dirs = vec![root.join("src"), root.join("examples/gateway")];
    if let Ok(crates) = std::fs::read_dir(root.join("crates")) {
        dirs.extend(crates.flatten().map(|c| c.path().join("src")));
    }
    let newest = dirs.iter().filter_map(|d| newest_source(d)).max();
    if let Some((when, path)) = newest {
        assert!(
            when <= built,
            "{} is older than {}: run `cargo build --example gateway` (or the whole \
             `cargo test`) first",
            bin.display(),
            path.display()
        );
    }
    bin
}

/// The most recently modified `.rs` file under `dir`.
fn newest_source(dir: &std::path::Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let found = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry.metadata().ok()?.modified().ok().map(|t| (t, path))
        } else {
            None
        };
        if let Some(f) = found
            && newest.as_ref().is_none_or(|n| f.0 > n.0)
        {
            newest = Some(f);
        }
    }
    newest
}

/// A running gateway process, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub url: String,
    pub admin: String,
    pub upstream: Option<String>,
    lines: mpsc::Receiver<String>,
    dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts the gateway with `args` (listen and admin on free ports) and
    /// waits for its `listening on` line.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Gateway {
        Self::start_with_config(None, args, envs)
    }

    /// Same, with a configuration file holding `config` (TOML).
    pub fn start_with_config(
        config: Option<&str>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = std::fs::File::create(dir.path().join("gateway.log")).expect("log file");
        let mut cmd = Command::new(gateway_binary());
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("ADMIN_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(config) = config {
            let path = dir.path().join("gateway.toml");
            std::fs::write(&path, config).expect("config file");
            cmd.arg("--config").arg(path);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut url, mut admin, mut upstream) = (None, None, None);
        while url.is_none() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let log =
                    std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
                panic!("gateway did not print `listening on` within 60 s; its log:\n{log}");
            };
            if let Some(rest) = line.strip_prefix("listening on ") {
                url = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("admin on ") {
                admin = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("demo upstream on ") {
                upstream = Some(rest.trim().to_owned());
            }
        }
        Gateway {
            child,
            url: url.unwrap(),
            admin: admin.expect("admin line before listening line"),
            upstream,
            lines: rx,
            dir,
        }
    }

    /// What the gateway wrote to stderr (its logs) so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// Requests the demo upstream has served (it counts them).
    pub async fn upstream_hits(&self) -> u64 {
        let upstream = self.upstream.as_ref().expect("a demo upstream");
        get(&format!("{upstream}/hits"))
            .await
            .text()
            .parse()
            .expect("a count")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1 answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request.
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let res = client.request(req).await.expect("request");
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

pub async fn get(url: &str) -> Answer {
    send(Method::GET, url, &[], b"").await
}

pub async fn post_json(url: &str, body: &serde_json::Value) -> Answer {
    send(
        Method::POST,
        url,
        &[("content-type", "application/json")],
        &serde_json::to_vec(body).unwrap(),
    )
    .await
}
