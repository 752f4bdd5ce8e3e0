//! Each shaping rule alone and combined, through the programmatic API.

use palisade_shape::{CharsPerToken, FieldSelector, ShapeRules, ShapeStats, Shaper};
use serde_json::{Value, json};

fn shape(rules: ShapeRules, doc: &Value) -> Value {
    let shaper = Shaper::new(&rules).unwrap();
    let from_value = shaper.shape(doc).unwrap().output;
    // The byte path and the value path agree.
    let bytes = serde_json::to_vec_pretty(doc).unwrap();
    let from_bytes = shaper.shape_bytes(&bytes).unwrap().output;
    assert_eq!(
        serde_json::from_slice::<Value>(&from_bytes).unwrap(),
        from_value
    );
    from_value
}

fn doc() -> Value {
    json!({
        "id": 7,
        "name": "Acme",
        "address": {"city": "Pune", "zip": "411001", "geo": {"lat": 18.5, "lon": 73.8}},
        "tags": ["a", "b", "c"],
        "dealers": [
            {"id": 1, "name": "North", "address": {"city": "Delhi"}, "fax": null},
            {"id": 2, "name": "South", "address": {"city": "Chennai"}, "notes": []},
            {"id": 3, "name": "East", "address": {}}
        ],
        "meta": {"empty": {}, "none": null}
    })
}

#[test]
fn include_dot_paths() {
    let out = shape(ShapeRules::new().include(["name", "address.city"]), &doc());
    assert_eq!(out, json!({"name": "Acme", "address": {"city": "Pune"}}));
}

#[test]
fn include_through_arrays() {
    let out = shape(ShapeRules::new().include(["dealers.name"]), &doc());
    assert_eq!(
        out,
        json!({"dealers": [{"name": "North"}, {"name": "South"}, {"name": "East"}]})
    );
}

#[test]
fn include_wildcard() {
    let out = shape(ShapeRules::new().include(["*.city"]), &doc());
    assert_eq!(out, json!({"address": {"city": "Pune"}}));
    // Without compaction the containers matched by `*` stay, emptied.
    let out = shape(ShapeRules::new().include(["*.city"]).compact(false), &doc());
    assert_eq!(
        out,
        json!({"address": {"city": "Pune"}, "tags": [], "dealers": [{}, {}, {}], "meta": {}})
    );
    // `*` keeps everything.
    let out = shape(ShapeRules::new().include(["*"]).compact(false), &doc());
    assert_eq!(out, doc());
    // Wildcards combine with explicit siblings.
    let out = shape(
        ShapeRules::new().include(["dealers.*.city", "dealers.id"]),
        &doc(),
    );
    assert_eq!(
        out,
        json!({"dealers": [
            {"id": 1, "address": {"city": "Delhi"}},
            {"id": 2, "address": {"city": "Chennai"}},
            {"id": 3}
        ]})
    );
}

#[test]
fn include_of_a_scalar_subfield_drops_it() {
    let out = shape(ShapeRules::new().include(["name.first", "id"]), &doc());
    assert_eq!(out, json!({"id": 7}));
}

#[test]
fn exclude_alone() {
    let out = shape(
        ShapeRules::new()
            .exclude(["address", "dealers.id", "*.fax", "tags"])
            .compact(false),
        &doc(),
    );
    assert_eq!(
        out,
        json!({
            "id": 7,
            "name": "Acme",
            "dealers": [
                {"name": "North", "address": {"city": "Delhi"}},
                {"name": "South", "address": {"city": "Chennai"}, "notes": []},
                {"name": "East", "address": {}}
            ],
            "meta": {"empty": {}, "none": null}
        })
    );
}

#[test]
fn exclude_wins_over_include() {
    let out = shape(
        ShapeRules::new()
            .include(["address", "name"])
            .exclude(["address.geo", "name"]),
        &doc(),
    );
    assert_eq!(out, json!({"address": {"city": "Pune", "zip": "411001"}}));
}

#[test]
fn max_array_size_alone_and_with_marker() {
    let out = shape(
        ShapeRules::new().include(["tags"]).max_array_size(2),
        &doc(),
    );
    assert_eq!(out, json!({"tags": ["a", "b"]}));
    let out = shape(
        ShapeRules::new()
            .include(["tags"])
            .max_array_size(1)
            .array_marker(true),
        &doc(),
    );
    assert_eq!(out, json!({"tags": ["a", "... 2 more"]}));
    // No marker when nothing was cut.
    let out = shape(
        ShapeRules::new()
            .include(["tags"])
            .max_array_size(3)
            .array_marker(true),
        &doc(),
    );
    assert_eq!(out, json!({"tags": ["a", "b", "c"]}));
    // Zero: every array is emptied (and compacted away).
    let out = shape(
        ShapeRules::new().include(["tags", "id"]).max_array_size(0),
        &doc(),
    );
    assert_eq!(out, json!({"id": 7}));
}

#[test]
fn cut_counts_kept_elements_after_compaction() {
    let d = json!({"xs": [null, {}, 1, null, 2, 3]});
    assert_eq!(
        shape(ShapeRules::new().max_array_size(2), &d),
        json!({"xs": [1, 2]})
    );
    assert_eq!(
        shape(ShapeRules::new().max_array_size(2).compact(false), &d),
        json!({"xs": [null, {}]})
    );
}

#[test]
fn max_string_length() {
    let d = json!({"s": "héllo wörld", "short": "abc", "k": ["abcdef"]});
    let out = shape(ShapeRules::new().max_string_length(4), &d);
    assert_eq!(out, json!({"s": "héll…", "short": "abc", "k": ["abcd…"]}));
}

#[test]
fn compaction_alone_is_recursive() {
    let d = json!({"a": null, "b": {"c": {"d": null, "e": []}}, "f": [null, [], {}], "g": 0, "h": "", "i": false});
    assert_eq!(
        shape(ShapeRules::new(), &d),
        json!({"g": 0, "h": "", "i": false})
    );
    // The top level is never removed.
    assert_eq!(shape(ShapeRules::new(), &json!({"a": null})), json!({}));
    assert_eq!(shape(ShapeRules::new(), &json!([null])), json!([]));
    assert_eq!(shape(ShapeRules::new(), &json!(null)), json!(null));
    assert_eq!(shape(ShapeRules::new().include(["a"]), &json!(5)), json!(5));
}

#[test]
fn without_compaction_nothing_is_dropped() {
    assert_eq!(shape(ShapeRules::identity(), &doc()), doc());
}

#[test]
fn combined_rules() {
    let out = shape(
        ShapeRules::new()
            .include(["dealers", "tags"])
            .exclude(["dealers.address"])
            .max_array_size(2)
            .array_marker(true)
            .max_string_length(3),
        &doc(),
    );
    assert_eq!(
        out,
        json!({
            "tags": ["a", "b", "... 1 more"],
            "dealers": [{"id": 1, "name": "Nor…"}, {"id": 2, "name": "Sou…"}, "... 1 more"]
        })
    );
}

/// The SPEC §6 example: include `dealers`, max array 1, compact.
#[test]
fn spec_example_dealers() {
    let body = r#"{
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
    let shaper = Shaper::new(&ShapeRules::new().include(["dealers"]).max_array_size(1)).unwrap();
    let shaped = shaper.shape_bytes(body.as_bytes()).unwrap();
    let expected =
        r#"{"dealers":[{"name":"Autohaus North","city":"Pune","phone":"+91-20-5550100"}]}"#;
    assert_eq!(std::str::from_utf8(&shaped.output).unwrap(), expected);
    assert_eq!(
        shaped.stats,
        expected_stats(
            body.len() as u64,
            body.chars().count() as u64,
            expected.len() as u64
        )
    );
    assert_eq!(shaped.stats.original_bytes, 492);
    assert_eq!(shaped.stats.shaped_bytes, 78);
    assert_eq!(shaped.stats.original_tokens, 123);
    assert_eq!(shaped.stats.shaped_tokens, 20);
    assert_eq!(shaped.stats.tokens_saved(), 103);
    assert_eq!(format!("{:.1}", shaped.stats.saved_percent()), "83.7");
}

fn expected_stats(orig_bytes: u64, orig_chars: u64, shaped_bytes: u64) -> ShapeStats {
    ShapeStats {
        original_bytes: orig_bytes,
        shaped_bytes,
        original_tokens: orig_chars.div_ceil(4),
        shaped_tokens: shaped_bytes.div_ceil(4),
    }
}

#[test]
fn per_request_fields_replace_include_but_keep_exclude() {
    let shaper = Shaper::new(&ShapeRules::new().include(["name"]).exclude(["dealers.id"])).unwrap();
    let fields = FieldSelector::parse("id,dealers(id,name),address/city").unwrap();
    let out = shaper.shape_with(Some(&fields), &doc()).unwrap().output;
    assert_eq!(
        out,
        json!({
            "id": 7,
            "address": {"city": "Pune"},
            "dealers": [{"name": "North"}, {"name": "South"}, {"name": "East"}]
        })
    );
}

#[test]
fn estimator_is_pluggable() {
    let shaper = Shaper::new(&ShapeRules::identity())
        .unwrap()
        .with_estimator(CharsPerToken::new(1.0));
    let s = shaper.shape_bytes(br#"{ "a" : 1 }"#).unwrap();
    assert_eq!(s.output, br#"{"a":1}"#);
    assert_eq!((s.stats.original_tokens, s.stats.shaped_tokens), (11, 7));
}

#[test]
fn invalid_json_is_an_error() {
    let shaper = Shaper::new(&ShapeRules::new()).unwrap();
    for bad in [&b"{"[..], b"[1,]", b"{\"a\":1} x", b"", b"\xff"] {
        assert!(
            shaper.shape_bytes(bad).unwrap_err().is_invalid_json(),
            "{bad:?}"
        );
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let shaper = Shaper::new(&ShapeRules::new()).unwrap();
    let deep = "[".repeat(100_000);
    assert!(
        shaper
            .shape_bytes(deep.as_bytes())
            .unwrap_err()
            .is_invalid_json()
    );
    let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(
        shaper
            .shape_bytes(closed.as_bytes())
            .unwrap_err()
            .is_invalid_json()
    );
    let objs = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert!(
        shaper
            .shape_bytes(objs.as_bytes())
            .unwrap_err()
            .is_invalid_json()
    );
    // 127 levels are fine, and the value path agrees.
    let ok = format!("{}1{}", "[".repeat(127), "]".repeat(127));
    let shaped = shaper.shape_bytes(ok.as_bytes()).unwrap();
    assert_eq!(shaped.output, ok.as_bytes());
    let v: Value = serde_json::from_str(&ok).unwrap();
    assert_eq!(shaper.shape(&v).unwrap().output, v);
}

#[test]
fn escapes_and_unicode_survive() {
    let d = json!({"k\"ey\n": "v\u{0}al\\ue", "ü": "日本", "big": u64::MAX, "neg": i64::MIN, "f": 1.5e300});
    assert_eq!(shape(ShapeRules::identity(), &d), d);
    let raw = br#"{"\u00fc":"\ud83d\ude00"}"#;
    let out = Shaper::new(&ShapeRules::identity())
        .unwrap()
        .shape_bytes(raw)
        .unwrap()
        .output;
    assert_eq!(std::str::from_utf8(&out).unwrap(), r#"{"ü":"😀"}"#);
}

#[cfg(feature = "tiktoken")]
#[test]
fn exact_bpe_counts_with_tiktoken() {
    use palisade_shape::{TiktokenEstimator, TokenEstimator};
    let est = TiktokenEstimator::cl100k_base().unwrap();
    assert_eq!(est.estimate(b"hello world"), 2);
    let shaper = Shaper::new(&ShapeRules::new().include(["dealers.name"]))
        .unwrap()
        .with_estimator(TiktokenEstimator::o200k_base().unwrap());
    let shaped = shaper.shape(&doc()).unwrap();
    let s = shaped.stats;
    assert!(
        s.shaped_tokens > 0 && s.shaped_tokens < s.original_tokens,
        "{s:?}"
    );
    // Not the 4-characters estimate.
    assert_ne!(s.original_tokens, s.original_bytes.div_ceil(4));
}
