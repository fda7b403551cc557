//! `earshot serve --grpc-addr ADDR`: the query API over gRPC (tonic, plaintext HTTP/2),
//! beside HTTP, on the same state (`earshot_server::AppState`): the same collections,
//! engine, request checks, error codes, API keys, execution slots and metrics.
//!
//! - `proto/earshot/v1/earshot.proto` (compiled by `build.rs` with protox): the service;
//! - [`convert`]: its messages to and from the HTTP API's request and answer types;
//! - [`service`]: the RPCs, through the same gates as HTTP's middleware;
//! - [`status`]: error codes as gRPC statuses with `google.rpc.ErrorInfo` / `RetryInfo`;
//! - this file: the server (with `grpc.health.v1` and reflection) as a
//!   [`Sidecar`] of `earshot_server::serve_with_sidecars`.

mod accept;
pub mod calls;
pub mod convert;
mod health;
pub mod service;
pub mod status;
pub mod stream;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use earshot_server::conn::Slots;
use earshot_server::limits::MAX_BODY_BYTES;
use earshot_server::overload::LimitOptions;
use earshot_server::sidecar::{Shutdown, Sidecar};
use earshot_server::state::AppState;
use tokio::net::TcpListener;

pub use health::Readiness;

/// The generated messages, server and client of `earshot.v1`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("earshot.v1");
    pub use crate::wire::SimilarAnswer;

    /// `SimilarAnswer`'s outcome (hand-written with it, in `wire`).
    pub mod similar_answer {
        pub use crate::wire::Outcome;
    }

    /// The encoded descriptors of `earshot.proto` (for reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/earshot_descriptor.bin"));
}

/// The service's full name (`grpc.health.v1` reports it too).
pub const SERVICE_NAME: &str = "earshot.v1.Earshot";

/// How often an idle connection is pinged (dead peers are dropped after another 20 s).
const KEEPALIVE: Duration = Duration::from_secs(30);

/// The gRPC transport on `addr`, for `earshot_server::serve_with_sidecars`.
pub fn sidecar(addr: SocketAddr) -> Sidecar {
    Sidecar {
        name: "grpc",
        addr,
        run: Box::new(|listener, state, slots, shutdown| {
            Box::pin(serve(listener, state, slots, shutdown))
        }),
    }
}

/// Serves gRPC on `listener` until `shutdown`, then lets the calls in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    slots: Slots,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let limits = state.limiter.options().clone();
    let s = state.clone();
    let readiness: Readiness = Box::new(move || {
        let names = s.live().versions.keys().cloned().collect();
        (s.not_ready().is_none(), names)
    });
    let earshot = pb::earshot_server::EarshotServer::new(service::Earshot { state });
    serve_service(
        listener,
        slots,
        &limits,
        readiness,
        earshot,
        shutdown.wait(),
    )
    .await
}

/// Serves `earshot` (`serve`'s engine, or the router's fan-out) on `listener` beside
/// `grpc.health.v1` (reporting `readiness`) and reflection, until `shutdown`; then lets
/// the calls in flight finish. Every connection takes its place from `slots`.
pub async fn serve_service<S: pb::earshot_server::Earshot>(
    listener: TcpListener,
    slots: Slots,
    limits: &LimitOptions,
    readiness: Readiness,
    earshot: pb::earshot_server::EarshotServer<S>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let readiness = tokio::spawn(health::track(readiness, reporter));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // The HTTP body limit; answers are not limited (a batch can be large).
    let earshot = earshot.max_decoding_message_size(MAX_BODY_BYTES);
    let incoming = accept::incoming(listener, slots);
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // A backstop only: every RPC answers by its own deadline (`service`), and a
        // call's slot is held by the shared limiter, not here.
        .timeout(limits.request_timeout + Duration::from_secs(1))
        // A connection holds at most one call more than the server executes and queues:
        // that one reaches the shared limiter and is refused (RESOURCE_EXHAUSTED) like
        // anyone's excess, instead of waiting unseen in a per-connection queue.
        .concurrency_limit_per_connection(limits.max_concurrent + limits.max_queue + 1)
        // Outermost: every call (health and reflection too) keeps its connection in use.
        .layer(calls::CountCalls)
        .add_service(health)
        .add_service(reflection)
        .add_service(earshot)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    readiness.abort();
    result.map_err(Into::into)
}
