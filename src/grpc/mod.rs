//! The gRPC face: `tidings.v1.Notifications` (see `proto/tidings/v1/notifications.proto`),
//! with gRPC-Web for browsers, server reflection and the standard health service, on a
//! listener of its own.
//!
//! It stands on the core alone, as the REST API does: publishes go through
//! [`crate::ingest::publish_command`] and the [`crate::notifier::Notifier`], reads through
//! the [`crate::store::Store`], tokens through [`crate::auth::Authenticator`] and live
//! delivery through the [`crate::hub::Hub`], so its rules cannot drift from REST's. Only
//! the wire differs: protobuf messages instead of JSON bodies, and [`status`], the one
//! place where errors become gRPC status codes.

mod convert;
mod input;
pub mod listener;
pub use convert::{json_to_struct, struct_to_json};
mod service;
pub mod status;
mod subscribe;

use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::notifier::Notifier;
use crate::shutdown::Shutdown;
use crate::store::Store;
use crate::telemetry::Chain;
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::http;
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The code generated from the committed `.proto`, client and server.
pub mod proto {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tidings.v1");

    /// The compiled contract, as served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("tidings_descriptor");
}

/// A request message's upper bound: the REST body limit, so a publish too big for one face
/// is too big for the other.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Metadata and headers a browser's gRPC-Web client sends, and may read, across origins.
const ALLOW_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-accept-encoding",
];
const EXPOSE_HEADERS: [&str; 5] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "idempotent-replayed",
    "resume-after",
];

/// What the face calls: the same core parts as the HTTP faces.
#[derive(Clone)]
pub struct Core {
    pub store: Store,
    pub notifier: Notifier,
    pub auth: Arc<Authenticator>,
    pub hub: Hub,
}

/// How the listener behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Origins whose pages may call over gRPC-Web (`*` for any); empty: none.
    pub allowed_origins: Vec<String>,
    /// Between HTTP/2 pings on an idle connection, so a dead peer is noticed.
    pub heartbeat: Duration,
    /// How long open calls get to finish once the replica has drained its HTTP requests.
    pub grace: Duration,
    /// The bounds on the listener's TCP connections.
    pub limits: listener::Limits,
    /// How long a request body may take to arrive (`TIDINGS__SERVER__BODY_TIMEOUT_SECONDS`).
    pub body_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the gRPC listener could not be set up: {0}")]
    Io(#[from] std::io::Error),
    #[error("the reflection service could not load the contract: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC face needs an actix arbiter to start hub sessions on; start it inside an actix System")]
    NoArbiter,
}

/// Starts serving on `listener` (already bound, so the port is known before this returns).
///
/// The server stops taking calls at `stopping` (the signal: its health turns NOT_SERVING,
/// and the hub ends every `Subscribe` with a "reconnect" status); calls still open when
/// `root` is cancelled (the HTTP server has drained) get `grace` more, then are dropped.
/// The task is spawned under a child of `stopping`, so startup awaits it before the store
/// closes.
pub fn spawn(
    core: Core,
    listener: std::net::TcpListener,
    options: Options,
    stopping: &Shutdown,
    root: &Shutdown,
) -> Result<(), StartError> {
    // Hub sessions are actix actors and must start on an arbiter; tonic's tasks run on the
    // plain tokio runtime, so connects are handed to the arbiter that builds the server.
    let arbiter = actix::Arbiter::try_current().ok_or(StartError::NoArbiter)?;
    listener.set_nonblocking(true)?;
    let incoming = listener::incoming(tokio::net::TcpListener::from_std(listener)?, options.limits);

    let (health, health_service) = tonic_health::server::health_reporter();
    // Reflection lists every service the listener serves, the standard health service
    // included (`grpcurl list` shows what a client can call), in both protocol versions:
    // v1 for current tools, v1alpha for the older ones still in use.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let notifications = proto::notifications_server::NotificationsServer::new(
        service::Notifications::new(core, arbiter),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let router = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(options.heartbeat))
        .http2_keepalive_timeout(Some(options.heartbeat))
        .layer(listener::CallsLayer)
        .layer(cors(&options.allowed_origins))
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(input::InputLayer {
            body_timeout: options.body_timeout,
        })
        .add_service(notifications)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let task = stopping.child();
    let signal = stopping.clone();
    let root = root.clone();
    let grace = options.grace;
    task.spawn(async move {
        let service_name = <proto::notifications_server::NotificationsServer<
            service::Notifications,
        > as tonic::server::NamedService>::NAME;
        health
            .set_service_status(service_name, tonic_health::ServingStatus::Serving)
            .await;
        let serve = router.serve_with_incoming_shutdown(incoming, async move {
            signal.cancelled().await;
            for name in ["", service_name] {
                health
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        });
        let mut serve = std::pin::pin!(serve);
        let served = tokio::select! {
            served = &mut serve => Some(served),
            () = root.cancelled() => tokio::time::timeout(grace, &mut serve).await.ok(),
        };
        match served {
            Some(Ok(())) => {}
            Some(Err(e)) => tracing::error!(error = %Chain(&e), "the gRPC server failed"),
            None => tracing::warn!("gRPC calls still open after the grace period; dropping them"),
        }
    });
    Ok(())
}

/// CORS for gRPC-Web: only the configured origins, never credentials (the token travels in
/// `authorization`, not in a cookie).
fn cors(origins: &[String]) -> CorsLayer {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| o.trim_end_matches('/').parse().ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::POST])
        .allow_headers(ALLOW_HEADERS.map(http::HeaderName::from_static))
        .expose_headers(EXPOSE_HEADERS.map(http::HeaderName::from_static))
        .max_age(Duration::from_secs(86_400))
}
