//! The headers a proxy owes: what the upstream sees of the client through
//! the gateway binary (`X-Forwarded-*`, `Forwarded`, `Via`), and that a
//! client cannot forge its address unless it is a trusted proxy; `Host`
//! preserved by setting; W3C `traceparent` generated or propagated.

mod reliability_support;
mod support;

use axum::{Router, http::HeaderMap, routing::get};
use reliability_support::serve;
use support::{Gateway, send};

/// An upstream that answers with the forwarding headers it received, in
/// `x-seen-*` response headers (a JSON body would have its addresses
/// masked by the PII layer).
async fn echo_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new().route(
        "/seen",
        get(|headers: HeaderMap| async move {
            let all = |name: &str| {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap_or("?").to_owned())
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let mut out = HeaderMap::new();
            for (seen, name) in [
                ("x-seen-xff", "x-forwarded-for"),
                ("x-seen-proto", "x-forwarded-proto"),
                ("x-seen-xhost", "x-forwarded-host"),
                ("x-seen-forwarded", "forwarded"),
                ("x-seen-via", "via"),
                ("x-seen-host", "host"),
                ("x-seen-traceparent", "traceparent"),
                ("x-seen-tracestate", "tracestate"),
            ] {
                out.insert(seen, all(name).parse().unwrap());
            }
            (out, "seen")
        }),
    );
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_learns_the_client_and_a_client_cannot_forge_it() {
    let (upstream, _server) = echo_upstream().await;
    let gw = Gateway::start_with_config(None, &["--upstream", &upstream], &[]);
    let forged = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("host", "api.example.test"),
    ];
    let res = send(http::Method::GET, &format!("{}/seen", gw.url), &forged, b"").await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = |name: &str| {
        res.header(&format!("x-seen-{name}"))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(seen("xff"), "127.0.0.1", "the forged hop is dropped");
    assert_eq!(
        seen("forwarded"),
        "for=127.0.0.1;host=\"api.example.test\";proto=http"
    );
    assert_eq!(seen("proto"), "http");
    assert_eq!(seen("xhost"), "api.example.test");
    assert_eq!(seen("via"), "1.1 palisade");
    assert_ne!(seen("host"), "api.example.test", "Host is the upstream's");
    assert!(
        res.header("via").is_some_and(|v| v.ends_with("palisade")),
        "Via on the response: {:?}",
        res.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_hops_are_kept_and_extended() {
    let (upstream, _server) = echo_upstream().await;
    let cfg = "[rate_limit]\ntrusted_proxies = [\"127.0.0.0/8\"]\n";
    let gw = Gateway::start_with_config(Some(cfg), &["--upstream", &upstream], &[]);
    let from_proxy = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=203.0.113.7;proto=https"),
    ];
    let res = send(
        http::Method::GET,
        &format!("{}/seen", gw.url),
        &from_proxy,
        b"",
    )
    .await;
    assert_eq!(res.status, 200, "{}", res.text());
    let seen = |name: &str| {
        res.header(&format!("x-seen-{name}"))
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(seen("xff"), "203.0.113.7, 127.0.0.1");
    assert_eq!(seen("proto"), "https", "the proxy's scheme is kept");
    let forwarded = seen("forwarded");
    assert!(
        forwarded.starts_with("for=203.0.113.7;proto=https, for=127.0.0.1;"),
        "{forwarded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_host_is_sent_when_preserve_host_is_set() {
    let (upstream, _server) = echo_upstream().await;
    let upstream_authority = upstream.trim_start_matches("http://").to_owned();
    let host = [("host", "api.example.test")];
    // Default: the upstream's own authority.
    let gw = Gateway::start_with_config(None, &["--upstream", &upstream], &[]);
    let res = send(http::Method::GET, &format!("{}/seen", gw.url), &host, b"").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-seen-host"), Some(upstream_authority.as_str()));
    drop(gw);
    // Preserved: the client's.
    let cfg = "[upstream]\npreserve_host = true\n";
    let gw = Gateway::start_with_config(Some(cfg), &["--upstream", &upstream], &[]);
    let res = send(http::Method::GET, &format!("{}/seen", gw.url), &host, b"").await;
    assert_eq!(res.status, 200, "{}", res.text());
    assert_eq!(res.header("x-seen-host"), Some("api.example.test"));
    assert_eq!(res.header("x-seen-xhost"), Some("api.example.test"));
    // Also by the environment.
    drop(gw);
    let gw = Gateway::start_with_config(
        None,
        &["--upstream", &upstream],
        &[("PALISADE__UPSTREAM__PRESERVE_HOST", "true")],
    );
    let res = send(http::Method::GET, &format!("{}/seen", gw.url), &host, b"").await;
    assert_eq!(res.header("x-seen-host"), Some("api.example.test"));
}

/// A `traceparent`'s four fields, checked for the version-00 form.
fn fields(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(lower_hex(parts[1], 32), "trace id: {value}");
    assert!(lower_hex(parts[2], 16), "parent id: {value}");
    assert!(lower_hex(parts[3], 2), "flags: {value}");
    assert_ne!(parts[1], "0".repeat(32), "{value}");
    assert_ne!(parts[2], "0".repeat(16), "{value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_is_generated_propagated_or_replaced() {
    let (upstream, _server) = echo_upstream().await;
    let gw = Gateway::start_with_config(None, &["--upstream", &upstream], &[]);
    let seen = |headers: Vec<(&'static str, &'static str)>| {
        let url = format!("{}/seen", gw.url);
        async move {
            let res = send(http::Method::GET, &url, &headers, b"").await;
            assert_eq!(res.status, 200, "{}", res.text());
            (
                res.header("x-seen-traceparent")
                    .unwrap_or_default()
                    .to_owned(),
                res.header("x-seen-tracestate")
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };

    // None: a new trace, sampled; each request its own.
    let (first, _) = seen(vec![]).await;
    let (trace, parent, flags) = fields(&first);
    assert_eq!(flags, "01");
    let (second, _) = seen(vec![]).await;
    let (trace2, parent2, _) = fields(&second);
    assert_ne!(trace, trace2, "a new trace id per request");
    assert_ne!(parent, parent2);

    // Valid: the same trace and flags, the gateway's own parent id;
    // tracestate passes as it is.
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CLIENT_SPAN: &str = "00f067aa0ba902b7";
    let (got, state) = seen(vec![
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ),
        ("tracestate", "vendor=opaque"),
    ])
    .await;
    let (trace, parent, flags) = fields(&got);
    assert_eq!(trace, TRACE);
    assert_ne!(parent, CLIENT_SPAN, "the gateway's span is the parent now");
    assert_eq!(flags, "00", "the caller's sampling decision is kept");
    assert_eq!(state, "vendor=opaque");

    // Invalid (upper case, all-zero trace id, version ff, cut short): a
    // new trace in its place.
    for bad in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    ] {
        let (got, _) = seen(vec![("traceparent", bad)]).await;
        let (trace, _, flags) = fields(&got);
        assert_ne!(
            trace.to_ascii_uppercase(),
            TRACE.to_ascii_uppercase(),
            "{bad}"
        );
        assert_eq!(flags, "01", "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_id_is_on_the_requests_log_lines() {
    // An upstream that is not there: the gateway logs the failure (a
    // warning), inside the request's span.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let gw = Gateway::start_with_config(
        None,
        &["--upstream", &closed],
        &[("RETRY_MAX_ATTEMPTS", "1")],
    );
    let res = send(
        http::Method::GET,
        &format!("{}/anything", gw.url),
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
        b"",
    )
    .await;
    assert_eq!(res.status, 502, "{}", res.text());
    // Without the terminal colours the log writer adds.
    let logs = strip_ansi(&gw.logs());
    let line = logs
        .lines()
        .find(|l| l.contains("upstream request failed"))
        .unwrap_or_else(|| panic!("no upstream failure logged:\n{logs}"));
    assert!(
        line.contains("trace_id=0af7651916cd43dd8448eb211c80319c"),
        "{line}"
    );
}

/// `text` without ANSI escape sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
