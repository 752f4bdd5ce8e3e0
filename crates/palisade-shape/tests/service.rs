//! The service with streamed bodies, trailers, body errors, gRPC and config.

use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use palisade_shape::{
    RouteConfig, ShapeConfig, ShapeError, ShapeResponse, ShapeResponseLayer, ShapeRules,
};
use tower::{Service, ServiceBuilder, ServiceExt};

type Frames = Vec<Result<Frame<Bytes>, std::io::Error>>;
type TestBody = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
>;

fn upstream(
    content_type: &'static str,
    frames: fn() -> Frames,
) -> impl Service<Request<()>, Response = Response<TestBody>, Error = Infallible, Future: Send> + Clone
{
    tower::service_fn(move |_req: Request<()>| async move {
        Ok::<_, Infallible>(
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .header(header::ETAG, "\"v1\"")
                .body(StreamBody::new(futures_util::stream::iter(frames())))
                .unwrap(),
        )
    })
}

fn data(s: &'static str) -> Result<Frame<Bytes>, std::io::Error> {
    Ok(Frame::data(Bytes::from_static(s.as_bytes())))
}

#[tokio::test]
async fn a_body_error_mid_stream_is_passed_on_after_the_bytes_read() {
    let svc = ServiceBuilder::new()
        .layer(ShapeResponseLayer::new(ShapeRules::new()).unwrap())
        .service(upstream("application/json", || {
            vec![
                data("{\"a\":"),
                Err(std::io::Error::other("upstream reset")),
            ]
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(!res.headers().contains_key("x-tokens-original"));
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "{\"a\":");
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "upstream reset");
    assert!(body.frame().await.is_none());
}

#[tokio::test]
async fn trailers_survive_shaping_and_etag_is_dropped() {
    let svc = ServiceBuilder::new()
        .layer(ShapeResponseLayer::new(ShapeRules::new()).unwrap())
        .service(upstream("application/json; charset=utf-8", || {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", "abc".parse().unwrap());
            vec![
                data("{\"a\": 1,"),
                data(" \"b\": null}"),
                Ok(Frame::trailers(t)),
            ]
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(!res.headers().contains_key(header::ETAG));
    assert_eq!(res.headers()[header::CONTENT_LENGTH], "7");
    let collected = res.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "{\"a\":1}");
}

#[tokio::test]
async fn encoded_bodies_pass_untouched() {
    let layer = ShapeResponseLayer::new(ShapeRules::new()).unwrap();
    let svc = layer.layer_service(tower::service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Full::new(Bytes::from_static(b"\x1f\x8b not really")))
                .unwrap(),
        )
    }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        &b"\x1f\x8b not really"[..]
    );
}

trait LayerExt {
    fn layer_service<S>(&self, s: S) -> ShapeResponse<S>;
}

impl LayerExt for ShapeResponseLayer {
    fn layer_service<S>(&self, s: S) -> ShapeResponse<S> {
        tower::Layer::layer(self, s)
    }
}

#[tokio::test]
async fn grpc_requests_get_invalid_argument_for_a_bad_selector() {
    let svc = ServiceBuilder::new()
        .layer(ShapeResponseLayer::new(ShapeRules::new()).unwrap())
        .service(upstream("application/json", Vec::new));
    let req = Request::builder()
        .uri("/pkg.Svc/Get?fields=a(")
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "3");
    assert_eq!(res.headers()[header::CONTENT_TYPE], "application/grpc");
}

#[test]
fn shape_errors_convert_into_the_core_error() {
    let err = ShapeResponseLayer::builder()
        .rules(ShapeRules::new().include(["a..b"]))
        .build()
        .unwrap_err();
    assert!(err.is_selector());
    let core: palisade_core::Error = err.into();
    assert_eq!(core.http_status(), StatusCode::BAD_REQUEST);
    assert!(core.message().contains("offset 2"));
    assert!(!core.is_retryable());
}

#[test]
fn invalid_routes_are_rejected_at_build() {
    for (path, methods) in [("dealers", vec![]), ("/a*b", vec![]), ("/a", vec!["G ET"])] {
        let err = ShapeResponseLayer::builder()
            .route(RouteConfig::new(path, ShapeRules::new()).methods(methods))
            .build()
            .unwrap_err();
        assert!(
            matches!(err, ShapeError::InvalidRoute { .. }),
            "{path}: {err}"
        );
    }
    for ratio in [0.0, -1.0, f64::NAN] {
        let err = ShapeResponseLayer::builder()
            .chars_per_token(ratio)
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid shaping configuration: chars_per_token: must be a positive number"
        );
    }
    // Registering twice on one registry is an error, not a panic.
    let registry = prometheus::Registry::new();
    ShapeResponseLayer::builder()
        .metrics(&registry)
        .build()
        .unwrap();
    let err = ShapeResponseLayer::builder()
        .metrics(&registry)
        .build()
        .unwrap_err();
    assert!(matches!(err, ShapeError::Metrics(_)));
}

#[test]
fn config_defaults_and_unknown_keys() {
    let config = ShapeConfig::default();
    assert!(config.rules.compact);
    assert_eq!(config.chars_per_token, 4.0);
    assert_eq!(config.query_param.as_deref(), Some("fields"));
    assert_eq!(serde_json::from_str::<ShapeConfig>("{}").unwrap(), config);
    let err = serde_json::from_str::<ShapeConfig>(r#"{"rules": {"inclde": ["a"]}}"#).unwrap_err();
    assert!(err.to_string().contains("inclde"), "{err}");
    // Round trip.
    let json = serde_json::to_string(&config).unwrap();
    assert_eq!(serde_json::from_str::<ShapeConfig>(&json).unwrap(), config);
}

#[test]
fn services_are_clone_send_sync() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<ShapeResponseLayer>();
    assert_traits::<ShapeResponse<tower::util::BoxCloneSyncService<(), (), Infallible>>>();
    assert_traits::<palisade_shape::Shaper>();
}

#[tokio::test]
async fn token_headers_can_be_turned_off() {
    let layer = ShapeResponseLayer::builder()
        .headers(false)
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(upstream("application/json", || {
            vec![data("{\"a\": [], \"b\": 2}")]
        }));
    let res = svc.oneshot(Request::new(())).await.unwrap();
    assert!(!res.headers().contains_key("x-tokens-original"));
    assert!(!res.headers().contains_key("x-tokens-saved-percent"));
    assert_eq!(res.headers()[header::CONTENT_LENGTH], "7");
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "{\"b\":2}"
    );
}
