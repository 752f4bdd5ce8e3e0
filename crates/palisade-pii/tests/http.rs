//! The layer through a real axum server on 127.0.0.1 and a real hyper client.

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_core::PalisadeBody;
use palisade_pii::{Direction, Oversize, PiiMaskLayer, PiiMetrics};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tower::ServiceBuilder;

const USER_JSON: &str = r#"{"name":"Asha","email":"user@example.com","phone":"9876543210","password":"hunter2","card":"4111 1111 1111 1111"}"#;

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ct: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, http::HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(header::CONTENT_TYPE, ct)
        .body(Full::new(body.into()))
        .unwrap();
    let res = client().request(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn masks_responses_of_an_axum_server() {
    let registry = prometheus::Registry::new();
    let metrics = PiiMetrics::register(&registry).unwrap();
    let big = "x".repeat(2048);
    let app = Router::new()
        .route(
            "/user",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], USER_JSON) }),
        )
        .route(
            "/text",
            get(|| async { "contact user@example.com or 9876543210" }),
        )
        .route(
            "/png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], "user@example.com") }),
        )
        .route(
            "/big",
            get(move || {
                let big = big.clone();
                async move { format!("{big} user@example.com") }
            }),
        )
        .layer(
            PiiMaskLayer::default()
                .max_body_bytes(1024)
                .metrics(metrics),
        );
    let addr = serve(app).await;

    let (status, headers, body) = send(addr, "GET", "/user", "text/plain", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        r#"{"name":"Asha","email":"us***@example.com","phone":"98******10","password":"***REDACTED***","card":"4111 **** **** 1111"}"#
    );
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        body.len().to_string().as_str()
    );

    let (_, _, body) = send(addr, "GET", "/text", "text/plain", "").await;
    assert_eq!(body, "contact us***@example.com or 98******10");

    let (_, _, body) = send(addr, "GET", "/png", "text/plain", "").await;
    assert_eq!(body, "user@example.com", "binary types pass untouched");

    let (status, _, body) = send(addr, "GET", "/big", "text/plain", "").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!body.contains("user@example.com"));

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(r#"palisade_pii_values_masked_total{pattern="email"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"palisade_pii_values_masked_total{pattern="field"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"palisade_pii_bodies_masked_total{direction="response"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"palisade_pii_bodies_refused_total{direction="response",reason="too_large"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn masks_requests_before_the_handler_sees_them() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s2 = seen.clone();
    let app = Router::new()
        .route(
            "/ingest",
            post(move |body: String| {
                let seen = s2.clone();
                async move {
                    seen.lock().unwrap().push(body);
                    "ok"
                }
            }),
        )
        .layer(
            PiiMaskLayer::default()
                .direction(Direction::Request)
                .max_body_bytes(256),
        );
    let addr = serve(app).await;

    let (status, _, _) = send(addr, "POST", "/ingest", "application/json", USER_JSON).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(
        addr,
        "POST",
        "/ingest",
        "text/plain",
        "my PAN is ABCDE1234F",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let big = format!("{} 9876543210", "y".repeat(300));
    let (status, _, _) = send(addr, "POST", "/ingest", "text/plain", big).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "refused, never reaches the handler"
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].contains("us***@example.com") && seen[0].contains("***REDACTED***"));
    assert!(!seen[0].contains("hunter2"));
    assert_eq!(seen[1], "my PAN is ABC*****4F");
}

#[tokio::test]
async fn streams_oversize_bodies_when_configured() {
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!(
            "line {i} user{i}@example.com card 4111 1111 1111 1111\n"
        ));
    }
    let expected = palisade_pii::PiiMasker::new().mask_str(&text).into_owned();
    let t2 = text.clone();
    let app = Router::new()
        .route(
            "/log",
            get(move || {
                let t = t2.clone();
                async move { t }
            }),
        )
        .layer(
            PiiMaskLayer::default()
                .max_body_bytes(4096)
                .oversize(Oversize::Stream),
        );
    let addr = serve(app).await;
    let (status, headers, body) = send(addr, "GET", "/log", "text/plain", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_LENGTH).is_none());
    assert_eq!(body, expected);
    assert!(!body.contains("4111 1111 1111 1111"));
}

/// JSON over the buffering limit, streamed: sensitive field values are
/// redacted as they pass (as in a whole document), patterns masked, the
/// output still JSON.
#[tokio::test]
async fn oversize_json_streams_with_sensitive_fields_redacted() {
    let users: Vec<serde_json::Value> = (0..400)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "password": format!("hunter{i}-plain-secret"),
                "apiKey": {"live": format!("sk_{i}_abcdef")},
                "email": format!("user{i}@example.com"),
                "name": format!("user {i}"),
            })
        })
        .collect();
    let doc = serde_json::to_string(&serde_json::json!({ "users": users })).unwrap();
    assert!(doc.len() > 40_000);
    let app = Router::new()
        .route(
            "/users",
            get(move || {
                let d = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], d) }
            }),
        )
        .layer(
            PiiMaskLayer::default()
                .max_body_bytes(4096)
                .oversize(Oversize::Stream),
        );
    let addr = serve(app).await;
    let (status, headers, body) = send(addr, "GET", "/users", "application/json", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_LENGTH).is_none(), "streamed");
    assert!(!body.contains("hunter"), "a password passed");
    assert!(!body.contains("sk_"), "an API key passed");
    assert!(!body.contains("user7@example.com"), "an email passed");
    let v: serde_json::Value = serde_json::from_str(&body).expect("still JSON");
    assert_eq!(v["users"][399]["password"], "***REDACTED***");
    assert_eq!(v["users"][7]["apiKey"], "***REDACTED***");
    assert_eq!(v["users"][7]["name"], "user 7");
    assert_eq!(v["users"][7]["email"], "us***@example.com");
}

#[tokio::test]
async fn client_side_masks_outgoing_requests_and_incoming_responses() {
    // The upstream echoes what it received.
    let app = Router::new().route("/echo", post(|body: Bytes| async move { body }));
    let addr = serve(app).await;

    let client = ServiceBuilder::new()
        .layer(PiiMaskLayer::default().direction(Direction::Both))
        .service(Client::builder(TokioExecutor::new()).build_http::<PalisadeBody<Full<Bytes>>>());
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/echo"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(
            "prompt: my card is 4111111111111111",
        )))
        .unwrap();
    let res = tower::ServiceExt::oneshot(client, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "prompt: my card is 4111********1111");
}

/// A service answering `body` with these headers, counting its calls.
fn answering(
    called: Arc<Mutex<u32>>,
    headers: &'static [(&'static str, &'static str)],
    body: Bytes,
) -> impl tower::Service<
    Request<PalisadeBody<Full<Bytes>>>,
    Response = http::Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: Request<PalisadeBody<Full<Bytes>>>| {
        *called.lock().unwrap() += 1;
        let mut res = http::Response::builder();
        for (k, v) in headers {
            res = res.header(*k, *v);
        }
        let res = res.body(Full::new(body.clone())).unwrap();
        async move { Ok::<_, std::convert::Infallible>(res) }
    })
}

#[tokio::test]
async fn undecodable_bodies_are_refused_not_leaked() {
    use palisade_core::body::codec::{Coding, encode_all};
    let called = Arc::new(Mutex::new(0));
    let svc = ServiceBuilder::new()
        .layer(PiiMaskLayer::default().direction(Direction::Both))
        .service(answering(
            called.clone(),
            &[("content-type", "text/plain"), ("content-encoding", "gzip")],
            Bytes::from_static(b"\x1f\x8b not really gzip: user@example.com"),
        ));
    // A coding nobody can decode: 415, and the service is never called.
    let req = Request::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "compress")
        .body(Full::new(Bytes::from_static(b"...")))
        .unwrap();
    let res = tower::ServiceExt::oneshot(svc.clone(), req).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A br request body that does not decode: the client's fault, 400.
    let req = Request::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "br")
        .body(Full::new(Bytes::from_static(b"garbage")))
        .unwrap();
    let res = tower::ServiceExt::oneshot(svc.clone(), req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        *called.lock().unwrap(),
        0,
        "a refused request never reaches the service"
    );
    // A gzip response that does not decode: the upstream's fault, 502, and
    // nothing of it reaches the client.
    let req = Request::builder()
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from_static(b"hi")))
        .unwrap();
    let res = tower::ServiceExt::oneshot(svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("user@example.com"));
    assert_eq!(*called.lock().unwrap(), 1);

    // A request body in gzip is decoded, masked and sent on as identity.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(PiiMaskLayer::default().direction(Direction::Request))
        .service_fn(move |req: Request<PalisadeBody<Full<Bytes>>>| {
            let seen = seen2.clone();
            async move {
                assert!(req.headers().get(header::CONTENT_ENCODING).is_none());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                seen.lock().unwrap().push(body);
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
            }
        });
    let req = Request::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Full::new(
            encode_all(USER_JSON.as_bytes(), Coding::Gzip).unwrap(),
        ))
        .unwrap();
    let res = tower::ServiceExt::oneshot(svc, req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let sent = seen.lock().unwrap().pop().unwrap();
    assert!(String::from_utf8_lossy(&sent).contains("us***@example.com"));
}

#[tokio::test]
async fn compressed_responses_are_masked_and_answered_in_an_accepted_coding() {
    use palisade_core::body::codec::{Coding, DecodedBody, encode_all};
    for (coding, name) in [
        (Coding::Gzip, "gzip"),
        (Coding::Deflate, "deflate"),
        (Coding::Brotli, "br"),
        (Coding::Zstd, "zstd"),
    ] {
        let headers: &'static [(&str, &str)] = match name {
            "gzip" => &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            "deflate" => &[
                ("content-type", "application/json"),
                ("content-encoding", "deflate"),
            ],
            "br" => &[
                ("content-type", "application/json"),
                ("content-encoding", "br"),
            ],
            _ => &[
                ("content-type", "application/json"),
                ("content-encoding", "zstd"),
            ],
        };
        let body = encode_all(USER_JSON.as_bytes(), coding).unwrap();
        let svc = ServiceBuilder::new()
            .layer(PiiMaskLayer::default())
            .service(answering(Arc::default(), headers, body));
        // A client that accepts the coding gets it back, masked.
        let req = Request::builder()
            .header(header::ACCEPT_ENCODING, "gzip, deflate, br, zstd")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = tower::ServiceExt::oneshot(svc.clone(), req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        assert_eq!(res.headers()[header::CONTENT_ENCODING], name);
        assert_eq!(res.headers()[header::VARY], "accept-encoding");
        let encoded = res.into_body().collect().await.unwrap().to_bytes();
        let decoded = DecodedBody::new(Full::new(encoded), coding, None)
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let text = String::from_utf8(decoded.to_vec()).unwrap();
        assert!(
            text.contains(r#""email":"us***@example.com""#),
            "{name}: {text}"
        );
        assert!(
            text.contains(r#""password":"***REDACTED***""#),
            "{name}: {text}"
        );
        // A client that does not gets identity, with its length.
        let req = Request::builder().body(Full::new(Bytes::new())).unwrap();
        let res = tower::ServiceExt::oneshot(svc, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{name}");
        assert!(
            res.headers().get(header::CONTENT_ENCODING).is_none(),
            "{name}"
        );
        let len: usize = res.headers()[header::CONTENT_LENGTH]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), len);
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains(r#""phone":"98******10""#), "{name}: {text}");
        assert!(!text.contains("user@example.com"), "{name}");
    }
}
