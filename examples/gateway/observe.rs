//! The gateway's request latency histogram
//! (`palisade_http_request_duration_seconds{status}`), by status class.
//!
//! An HTTP answer is classed by its status and timed to its head. A gRPC
//! answer is always `200`: its status comes in the trailers, often after
//! messages, so it is classed when its body ends (and timed to then) by the
//! HTTP status gRPC's own mapping gives each code — `UNAVAILABLE` is a
//! `5xx`, `NOT_FOUND` a `4xx` — a stream cut by the client as `CANCELLED`
//! (`4xx`), and a stream that ends without any status as a `5xx`.

use axum::{body::Body, extract::State, http::Request, http::Response};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use palisade::core::{BoxError, error_class::grpc_status};
use pin_project_lite::pin_project;
use prometheus::HistogramVec;
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Instant,
};

/// Times each request and counts it under its status class.
pub async fn observe(
    State(latency): State<HistogramVec>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let started = Instant::now();
    let grpc = palisade::core::is_grpc_request(req.headers());
    let res = next.run(req).await;
    if grpc && res.status() == http::StatusCode::OK {
        if let Some(code) = grpc_status(res.headers()) {
            // Trailers-only: the status is in the head.
            record(&latency, grpc_class(code), started);
            return res;
        }
        return res.map(|body| {
            Body::new(GrpcObserved {
                body,
                pending: Some(Pending { latency, started }),
            })
        });
    }
    record(&latency, http_class(res.status().as_u16()), started);
    res
}

fn record(latency: &HistogramVec, class: &str, started: Instant) {
    latency
        .with_label_values(&[class])
        .observe(started.elapsed().as_secs_f64());
}

fn http_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The class of a gRPC status code, by the HTTP status gRPC maps it to
/// (grpc-gateway's table: `CANCELLED` 499, `INVALID_ARGUMENT` 400,
/// `DEADLINE_EXCEEDED` 504, `RESOURCE_EXHAUSTED` 429, `UNAVAILABLE` 503 …).
fn grpc_class(code: u32) -> &'static str {
    match code {
        0 => "2xx",
        1 | 3 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 16 => "4xx",
        _ => "5xx",
    }
}

/// What a gRPC body records when it ends.
struct Pending {
    latency: HistogramVec,
    started: Instant,
}

pin_project! {
    /// A gRPC response body that records its status class once it ends.
    struct GrpcObserved<B> {
        #[pin]
        body: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for GrpcObserved<B> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its end: the client went away (CANCELLED).
            if let Some(p) = this.project().pending.take() {
                record(&p.latency, grpc_class(1), p.started);
            }
        }
    }
}

impl<B> GrpcObserved<B> {
    fn end(pending: &mut Option<Pending>, class: &str) {
        if let Some(p) = pending.take() {
            record(&p.latency, class, p.started);
        }
    }
}

impl<B> HttpBody for GrpcObserved<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    Self::end(this.pending, trailers_class(trailers));
                }
            }
            Some(Err(_)) => Self::end(this.pending, "5xx"),
            // Ended without trailers: no status at all.
            None => Self::end(this.pending, "5xx"),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn trailers_class(trailers: &HeaderMap) -> &'static str {
    grpc_status(trailers).map_or("5xx", grpc_class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_take_the_class_of_their_http_mapping() {
        assert_eq!(grpc_class(0), "2xx");
        // CANCELLED, NOT_FOUND, RESOURCE_EXHAUSTED, UNAUTHENTICATED
        for code in [1, 5, 8, 16] {
            assert_eq!(grpc_class(code), "4xx", "{code}");
        }
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE
        for code in [2, 4, 12, 13, 14] {
            assert_eq!(grpc_class(code), "5xx", "{code}");
        }
    }
}
