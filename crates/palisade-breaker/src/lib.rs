//! A circuit breaker for Tower services, as complete as Resilience4j's.
//!
//! - States closed → open → half-open → closed, plus forced-open, disabled
//!   and metrics-only ([`State`]).
//! - Trips on consecutive failures (default 5), or on a failure rate — or a
//!   slow-call rate — over a sliding window of the last N calls or the last
//!   N seconds, once a minimum number of calls is seen ([`Config`]).
//! - Open for a recovery timeout (default 60 s), optionally growing on
//!   repeated trips; then half-open admits a fixed number of trial calls
//!   (default 3), of which a number of successes (default 2) close it and
//!   one failure re-opens it. Extra calls are rejected, never queued;
//!   dropped calls give their trial permit back.
//! - What fails is decided by palisade-core's [classifier](palisade_core::classify).
//! - One breaker per key (upstream host, route, tool name) with
//!   [`Builder::per_key`], bounded and evicting idle keys. A request the
//!   key extractor refuses ([`KeyExtractor::refusal`](palisade_core::key::KeyExtractor::refusal):
//!   a [`PeerIp`](palisade_core::key::PeerIp) with
//!   [`MissingPeer::Refuse`](palisade_core::key::MissingPeer::Refuse) and
//!   no peer address) never reaches the inner service: it gets the
//!   extractor's 500 (gRPC `INTERNAL`), or [`BreakerError::Refused`]
//!   ([`Select::refusal`], [`respond::OnOpen::refused`]).
//! - A [`BreakerRegistry`] names every breaker: snapshots, reset,
//!   force-open, disable, a stream of [`StateChange`]s and Prometheus metrics.
//! - State shared across replicas through palisade-store (Redis, Redis
//!   Cluster) with [`Builder::shared`]: one replica trips, the others reject
//!   within a poll interval; calls are still counted locally, and a store
//!   outage never fails a call.
//! - [`TieredFallback`]: primary → secondary → tertiary, skipping open
//!   circuits; health probes close a breaker early ([`Breaker::spawn_probe`]).
//!
//! # Flavours
//!
//! One service type, [`CircuitBreaker`], whose last type parameter says what
//! an open circuit answers (see [`respond`]):
//!
//! - [`CircuitBreakerLayer::new`] — generic services: the error becomes
//!   [`BreakerError<S::Error>`], `Open` when rejected.
//! - [`CircuitBreakerLayer::http`] — HTTP (axum, hyper, tonic): the breaker
//!   answers 503 + `Retry-After` itself, or `grpc-status: 14` for gRPC
//!   requests; the error type stays the inner one, so axum needs no
//!   `HandleErrorLayer`. The body becomes [`PalisadeBody<B>`](palisade_core::PalisadeBody).
//! - [`Builder::fallback`] — either flavour, answered by a fallback service.
//!
//! # Example: axum
//!
//! ```
//! use axum::{Router, routing::get};
//! use palisade_breaker::{BreakerRegistry, CircuitBreakerLayer};
//!
//! let registry = BreakerRegistry::new();
//! let breaker = CircuitBreakerLayer::builder("orders-api")
//!     .http()
//!     .registry(&registry)
//!     .build()
//!     .unwrap();
//! let app: Router = Router::new()
//!     .route("/orders", get(|| async { "[]" }))
//!     .layer(breaker);
//! # let _ = app;
//! ```
//!
//! # Example: a tonic server
//!
//! tonic's `Server::builder().layer(..)` takes the HTTP flavour as it is:
//! gRPC requests are recognised by their content type and answered with
//! `UNAVAILABLE`.
//!
//! ```ignore
//! let layer = CircuitBreakerLayer::http("greeter");
//! tonic::transport::Server::builder()
//!     .layer(layer)
//!     .add_service(GreeterServer::new(MyGreeter))
//!     .serve(addr)
//!     .await?;
//! ```
//!
//! # Example: a client, one breaker per upstream host
//!
//! ```
//! use palisade_breaker::CircuitBreakerLayer;
//! use palisade_core::key::key_fn;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let per_host = CircuitBreakerLayer::builder("upstreams")
//!     .http()
//!     .per_key(key_fn(|req: &http::Request<()>| {
//!         req.uri().host().map(str::to_owned)
//!     }))
//!     .build()
//!     .unwrap();
//! let client = ServiceBuilder::new()
//!     .layer(per_host.clone())
//!     // a hyper-util client goes here; a stand-in:
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::io::Error>(http::Response::new(()))
//!     });
//! per_host.breakers().get("a.internal".to_owned()).force_open();
//! let req = http::Request::get("http://a.internal/x").body(()).unwrap();
//! assert_eq!(client.clone().oneshot(req).await.unwrap().status(), 503);
//! let req = http::Request::get("http://b.internal/x").body(()).unwrap();
//! assert_eq!(client.oneshot(req).await.unwrap().status(), 200);
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod config;
mod error;
mod keyed;
mod layer;
mod registry;
pub mod respond;
mod shared;
mod tiered;
mod window;

pub use breaker::{Breaker, Permit, ProbeHandle, Reason, Snapshot, State, StateChange};
pub use config::{Config, ConfigError, IdleTarget, InitialMode, RecoveryBackoff, SlidingWindow};
pub use error::{BreakerError, CircuitOpen};
pub use keyed::{KeyedBreakers, Select, SingleBreaker};
pub use layer::{
    Builder, CircuitBreaker, CircuitBreakerLayer, HttpClassifier, PerKey, ResponseFuture,
    SharedClassifier, Single,
};
pub use registry::BreakerRegistry;
pub use tiered::{AllTiersFailed, TierFailure, TieredFallback};
