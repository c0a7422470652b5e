//! The gRPC server: `FleetService` behind the token guard, the open
//! `EnrollmentService`, the standard health service and reflection, with
//! TLS when configured; and, where `[grpc] health_listen` is set, the health
//! service alone in plaintext (Kubernetes' gRPC probes speak no TLS).

use std::net::SocketAddr;
use std::sync::Arc;

use fleet_proto::v1::artifact_service_server::ArtifactServiceServer;
use fleet_proto::v1::enrollment_service_server::EnrollmentServiceServer;
use fleet_proto::v1::fleet_service_server::FleetServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;

use super::Api;
use super::models::Fetch;
use crate::ControllerError;
use crate::security::enroll::Enrollment;
use crate::security::guard::{Guard, Guarded};

/// `[grpc]`: where the API listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Socket address to listen on. Default 127.0.0.1:50051.
    pub listen: SocketAddr,
    /// Where `grpc.health.v1.Health` alone is served without TLS, e.g.
    /// `0.0.0.0:50052` for Kubernetes' gRPC probes. Empty (default): nowhere.
    #[serde(default)]
    pub health_listen: String,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 50051)), health_listen: String::new() }
    }
}

impl GrpcConfig {
    /// The plaintext health address, if any.
    ///
    /// # Errors
    /// `health_listen` that is no socket address.
    pub fn health_addr(&self) -> Result<Option<SocketAddr>, ControllerError> {
        fleet_net::optional_listen("grpc.health_listen", &self.health_listen, "0.0.0.0:50052")
            .map_err(ControllerError::Invalid)
    }
}

/// The gRPC server, ready to serve on its bound listener.
pub struct Server {
    listener: TcpListener,
    /// The plaintext health listener (`health_listen`).
    health: Option<TcpListener>,
    builder: tonic::transport::Server,
    api: Arc<Api>,
    enrollment: Enrollment,
    fetch: Fetch,
    guard: Arc<Guard>,
}

impl Server {
    /// A server for `api` and the services open to nodes (`enrollment`,
    /// `fetch`) on `listener`, and for health alone on `health` if given.
    ///
    /// # Errors
    /// TLS settings tonic refuses.
    pub fn new(
        (listener, health): (TcpListener, Option<TcpListener>),
        tls: Option<ServerTlsConfig>,
        api: Arc<Api>,
        (enrollment, fetch): (Enrollment, Fetch),
        guard: Arc<Guard>,
    ) -> Result<Self, ControllerError> {
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = tls {
            builder = builder.tls_config(t).map_err(|e| {
                ControllerError::Config(format!("gRPC TLS settings: {e}; check security.tls_cert/tls_key"))
            })?;
        }
        Ok(Self { listener, health, builder, api, enrollment, fetch, guard })
    }

    /// Serves until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<FleetServiceServer<Api>>().await;
        let probes = self.health.take().map(|listener| {
            let probes = tonic::transport::Server::builder().add_service(health_service.clone());
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(listener);
                if let Err(e) = probes.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await {
                    tracing::error!(error = %e, "The plaintext gRPC health server stopped.");
                }
            })
        });
        // Both versions of reflection: grpcurl speaks v1, Python's grpcio-reflection and
        // older tools v1alpha.
        let (v1, v1alpha) = match (reflection().build_v1(), reflection().build_v1alpha()) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "gRPC reflection cannot be built; the API is not served.");
                return;
            }
        };
        let r = self
            .builder
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha)
            .add_service(EnrollmentServiceServer::new(self.enrollment))
            .add_service(ArtifactServiceServer::new(self.fetch))
            .add_service(Guarded::new(FleetServiceServer::from_arc(self.api), self.guard))
            .serve_with_incoming_shutdown(
                // No Nagle: a small answer must not wait for the client's delayed ACK (40 ms).
                tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                shutdown.cancelled_owned(),
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "gRPC server stopped.");
        }
        if let Some(p) = probes {
            let _ = p.await;
        }
    }
}

/// What reflection describes: the API and the health service.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(fleet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
