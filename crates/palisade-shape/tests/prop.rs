//! Properties: shaping never produces invalid JSON; identity rules are the
//! identity; the value path and the streaming byte path agree.

use palisade_shape::{FieldSelector, ShapeRules, Shaper};
use proptest::prelude::*;
use serde_json::{Map, Value};

const KEYS: &[&str] = &["a", "b", "id", "name", "k\"q", "ü", ""];

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(KEYS).prop_map(str::to_owned)
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Floats that print and parse back exactly.
        (-1_000_000i32..1_000_000, 0u32..8)
            .prop_map(|(m, e)| Value::from(m as f64 / (1u64 << e) as f64)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof![4 => key(), 1 => Just("*".to_owned())], 1..4)
        .prop_map(|segs| {
            segs.iter()
                .map(|s| {
                    if s == "*" {
                        s.clone()
                    } else {
                        s.replace('\\', "\\\\")
                            .replace('.', "\\.")
                            .replace('*', "\\*")
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .prop_filter("empty segments are invalid", |p| {
            !p.split('.').any(str::is_empty)
        })
}

fn rules() -> impl Strategy<Value = ShapeRules> {
    (
        prop::collection::vec(path(), 0..4),
        prop::collection::vec(path(), 0..3),
        prop::option::of(0usize..4),
        any::<bool>(),
        prop::option::of(0usize..6),
        any::<bool>(),
    )
        .prop_map(|(inc, exc, max_arr, marker, max_str, compact)| {
            let mut r = ShapeRules::new()
                .include(inc)
                .exclude(exc)
                .array_marker(marker)
                .compact(compact);
            r.max_array_size = max_arr;
            r.max_string_length = max_str;
            r
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn identity_rules_are_the_identity(doc in json()) {
        let shaper = Shaper::new(&ShapeRules::identity()).unwrap();
        prop_assert_eq!(&shaper.shape(&doc).unwrap().output, &doc);
        let pretty = serde_json::to_vec_pretty(&doc).unwrap();
        let out = shaper.shape_bytes(&pretty).unwrap().output;
        // Byte for byte the compact serialisation.
        prop_assert_eq!(out, serde_json::to_vec(&doc).unwrap());
        // `*` selects everything too.
        let all = Shaper::new(&ShapeRules::identity().include(["*"])).unwrap();
        prop_assert_eq!(&all.shape(&doc).unwrap().output, &doc);
    }

    #[test]
    fn shaping_always_yields_valid_json(doc in json(), rules in rules()) {
        let shaper = Shaper::new(&rules).unwrap();
        let bytes = serde_json::to_vec(&doc).unwrap();
        let shaped = shaper.shape_bytes(&bytes).unwrap();
        let parsed: Value = serde_json::from_slice(&shaped.output).unwrap();
        // The value path agrees with the streaming path.
        prop_assert_eq!(&shaper.shape(&doc).unwrap().output, &parsed);
        // Figures are consistent.
        prop_assert_eq!(shaped.stats.shaped_bytes, shaped.output.len() as u64);
        prop_assert_eq!(shaped.stats.original_bytes, bytes.len() as u64);
        // Without markers or string cuts, shaping never grows the document.
        if !rules.array_marker && rules.max_string_length.is_none() {
            prop_assert!(shaped.output.len() <= bytes.len());
        }
        // Compaction leaves no null, {} or [] below the top level.
        if rules.compact {
            prop_assert!(no_empties(&parsed, true));
        }
    }

    #[test]
    fn selector_parsing_never_panics(s in "[a-z(),/* %]{0,40}") {
        let _ = FieldSelector::parse(&s);
    }

    #[test]
    fn invalid_json_is_an_error_never_a_panic(s in prop::collection::vec(any::<u8>(), 0..64)) {
        let shaper = Shaper::new(&ShapeRules::new()).unwrap();
        if let Ok(shaped) = shaper.shape_bytes(&s) {
            serde_json::from_slice::<Value>(&shaped.output).unwrap();
        }
    }
}

fn no_empties(v: &Value, top: bool) -> bool {
    match v {
        Value::Null => top,
        Value::Array(a) => (top || !a.is_empty()) && a.iter().all(|x| no_empties(x, false)),
        Value::Object(o) => (top || !o.is_empty()) && o.values().all(|x| no_empties(x, false)),
        _ => true,
    }
}
