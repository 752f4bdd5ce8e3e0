//! A soak through the gateway binary: good clients and hostile ones at the
//! same time for `SOAK_SECS` (60 by default), on the default configuration
//! but for the rate limit (every client here is 127.0.0.1, so a per-IP limit
//! would refuse the good clients for the hostile ones' traffic).
//!
//! Hostile clients, all the time: slowloris heads (a byte now and then,
//! reconnecting when cut), request bodies that trickle, oversized heads,
//! garbage bytes, and clients that send a request and hang up at once.
//! Good clients: `GET /users/7` and `POST /echo` over keep-alive
//! connections, each answered within 10 s.
//!
//! Asserted: every good request is answered `200` with its body, and the
//! gateway's resident memory at the end is within a bound of what it was a
//! third of the way in (no growth with time under the flood). The figures
//! go to RELIABILITY.md:
//!
//! `cargo build --all-features --example gateway && cargo test --all-features --test soak -- --nocapture | grep FIGURE`

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use support::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = "[rate_limit]\nmode = \"disabled\"\n";

fn soak_secs() -> u64 {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Reads whatever comes until the peer closes or `limit` passes.
async fn drain(s: &mut TcpStream, limit: Duration) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Counts of what the hostile clients did, for the figures.
#[derive(Default)]
struct Hostile {
    connections: AtomicU64,
}

/// Keeps `n` half-sent request heads open, sending a header byte every few
/// seconds, reconnecting whenever the gateway cuts one.
async fn slowloris(to: String, end: Instant, hostile: Arc<Hostile>) {
    while Instant::now() < end {
        let Ok(mut s) = TcpStream::connect(&to).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        hostile.connections.fetch_add(1, Relaxed);
        if s.write_all(b"GET /users/7 HTTP/1.1\r\nHost: x\r\n")
            .await
            .is_err()
        {
            continue;
        }
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if s.write_all(b"X-a: b\r\n").await.is_err() {
                break;
            }
        }
    }
}

/// A POST whose declared body trickles in a byte at a time.
async fn slow_body(to: String, end: Instant, hostile: Arc<Hostile>) {
    while Instant::now() < end {
        let Ok(mut s) = TcpStream::connect(&to).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        hostile.connections.fetch_add(1, Relaxed);
        let head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n";
        if s.write_all(head).await.is_err() {
            continue;
        }
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if s.write_all(b"a").await.is_err() {
                break;
            }
        }
    }
}

/// Heads over the size limit, garbage, and requests whose sender hangs up
/// without reading, one after another.
async fn rude(to: String, end: Instant, hostile: Arc<Hostile>) {
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(200 * 1024)
    );
    let mut round = 0u64;
    while Instant::now() < end {
        round += 1;
        let Ok(mut s) = TcpStream::connect(&to).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        hostile.connections.fetch_add(1, Relaxed);
        match round % 3 {
            0 => {
                let _ = s.write_all(big.as_bytes()).await;
                drain(&mut s, Duration::from_secs(5)).await;
            }
            1 => {
                let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
                let _ = s.write_all(&junk).await;
                drain(&mut s, Duration::from_secs(5)).await;
            }
            _ => {
                // A whole request, then gone before the answer.
                let _ = s
                    .write_all(b"GET /users/7 HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_clients_are_served_and_memory_stays_bounded_under_a_hostile_mix() {
    let gw = Gateway::start_with_config(Some(CONFIG), &[], &[]);
    let pid = gw.child.id();
    let to = gw.url.trim_start_matches("http://").to_owned();
    let secs = soak_secs();
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let hostile = Arc::new(Hostile::default());

    let mut tasks = Vec::new();
    for _ in 0..300 {
        tasks.push(tokio::spawn(slowloris(to.clone(), end, hostile.clone())));
    }
    for _ in 0..50 {
        tasks.push(tokio::spawn(slow_body(to.clone(), end, hostile.clone())));
    }
    for _ in 0..4 {
        tasks.push(tokio::spawn(rude(to.clone(), end, hostile.clone())));
    }

    // Good clients: keep-alive connections, every answer checked.
    let answered = Arc::new(AtomicU64::new(0));
    let mut good = Vec::new();
    for worker in 0..4u64 {
        let url = gw.url.clone();
        let answered = answered.clone();
        good.push(tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let (req, expect): (_, &[u8]) = if (n + worker).is_multiple_of(2) {
                    (
                        http::Request::get(format!("{url}/users/7"))
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                        b"\"id\":7",
                    )
                } else {
                    (
                        http::Request::post(format!("{url}/echo"))
                            .header("content-type", "text/plain")
                            .body(Full::new(Bytes::from(format!("hello {worker} {n}"))))
                            .unwrap(),
                        b"hello",
                    )
                };
                let answer = tokio::time::timeout(Duration::from_secs(10), async {
                    let res = client.request(req).await?;
                    let status = res.status();
                    let body = res.into_body().collect().await?.to_bytes();
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
                })
                .await;
                let (status, body) = match answer {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => panic!("good request {worker}/{n} failed: {e}"),
                    Err(_) => panic!("good request {worker}/{n} not answered within 10 s"),
                };
                assert_eq!(status, 200, "good request {worker}/{n}: {body:?}");
                assert!(
                    body.windows(expect.len()).any(|w| w == expect),
                    "good request {worker}/{n}: {body:?}"
                );
                answered.fetch_add(1, Relaxed);
            }
        }));
    }

    // Resident memory once a second.
    let mut samples = Vec::new();
    while Instant::now() < end {
        samples.push((started.elapsed().as_secs(), rss_kib(pid)));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for g in good {
        g.await.expect("a good client failed");
    }
    for t in tasks {
        t.abort();
    }
    samples.push((started.elapsed().as_secs(), rss_kib(pid)));

    let third = samples[samples.len() / 3].1;
    let last = samples.last().unwrap().1;
    let peak = samples.iter().map(|s| s.1).max().unwrap();
    let good_total = answered.load(Relaxed);
    let hostile_total = hostile.connections.load(Relaxed);
    println!("FIGURE | soak | seconds | {secs}");
    println!("FIGURE | soak | good requests answered 200 | {good_total} (none failed)");
    println!("FIGURE | soak | hostile connections opened | {hostile_total}");
    println!(
        "FIGURE | soak | RSS at a third / at the end / peak | {} / {} / {} MiB",
        third / 1024,
        last / 1024,
        peak / 1024
    );
    assert!(good_total > 0, "no good request was made");
    // Bounded: no growth with time once the flood is under way (a quarter
    // and 32 MiB of slack for allocator noise).
    assert!(
        last <= third + third / 4 + 32 * 1024,
        "RSS grew from {third} KiB at a third of the soak to {last} KiB at its end: {samples:?}"
    );
}
