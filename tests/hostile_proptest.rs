//! Property tests at scale over the parsers that read hostile input: the
//! PII masker (text, bytes, JSON, streaming), the field-selector parser and
//! the shaper, Cache-Control (through the cache layer, whose parser is
//! private) and Retry-After. They look for panics, and check the
//! invariants that must hold on any input.
//!
//! `cargo fuzz` needs a nightly toolchain, which this project does not use;
//! these proptest runs stand in for it. `PROPTEST_CASES` raises the case
//! counts (default here: 1 000 – 3 000 per property).

use palisade::cache::CacheLayer;
use palisade::pii::{PiiMasker, StreamMasker};
use palisade::shape::{FieldSelector, SelectorLimits, ShapeRules, Shaper};
use proptest::prelude::*;
use std::time::Duration;
use tower::{ServiceBuilder, ServiceExt};

fn cases(n: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n);
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text built from PII-like pieces, separators and arbitrary characters.
fn piiish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("asha.rao@example.com".to_owned()),
        Just("9876543210".to_owned()),
        Just("4111111111111111".to_owned()),
        Just("4111 1111 1111 1111".to_owned()),
        Just("ABCDE1234F".to_owned()),
        Just("2345 6789 0124".to_owned()),
        Just("123-45-6789".to_owned()),
        Just("192.168.1.1".to_owned()),
        Just("2001:db8::1".to_owned()),
        Just("GB82WEST12345698765432".to_owned()),
        Just("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc".to_owned()),
        Just("Bearer abcdef0123456789".to_owned()),
        "[0-9]{1,20}",
        "[a-z@.]{1,12}",
        "[ \t\n,:;\"'{}\\[\\]()-]{1,3}",
        any::<String>(),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

fn masker() -> &'static PiiMasker {
    static M: std::sync::OnceLock<PiiMasker> = std::sync::OnceLock::new();
    M.get_or_init(PiiMasker::new)
}

/// JSON values with PII-like strings and sensitive field names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        piiish().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        let key = prop_oneof![
            Just("password".to_owned()),
            Just("email".to_owned()),
            Just("Api_Key".to_owned()),
            Just("card".to_owned()),
            "[a-z_]{1,8}",
            any::<String>(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Masking any text never panics, and never leaves a known PII value
    /// whole when it stands alone between separators.
    #[test]
    fn masker_on_any_text(text in piiish()) {
        let out = masker().mask_str(&text);
        for raw in ["asha.rao@example.com", "4111111111111111", "ABCDE1234F"] {
            let padded = format!(" {raw} ");
            if text.contains(&padded) {
                prop_assert!(!out.contains(&padded), "{raw} survived in {out:?}");
            }
        }
        // Masking is idempotent on its own output's shape: no panic again.
        let _ = masker().mask_str(&out);
    }

    /// Any bytes (invalid UTF-8 included): no panic.
    #[test]
    fn masker_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = masker().mask_bytes(&bytes);
        let mut stats = Default::default();
        let _ = masker().mask_json_bytes(&bytes, &mut stats);
    }

    /// Any JSON: masked structurally, still valid JSON, sensitive fields
    /// redacted whole.
    #[test]
    fn masker_on_any_json(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        let mut stats = Default::default();
        let out = masker().mask_json_bytes(&bytes, &mut stats).expect("valid JSON in");
        let back: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON out");
        fn check(v: &serde_json::Value) -> Result<(), TestCaseError> {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        if k.eq_ignore_ascii_case("password") {
                            prop_assert_eq!(v, &serde_json::json!("***REDACTED***"));
                        } else {
                            check(v)?;
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().try_for_each(check)?,
                _ => {}
            }
            Ok(())
        }
        check(&back)?;
        let mut tree = value.clone();
        masker().mask_json(&mut tree);
    }

    /// Streaming in arbitrary chunk sizes gives exactly the output of masking
    /// the whole text at once.
    #[test]
    fn stream_masker_any_chunks(text in piiish(), cuts in prop::collection::vec(1usize..64, 1..20)) {
        let bytes = text.as_bytes();
        let mut s = StreamMasker::new(masker().clone(), 256, 64 * 1024);
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts.iter().cycle() {
            if at >= bytes.len() {
                break;
            }
            let end = (at + c).min(bytes.len());
            let chunk = s.push(&bytes[at..end]);
            prop_assert!(chunk.is_ok(), "push failed: {:?}", chunk.err());
            out.extend_from_slice(&chunk.unwrap_or_default());
            at = end;
        }
        out.extend_from_slice(&s.finish());
        let whole = masker().mask_bytes(bytes);
        prop_assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&whole),
            "chunks {:?}",
            cuts
        );
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    /// The selector parser on any string: a selector or a clear error
    /// whose offset lies inside the input (plus one for "at the end").
    #[test]
    fn selector_parser_on_any_input(input in prop_oneof![
        any::<String>(),
        "[a-z().,*\\\\/ ]{0,64}",
        "[()]{0,200}",
    ]) {
        match FieldSelector::parse(&input) {
            Ok(_) => {}
            Err(e) => {
                prop_assert!(e.offset() <= input.len().max(SelectorLimits::default().max_length));
                let msg = e.to_string();
                prop_assert!(msg.len() < 200, "bounded error: {msg}");
            }
        }
    }

    /// Deep and wide selectors hit the limits, never the stack.
    #[test]
    fn selector_limits_hold(depth in 1usize..5000, width in 1usize..5000) {
        let deep = format!("{}{}", "a(".repeat(depth), ")".repeat(depth));
        let _ = FieldSelector::parse(&deep);
        let wide = vec!["f"; width].join(",");
        let _ = FieldSelector::parse(&wide);
    }

    /// The shaper on any bytes and any JSON: no panic; valid JSON out.
    #[test]
    fn shaper_on_any_input(value in json_value(), junk in prop::collection::vec(any::<u8>(), 0..256), fields in "[a-z(),.*]{0,24}") {
        let shaper = Shaper::new(&ShapeRules::default()).unwrap();
        let _ = shaper.shape_bytes(&junk);
        let bytes = serde_json::to_vec(&value).unwrap();
        let selector = FieldSelector::parse(&fields).ok();
        if let Ok(shaped) = shaper.shape_bytes_with(selector.as_ref(), &bytes) {
            let _: serde_json::Value = serde_json::from_slice(&shaped.output).expect("valid JSON out");
        }
    }
}

/// Header values: directive soup, numbers at the edges, junk bytes.
fn header_value() -> impl Strategy<Value = String> {
    let directive = prop_oneof![
        Just("max-age".to_owned()),
        Just("s-maxage".to_owned()),
        Just("no-store".to_owned()),
        Just("no-cache".to_owned()),
        Just("private".to_owned()),
        Just("public".to_owned()),
        Just("must-revalidate".to_owned()),
        Just("stale-while-revalidate".to_owned()),
        Just("stale-if-error".to_owned()),
        Just("immutable".to_owned()),
        "[a-z-]{1,10}",
    ];
    let value = prop_oneof![
        Just(String::new()),
        Just("=0".to_owned()),
        Just("=-1".to_owned()),
        Just("=18446744073709551616".to_owned()),
        Just("=99999999999999999999999".to_owned()),
        Just("=\"60\"".to_owned()),
        Just("=\"".to_owned()),
        Just("=1e9".to_owned()),
        "=[0-9]{1,12}",
    ];
    let item = (directive, value).prop_map(|(d, v)| format!("{d}{v}"));
    let sep = prop_oneof![Just(", "), Just(","), Just(" ,, "), Just(";")];
    prop::collection::vec((item, sep), 0..6).prop_map(|v| {
        v.into_iter()
            .map(|(i, s)| format!("{i}{s}"))
            .collect::<String>()
    })
}

fn visible_ascii() -> impl Strategy<Value = String> {
    "[ -~]{0,40}"
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Any Cache-Control / Expires / Age / Vary on a response and any
    /// Cache-Control on the request: the cache answers (no panic), and a
    /// `no-store` or `private` response is never served from the cache.
    #[test]
    fn cache_control_any_headers(
        res_cc in prop::collection::vec(prop_oneof![header_value(), visible_ascii()], 0..3),
        req_cc in prop_oneof![header_value(), visible_ascii()],
        expires in visible_ascii(),
        age in prop_oneof![Just("99999999999999999999".to_owned()), "[0-9]{0,5}", visible_ascii()],
        vary in prop_oneof![Just("*".to_owned()), Just("Accept, Authorization".to_owned()), visible_ascii()],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let cache = CacheLayer::builder().name("prop").build().unwrap();
            let res_cc2 = res_cc.clone();
            let (expires2, age2, vary2) = (expires.clone(), age.clone(), vary.clone());
            let svc = ServiceBuilder::new().layer(cache).service_fn(move |_req: http::Request<String>| {
                let mut b = http::Response::builder();
                for v in &res_cc2 {
                    if let Ok(v) = http::HeaderValue::from_str(v) {
                        b = b.header("cache-control", v);
                    }
                }
                for (n, v) in [("expires", &expires2), ("age", &age2), ("vary", &vary2)] {
                    if let Ok(v) = http::HeaderValue::from_str(v) {
                        b = b.header(n, v);
                    }
                }
                let res = b
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(res) }
            });
            let mut req = http::Request::get("http://example.com/p");
            if let Ok(v) = http::HeaderValue::from_str(&req_cc) {
                req = req.header("cache-control", v);
            }
            let req = req.body(String::new()).unwrap();
            let first = svc.clone().oneshot(req).await.unwrap();
            let _ = first;
            let second = svc
                .clone()
                .oneshot(http::Request::get("http://example.com/p").body(String::new()).unwrap())
                .await
                .unwrap();
            let joined = res_cc.join(",").to_ascii_lowercase();
            let forbidden = joined.split(',').any(|d| {
                let d = d.trim();
                d == "no-store" || d == "private" || d.starts_with("private=")
            });
            if forbidden && second.headers().get("x-cache").is_some_and(|v| v == "HIT") {
                return Err(TestCaseError::fail(format!("served from cache despite {joined:?}")));
            }
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Retry-After and its relatives on any status: never a panic.
    #[test]
    fn retry_after_any_value(
        status in prop_oneof![Just(429u16), Just(503u16), 100u16..600],
        retry_after in prop_oneof![visible_ascii(), "[0-9]{1,30}", Just("Wed, 21 Oct 2015 07:28:00 GMT".to_owned())],
        pushback in prop_oneof![visible_ascii(), "-?[0-9]{1,25}"],
        // Up to 40 digits and exponents such as "1e300": far beyond any
        // representable time (these once made `retry_after` panic).
        reset in prop_oneof![
            visible_ascii(),
            "-?[0-9]{1,40}(\\.[0-9]{1,5})?",
            "[0-9]{1,3}e[0-9]{1,3}",
        ],
        which in 0u8..8,
    ) {
        let mut headers = http::HeaderMap::new();
        let mut put = |name: &'static str, v: &str| {
            if let Ok(v) = http::HeaderValue::from_str(v) {
                headers.append(name, v);
            }
        };
        if which & 1 != 0 { put("retry-after", &retry_after); put("retry-after", "1"); }
        if which & 2 != 0 { put("grpc-retry-pushback-ms", &pushback); }
        if which & 4 != 0 { put("x-ratelimit-reset", &reset); put("ratelimit-reset", &reset); }
        let status = http::StatusCode::from_u16(status).unwrap();
        // A panic here fails the case (proptest catches it and shrinks).
        if let Some(d) = palisade::retry::retry_after(status, &headers) {
            prop_assert!(d <= Duration::MAX);
        }
    }
}
