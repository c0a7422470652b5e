//! Everything the agent sends, one typed send per kind: each message sealed
//! in the signed envelope when the node is enrolled, then handed to the
//! uplink. A send that cannot go out now is counted; what must not be lost
//! (telemetry) stays in the spool and is sent again.

use fleet_proto::v1::{Event, JobResult, MessageKind, NodeStatus, ReportedState};
use prost::Message;

use crate::signer::Signer;
use crate::spool::{Outgoing, Position};
use crate::uplink::{Uplink, UplinkEvent};

/// The agent's sending side: the uplink and the signer.
pub struct Outbox {
    uplink: Uplink,
    /// Signs every message (enrolled nodes).
    signer: Option<Signer>,
    /// Messages that could not be handed to the uplink.
    pub failures: u64,
    /// Telemetry batches handed to the uplink.
    pub batches_published: u64,
}

impl Outbox {
    /// Sends through `uplink`, signing with `signer` when the node is enrolled.
    #[must_use]
    pub fn new(uplink: Uplink, signer: Option<Signer>) -> Self {
        Self { uplink, signer, failures: 0, batches_published: 0 }
    }

    /// True when a publish now has a chance to go out.
    #[must_use]
    pub fn connected(&self) -> bool {
        self.uplink.connected()
    }

    /// The broker connection, or why there is none.
    #[must_use]
    pub fn link(&self) -> crate::local::Link {
        self.uplink.link()
    }

    /// True when messages are signed (the node is enrolled).
    #[must_use]
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// True when this uplink carries jobs (MQTT).
    #[must_use]
    pub fn takes_jobs(&self) -> bool {
        self.uplink.takes_jobs()
    }

    /// The message as it goes on the wire: signed when the node is enrolled.
    fn seal(&mut self, kind: MessageKind, payload: Vec<u8>) -> Vec<u8> {
        match &mut self.signer {
            Some(s) => s.seal(kind, payload),
            None => payload,
        }
    }

    /// A telemetry batch, signed at each send: a batch sent again gets a new
    /// `msg_seq` (the controller's (boot_id, seq) rows keep it exactly once).
    ///
    /// # Errors
    /// The batch's position when the uplink's queue is full (the spool keeps it).
    pub fn telemetry(&mut self, mut out: Outgoing) -> Result<(), Position> {
        // The batch's trace starts here; its context goes out in the envelope.
        let span = tracing::debug_span!("batch.publish", spool.segment = out.pos.seg, spool.offset = out.pos.off);
        let _in = span.enter();
        out.wire = self.seal(MessageKind::Telemetry, std::mem::take(&mut out.wire));
        match self.uplink.send_telemetry(out) {
            Ok(()) => {
                self.batches_published += 1;
                Ok(())
            }
            Err(pos) => {
                self.failures += 1;
                Err(pos)
            }
        }
    }

    /// The node's status. Not sent while disconnected: it is sent again on
    /// connect, and meanwhile the broker's last will speaks for the node.
    pub fn status(&mut self, status: &NodeStatus) {
        if !self.connected() {
            return;
        }
        let bytes = self.seal(MessageKind::Status, status.encode_to_vec());
        if !self.uplink.send_status(bytes) {
            self.failures += 1;
            tracing::debug!("Status not published (client queue full).");
        }
    }

    /// What the node runs of its desired state (sent again at every connect).
    pub fn reported(&mut self, r: &ReportedState) {
        if self.connected() {
            let bytes = self.seal(MessageKind::Reported, r.encode_to_vec());
            self.uplink.send_reported(bytes);
        }
    }

    /// A node event (power, thermal).
    pub fn event(&mut self, ev: &Event) {
        let bytes = self.seal(MessageKind::Event, ev.encode_to_vec());
        if !self.connected() || !self.uplink.send_event(bytes) {
            self.failures += 1;
        }
    }

    /// A job's result. Not sent when disconnected or full: the controller
    /// gives the job to another node after its attempt timeout.
    pub fn result(&mut self, r: &JobResult) {
        let bytes = self.seal(MessageKind::Result, r.encode_to_vec());
        if !self.connected() || !self.uplink.send_result(bytes) {
            self.failures += 1;
            tracing::warn!(job_id = %r.job_id, "Job result not published (not connected or queue full).");
        }
    }

    /// The next thing the uplink reports.
    pub async fn next_event(&mut self) -> UplinkEvent {
        self.uplink.next_event().await
    }

    /// Says goodbye (MQTT disconnect, Kafka flush) within a bounded time.
    pub async fn close(self) {
        self.uplink.close().await;
    }
}
