//! Where each verified inbound message goes: the one table that joins the
//! link to its owners. Telemetry to ingest's queue, status to the live view,
//! reported state to the key rotation and the live view, job results to the
//! job manager, events to the live view's recent events, the broker's dynamic-security answers to the log.

use std::sync::Arc;

use crate::ingest::queue::{WriteItem, WriteQueue};
use crate::jobs::JobManager;
use crate::link::{Closed, Deliver, Inbound, Verifier};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::security::dynsec::{self, Dynsec};
use crate::security::rotate::Rotation;

/// The owners of what nodes send.
pub struct Owners {
    /// Ingest's bounded queue: a full queue makes the link wait.
    pub ingest: WriteQueue,
    pub registry: Registry,
    pub jobs: JobManager,
    pub rotation: Arc<Rotation>,
    /// Mosquitto's dynamic security, when the controller manages it.
    pub dynsec: Option<Dynsec>,
    /// Which nodes are revoked (sent to the broker again at every connect).
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
}

impl Deliver for Owners {
    async fn deliver(&self, msg: Inbound) -> Result<(), Closed> {
        match msg {
            Inbound::Telemetry { batch, done, span } => {
                self.metrics.ingest_queue.inc();
                self.ingest.send(WriteItem::new(batch, done, span)).await.map_err(|_| Closed)?;
            }
            Inbound::Status(s) => self.registry.update_status(*s),
            Inbound::Reported(r) => {
                self.rotation.on_reported(&r).await;
                self.registry.update_reported(r);
            }
            Inbound::Result(r, span) => {
                let node = r.node_id.clone();
                span.in_scope(|| self.jobs.on_result(&node, r));
            }
            Inbound::Event(e) => self.registry.record_event(e),
            Inbound::DynsecAnswer(body) => dynsec::log_response(&body),
        }
        Ok(())
    }

    fn connected(&self) {
        if let Some(d) = &self.dynsec {
            // Its own rights first, then the revocations it may have missed.
            d.setup();
            for node in self.verifier.revoked() {
                d.remove_node(&node);
            }
        }
    }
}
