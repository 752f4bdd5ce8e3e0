//! PII masking throughput: palisade's single pass (checksums validated)
//! against the two approaches users came from, in one run:
//! - `regex_sequential`: the `regex` crate, one `replace_all` per pattern,
//!   one after another;
//! - `regex_alternation`: one alternation of the same patterns, one pass.
//!
//! Inputs: ~1 MB of plain text and ~1 MB of JSON, with 0 %, 1 % and 10 % of
//! sentences / values carrying a PII value.
//!
//! Run: `cargo bench -p palisade-pii --bench pii`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use palisade_pii::{MaskStats, PiiMasker};
use regex::Regex;
use std::hint::black_box;
use std::time::Duration;

/// The patterns as users typically wrote them (Python-style), no checksums.
const BASELINE: &[&str] = &[
    r"(?i)bearer\s+[\w.~+/-]+=*",
    r"eyJ[\w-]+\.[\w-]+\.[\w-]*",
    r"\b(?:sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16})\b",
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b",
    r"\b(?:\d[ -]?){12,18}\d\b",
    r"\b[2-9]\d{3}\s?\d{4}\s?\d{4}\b",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"\+\d{1,3}[ -]?\d{4,5}[ -]?\d{5,6}\b|\b[6-9]\d{9}\b",
    r"\b[A-Z]{5}\d{4}[A-Z]\b",
    r"\b(?:\d{1,3}\.){3}\d{1,3}\b",
];

const PII: &[&str] = &[
    "user.name@example.com",
    "9876543210",
    "4111 1111 1111 1111",
    "ABCDE1234F",
    "2345 6789 0124",
    "123-45-6789",
    "192.168.10.23",
    "DE89370400440532013000",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl",
];

const WORDS: &[&str] = &[
    "the",
    "order",
    "was",
    "shipped",
    "to",
    "warehouse",
    "and",
    "invoice",
    "total",
    "is",
    "version",
    "release",
    "customer",
    "asked",
    "about",
    "delivery",
    "status",
    "item",
    "count",
    "priority",
    "service",
    "request",
    "processed",
    "successfully",
    "retry",
    "later",
    "agent",
];

/// Tiny deterministic generator (benches must not depend on a seed crate).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() as usize) % xs.len()]
    }
}

fn sentence(rng: &mut Lcg, pii_percent: u64, out: &mut String) {
    for i in 0..10 {
        if i > 0 {
            out.push(' ');
        }
        match rng.next() % 12 {
            0 => out.push_str(&format!("#{}", rng.next() % 100_000)),
            1 => out.push_str(&format!("2024-0{}-1{}", rng.next() % 9 + 1, rng.next() % 9)),
            _ => out.push_str(rng.pick(WORDS)),
        }
    }
    if rng.next() % 100 < pii_percent {
        out.push(' ');
        out.push_str(rng.pick(PII));
    }
    out.push('.');
}

fn text(pii_percent: u64) -> String {
    let mut rng = Lcg(7);
    let mut s = String::with_capacity(1 << 20);
    while s.len() < 1_000_000 {
        sentence(&mut rng, pii_percent, &mut s);
        s.push('\n');
    }
    s
}

fn json(pii_percent: u64) -> String {
    let mut rng = Lcg(11);
    let mut items = Vec::new();
    let mut len = 0;
    while len < 1_000_000 {
        let mut desc = String::new();
        sentence(&mut rng, pii_percent, &mut desc);
        let mut note = String::new();
        sentence(&mut rng, pii_percent, &mut note);
        let item = serde_json::json!({
            "id": rng.next() % 1_000_000,
            "name": rng.pick(WORDS),
            "description": desc,
            "tags": [rng.pick(WORDS), rng.pick(WORDS)],
            "price": 12.5,
            "meta": {"note": note, "created": "2024-05-01T10:00:00Z"},
        });
        let t = item.to_string();
        len += t.len() + 1;
        items.push(item);
    }
    serde_json::to_string(&items).unwrap()
}

fn sequential(regexes: &[Regex], input: &str) -> String {
    let mut s = input.to_owned();
    for re in regexes {
        if let std::borrow::Cow::Owned(o) = re.replace_all(&s, "***") {
            s = o;
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let masker = PiiMasker::new();
    let seq: Vec<Regex> = BASELINE.iter().map(|p| Regex::new(p).unwrap()).collect();
    let alt = Regex::new(&BASELINE.join("|")).unwrap();
    for (kind, make) in [("text", text as fn(u64) -> String), ("json", json)] {
        let mut g = c.benchmark_group(format!("pii_{kind}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for pct in [0u64, 1, 10] {
            let input = make(pct);
            g.throughput(Throughput::Bytes(input.len() as u64));
            if kind == "json" {
                g.bench_with_input(BenchmarkId::new("palisade", pct), &input, |b, i| {
                    b.iter(|| {
                        let mut st = MaskStats::default();
                        black_box(masker.mask_json_bytes(i.as_bytes(), &mut st).unwrap());
                    })
                });
            } else {
                g.bench_with_input(BenchmarkId::new("palisade", pct), &input, |b, i| {
                    b.iter(|| black_box(masker.mask_str(i)))
                });
            }
            g.bench_with_input(BenchmarkId::new("regex_sequential", pct), &input, |b, i| {
                b.iter(|| black_box(sequential(&seq, i)))
            });
            g.bench_with_input(
                BenchmarkId::new("regex_alternation", pct),
                &input,
                |b, i| b.iter(|| black_box(alt.replace_all(i, "***"))),
            );
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
