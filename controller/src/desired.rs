//! Desired state (ARCHITECTURE.md flow 3, the device-twin pattern): an
//! operator's change is checked, stored with the next version and published
//! retained to the node; after every (re)connect to the broker every stored
//! desired state is published again, in case the broker lost them.

use fleet_proto::v1::{DesiredState, SetDesiredStateRequest};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::link::Link;
use crate::store::Store;

/// Longest model name a desired state may carry.
const MAX_MODEL_LEN: usize = 128;

/// Longest health window a desired state may ask for: a day.
const MAX_HEALTH_WINDOW_MS: u64 = 86_400_000;

/// The desired-state component. Cheap to clone.
#[derive(Clone)]
pub struct DesiredStates {
    store: Store,
    /// Publishes desired states (retained) to the nodes.
    link: Link,
}

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

impl DesiredStates {
    /// The component over `store`, publishing through `link`.
    #[must_use]
    pub fn new(store: Store, link: Link) -> Self {
        Self { store, link }
    }

    /// Checks, stores and publishes a new version of a node's desired state.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad request, FAILED_PRECONDITION when
    /// `expected_version` is not the current one, UNAVAILABLE when the store or
    /// the broker cannot take it now.
    pub async fn set(&self, req: SetDesiredStateRequest) -> Result<DesiredState, Status> {
        let desired = req.desired.ok_or_else(|| bad("desired", "give the desired state"))?;
        fleet_proto::validate_node_id(&desired.node_id).map_err(|e| bad("desired.node_id", e))?;
        if desired.telemetry_interval_ms != 0 && desired.telemetry_interval_ms < 100 {
            return Err(bad("desired.telemetry_interval_ms", "use 0 (keep the agent's) or at least 100"));
        }
        if !desired.power_policy_toml.is_empty() {
            toml::from_str::<toml::Table>(&desired.power_policy_toml)
                .map_err(|e| bad("desired.power_policy_toml", format!("not valid TOML: {}", e.message())))?;
        }
        if let Some(m) = desired.models.iter().find(|m| m.is_empty() || m.len() > MAX_MODEL_LEN) {
            return Err(bad("desired.models", format!("bad model name {m:?}")));
        }
        for (name, version) in &desired.model_versions {
            fleet_inference::registry::check_model_ref(name, version).map_err(|e| bad("desired.model_versions", e))?;
        }
        if desired.health_window_ms > MAX_HEALTH_WINDOW_MS {
            return Err(bad("desired.health_window_ms", "at most a day (86400000)"));
        }
        let stored =
            self.store.put_desired(desired, req.expected_version).await.map_err(Status::from)?.ok_or_else(|| {
                Status::failed_precondition("expected_version: the desired state changed meanwhile; read it again")
            })?;
        self.link.desired(&stored).await.map_err(|_| {
            Status::unavailable(
                "desired state stored but not yet published: the MQTT client is busy; it is republished when the \
                 broker reconnects",
            )
        })?;
        tracing::info!(node_id = %stored.node_id, version = stored.version, "Desired state stored and published.");
        Ok(stored)
    }

    /// The latest desired state of a node.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get(&self, node_id: &str) -> Result<Option<DesiredState>, crate::ControllerError> {
        self.store.get_desired(node_id).await
    }

    /// Publishes every stored desired state again each time the link's MQTT
    /// session comes up (a new broker session), until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut connected = self.link.connected();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = connected.wait_for(|c| *c) => if r.is_err() { return },
            }
            match self.store.all_desired().await {
                Ok(all) => {
                    for d in &all {
                        let _ = self.link.desired(d).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "Cannot read desired states to republish them."),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = connected.wait_for(|c| !*c) => if r.is_err() { return },
            }
        }
    }
}
