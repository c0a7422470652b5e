//! WireGuard key rotation without a gap in telemetry (docs/security.md):
//! 1. an admin asks (`RotateNodeKey`): the controller publishes, retained on
//!    the node's `key` topic, a rotation with a new generation;
//! 2. the node makes a key and reports its public half (signed `ReportedState`);
//! 3. the controller records it, adds it as a peer without addresses (the old
//!    key keeps the node's address: the tunnel goes on), and answers with the
//!    key accepted;
//! 4. the node switches; its first handshake with the new key moves its
//!    address to the new peer (the overlay task watches for it);
//! 5. the node reports the new key in use through the new tunnel: the old
//!    peer goes, the rotation is over.
//!
//! No step waits on a clock: each follows the one before.

use fleet_proto::v1::{KeyRotation, ReportedState};
use tokio::sync::broadcast;
use tonic::Status;

use crate::link::Link;
use crate::store::Store;

/// Drives rotations; shared by the API and ingest.
pub struct Rotation {
    pub store: Store,
    /// Sends each rotation step to its node.
    pub link: Link,
    /// Tells the overlay task (and the key cache) that a node changed.
    pub changes: broadcast::Sender<String>,
}

impl Rotation {
    fn publish(&self, node_id: &str, k: Option<&KeyRotation>) -> Result<(), Status> {
        self.link.key_rotation(node_id, k).map_err(|_| Status::unavailable("the MQTT client is busy; retry"))
    }

    /// Step 1.
    ///
    /// # Errors
    /// NOT_FOUND for a node not enrolled (or revoked), UNAVAILABLE when the
    /// message cannot be queued.
    pub async fn start(&self, node_id: &str) -> Result<u64, Status> {
        fleet_proto::validate_node_id(node_id).map_err(|e| Status::invalid_argument(format!("node_id: {e}")))?;
        let live = self.store.identity(node_id).await.map_err(Status::from)?.filter(|i| i.revoked_unix_ms.is_none());
        if live.is_none() {
            return Err(Status::not_found(format!("node {node_id} is not enrolled (or was revoked)")));
        }
        let generation = u64::try_from(fleet_proto::now_unix_ms()).unwrap_or(1).max(1);
        self.publish(node_id, Some(&KeyRotation { generation, accepted_public_key: String::new() }))?;
        tracing::info!(node_id, generation, "WireGuard key rotation started.");
        Ok(generation)
    }

    /// Steps 3 and 5, on each signed `ReportedState`.
    pub async fn on_reported(&self, r: &ReportedState) {
        if r.wg_public_key.is_empty() && r.wg_next_public_key.is_empty() {
            return;
        }
        let Ok(Some(id)) = self.store.identity(&r.node_id).await else { return };
        if id.revoked_unix_ms.is_some() {
            return;
        }
        let next = &r.wg_next_public_key;
        if !next.is_empty() && *next != id.wg_public_key && id.wg_next_key.as_ref() != Some(next) {
            if wireguard_control::Key::from_base64(next).is_err() {
                tracing::warn!(node_id = %r.node_id, "Reported next WireGuard key is not a key; ignored.");
                return;
            }
            match self.store.set_wg_next_key(&r.node_id, next).await {
                Ok(true) => {
                    let _ = self.changes.send(r.node_id.clone());
                    let k = KeyRotation { generation: r.wg_generation, accepted_public_key: next.clone() };
                    if self.publish(&r.node_id, Some(&k)).is_err() {
                        tracing::warn!(node_id = %r.node_id, "Cannot queue the rotation's answer; the next report retries.");
                    }
                    tracing::info!(node_id = %r.node_id, "WireGuard key rotation: next key accepted.");
                }
                Ok(false) => {}
                Err(e) => tracing::error!(error = %e, node_id = %r.node_id, "Cannot record the next WireGuard key."),
            }
        } else if id.wg_next_key.as_ref() == Some(&r.wg_public_key) {
            match self.store.finish_wg_rotation(&r.node_id, &r.wg_public_key).await {
                Ok(true) => {
                    let _ = self.changes.send(r.node_id.clone());
                    let _ = self.publish(&r.node_id, None);
                    tracing::info!(node_id = %r.node_id, "WireGuard key rotation done; the old peer is removed.");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, node_id = %r.node_id, "Cannot finish the WireGuard key rotation.")
                }
            }
        }
    }
}
