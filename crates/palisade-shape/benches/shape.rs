//! Streaming shaping vs a plain `serde_json::Value` parse → filter → serialize
//! baseline, on 10 KB, 100 KB and 1 MB documents, in one run.
//!
//! Run with `cargo bench -p palisade-shape --bench shape`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade_shape::{ShapeRules, Shaper};
use serde_json::{Map, Value, json};

/// A search-results document of about `target` bytes.
fn document(target: usize) -> Vec<u8> {
    let mut results = Vec::new();
    let mut doc = json!({});
    let mut i = 0;
    loop {
        results.push(json!({
            "id": i,
            "name": format!("Dealer number {i}"),
            "address": {"street": format!("{i} Main Road"), "city": "Pune", "zip": "411001", "unit": null},
            "phone": "+91-20-5550100",
            "fax": null,
            "rating": 4.5,
            "open": true,
            "tags": [],
            "description": "A family-run dealership with a service centre, financing and trade-ins. \u{2014} since 1998.",
            "inventory": [
                {"model": "Sedan", "price": 18250.0, "stock": 3, "notes": null},
                {"model": "Hatch", "price": 12999.5, "stock": 0, "notes": []}
            ],
            "meta": {"created": "2024-01-01T00:00:00Z", "updated": null, "extra": {}}
        }));
        i += 1;
        if i % 4 == 0 {
            doc = json!({"query": "sedan", "total": i, "page": {"next": null}, "results": results});
            let len = serde_json::to_vec(&doc).unwrap().len();
            if len >= target {
                break;
            }
        }
    }
    serde_json::to_vec(&doc).unwrap()
}

/// Baseline filter on a `Value`: keep `results.id` and `results.name`.
fn select_baseline(v: Value) -> Value {
    let Value::Object(mut top) = v else { return v };
    let results = match top.remove("results") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Object(mut o) => {
                    let mut keep = Map::new();
                    for k in ["id", "name"] {
                        if let Some(x) = o.remove(k) {
                            keep.insert(k.to_owned(), x);
                        }
                    }
                    Value::Object(keep)
                }
                other => other,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut out = Map::new();
    out.insert("results".to_owned(), Value::Array(results));
    Value::Object(out)
}

/// Baseline compaction on a `Value`: drop nulls, {} and [] recursively.
fn compact_baseline(v: Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Array(a) => {
            let a: Vec<Value> = a.into_iter().filter_map(compact_baseline).collect();
            (!a.is_empty()).then_some(Value::Array(a))
        }
        Value::Object(o) => {
            let o: Map<String, Value> = o
                .into_iter()
                .filter_map(|(k, v)| compact_baseline(v).map(|v| (k, v)))
                .collect();
            (!o.is_empty()).then_some(Value::Object(o))
        }
        other => Some(other),
    }
}

fn bench(c: &mut Criterion) {
    let sizes = [
        ("10KB", 10 * 1024),
        ("100KB", 100 * 1024),
        ("1MB", 1024 * 1024),
    ];
    let docs: Vec<(&str, Vec<u8>)> = sizes.iter().map(|(n, s)| (*n, document(*s))).collect();

    let select = Shaper::new(&ShapeRules::new().include(["results.id", "results.name"])).unwrap();
    let compact = Shaper::new(&ShapeRules::new()).unwrap();

    // Both sides produce the same bytes.
    for (_, doc) in &docs {
        let v: Value = serde_json::from_slice(doc).unwrap();
        let base = serde_json::to_vec(&select_baseline(v.clone())).unwrap();
        assert_eq!(select.shape_bytes(doc).unwrap().output, base);
        let base = serde_json::to_vec(&compact_baseline(v).unwrap()).unwrap();
        assert_eq!(compact.shape_bytes(doc).unwrap().output, base);
    }

    let mut group = c.benchmark_group("include_small_part");
    for (name, doc) in &docs {
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_with_input(BenchmarkId::new("palisade", name), doc, |b, doc| {
            b.iter(|| select.shape_bytes(black_box(doc)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("serde_json_value", name), doc, |b, doc| {
            b.iter(|| {
                let v: Value = serde_json::from_slice(black_box(doc)).unwrap();
                serde_json::to_vec(&select_baseline(v)).unwrap()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("compact_only");
    for (name, doc) in &docs {
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_with_input(BenchmarkId::new("palisade", name), doc, |b, doc| {
            b.iter(|| compact.shape_bytes(black_box(doc)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("serde_json_value", name), doc, |b, doc| {
            b.iter(|| {
                let v: Value = serde_json::from_slice(black_box(doc)).unwrap();
                serde_json::to_vec(&compact_baseline(v)).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
