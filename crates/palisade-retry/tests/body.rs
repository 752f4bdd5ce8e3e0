//! Request bodies: replayed with their trailers, and a body that fails while
//! being buffered reaches the inner service as the same failure, once.

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use palisade_retry::{ReplayBody, RetryLayer};
use std::{
    io,
    sync::{Arc, Mutex},
    time::Duration,
};
use tower::{ServiceBuilder, ServiceExt};

type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, io::Error>>>;

fn body(frames: Vec<Result<Frame<Bytes>, io::Error>>) -> StreamBody<Chunks> {
    StreamBody::new(futures_util::stream::iter(frames))
}

#[derive(Debug, PartialEq)]
enum Seen {
    Body(Bytes, Option<HeaderMap>),
    Error(String),
}

#[tokio::test(start_paused = true)]
async fn data_and_trailers_are_replayed() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(
            RetryLayer::builder()
                .backoff(Duration::from_millis(5), 2.0, Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .service_fn(move |req: Request<ReplayBody<StreamBody<Chunks>>>| {
            let log = log.clone();
            async move {
                let collected = req.into_body().collect().await?;
                let trailers = collected.trailers().cloned();
                let mut log = log.lock().unwrap();
                log.push(Seen::Body(collected.to_bytes(), trailers));
                let status = if log.len() == 1 { 503 } else { 200 };
                Ok::<_, io::Error>(Response::builder().status(status).body(()).unwrap())
            }
        });
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let req = Request::put("http://up/")
        .body(body(vec![
            Ok(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers.clone())),
        ]))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let expected = Seen::Body(Bytes::from_static(b"hello world"), Some(trailers));
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| *s == expected), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_body_reaches_the_inner_service_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let svc = ServiceBuilder::new().layer(RetryLayer::new()).service_fn(
        move |req: Request<ReplayBody<StreamBody<Chunks>>>| {
            let log = log.clone();
            async move {
                let mut body = req.into_body();
                let mut data = Vec::new();
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => data.extend_from_slice(&f.into_data().unwrap_or_default()),
                        Err(e) => {
                            log.lock().unwrap().push(Seen::Error(format!(
                                "{} after {:?}",
                                e,
                                String::from_utf8_lossy(&data)
                            )));
                            break;
                        }
                    }
                }
                Ok::<_, io::Error>(Response::builder().status(503).body(()).unwrap())
            }
        },
    );
    let req = Request::put("http://up/")
        .body(body(vec![
            Ok(Frame::data(Bytes::from_static(b"part"))),
            Err(io::Error::other("client went away")),
        ]))
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 503, "not replayable: returned as it is");
    assert_eq!(
        *seen.lock().unwrap(),
        [Seen::Error("client went away after \"part\"".into())]
    );
}
