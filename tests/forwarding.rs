//! The headers a proxy owes: what the upstream sees of the client through
//! the gateway binary (`X-Forwarded-*`, `Forwarded`, `Via`), and that a
//! client cannot forge its address unless it is a trusted proxy.

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
