//! The `greeter.Greeter` service, written by hand where `tonic-prost-build`
//! would generate it, so the example builds without `protoc`:
//!
//! ```proto
//! syntax = "proto3";
//! package greeter;
//! service Greeter { rpc SayHello (HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; }
//! message HelloReply { string message = 1; }
//! ```

use bytes::Bytes;
use http::uri::PathAndQuery;
use palisade::core::BoxError;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tonic::{
    IntoRequest, Status,
    body::Body,
    client::GrpcService,
    server::{Grpc, NamedService},
};
use tonic_prost::ProstCodec;
use tower::Service;

/// `HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

/// `HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

const SAY_HELLO: &str = "/greeter.Greeter/SayHello";

/// The server side: routes `SayHello` to `handler`, any service from a
/// `tonic::Request<HelloRequest>` to a `tonic::Response<HelloReply>`.
#[derive(Clone)]
pub struct GreeterServer<H> {
    handler: H,
}

impl<H> GreeterServer<H> {
    pub fn new(handler: H) -> Self {
        Self { handler }
    }
}

impl<H> NamedService for GreeterServer<H> {
    const NAME: &'static str = "greeter.Greeter";
}

impl<H> Service<http::Request<Body>> for GreeterServer<H>
where
    H: Service<
            tonic::Request<HelloRequest>,
            Response = tonic::Response<HelloReply>,
            Error = Status,
        > + Clone
        + Send
        + 'static,
    H::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let handler = self.handler.clone();
        Box::pin(async move {
            if req.uri().path() != SAY_HELLO {
                return Ok(Status::unimplemented(req.uri().path().to_owned()).into_http());
            }
            Ok(Grpc::new(ProstCodec::default()).unary(handler, req).await)
        })
    }
}

/// The client side, over any gRPC transport: a tonic `Channel`, or a
/// `Channel` wrapped in palisade layers.
#[derive(Clone)]
pub struct GreeterClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> GreeterClient<T>
where
    T: GrpcService<Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    pub fn new(transport: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(transport),
        }
    }

    pub async fn say_hello(
        &mut self,
        request: impl IntoRequest<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("transport not ready: {}", e.into())))?;
        let path = PathAndQuery::from_static(SAY_HELLO);
        self.inner
            .unary(request.into_request(), path, ProstCodec::default())
            .await
    }
}
