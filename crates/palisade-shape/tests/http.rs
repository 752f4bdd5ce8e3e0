//! The layer in front of a real axum server on 127.0.0.1, driven by a real
//! hyper client.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade_shape::{RouteConfig, ShapeResponseLayer, ShapeRules};
use serde_json::{Value, json};

const DEALERS: &str = r#"{
  "query": "sedan",
  "total": 3,
  "page": {"number": 1, "size": 20, "next": null},
  "dealers": [
    {"name": "Autohaus North", "city": "Pune", "phone": "+91-20-5550100", "fax": null, "tags": []},
    {"name": "Motors South", "city": "Chennai", "phone": "+91-44-5550123", "fax": null, "tags": []},
    {"name": "East Cars", "city": "Kolkata", "phone": "+91-33-5550777", "fax": null, "tags": []}
  ],
  "debug": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "timings_ms": [12, 7, 3]}
}"#;

fn json_response(body: impl Into<Body>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    registry: prometheus::Registry,
}

async fn serve(layer: impl FnOnce(&prometheus::Registry) -> ShapeResponseLayer) -> Server {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let registry = prometheus::Registry::new();
    let app = Router::new()
        .route(
            "/dealers",
            get(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async { json_response(DEALERS) }
            })
            .post(|| async { json_response(DEALERS) }),
        )
        .route(
            "/text",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "a: null, b: []") }),
        )
        .route("/invalid", get(|| async { json_response("{\"a\": nul") }))
        .route(
            "/deep",
            get(|| async { json_response("[".repeat(100_000)) }),
        )
        .route(
            "/chunked",
            get(|| async {
                let chunks: Vec<Result<Bytes, Infallible>> = (0..100)
                    .map(|i| {
                        Ok(Bytes::from(format!(
                            "{{\"i\":{i},\"pad\":\"{}\"}}",
                            "x".repeat(100)
                        )))
                    })
                    .collect();
                let mut all = vec![Ok(Bytes::from_static(b"["))];
                for (i, c) in chunks.into_iter().enumerate() {
                    if i > 0 {
                        all.push(Ok(Bytes::from_static(b",")));
                    }
                    all.push(c);
                }
                all.push(Ok(Bytes::from_static(b"]")));
                json_response(Body::from_stream(futures_util::stream::iter(all)))
            }),
        )
        .route(
            "/problem",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/vnd.api+json; charset=utf-8",
                    )],
                    r#"{"data": {"id": "1", "attributes": null}}"#,
                )
            }),
        )
        .route(
            "/error",
            get(|| async {
                (StatusCode::NOT_FOUND, json_response(r#"{"error": null}"#)).into_response()
            }),
        )
        .layer(layer(&registry));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        addr,
        hits,
        registry,
    }
}

async fn fetch(server: &Server, method: &str, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", server.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn metric(registry: &prometheus::Registry, name: &str, outcome: Option<&str>) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| outcome.is_none_or(|o| m.get_label().iter().any(|l| l.value() == o)))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn spec_layer(registry: &prometheus::Registry) -> ShapeResponseLayer {
    ShapeResponseLayer::builder()
        .route(
            RouteConfig::new(
                "/dealers",
                ShapeRules::new().include(["dealers"]).max_array_size(1),
            )
            .methods(["GET"]),
        )
        .metrics(registry)
        .build()
        .unwrap()
}

#[tokio::test]
async fn spec_example_over_http() {
    let server = serve(spec_layer).await;
    let (status, headers, body) = fetch(&server, "GET", "/dealers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        r#"{"dealers":[{"name":"Autohaus North","city":"Pune","phone":"+91-20-5550100"}]}"#
    );
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        body.len().to_string().as_str()
    );
    assert_eq!(headers["x-tokens-original"], "123");
    assert_eq!(headers["x-tokens-shaped"], "20");
    assert_eq!(headers["x-tokens-saved"], "103");
    assert_eq!(headers["x-tokens-saved-percent"], "83.7");
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_responses_total",
            Some("shaped")
        ),
        1
    );
    assert_eq!(
        metric(&server.registry, "palisade_shape_tokens_saved_total", None),
        103
    );
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_tokens_original_total",
            None
        ),
        123
    );
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_bytes_original_total",
            None
        ),
        492
    );
    assert_eq!(
        metric(&server.registry, "palisade_shape_bytes_saved_total", None),
        492 - 78
    );

    // POST matches no route: default rules (compaction only).
    let (_, headers, body) = fetch(&server, "POST", "/dealers").await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["dealers"].as_array().unwrap().len(), 3);
    assert!(v["page"].get("next").is_none());
    assert!(v["dealers"][0].get("fax").is_none());
    assert!(headers.contains_key("x-tokens-saved"));
}

#[tokio::test]
async fn fields_query_parameter_selects_per_request() {
    let server = serve(spec_layer).await;
    let (status, _, body) = fetch(&server, "GET", "/dealers?fields=total,dealers(name,city)").await;
    assert_eq!(status, StatusCode::OK);
    // The request's selection replaces the route's include list; the cut stays.
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"total": 3, "dealers": [{"name": "Autohaus North", "city": "Pune"}]})
    );
    // Percent-encoded, with `/` nesting and `*`.
    let (_, _, body) = fetch(
        &server,
        "POST",
        "/dealers?fields=page%2Fnumber%2Cdealers%2F*",
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["page"], json!({"number": 1}));
    assert_eq!(
        v["dealers"][2],
        json!({"name": "East Cars", "city": "Kolkata", "phone": "+91-33-5550777"})
    );
}

#[tokio::test]
async fn malformed_selector_is_a_400_pointing_at_the_error() {
    let server = serve(spec_layer).await;
    let (status, headers, body) =
        fetch(&server, "GET", "/dealers?fields=dealers(name,,city)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let problem: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 400);
    assert_eq!(
        problem["detail"],
        "invalid field selector: expected a field name at offset 13"
    );
    // The upstream was never called.
    assert_eq!(server.hits.load(Ordering::SeqCst), 0);
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_responses_total",
            Some("rejected_bad_selector")
        ),
        1
    );
    for bad in ["fields=a(b", "fields=a)", "fields=", "fields=a%09b"] {
        let (status, _, body) = fetch(&server, "GET", &format!("/dealers?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body:?}");
    }
    let too_deep = format!("/dealers?fields={}", "a/".repeat(40) + "a");
    let (status, _, body) = fetch(&server, "GET", &too_deep).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("nested deeper than 16 levels at offset 32"));
}

#[tokio::test]
async fn non_json_and_errors_pass_untouched() {
    let server = serve(spec_layer).await;
    let (_, headers, body) = fetch(&server, "GET", "/text").await;
    assert_eq!(body, "a: null, b: []");
    assert!(!headers.contains_key("x-tokens-original"));
    let (status, headers, body) = fetch(&server, "GET", "/error").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, r#"{"error": null}"#);
    assert!(!headers.contains_key("x-tokens-original"));
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_responses_total",
            Some("skipped_not_json")
        ),
        1
    );
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_responses_total",
            Some("skipped_status_or_method")
        ),
        1
    );
    // +json types are shaped.
    let (_, _, body) = fetch(&server, "GET", "/problem").await;
    assert_eq!(body, r#"{"data":{"id":"1"}}"#);
}

#[tokio::test]
async fn invalid_and_too_deep_json_pass_untouched() {
    let server = serve(spec_layer).await;
    let (status, headers, body) = fetch(&server, "GET", "/invalid").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "{\"a\": nul");
    assert!(!headers.contains_key("x-tokens-original"));
    let (status, _, body) = fetch(&server, "GET", "/deep").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "[".repeat(100_000));
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_responses_total",
            Some("skipped_invalid_json")
        ),
        2
    );
}

#[tokio::test]
async fn bodies_over_the_limit_pass_untouched() {
    // Declared length over the limit: never read.
    let server = serve(|r| {
        ShapeResponseLayer::builder()
            .max_body_bytes(100)
            .metrics(r)
            .build()
            .unwrap()
    })
    .await;
    let (_, headers, body) = fetch(&server, "GET", "/dealers").await;
    assert_eq!(body, DEALERS);
    assert!(!headers.contains_key("x-tokens-original"));
    // Streamed without a length: read up to the limit, then passed on whole.
    let (_, _, body) = fetch(&server, "GET", "/chunked").await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 100);
    assert!(body.len() > 10_000);
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_responses_total",
            Some("skipped_too_large")
        ),
        2
    );
}

#[tokio::test]
async fn streamed_json_under_the_limit_is_shaped() {
    let server = serve(|r| {
        ShapeResponseLayer::builder()
            .rules(
                ShapeRules::new()
                    .include(["i"])
                    .max_array_size(2)
                    .array_marker(true),
            )
            .metrics(r)
            .build()
            .unwrap()
    })
    .await;
    let (_, headers, body) = fetch(&server, "GET", "/chunked").await;
    assert_eq!(body, r#"[{"i":0},{"i":1},"... 98 more"]"#);
    assert_eq!(
        headers[header::CONTENT_LENGTH],
        body.len().to_string().as_str()
    );
    assert!(!headers.contains_key(header::TRANSFER_ENCODING));
}

#[tokio::test]
async fn disabled_routes_and_head_pass_untouched() {
    let server = serve(|r| {
        ShapeResponseLayer::builder()
            .route(RouteConfig::new("/dea*", ShapeRules::new().enabled(false)))
            .metrics(r)
            .build()
            .unwrap()
    })
    .await;
    // Disabled: even a malformed selector is not looked at.
    let (status, _, body) = fetch(&server, "GET", "/dealers?fields=((").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, DEALERS);
    let (status, headers, body) = fetch(&server, "HEAD", "/problem").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert!(!headers.contains_key("x-tokens-original"));
    assert_eq!(
        metric(
            &server.registry,
            "palisade_shape_responses_total",
            Some("skipped_disabled")
        ),
        1
    );
}
