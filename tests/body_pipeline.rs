//! The gateway's response-body pipeline, black box: the real gateway binary
//! (default configuration) in front of upstreams this file starts itself.
//!
//! - Streams (SSE, NDJSON, a plain-text trickle) go through in lock-step:
//!   the upstream sends piece k+1 only once the client has received piece k,
//!   so a gateway that holds a stream back fails by timeout, never hangs.
//! - Compressed upstream bodies (gzip, deflate, br, zstd) are masked and
//!   answered in an encoding the client accepted.
//! - A decompression bomb and corrupt gzip are answered with a problem
//!   document, within bounded memory, without leaking what they carry.

mod support;

use axum::{
    Router,
    body::Body,
    http::{HeaderName, HeaderValue},
    routing::get,
};
use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress};
use futures_util::stream;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use std::{
    convert::Infallible,
    io::Write,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use support::Gateway;
use tokio::sync::mpsc;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::{compression::CompressionLayer, decompression::DecompressionLayer};

/// The longest a client waits for one piece of a stream (or one answer).
const STEP: Duration = Duration::from_secs(10);
/// The longest a client waits for the answer to a decompression bomb.
const BOMB_WAIT: Duration = Duration::from_secs(60);

const EMAIL: &str = "user@example.com";
const EMAIL_MASKED: &str = "us***@example.com";
const PHONE: &str = "9876543210";
const PHONE_MASKED: &str = "98******10";
const PASSWORD: &str = "hunter2";
const REDACTED: &str = "***REDACTED***";

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(url: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut req = Request::builder().uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Empty::new()).expect("request")
}

/// Serves `app` on a free loopback port; the task ends with the test's runtime.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("upstream server");
    });
    format!("http://{addr}")
}

fn start_gateway(upstream: &str) -> Gateway {
    Gateway::start(&["--upstream", upstream], &[])
}

fn header_str<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `text` cut to a length that reads well in a failure message.
fn snippet(text: &str) -> String {
    const MAX: usize = 400;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_owned(),
    }
}

/// Raw PII of this file found in `text`, if any.
fn raw_pii(text: &str) -> Vec<&'static str> {
    [EMAIL, PHONE, PASSWORD]
        .into_iter()
        .filter(|raw| text.contains(raw))
        .collect()
}

// ---------------------------------------------------------------------------
// Lock-step streams
// ---------------------------------------------------------------------------

/// An upstream that streams `pieces` on one path, each piece only after the
/// client acknowledged the previous one (and ends the body only after the
/// last one was acknowledged).
struct LockStepUpstream {
    url: String,
    /// One message per piece the client has received.
    acks: mpsc::UnboundedSender<()>,
    /// Pieces the upstream has handed to its connection so far.
    sent: Arc<AtomicUsize>,
    total: usize,
}

async fn lock_step_upstream(
    path: &str,
    headers: Vec<(&'static str, &'static str)>,
    pieces: Vec<String>,
) -> LockStepUpstream {
    let (acks, rx) = mpsc::unbounded_channel::<()>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let sent = Arc::new(AtomicUsize::new(0));
    let total = pieces.len();
    let pieces: Arc<Vec<Bytes>> = Arc::new(pieces.into_iter().map(Bytes::from).collect());
    let handler = {
        let sent = sent.clone();
        move || {
            let taken = rx.lock().expect("ack receiver").take();
            let sent = sent.clone();
            let pieces = pieces.clone();
            let headers = headers.clone();
            async move {
                let Some(acks) = taken else {
                    return Response::builder()
                        .status(StatusCode::INTERNAL_SERVER_ERROR)
                        .body(Body::from("the lock-step stream serves one request only"))
                        .expect("response");
                };
                let body = stream::unfold((pieces, acks, sent, 0usize), |state| async move {
                    let (pieces, mut acks, sent, i) = state;
                    // Piece i goes out only once the client has piece i - 1;
                    // the body ends only once it has the last one.
                    if i > 0 && acks.recv().await.is_none() {
                        return None;
                    }
                    let piece = pieces.get(i)?.clone();
                    sent.store(i + 1, Ordering::SeqCst);
                    Some((Ok::<_, Infallible>(piece), (pieces, acks, sent, i + 1)))
                });
                let mut res = Response::builder();
                for (k, v) in headers {
                    res = res.header(HeaderName::from_static(k), HeaderValue::from_static(v));
                }
                res.body(Body::from_stream(body)).expect("response")
            }
        }
    };
    let url = serve(Router::new().route(path, get(handler))).await;
    LockStepUpstream {
        url,
        acks,
        sent,
        total,
    }
}

/// The client side of a lock-step stream: reads the body frame by frame
/// into one buffer (a frame need not be a piece).
struct StreamReader {
    body: Incoming,
    bytes: Vec<u8>,
    kind: &'static str,
    sent: Arc<AtomicUsize>,
    total: usize,
}

impl StreamReader {
    /// Sends the GET and waits (bounded) for the response head.
    async fn open(
        upstream: &LockStepUpstream,
        url: &str,
        headers: &[(&str, &str)],
        kind: &'static str,
    ) -> (http::response::Parts, StreamReader) {
        let res = match tokio::time::timeout(STEP, client().request(request(url, headers))).await {
            Ok(res) => {
                res.unwrap_or_else(|e| panic!("{kind}: request to the gateway failed: {e:?}"))
            }
            Err(_) => panic!(
                "{kind}: no response head within {STEP:?} although the upstream answered and sent \
                 {} of {} piece(s) (it sends the next only once the client has received the \
                 previous one): the gateway holds the response back",
                upstream.sent.load(Ordering::SeqCst),
                upstream.total
            ),
        };
        let (parts, body) = res.into_parts();
        let reader = StreamReader {
            body,
            bytes: Vec::new(),
            kind,
            sent: upstream.sent.clone(),
            total: upstream.total,
        };
        (parts, reader)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// Reads until `ready(received text)` holds; panics when the body ends,
    /// fails or brings nothing that satisfies it within [`STEP`].
    async fn until(&mut self, piece: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let text = self.text();
            if ready(&text) {
                return text;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!(
                    "{}: {piece} not delivered within {STEP:?} although the upstream sent it and \
                     sends more only once the client has it (upstream sent {} of {} piece(s)): \
                     the gateway holds {} back. Received so far: {text:?}",
                    self.kind,
                    self.sent.load(Ordering::SeqCst),
                    self.total,
                    self.kind,
                ),
                Ok(None) => panic!(
                    "{}: the response body ended before {piece} arrived (upstream sent {} of {} \
                     piece(s)). Received: {text:?}",
                    self.kind,
                    self.sent.load(Ordering::SeqCst),
                    self.total,
                ),
                Ok(Some(Err(e))) => panic!(
                    "{}: the response body failed before {piece} arrived: {e:?}. Received: \
                     {text:?}",
                    self.kind
                ),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.bytes.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Waits (bounded) for the end of the body and returns all it held.
    async fn end(&mut self) -> String {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => panic!(
                    "{}: the body did not end within {STEP:?} after the upstream ended it. \
                     Received: {:?}",
                    self.kind,
                    self.text()
                ),
                Ok(None) => return self.text(),
                Ok(Some(Err(e))) => panic!(
                    "{}: the body failed at its end: {e:?}. Received: {:?}",
                    self.kind,
                    self.text()
                ),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.bytes.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

/// The complete SSE blocks (events and comments) of `text`, without their
/// blank-line terminator; what follows the last blank line is incomplete.
fn sse_blocks(text: &str) -> Vec<String> {
    let text = text.replace("\r\n", "\n");
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    blocks.pop();
    blocks
        .into_iter()
        .filter(|b| !b.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The complete lines of `text`; what follows the last newline is incomplete.
fn complete_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop();
    lines
        .into_iter()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum SsePiece {
    /// `data: {"email":"user@example.com","n":N}`
    Email(u64),
    /// `data: call 9876543210 now`
    Phone,
    /// `: keep-alive`
    Comment,
}

impl SsePiece {
    fn raw(self) -> String {
        match self {
            SsePiece::Email(n) => format!("data: {{\"email\":\"{EMAIL}\",\"n\":{n}}}\n\n"),
            SsePiece::Phone => format!("data: call {PHONE} now\n\n"),
            SsePiece::Comment => ": keep-alive\n\n".to_owned(),
        }
    }

    fn check(self, k: usize, block: &str) {
        assert!(
            raw_pii(block).is_empty(),
            "SSE piece {k} ({self:?}) reached the client unmasked: {block:?}"
        );
        match self {
            SsePiece::Email(n) => {
                let data = block.strip_prefix("data:").unwrap_or_else(|| {
                    panic!("SSE piece {k} ({self:?}) is not a data event: {block:?}")
                });
                let json: serde_json::Value = serde_json::from_str(data.trim())
                    .unwrap_or_else(|e| panic!("SSE piece {k}: data is not JSON ({e}): {block:?}"));
                assert_eq!(json["email"], EMAIL_MASKED, "SSE piece {k}: {block:?}");
                assert_eq!(
                    json["n"], n,
                    "SSE piece {k}: events out of order: {block:?}"
                );
            }
            SsePiece::Phone => assert!(
                block.starts_with("data:") && block.contains(&format!("call {PHONE_MASKED} now")),
                "SSE piece {k}: expected `data: call {PHONE_MASKED} now`, got {block:?}"
            ),
            SsePiece::Comment => assert_eq!(
                block.trim_end(),
                ": keep-alive",
                "SSE piece {k}: the keep-alive comment did not come through as sent"
            ),
        }
    }
}

/// Five events (emails and phone numbers mixed) with one keep-alive comment
/// between the second and the third.
fn sse_script() -> Vec<SsePiece> {
    vec![
        SsePiece::Email(1),
        SsePiece::Phone,
        SsePiece::Comment,
        SsePiece::Email(3),
        SsePiece::Phone,
        SsePiece::Email(5),
    ]
}

async fn sse_goes_through_in_lock_step(cacheable: bool) {
    let script = sse_script();
    let mut headers = vec![("content-type", "text/event-stream")];
    if cacheable {
        headers.push(("cache-control", "public, max-age=60"));
    }
    let upstream =
        lock_step_upstream("/sse", headers, script.iter().map(|p| p.raw()).collect()).await;
    let gw = start_gateway(&upstream.url);
    let kind = if cacheable {
        "cacheable SSE events"
    } else {
        "SSE events"
    };
    let (parts, mut reader) = StreamReader::open(
        &upstream,
        &format!("{}/sse", gw.url),
        &[("accept", "text/event-stream")],
        kind,
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "{kind}: status");
    assert!(
        header_str(&parts.headers, "content-type")
            .is_some_and(|ct| ct.starts_with("text/event-stream")),
        "{kind}: content-type changed: {:?}",
        parts.headers.get("content-type")
    );
    for (k, piece) in script.iter().enumerate() {
        let name = format!("piece {} ({piece:?})", k + 1);
        let text = reader.until(&name, |t| sse_blocks(t).len() > k).await;
        piece.check(k + 1, &sse_blocks(&text)[k]);
        upstream.acks.send(()).expect("upstream still streaming");
    }
    let all = reader.end().await;
    assert_eq!(
        sse_blocks(&all).len(),
        script.len(),
        "{kind}: unexpected extra blocks: {all:?}"
    );
    assert!(
        raw_pii(&all).is_empty(),
        "{kind}: raw PII in the stream: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_are_masked_and_delivered_one_by_one() {
    sse_goes_through_in_lock_step(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacheable_sse_is_not_buffered_by_the_cache() {
    sse_goes_through_in_lock_step(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_lines_are_masked_and_delivered_one_by_one() {
    const LINES: u64 = 5;
    let pieces = (1..=LINES)
        .map(|n| format!("{{\"email\":\"{EMAIL}\",\"password\":\"{PASSWORD}\",\"n\":{n}}}\n"))
        .collect();
    let upstream = lock_step_upstream(
        "/ndjson",
        vec![("content-type", "application/x-ndjson")],
        pieces,
    )
    .await;
    let gw = start_gateway(&upstream.url);
    let (parts, mut reader) = StreamReader::open(
        &upstream,
        &format!("{}/ndjson", gw.url),
        &[],
        "NDJSON lines",
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "NDJSON: status");
    for n in 1..=LINES {
        let k = usize::try_from(n).expect("small") - 1;
        let text = reader
            .until(&format!("line {n}"), |t| complete_lines(t).len() > k)
            .await;
        let line = &complete_lines(&text)[k];
        assert!(
            raw_pii(line).is_empty(),
            "NDJSON line {n} reached the client unmasked: {line:?}"
        );
        let json: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("NDJSON line {n} is not JSON ({e}): {line:?}"));
        assert_eq!(json["email"], EMAIL_MASKED, "NDJSON line {n}: {line:?}");
        assert_eq!(json["password"], REDACTED, "NDJSON line {n}: {line:?}");
        assert_eq!(
            json["n"], n,
            "NDJSON line {n}: lines out of order: {line:?}"
        );
        upstream.acks.send(()).expect("upstream still streaming");
    }
    let all = reader.end().await;
    assert!(
        raw_pii(&all).is_empty(),
        "NDJSON: raw PII in the stream: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_trickle_is_flushed_while_the_upstream_is_idle() {
    // (sent, expected at the client)
    let pieces = [
        ("hello ".to_owned(), "hello ".to_owned()),
        ("world ".to_owned(), "world ".to_owned()),
        (format!("mail {EMAIL} "), format!("mail {EMAIL_MASKED} ")),
        (
            format!("or call {PHONE} "),
            format!("or call {PHONE_MASKED} "),
        ),
        ("bye\n".to_owned(), "bye\n".to_owned()),
    ];
    let upstream = lock_step_upstream(
        "/text",
        vec![("content-type", "text/plain; charset=utf-8")],
        pieces.iter().map(|(raw, _)| raw.clone()).collect(),
    )
    .await;
    let gw = start_gateway(&upstream.url);
    let (parts, mut reader) = StreamReader::open(
        &upstream,
        &format!("{}/text", gw.url),
        &[],
        "plain-text chunks",
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK, "plain text: status");
    let mut expected = String::new();
    for (k, (raw, masked)) in pieces.iter().enumerate() {
        expected.push_str(masked);
        // Stop as soon as the text diverges from what is expected, or holds it all.
        let text = reader
            .until(&format!("chunk {} ({raw:?})", k + 1), |t| {
                !expected.starts_with(t) || t.len() >= expected.len()
            })
            .await;
        assert_eq!(
            text,
            expected,
            "plain text: after chunk {} the client has something else",
            k + 1
        );
        upstream.acks.send(()).expect("upstream still streaming");
    }
    let all = reader.end().await;
    assert_eq!(all, expected, "plain text: the whole body");
}

// ---------------------------------------------------------------------------
// Compressed upstreams
// ---------------------------------------------------------------------------

/// About 2 KB of text without anything that looks like PII.
fn note() -> String {
    "The quick brown fox jumps over the lazy dog. ".repeat(46)
}

fn user_json() -> serde_json::Value {
    serde_json::json!({
        "email": EMAIL,
        "phone": PHONE,
        "password": PASSWORD,
        "note": note(),
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// `GET /user` through tower-http's compression (every encoding on), and
/// `GET /forced`, which is gzip whatever the request accepts.
async fn compressing_upstream() -> String {
    let app = Router::new()
        .route(
            "/user",
            get(|| async { axum::Json(user_json()) }).layer(CompressionLayer::new()),
        )
        .route(
            "/forced",
            get(|| async {
                let body = gzip(&serde_json::to_vec(&user_json()).expect("json"));
                (
                    [
                        ("content-type", "application/json"),
                        ("content-encoding", "gzip"),
                    ],
                    body,
                )
            }),
        );
    serve(app).await
}

/// What came back: the status, the headers as sent (content-encoding
/// included) and the decoded body.
struct Decoded {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

/// The content-encoding of a response before the client decoded it.
#[derive(Clone)]
struct SentEncoding(Option<HeaderValue>);

/// GET with `Accept-Encoding: accept` through tower-http's decompression, or
/// without any Accept-Encoding (and no decoding) when `accept` is `None`.
async fn fetch(url: &str, accept: Option<&str>) -> Decoded {
    let fut = async {
        match accept {
            Some(accept) => {
                let svc = ServiceBuilder::new()
                    .layer(DecompressionLayer::new())
                    .map_response(|res: Response<Incoming>| {
                        let (mut parts, body) = res.into_parts();
                        let sent =
                            SentEncoding(parts.headers.get(header::CONTENT_ENCODING).cloned());
                        parts.extensions.insert(sent);
                        Response::from_parts(parts, body)
                    })
                    .service(client());
                let req = request(url, &[("accept-encoding", accept)]);
                let res = svc
                    .oneshot(req)
                    .await
                    .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
                let (mut parts, body) = res.into_parts();
                let sent = parts.extensions.get::<SentEncoding>().cloned();
                if let Some(SentEncoding(Some(enc))) = sent {
                    parts.headers.insert(header::CONTENT_ENCODING, enc);
                }
                let body = body
                    .collect()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("GET {url} (accept-encoding {accept}): body does not decode: {e:?}")
                    })
                    .to_bytes();
                Decoded {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                }
            }
            None => {
                let res = client()
                    .request(request(url, &[]))
                    .await
                    .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
                let (parts, body) = res.into_parts();
                let body = body
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("GET {url}: body: {e:?}"))
                    .to_bytes();
                Decoded {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                }
            }
        }
    };
    tokio::time::timeout(STEP, fut).await.unwrap_or_else(|_| {
        panic!("GET {url} (accept-encoding {accept:?}): no answer within {STEP:?}")
    })
}

/// Asserts a 200 whose body (decoded) is the masked user, in an encoding
/// the client accepted (`accepted`: the codings it named; identity always).
fn assert_masked_user(res: &Decoded, case: &str, accepted: &[&str]) {
    let text = String::from_utf8_lossy(&res.body);
    assert_ne!(
        res.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "{case}: the gateway refused a compressed upstream body with 415: {}",
        snippet(&text)
    );
    assert_eq!(
        res.status,
        StatusCode::OK,
        "{case}: status; body: {}",
        snippet(&text)
    );
    if let Some(enc) = header_str(&res.headers, "content-encoding") {
        assert!(
            enc.eq_ignore_ascii_case("identity")
                || accepted.iter().any(|a| enc.eq_ignore_ascii_case(a)),
            "{case}: answered with content-encoding {enc:?}, which the client did not accept \
             (it accepted {accepted:?})"
        );
    }
    assert!(
        raw_pii(&text).is_empty(),
        "{case}: raw PII {:?} in the answer: {}",
        raw_pii(&text),
        snippet(&text)
    );
    let json: serde_json::Value = serde_json::from_slice(&res.body)
        .unwrap_or_else(|e| panic!("{case}: the answer is not JSON ({e}): {}", snippet(&text)));
    assert_eq!(json["email"], EMAIL_MASKED, "{case}: {json}");
    assert_eq!(json["phone"], PHONE_MASKED, "{case}: {json}");
    assert_eq!(json["password"], REDACTED, "{case}: {json}");
    assert_eq!(json["note"], note(), "{case}: the note came back changed");
}

/// A client accepting `encoding`, then a client accepting nothing: both get
/// the masked user (the second as identity).
async fn compressed_upstream_is_masked(encoding: &str) {
    let upstream = compressing_upstream().await;
    let gw = start_gateway(&upstream);

    let case = format!("upstream {encoding}, client accepts {encoding}");
    let res = fetch(
        &format!("{}/user?case=accept-{encoding}", gw.url),
        Some(encoding),
    )
    .await;
    assert_masked_user(&res, &case, &[encoding]);

    let case = format!("upstream {encoding}-capable, client sends no Accept-Encoding");
    let res = fetch(&format!("{}/user?case=none-{encoding}", gw.url), None).await;
    assert!(
        header_str(&res.headers, "content-encoding").is_none_or(|e| e == "identity"),
        "{case}: a client that accepts no coding got content-encoding {:?}",
        res.headers.get("content-encoding")
    );
    assert_masked_user(&res, &case, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_upstream_body_is_masked() {
    compressed_upstream_is_masked("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflate_upstream_body_is_masked() {
    compressed_upstream_is_masked("deflate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_upstream_body_is_masked() {
    compressed_upstream_is_masked("br").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_upstream_body_is_masked() {
    compressed_upstream_is_masked("zstd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_gzip_upstream_is_masked_and_served_as_the_client_accepts() {
    let upstream = compressing_upstream().await;
    let gw = start_gateway(&upstream);

    let res = fetch(&format!("{}/forced?case=gzip", gw.url), Some("gzip")).await;
    assert_masked_user(&res, "always-gzip upstream, client accepts gzip", &["gzip"]);

    let case = "always-gzip upstream, client accepts identity only";
    let res = fetch(
        &format!("{}/forced?case=identity", gw.url),
        Some("identity"),
    )
    .await;
    assert!(
        header_str(&res.headers, "content-encoding").is_none_or(|e| e == "identity"),
        "{case}: got content-encoding {:?}",
        res.headers.get("content-encoding")
    );
    assert_masked_user(&res, case, &[]);

    let case = "always-gzip upstream, client sends no Accept-Encoding";
    let res = fetch(&format!("{}/forced?case=none", gw.url), None).await;
    assert!(
        header_str(&res.headers, "content-encoding").is_none_or(|e| e == "identity"),
        "{case}: got content-encoding {:?}",
        res.headers.get("content-encoding")
    );
    assert_masked_user(&res, case, &[]);
}

// ---------------------------------------------------------------------------
// Decompression bomb and corrupt gzip
// ---------------------------------------------------------------------------

const BOMB_CHUNK: usize = 1 << 20;
const BOMB_CHUNKS: usize = 1024;
/// What the bomb inflates to: 1 GiB of zeros.
const BOMB_SIZE: usize = BOMB_CHUNK * BOMB_CHUNKS;

/// 1 GiB of zeros as one gzip member (about 1 MiB), built once.
///
/// One MiB of zeros is deflated once and ended with a sync flush, so its
/// blocks are byte-aligned, non-final and refer to nothing before them;
/// repeated 1024 times, closed with an empty final block and the gzip
/// trailer (CRC-32 of 1 GiB of zeros, combined from the 1 MiB one), it is
/// exactly what a compressor writing 1 GiB of zeros in chunks would give,
/// without deflating 1 GiB in a debug build.
fn bomb() -> Bytes {
    static BOMB: OnceLock<Bytes> = OnceLock::new();
    BOMB.get_or_init(|| {
        let zeros = vec![0u8; BOMB_CHUNK];
        let mut deflate = Compress::new(Compression::best(), false);
        let mut block = Vec::with_capacity(64 << 10);
        deflate
            .compress_vec(&zeros, &mut block, FlushCompress::Sync)
            .expect("deflate");
        assert_eq!(
            deflate.total_in(),
            BOMB_CHUNK as u64,
            "the whole chunk deflated"
        );
        assert!(block.len() < block.capacity(), "the sync flush completed");

        let mut one = Crc::new();
        one.update(&zeros);
        let mut crc = Crc::new();
        for _ in 0..BOMB_CHUNKS {
            crc.combine(&one);
        }

        let mut out = Vec::with_capacity(block.len() * BOMB_CHUNKS + 64);
        out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        for _ in 0..BOMB_CHUNKS {
            out.extend_from_slice(&block);
        }
        // An empty final stored block.
        out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&u32::try_from(BOMB_SIZE).expect("fits").to_le_bytes());
        Bytes::from(out)
    })
    .clone()
}

/// (VmRSS, VmHWM) of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Reads at most `cap` bytes of a body, bounded by `deadline`.
async fn read_capped(
    mut body: Incoming,
    cap: usize,
    deadline: tokio::time::Instant,
    case: &str,
) -> Bytes {
    let mut bytes = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => panic!("{case}: the answer's body did not end in time"),
            Ok(None) => return Bytes::from(bytes),
            Ok(Some(Err(e))) => panic!("{case}: the answer's body failed: {e:?}"),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
                assert!(
                    bytes.len() <= cap,
                    "{case}: the gateway sent over {cap} bytes to the client instead of a \
                     problem document"
                );
            }
        }
    }
}

/// Asserts `status` is one of `allowed` and the body a problem document.
fn assert_problem(
    case: &str,
    status: StatusCode,
    headers: &http::HeaderMap,
    body: &[u8],
    allowed: &[u16],
) {
    let text = String::from_utf8_lossy(body);
    assert!(
        allowed.contains(&status.as_u16()),
        "{case}: expected status {allowed:?}, got {status}: {}",
        snippet(&text)
    );
    let ct = header_str(headers, "content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/problem+json"),
        "{case}: expected content-type application/problem+json, got {ct:?}: {}",
        snippet(&text)
    );
    serde_json::from_slice::<serde_json::Value>(body).unwrap_or_else(|e| {
        panic!(
            "{case}: the problem document is not JSON ({e}): {}",
            snippet(&text)
        )
    });
}

async fn bomb_is_refused(content_type: &'static str) {
    let bomb = tokio::task::spawn_blocking(bomb).await.expect("bomb");
    let app = Router::new()
        .route(
            "/bomb",
            get(move || {
                let bomb = bomb.clone();
                async move {
                    (
                        [("content-type", content_type), ("content-encoding", "gzip")],
                        bomb,
                    )
                }
            }),
        )
        .route(
            "/small",
            get(|| async { axum::Json(serde_json::json!({ "ok": true })) }),
        );
    let upstream = serve(app).await;
    let gw = start_gateway(&upstream);
    let pid = gw.child.id();
    let case = format!("gzip bomb ({content_type})");

    // Warm up (connections, pools) so that only the bomb is measured.
    let warm = fetch(&format!("{}/small", gw.url), None).await;
    assert_eq!(warm.status, StatusCode::OK, "warm-up request");
    let (rss_before, hwm_before) = memory_kib(pid);

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + BOMB_WAIT;
    let url = format!("{}/bomb", gw.url);
    let res = tokio::time::timeout_at(deadline, client().request(request(&url, &[])))
        .await
        .unwrap_or_else(|_| panic!("{case}: no answer within {BOMB_WAIT:?}"))
        .unwrap_or_else(|e| panic!("{case}: request failed: {e:?}"));
    let (parts, body) = res.into_parts();
    let answered = format!("{case}, answered {}", parts.status);
    let body = read_capped(body, 1 << 20, deadline, &answered).await;
    let elapsed = started.elapsed();
    let (_, hwm_after) = memory_kib(pid);

    assert_problem(&case, parts.status, &parts.headers, &body, &[502, 413]);
    let growth_mib = hwm_after.saturating_sub(rss_before) / 1024;
    assert!(
        growth_mib < 100,
        "{case}: the gateway's peak resident memory grew by {growth_mib} MiB (VmRSS before \
         {rss_before} KiB, VmHWM before {hwm_before} KiB, after {hwm_after} KiB)"
    );
    eprintln!(
        "{case}: answered {} in {elapsed:?}; peak memory +{growth_mib} MiB",
        parts.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_gzip_bomb_is_refused_within_bounded_memory() {
    bomb_is_refused("application/json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_gzip_bomb_is_refused_within_bounded_memory() {
    bomb_is_refused("text/plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_gzip_is_a_502_that_leaks_nothing() {
    // Not gzip at all, though labelled so.
    let lie = format!("{{\"email\":\"{EMAIL}\",\"note\":\"not gzip at all\"}}").into_bytes();
    // A gzip header, then a deflate block of the reserved (invalid) type,
    // then the address in clear.
    let mut garbage = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0x07];
    garbage.extend_from_slice(format!(" junk {EMAIL} junk ").as_bytes());
    garbage.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x00, 0xff]);
    let cases: Vec<(&str, &'static str, Vec<u8>)> = vec![
        ("/lie", "application/json", lie),
        ("/garbage", "application/json", garbage.clone()),
        ("/garbage-text", "text/plain", garbage),
    ];
    let mut app = Router::new();
    for (path, ct, body) in &cases {
        let (ct, body) = (*ct, Bytes::from(body.clone()));
        app = app.route(
            path,
            get(move || {
                let body = body.clone();
                async move { ([("content-type", ct), ("content-encoding", "gzip")], body) }
            }),
        );
    }
    let upstream = serve(app).await;
    let gw = start_gateway(&upstream);

    for (path, ct, _) in &cases {
        let case = format!("corrupt gzip {path} ({ct})");
        let url = format!("{}{path}", gw.url);
        let deadline = tokio::time::Instant::now() + STEP;
        let res = tokio::time::timeout_at(deadline, client().request(request(&url, &[])))
            .await
            .unwrap_or_else(|_| panic!("{case}: no answer within {STEP:?}"))
            .unwrap_or_else(|e| panic!("{case}: request failed: {e:?}"));
        let (parts, body) = res.into_parts();
        let answered = format!("{case}, answered {}", parts.status);
        let body = read_capped(body, 1 << 20, deadline, &answered).await;
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains(EMAIL),
            "{case}: the answer carries the address in clear: {}",
            snippet(&text)
        );
        assert_problem(&case, parts.status, &parts.headers, &body, &[502]);
    }
}
