//! `https://` upstreams through the gateway binary: a real TLS server
//! (rustls, a certificate from a CA this test makes), trusted through
//! `upstream.ca_file`, HTTP/2 by ALPN; and the clear answer when the
//! certificate is not trusted.

mod support;

use axum::{Router, routing::get as route};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::sync::{Arc, Mutex};
use support::{Gateway, get};

/// A CA, and a certificate it issued for `localhost` / 127.0.0.1.
struct Pki {
    ca_pem: String,
    leaf_pem: String,
    leaf_key_pem: String,
}

fn pki() -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "palisade test CA");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}

/// An https server on 127.0.0.1 serving `/users/7`; records the HTTP
/// versions it was spoken to in.
async fn tls_upstream(pki: &Pki, versions: Arc<Mutex<Vec<http::Version>>>) -> u16 {
    let certs = vec![CertificateDer::from_pem_slice(pki.leaf_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.leaf_key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let app = Router::new().route(
        "/users/7",
        route(move |req: http::Request<axum::body::Body>| {
            let versions = versions.clone();
            async move {
                versions.lock().unwrap().push(req.version());
                (
                    [("content-type", "application/json")],
                    r#"{"email":"asha.rao@example.com","password":"hunter2"}"#,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A client that does not trust us ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_proxied_over_http2_with_a_configured_ca() {
    let pki = pki();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let port = tls_upstream(&pki, versions.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let cfg = format!("[upstream]\nca_file = {:?}\n", ca.display().to_string());
    let upstream = format!("https://localhost:{port}");
    let gw = Gateway::start_with_config(Some(&cfg), &["--upstream", &upstream], &[]);
    let res = get(&format!("{}/users/7", gw.url)).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let text = res.text();
    assert!(text.contains("as***@example.com"), "{text}");
    assert!(text.contains("***REDACTED***"), "{text}");
    assert_eq!(
        versions.lock().unwrap().as_slice(),
        [http::Version::HTTP_2],
        "ALPN chose HTTP/2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstream_certificate_is_a_clear_502() {
    let pki = pki();
    let versions = Arc::new(Mutex::new(Vec::new()));
    let port = tls_upstream(&pki, versions.clone()).await;
    let upstream = format!("https://localhost:{port}");
    // No ca_file: the test CA is not among the system's roots.
    let gw = Gateway::start_with_config(
        Some("[circuit_breaker]\ninitial_mode = \"disabled\"\n[retry]\nmax_attempts = 1\n"),
        &["--upstream", &upstream],
        &[],
    );
    let res = get(&format!("{}/users/7", gw.url)).await;
    assert_eq!(res.status, 502, "{}", res.text());
    assert_eq!(res.header("content-type"), Some("application/problem+json"));
    assert!(res.text().contains("certificate"), "{}", res.text());
    assert!(
        versions.lock().unwrap().is_empty(),
        "no request got through"
    );
}

#[tokio::test]
async fn a_missing_ca_file_fails_at_start_naming_the_key() {
    let out = std::process::Command::new(support::gateway_binary())
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--upstream", "https://localhost:1"])
        .env("PALISADE__UPSTREAM__CA_FILE", "/nonexistent/ca.pem")
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("upstream.ca_file"), "{err}");
}
