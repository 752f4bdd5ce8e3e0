//! The reverse proxy at the bottom of the stack: forwards a request to the
//! upstream with a pooled hyper client and never fails as a service — a
//! connection error becomes a 502 answer.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response, Uri, header};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use palisade::core::body::idle::IdleTimeoutBody;
use palisade::core::{BoxError, Error, ErrorKind, PalisadeBody};
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Forwards requests to one upstream.
#[derive(Clone)]
pub struct Proxy {
    client: Client<HttpConnector, ProxyBody>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// A response stream idle this long is cut (zero: never).
    idle_timeout: Duration,
}

impl Proxy {
    pub fn new(upstream: &Uri, idle_timeout: Duration) -> Result<Self, String> {
        let scheme = upstream
            .scheme()
            .cloned()
            .ok_or("upstream URL needs a scheme")?;
        if scheme != http::uri::Scheme::HTTP {
            return Err("only http:// upstreams are supported by this example".into());
        }
        let authority = upstream
            .authority()
            .cloned()
            .ok_or("upstream URL needs a host")?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Self {
            client,
            scheme,
            authority,
            idle_timeout,
        })
    }
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
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build();
        let client = self.client.clone();
        let idle = self.idle_timeout;
        Box::pin(async move {
            let Ok(uri) = uri else {
                return Ok(Error::new(ErrorKind::BadRequest, "invalid request target")
                    .into_http_response(false));
            };
            parts.uri = uri;
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(header::HOST);
            let body = body.map_err(Into::into).boxed_unsync();
            match client.request(Request::from_parts(parts, body)).await {
                Ok(res) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = IdleTimeoutBody::new(body, idle);
                    Ok(Response::from_parts(parts, PalisadeBody::inner(body)))
                }
                Err(err) => {
                    tracing::warn!(error = %err, "upstream request failed");
                    Ok(Error::new(ErrorKind::Upstream, "upstream unreachable")
                        .into_http_response(false))
                }
            }
        })
    }
}
