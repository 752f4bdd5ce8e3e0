//! The reverse proxy at the bottom of the stack: forwards a request to the
//! upstream with a pooled hyper client and never fails as a service — a
//! connection error becomes a 502 answer. `http://` and `https://`
//! upstreams (rustls: the system's roots plus an optional CA file, an
//! optional client certificate, SNI, HTTP/2 by ALPN).

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, Uri, header};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use palisade::config::UpstreamSection;
use palisade::core::body::idle::IdleTimeoutBody;
use palisade::core::{BoxError, Error, ErrorKind, PalisadeBody};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Forwards requests to one upstream. Cloned for every request (axum
/// clones the stack per request): one reference count, not the three
/// clients' many.
#[derive(Clone)]
pub struct Proxy {
    inner: std::sync::Arc<ProxyInner>,
}

type ProxyClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

struct ProxyInner {
    client: ProxyClient,
    /// HTTP/2 only (prior knowledge on `http://`): gRPC requests, and
    /// every request when `upstream.http2` is set.
    h2: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    /// Send every request over `h2`.
    all_h2: bool,
    /// HTTP/1.1 only: `Upgrade` (WebSocket) requests, which HTTP/2 cannot
    /// carry.
    h1: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// A response stream idle this long is cut (zero: never).
    idle_timeout: Duration,
    /// Clients whose forwarding headers are believed.
    trusted: std::sync::Arc<[ipnet::IpNet]>,
    /// Send the client's `Host` (`upstream.preserve_host`), over HTTP/1.1.
    preserve_host: bool,
}

impl Proxy {
    pub fn new(
        upstream: &Uri,
        cfg: &UpstreamSection,
        trusted: &[ipnet::IpNet],
    ) -> Result<Self, String> {
        let scheme = upstream
            .scheme()
            .cloned()
            .ok_or("upstream URL needs a scheme (http:// or https://)")?;
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(format!("upstream scheme `{scheme}` is not http or https"));
        }
        let authority = upstream
            .authority()
            .cloned()
            .ok_or("upstream URL needs a host")?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let tls = tls_config(cfg)?;
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector.clone());
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(https);
        let https_h1 = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector.clone());
        let h1 = Client::builder(TokioExecutor::new()).build(https_h1);
        let https_h2 = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(connector);
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(https_h2);
        Ok(Self {
            inner: std::sync::Arc::new(ProxyInner {
                client,
                h2,
                all_h2: cfg.http2,
                h1,
                scheme,
                authority,
                idle_timeout: cfg.idle_timeout,
                trusted: trusted.into(),
                preserve_host: cfg.preserve_host,
            }),
        })
    }
}

/// rustls settings for `https://` upstreams: the system's roots, plus the
/// CA file and the client certificate the configuration names. Errors name
/// the key.
fn tls_config(cfg: &UpstreamSection) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &cfg.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "upstream.ca_file {}: no PEM certificate in it",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("upstream.ca_file {}: {e}", path.display()))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    match (&cfg.client_cert_file, &cfg.client_key_file) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("upstream.client_cert_file {}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("upstream.client_cert_file {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("upstream.client_key_file {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("upstream.client_cert_file: {e}"))
        }
        _ => Err("upstream.client_cert_file and upstream.client_key_file go together".to_owned()),
    }
}

/// The request failed because the client's body went idle (see
/// `server.body_idle_timeout`), not because of the upstream.
fn client_too_slow(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<palisade::core::body::idle::IdleTimeout>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The request failed because the client's body grew past
/// `server.max_body_bytes`.
fn client_body_too_large(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Why the upstream could not be reached, for the answer: a TLS failure
/// (an untrusted certificate, a name mismatch) is said as such.
fn unreachable(err: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(err);
    while let Some(e) = source {
        // rustls' error travels inside `io::Error`s (nested), whose
        // `source()` skips it: look inside.
        let mut inner: &(dyn std::error::Error + 'static) = e;
        while let Some(wrapped) = inner
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            inner = wrapped;
        }
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => {
                    "upstream TLS certificate rejected (untrusted, expired or for another name)"
                }
                _ => "upstream TLS handshake failed",
            };
        }
        source = e.source();
    }
    "upstream unreachable"
}

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove(header::TRANSFER_ENCODING);
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<PalisadeBody<IdleTimeoutBody<Incoming>>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.inner.clone();
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(this.scheme.clone())
            .authority(this.authority.clone())
            .path_and_query(path)
            .build();
        // gRPC needs HTTP/2 end to end (and its trailers); anything else
        // goes in whatever the upstream speaks (HTTP/2 by ALPN on TLS).
        let grpc = palisade::core::is_grpc_request(&parts.headers);
        // A WebSocket (or other `Upgrade`) handshake: forwarded with its
        // upgrade headers over HTTP/1.1; on `101` both connections are
        // joined.
        let upgrade = parts.headers.get(header::UPGRADE).cloned();
        let client_side = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        let h2 = (grpc || this.all_h2) && upgrade.is_none();
        // The client's `Host`, when preserved, travels as a header: over
        // HTTP/1.1, never beside an HTTP/2 `:authority` that names the
        // upstream (a mismatch HTTP/2 servers may refuse).
        let preserve_host = this.preserve_host && !h2;
        // Which client sends it (borrowed from `this` in the future).
        let pick: fn(&ProxyInner) -> &ProxyClient = if upgrade.is_some() || preserve_host {
            |p| &p.h1
        } else if h2 {
            |p| &p.h2
        } else {
            |p| &p.client
        };
        // The request's route may set its own idle limit.
        let idle = parts
            .extensions
            .get::<palisade::routes::Route>()
            .and_then(|r| r.section().idle_timeout)
            .unwrap_or(this.idle_timeout);
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
        });
        let client_version = parts.version;
        // The JSON-RPC call a response answers goes with it, so a
        // classifier can tell a call's reply stream from a server's own.
        let json_rpc = parts
            .extensions
            .get::<palisade::core::jsonrpc::JsonRpcCall>()
            .cloned();
        Box::pin(async move {
            let Ok(uri) = uri else {
                return Ok(Error::new(ErrorKind::BadRequest, "invalid request target")
                    .into_http_response(grpc));
            };
            parts.uri = uri;
            // `te: trailers` is the one TE value HTTP/2 allows, and gRPC
            // servers ask for it.
            let te_trailers = parts
                .headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(header::HOST);
            if preserve_host && let Some(host) = &client_host {
                // Else the client sets the upstream's own authority.
                parts.headers.insert(header::HOST, host.clone());
            }
            crate::forwarding::add_forwarding(
                &mut parts.headers,
                peer,
                &this.trusted,
                client_version,
                client_host.as_ref(),
            );
            if te_trailers {
                parts
                    .headers
                    .insert(header::TE, http::HeaderValue::from_static("trailers"));
            }
            if let Some(protocol) = &upgrade {
                parts.headers.insert(header::UPGRADE, protocol.clone());
                parts.headers.insert(
                    header::CONNECTION,
                    http::HeaderValue::from_static("upgrade"),
                );
            }
            // The client's version says nothing of the upstream's.
            parts.version = if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            let body = body.map_err(Into::into).boxed_unsync();
            let client = pick(&this);
            match client.request(Request::from_parts(parts, body)).await {
                Ok(mut res) if res.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    let Some(client_side) = client_side else {
                        return Ok(Error::new(
                            ErrorKind::Upstream,
                            "the upstream switched protocols on a request that cannot",
                        )
                        .into_http_response(grpc));
                    };
                    let upstream_side = hyper::upgrade::on(&mut res);
                    tokio::spawn(async move {
                        match tokio::try_join!(client_side, upstream_side) {
                            Ok((client, upstream)) => {
                                let _ = tokio::io::copy_bidirectional(
                                    &mut hyper_util::rt::TokioIo::new(client),
                                    &mut hyper_util::rt::TokioIo::new(upstream),
                                )
                                .await;
                            }
                            Err(err) => tracing::debug!(error = %err, "upgrade failed"),
                        }
                    });
                    let (mut parts, body) = res.into_parts();
                    parts.version = http::Version::HTTP_11;
                    Ok(Response::from_parts(
                        parts,
                        PalisadeBody::inner(IdleTimeoutBody::new(body, Duration::ZERO)),
                    ))
                }
                Ok(res) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    crate::forwarding::add_via(&mut parts.headers, parts.version);
                    // Answered in the client's own version by the server.
                    parts.version = http::Version::HTTP_11;
                    if let Some(call) = json_rpc {
                        parts.extensions.insert(call);
                    }
                    let body = IdleTimeoutBody::new(body, idle);
                    Ok(Response::from_parts(parts, PalisadeBody::inner(body)))
                }
                Err(err) if client_body_too_large(&err) => Ok(Error::new(
                    ErrorKind::PayloadTooLarge,
                    "the request body is over its size limit (server.max_body_bytes, or its route's)",
                )
                .into_http_response(grpc)),
                Err(err) if client_too_slow(&err) => Ok(Error::new(
                    ErrorKind::ClientTimeout,
                    "the request body stopped arriving",
                )
                .into_http_response(grpc)),
                Err(err) => {
                    let why = unreachable(&err);
                    tracing::warn!(error = %err, why, "upstream request failed");
                    Ok(Error::new(ErrorKind::Upstream, why).into_http_response(grpc))
                }
            }
        })
    }
}
