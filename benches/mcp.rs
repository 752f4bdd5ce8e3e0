//! What MCP awareness costs per call, against a plain header key, in one
//! run:
//!
//! - `key/header`: the tool name from an `x-tool` header (`HeaderKey`);
//! - `key/json_rpc_body`: the tool name from a `tools/call` JSON-RPC body —
//!   the bounded read-ahead (`jsonrpc::peek`, the body passed on whole) and
//!   the `ExtensionKey<ToolName>` lookup the layers make (in both key
//!   cases the body is then read whole, as the upstream call would);
//! - `classify/json_reply` and `classify/sse_reply`: judging a tool's
//!   reply (result, `isError`, JSON-RPC error) from a JSON body and from a
//!   server-sent event, as the per-tool breaker does.
//!
//! `cargo bench --bench mcp`

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Full};
use palisade::core::jsonrpc::{self, ReplyScan, ToolName};
use palisade::core::key::{ExtensionKey, HeaderKey, KeyExtractor};
use std::hint::black_box;

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"query":"circuit breakers in tower","limit":10}}}"#;
const REPLY: &str = r#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"3 results: tower-resilience, palisade, failsafe"}],"isError":false}}"#;

fn request(with_header: bool) -> Request<Full<Bytes>> {
    let mut req = Request::post("http://gw.test/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if with_header {
        req = req.header("x-tool", "search");
    }
    req.body(Full::new(Bytes::from_static(CALL.as_bytes())))
        .expect("valid request")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("mcp/key");
    let by_header = HeaderKey::new("x-tool");
    g.bench_function("header", |b| {
        b.to_async(&rt).iter(|| async {
            let req = request(true);
            let key = by_header.extract(&req).map(|k| k.to_string());
            let body = req.into_body().collect().await.expect("body").to_bytes();
            black_box((key, body.len()))
        })
    });
    let by_tool = ExtensionKey::<ToolName>::new();
    g.bench_function("json_rpc_body", |b| {
        b.to_async(&rt).iter(|| async {
            let req = jsonrpc::peek(request(false), 64 * 1024).await;
            let key = by_tool.extract(&req).map(|k| k.to_string());
            // The body goes on whole.
            let body = req.into_body().collect().await.expect("body").to_bytes();
            black_box((key, body.len()))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("mcp/classify");
    g.bench_function("json_reply", |b| {
        b.iter(|| {
            let mut scan = ReplyScan::json(1 << 20);
            let early = scan.push(black_box(REPLY.as_bytes()));
            black_box(early.or_else(|| scan.finish()))
        })
    });
    let event = format!("event: message\ndata: {REPLY}\n\n");
    g.bench_function("sse_reply", |b| {
        b.iter(|| {
            let mut scan = ReplyScan::events(1 << 20);
            let early = scan.push(black_box(event.as_bytes()));
            black_box(early.or_else(|| scan.finish()))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
