//! The Spark Fleet controller: ingests what agents publish over MQTT (an
//! embedded rumqttd by default, or an external broker) or Kafka, keeps the
//! live view of every node, writes telemetry in bulk into SQLite or
//! PostgreSQL with exactly-once rows, acknowledges committed batches end to
//! end, routes inference jobs between edge and cloud, and serves the gRPC
//! `FleetService` (with health and reflection) and Prometheus metrics. `run`
//! is the whole controller; the binaries only parse flags.
//!
//! One module per component (docs/architecture.md): `link` (the only
//! conversation with nodes), `ingest`, `registry`, `desired`, `jobs` and
//! `router`, `security`, `usage` (per API token, with quotas), `store`, `api`,
//! `http`; `controller` wires them.
#![forbid(unsafe_code)]

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod backup;
pub mod clock;
pub mod config;
pub mod controller;
pub mod dashboard;
pub mod desired;
pub mod error;
pub mod fleetctl;
pub mod http;
mod inbound;
pub mod ingest;
pub mod jobs;
pub mod link;
pub mod metrics;
pub mod registry;
pub mod rollouts;
pub mod router;
pub mod security;
pub mod store;
pub mod usage;

pub use config::ControllerConfig;
pub use controller::{ADMIN_TOKEN_FILE, ApiAccess, Controller};
pub use error::ControllerError;
use std::time::Duration;

use fleet_net::systemd;
use tokio_util::sync::CancellationToken;

/// Runs the controller until `shutdown` is cancelled, then stops its tasks.
///
/// # Errors
/// As `Controller::start`.
pub async fn run(cfg: ControllerConfig, shutdown: CancellationToken) -> Result<(), ControllerError> {
    let c = Controller::start(cfg, shutdown.clone()).await?;
    systemd::ready(&format!("gRPC on {}, HTTP on {}", c.grpc_addr, c.http_addr));
    // systemd's watchdog (`WatchdogSec=`): a runtime too stuck to run this loop gets the controller restarted.
    let mut watchdog = tokio::time::interval(systemd::watchdog_every().unwrap_or(Duration::from_secs(3600)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = watchdog.tick() => systemd::watchdog(),
        }
    }
    systemd::stopping();
    if tokio::time::timeout(Duration::from_secs(10), c.wait()).await.is_err() {
        tracing::warn!("Some controller tasks did not stop within 10 s.");
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM (systemd and Kubernetes stop with SIGTERM).
pub async fn shutdown_signal() {
    fleet_net::signals::Signals::install().wait().await;
}
