//! Masking a stream gives the same bytes however the upstream chunks it:
//! server-sent events, NDJSON and text, through the layer.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use palisade_pii::PiiMaskLayer;
use proptest::prelude::*;
use tower::{ServiceBuilder, ServiceExt};

fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("user@example.com".to_owned()),
        Just("9876543210".to_owned()),
        Just("4111 1111 1111 1111".to_owned()),
        Just("{\"password\":\"hunter2\"}".to_owned()),
        Just("{\"email\":\"user@example.com\",\"token\":\"abc\"}".to_owned()),
        Just("data: ".to_owned()),
        Just(": keep-alive".to_owned()),
        Just("\n".to_owned()),
        Just("\n\n".to_owned()),
        Just("\r\n".to_owned()),
        "[a-z0-9 ,.:]{1,10}",
    ]
}

/// Built once: compiling the patterns dominates a debug-build case.
fn layer() -> &'static PiiMaskLayer {
    static L: std::sync::OnceLock<PiiMaskLayer> = std::sync::OnceLock::new();
    L.get_or_init(PiiMaskLayer::default)
}

fn masked(content_type: &'static str, text: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in cuts.iter().cycle() {
        if at >= text.len() {
            break;
        }
        let end = (at + c).min(text.len());
        chunks.push(Bytes::copy_from_slice(&text[at..end]));
        at = end;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let svc =
            ServiceBuilder::new()
                .layer(layer().clone())
                .service_fn(move |_req: Request<_>| {
                    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                        chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", content_type)
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
        let res = svc
            .oneshot(Request::new(Full::new(Bytes::new())))
            .await
            .unwrap();
        res.into_body().collect().await.unwrap().to_bytes().to_vec()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn streams_mask_the_same_in_any_chunking(
        pieces in prop::collection::vec(piece(), 0..16),
        cuts in prop::collection::vec(1usize..40, 1..12),
    ) {
        let text = pieces.concat();
        for ct in ["text/event-stream", "application/x-ndjson", "text/plain"] {
            let whole = masked(ct, text.as_bytes(), &[usize::MAX / 2]);
            let chunked = masked(ct, text.as_bytes(), &cuts);
            prop_assert_eq!(
                String::from_utf8_lossy(&chunked),
                String::from_utf8_lossy(&whole),
                "{} in chunks {:?}", ct, cuts
            );
        }
    }
}
