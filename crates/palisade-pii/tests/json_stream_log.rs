//! JSON masking, streaming across chunk boundaries, log masking, and
//! property tests (no PII survives, valid JSON out, no panic on any input).

use palisade_pii::{MaskStats, MaskingMakeWriter, PiiMasker, StreamMasker};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::io::Write;
use std::sync::{Arc, Mutex};

#[test]
fn nested_json_and_arrays() {
    let masker = PiiMasker::new();
    let mut v = json!({
        "user": {
            "name": "A",
            "contacts": ["user@example.com", {"phone": "9876543210"}],
            "apiKey": ["anything", 1],
            "Password": null,
            "credit-card": 4111111111111111u64,
            "cvv": 123,
            "passport_no": {"n": "X1"},
        },
        "orders": [{"id": 1234567812345678u64, "card_on_file": "4111 1111 1111 1111"}],
        "user@example.com": true,
        "max_tokens": 100,
    });
    let n = masker.mask_json(&mut v);
    assert_eq!(
        v,
        json!({
            "user": {
                "name": "A",
                "contacts": ["us***@example.com", {"phone": "98******10"}],
                "apiKey": "***REDACTED***",
                "Password": "***REDACTED***",
                "credit-card": "***REDACTED***",
                "cvv": "***REDACTED***",
                "passport_no": "***REDACTED***",
            },
            "orders": [{"id": 1234567812345678u64, "card_on_file": "4111 **** **** 1111"}],
            "us***@example.com": true,
            "max_tokens": 100,
        })
    );
    assert_eq!(n, 9);
}

#[test]
fn json_numbers_are_scanned() {
    let masker = PiiMasker::new();
    let mut v = json!({"n": 4111111111111111u64, "m": 9876543210u64, "ok": 42});
    masker.mask_json(&mut v);
    assert_eq!(
        v,
        json!({"n": "4111********1111", "m": "98******10", "ok": 42})
    );
    let off = PiiMasker::builder().mask_numbers(false).build().unwrap();
    let mut v = json!({"n": 4111111111111111u64});
    off.mask_json(&mut v);
    assert_eq!(v, json!({"n": 4111111111111111u64}));
}

#[test]
fn json_bytes_keep_layout_and_numbers() {
    let masker = PiiMasker::new();
    let src = br#"{ "b": 1.000, "a" : "mail user@example.com",
  "big": 123456789012345678901234567890, "token":{"x":[1,"2"]}, "esc": "user\u0040example.com \"q\"",
  "card": 4111111111111111, "arr": [ "9876543210" ] }"#;
    let mut stats = MaskStats::default();
    let out = masker.mask_json_bytes(src, &mut stats).unwrap();
    let out = std::str::from_utf8(&out).unwrap();
    assert_eq!(
        out,
        r#"{ "b": 1.000, "a" : "mail us***@example.com",
  "big": 123456789012345678901234567890, "token":"***REDACTED***", "esc": "us***@example.com \"q\"",
  "card": "4111********1111", "arr": [ "98******10" ] }"#
    );
    assert_eq!(stats.fields(), 1);
    assert_eq!(stats.get("email"), 2);
    assert!(serde_json::from_str::<Value>(out).is_ok());
    // Not JSON: an error, so the caller scans it as text.
    assert!(masker.mask_json_bytes(b"{\"a\": ", &mut stats).is_err());
    // Nothing to mask: borrowed.
    assert!(matches!(
        masker
            .mask_json_bytes(br#"{"a":[1,2,"x"]}"#, &mut stats)
            .unwrap(),
        std::borrow::Cow::Borrowed(_)
    ));
}

fn stream_all(chunks: &[&[u8]], window: usize) -> Vec<u8> {
    let mut s = StreamMasker::new(PiiMasker::new(), window, 1 << 20);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(s.push(c).unwrap());
    }
    out.extend(s.finish());
    out
}

#[test]
fn stream_catches_values_split_at_every_boundary() {
    let text = "head {\"e\":\"user@example.com\"} card 4111 1111 1111 1111, phone +91 98765 43210, \
                jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U \
                aadhaar 2345 6789 0124 tail";
    let expected = PiiMasker::new().mask_str(text).into_owned();
    assert_ne!(expected, text);
    let b = text.as_bytes();
    // Every split point, and every pair of split points, with a small window.
    for i in 0..=b.len() {
        let out = stream_all(&[&b[..i], &b[i..]], 48);
        assert_eq!(String::from_utf8(out).unwrap(), expected, "split at {i}");
    }
    for chunk in 1..20 {
        let chunks: Vec<&[u8]> = b.chunks(chunk).collect();
        let out = stream_all(&chunks, 48);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            expected,
            "chunks of {chunk}"
        );
    }
}

#[test]
fn stream_refuses_a_giant_token() {
    let mut s = StreamMasker::new(PiiMasker::new(), 16, 64);
    let big = vec![b'a'; 200];
    assert!(s.push(&big).is_err());
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn logs_are_masked() {
    let capture = Capture::default();
    let sink = capture.clone();
    let writer = MaskingMakeWriter::new(PiiMasker::new(), move || sink.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(user = "user@example.com", card = %"4111 1111 1111 1111", "login from 192.168.1.23");
        let err = std::io::Error::other("lookup failed for 9876543210");
        tracing::error!(error = %err, "failed");
    });
    let logged = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("us***@example.com"), "{logged}");
    assert!(logged.contains("4111 **** **** 1111"), "{logged}");
    assert!(logged.contains("192.168.*.*"), "{logged}");
    assert!(logged.contains("98******10"), "{logged}");
    for raw in [
        "user@example.com",
        "4111 1111 1111 1111",
        "192.168.1.23",
        "9876543210",
    ] {
        assert!(!logged.contains(raw), "{raw} leaked: {logged}");
    }
}

/// Valid PII values and how each must not survive.
fn pii_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("user@example.com".to_string()),
        "[a-z]{3,8}\\.[a-z]{2,5}@[a-z]{3,8}\\.(com|org|io)".prop_map(|s| s),
        "[6-9][0-9]{9}".prop_map(|s| s),
        Just("4111111111111111".to_string()),
        Just("5500 0000 0000 0004".to_string()),
        Just("ABCDE1234F".to_string()),
        Just("2345 6789 0124".to_string()),
        Just("123-45-6789".to_string()),
        Just("DE89370400440532013000".to_string()),
        Just("10.20.30.40".to_string()),
        Just("AKIAIOSFODNN7EXAMPLE".to_string()),
    ]
}

fn filler() -> impl Strategy<Value = String> {
    "[a-zA-Z ,.!?é]{0,12}"
}

fn json_with_pii() -> impl Strategy<Value = (Value, Vec<String>)> {
    let leaf = (filler(), pii_value(), filler())
        .prop_map(|(a, p, b)| (Value::String(format!("{a} {p} {b}")), vec![p]));
    let plain = prop_oneof![
        any::<i32>().prop_map(|n| (json!(n), vec![])),
        filler().prop_map(|s| (json!(s), vec![])),
        Just((Value::Null, vec![])),
    ];
    prop_oneof![3 => leaf, 1 => plain].prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|items| {
                let mut all = Vec::new();
                let arr = items
                    .into_iter()
                    .map(|(v, p)| {
                        all.extend(p);
                        v
                    })
                    .collect();
                (Value::Array(arr), all)
            }),
            prop::collection::vec(("[a-z]{1,8}", inner), 0..6).prop_map(|items| {
                let mut all = Vec::new();
                let mut map = serde_json::Map::new();
                for (k, (v, p)) in items {
                    all.extend(p);
                    map.insert(k, v);
                }
                (Value::Object(map), all)
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn planted_pii_never_survives((doc, planted) in json_with_pii()) {
        let masker = PiiMasker::new();
        let text = serde_json::to_vec_pretty(&doc).unwrap();
        let mut stats = MaskStats::default();
        let out = masker.mask_json_bytes(&text, &mut stats).unwrap();
        let parsed: Value = serde_json::from_slice(&out).expect("output is valid JSON");
        let out_text = String::from_utf8(out.to_vec()).unwrap();
        for p in &planted {
            prop_assert!(!out_text.contains(p.as_str()), "{p} survived in {out_text}");
        }
        let mut v = doc.clone();
        masker.mask_json(&mut v);
        let v_text = v.to_string();
        for p in &planted {
            prop_assert!(!v_text.contains(p.as_str()), "{p} survived in {v_text}");
        }
        prop_assert_eq!(parsed.is_object() || parsed.is_array(), doc.is_object() || doc.is_array());
    }

    #[test]
    fn arbitrary_input_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let masker = PiiMasker::new();
        let _ = masker.mask_bytes(&bytes);
        let mut stats = MaskStats::default();
        let _ = masker.mask_json_bytes(&bytes, &mut stats);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = masker.mask_str(s);
        }
        let mut sm = StreamMasker::new(masker.clone(), 32, 4096);
        for c in bytes.chunks(7) {
            let _ = sm.push(c);
        }
        let _ = sm.finish();
    }

    #[test]
    fn digit_and_separator_soup_never_panics(s in "[0-9 .:@+()A-Z-]{0,300}") {
        let masker = PiiMasker::new();
        let once = masker.mask_str(&s).into_owned();
        let mut sm = StreamMasker::new(masker.clone(), 64, 1 << 16);
        let mut out = Vec::new();
        for c in s.as_bytes().chunks(5) { out.extend(sm.push(c).unwrap()); }
        out.extend(sm.finish());
        prop_assert_eq!(String::from_utf8(out).unwrap(), once);
    }
}
