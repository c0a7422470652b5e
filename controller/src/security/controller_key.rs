//! Rotating the controller's own signing key with an overlap
//! (docs/security.md, "Rotating the controller's key"):
//! 1. an admin opens a rotation (`RotateControllerKey`): the next
//!    generation's key is made, marked pending; the old key goes on signing;
//! 2. every node that reports (in its status) a generation below the newest
//!    gets `ControllerKeys` (the signing key and the newest), retained on its
//!    `controller-keys` topic and signed with the key it holds; it keeps both;
//! 3. when every enrolled node reports the newest generation, the rotation
//!    finishes by itself: the new key signs, and each node drops the old one
//!    at the first message signed with the new. An admin may finish early
//!    (`finish_now`): nodes that were away get the keys when they come back,
//!    signed with the generation they still hold (older keys are kept for it).
//!
//! Every step follows a node's own report; nothing waits on a clock except
//! the pace of the checks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_proto::v1::{ControllerKeyStatus, NodeKeyHolding};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::signing_key;
use crate::ControllerError;
use crate::link::Link;
use crate::link::seal::Sealer;
use crate::registry::Registry;
use crate::store::Store;

/// How often the keys on disk are read again and the nodes looked at.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// The same announcement to the same node at most this often.
const ANNOUNCE_AGAIN: Duration = Duration::from_secs(30);

/// What was last sent a node: (newest generation announced, signed with, when).
type Announced = HashMap<String, (u64, u64, Instant)>;

/// Drives rotations of the controller's key; shared by the API and its task.
pub struct ControllerKey {
    pub data_dir: PathBuf,
    pub sealer: Arc<Sealer>,
    pub link: Link,
    pub store: Store,
    pub registry: Registry,
    announced: Mutex<Announced>,
}

fn internal(e: &ControllerError) -> Status {
    Status::internal(format!("the controller's signing keys: {e}"))
}

impl ControllerKey {
    #[must_use]
    pub fn new(data_dir: PathBuf, sealer: Arc<Sealer>, link: Link, store: Store, registry: Registry) -> Self {
        Self { data_dir, sealer, link, store, registry, announced: Mutex::default() }
    }

    /// The newest generation each node reported (0: none since start).
    fn held(&self) -> HashMap<String, u64> {
        self.registry
            .list()
            .into_iter()
            .map(|n| (n.node_id, n.status.map_or(0, |s| s.controller_key_generation)))
            .collect()
    }

    /// Enrolled, unrevoked nodes that do not hold the newest generation.
    async fn waiting(&self) -> Result<Vec<NodeKeyHolding>, ControllerError> {
        let newest = self.sealer.newest();
        let held = self.held();
        let ids = self.store.identities().await?;
        Ok(ids
            .into_iter()
            .filter(|i| i.revoked_unix_ms.is_none())
            .map(|i| NodeKeyHolding { generation: held.get(&i.node_id).copied().unwrap_or(0), node_id: i.node_id })
            .filter(|h| h.generation < newest)
            .collect())
    }

    /// Where the keys stand, and whom an open rotation waits for.
    ///
    /// # Errors
    /// Database errors.
    pub async fn status(&self) -> Result<ControllerKeyStatus, Status> {
        let waiting = self.waiting().await.map_err(Status::from)?;
        Ok(ControllerKeyStatus {
            signing_generation: self.sealer.generation(),
            newest_generation: self.sealer.newest(),
            waiting,
        })
    }

    /// Opens a rotation, or (`finish_now`) finishes the open one.
    ///
    /// # Errors
    /// FAILED_PRECONDITION when a rotation is open (or none is, to finish);
    /// INTERNAL when the key files cannot be written.
    pub async fn rotate(&self, finish_now: bool) -> Result<ControllerKeyStatus, Status> {
        self.reload();
        let (signing, newest) = (self.sealer.generation(), self.sealer.newest());
        if finish_now {
            if newest == signing {
                return Err(Status::failed_precondition(format!(
                    "no rotation is open: generation {signing} signs; open one with `fleetctl controller-key rotate`"
                )));
            }
            self.finish(newest).map_err(|e| internal(&e))?;
        } else {
            if newest > signing {
                return Err(Status::failed_precondition(format!(
                    "a rotation to generation {newest} is open: wait until every node holds it \
                     (`fleetctl controller-key status`), or finish it now (`fleetctl controller-key finish --force`)"
                )));
            }
            self.sealer.replace(signing_key::rotate(&self.data_dir).map_err(|e| internal(&e))?);
            self.announce();
        }
        self.status().await
    }

    fn finish(&self, generation: u64) -> Result<(), ControllerError> {
        self.sealer.replace(signing_key::finish(&self.data_dir, generation)?);
        tracing::info!(generation, "Controller signing key rotation finished: the new key signs.");
        Ok(())
    }

    /// Takes the keys as they are on disk (another replica may have rotated).
    fn reload(&self) {
        match signing_key::reload(&self.data_dir) {
            Ok(keys) => self.sealer.replace(keys),
            Err(e) => tracing::warn!(error = %e, "Cannot read the controller's signing keys; keeping those in memory."),
        }
    }

    /// Sends the keys to every node that reported an older generation; once
    /// a finished rotation's key is held, clears the node's retained keys
    /// (signed with a key it no longer holds, they would be refused at each
    /// reconnect).
    fn announce(&self) {
        let (signing, newest) = (self.sealer.generation(), self.sealer.newest());
        let mut announced = self.announced.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (node_id, held) in self.held() {
            if held == 0 || held > newest {
                continue;
            }
            if held == newest {
                let done = (newest, 0);
                let cleared = announced.get(&node_id).is_some_and(|&(n, h, _)| (n, h) == done);
                if signing == newest && newest > 1 && !cleared && self.link.controller_keys(&node_id, 0).is_ok() {
                    announced.insert(node_id, (done.0, done.1, Instant::now()));
                }
                continue;
            }
            let again = announced
                .get(&node_id)
                .is_none_or(|&(n, h, at)| (n, h) != (newest, held) || at.elapsed() >= ANNOUNCE_AGAIN);
            if again && self.send(&node_id, held, newest) {
                announced.insert(node_id, (newest, held, Instant::now()));
            }
        }
    }

    /// The keys to one node; false when they could not be queued (next check).
    fn send(&self, node_id: &str, held: u64, newest: u64) -> bool {
        match self.link.controller_keys(node_id, held) {
            Ok(true) => tracing::info!(node_id, held, newest, "Controller keys sent to the node."),
            Ok(false) => tracing::warn!(
                node_id,
                held,
                "The node holds a controller key generation no longer kept (its file was removed): \
                 it believes none of the controller's messages; enroll it again."
            ),
            Err(e) => {
                tracing::debug!(error = %e, node_id, "Controller keys not sent; next check.");
                return false;
            }
        }
        true
    }

    /// One check: keys read again, nodes told, an open rotation finished
    /// when no enrolled node waits.
    async fn check(&self) {
        self.reload();
        self.announce();
        let newest = self.sealer.newest();
        if newest == self.sealer.generation() {
            return;
        }
        match self.waiting().await {
            Ok(w) if w.is_empty() => {
                if let Err(e) = self.finish(newest) {
                    tracing::warn!(error = %e, "Cannot finish the controller key rotation; next check.");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "Enrolled nodes not read; next check."),
        }
    }

    /// Checks every 2 s until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.check().await,
            }
        }
    }
}
