//! Keys built from hostile input cannot collide, inject structure, hash
//! tags or glob characters (property tests).

use bytes::Bytes;
use palisade_store::Store;
use proptest::prelude::*;
use redis::cluster_routing::Slot;

/// Strings heavy in the characters that matter, plus arbitrary unicode.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::string::string_regex("[:{}*?\\[\\]\\\\%^ \\t\\nab0-9]{0,12}").unwrap(),
        any::<String>(),
        Just(String::new()),
        Just("%3A".to_string()),
        Just("a:b".to_string()),
    ]
}

fn parts() -> impl Strategy<Value = (String, String, String, String)> {
    (hostile(), hostile(), hostile(), hostile())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn keys_have_fixed_structure((ns, entity, id, version) in parts()) {
        let store = Store::in_memory();
        let key = store.key(&ns, &entity, &id, &version);
        prop_assert_eq!(key.split(':').count(), 5, "{}", key);
        prop_assert!(key.starts_with("palisade:"));
        for c in ['{', '}', '*', '?', '[', ']', '\\', ' ', '\n', '\t'] {
            prop_assert!(!key.contains(c), "{:?} in {}", c, key);
        }
    }

    #[test]
    fn distinct_inputs_give_distinct_keys(a in parts(), b in parts()) {
        let store = Store::in_memory();
        let ka = store.key(&a.0, &a.1, &a.2, &a.3);
        let kb = store.key(&b.0, &b.1, &b.2, &b.3);
        prop_assert_eq!(a == b, ka == kb, "{} vs {}", ka, kb);
        let ga = store.grouped_key(&a.0, "n", "e", &a.2, "v");
        let gb = store.grouped_key(&b.0, "n", "e", &b.2, "v");
        prop_assert_eq!((&a.0, &a.2) == (&b.0, &b.2), ga == gb, "{} vs {}", ga, gb);
    }

    #[test]
    fn shifting_separators_never_collides(x in hostile(), y in hostile(), z in hostile()) {
        let store = Store::in_memory();
        let joined = format!("{x}:{y}");
        prop_assert_ne!(store.key("n", &joined, &z, "v"), store.key("n", &x, &format!("{y}:{z}"), "v"));
    }

    #[test]
    fn grouped_keys_share_one_slot(group in hostile(), a in parts(), b in parts()) {
        let store = Store::in_memory();
        let ka = store.grouped_key(&group, &a.0, &a.1, &a.2, &a.3);
        let kb = store.grouped_key(&group, &b.0, &b.1, &b.2, &b.3);
        prop_assert_eq!(ka.matches('{').count(), 1);
        prop_assert_eq!(ka.matches('}').count(), 1);
        prop_assert_eq!(Slot::for_key(&ka), Slot::for_key(&kb), "{} / {}", ka, kb);
    }

    #[test]
    fn patterns_match_only_their_namespace(a in parts(), b in parts()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let store = Store::in_memory();
            let ka = store.key(&a.0, &a.1, &a.2, &a.3);
            let kb = store.key(&b.0, &b.1, &b.2, &b.3);
            store.set(&ka, Bytes::from_static(b"a"), None).await.unwrap();
            store.set(&kb, Bytes::from_static(b"b"), None).await.unwrap();
            let deleted = store.delete_matching(&store.pattern(&a.0, Some(&a.1))).await.unwrap();
            let b_matches = (&a.0, &a.1) == (&b.0, &b.1);
            let expect = if ka == kb { 1 } else if b_matches { 2 } else { 1 };
            prop_assert_eq!(deleted, expect);
            prop_assert_eq!(store.get(&ka).await.unwrap(), None);
            prop_assert_eq!(store.get(&kb).await.unwrap().is_some(), !b_matches);
            // An escaped literal key as a pattern matches only itself.
            store.set(&kb, Bytes::from_static(b"b"), None).await.unwrap();
            let n = store.delete_matching(&Store::glob_escape(&kb)).await.unwrap();
            prop_assert_eq!(n, 1);
            Ok(())
        })?;
    }
}
