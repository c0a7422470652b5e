//! What the controller sends its nodes: one typed send per message kind,
//! with its topic, QoS and retain flag decided here and nowhere else, and
//! each signed for its node (`seal`).

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{Ack, DesiredState, Job, KeyRotation, MessageKind};
use prost::Message;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::watch;

use super::seal::Sealer;
use crate::ControllerError;

/// Mosquitto's dynamic-security plugin: its command topic, and where it answers.
pub const DYNSEC_CONTROL_TOPIC: &str = "$CONTROL/dynamic-security/v1";
pub const DYNSEC_RESPONSE_TOPIC: &str = "$CONTROL/dynamic-security/v1/response";
/// How long a desired state may wait for room in the client's queue.
const DESIRED_WAIT: Duration = Duration::from_secs(5);

/// The controller's handle on its link to the nodes. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    client: AsyncClient,
    /// True while the MQTT session is up with every subscription acknowledged.
    connected: watch::Receiver<bool>,
    sealer: Arc<Sealer>,
}

fn busy(what: &'static str) -> ControllerError {
    ControllerError::LinkBusy(what)
}

impl Link {
    pub(super) fn new(client: AsyncClient, connected: watch::Receiver<bool>, sealer: Arc<Sealer>) -> Self {
        Self { client, connected, sealer }
    }

    /// The keys nodes check the controller's messages with.
    #[must_use]
    pub fn sealer(&self) -> &Arc<Sealer> {
        &self.sealer
    }

    /// Follows the MQTT session: true while connected and subscribed.
    #[must_use]
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// The end-to-end ack of a node's run: QoS 1, retained (a node that
    /// reconnects hears the latest). Never waits, so the writer never waits
    /// on the broker.
    ///
    /// # Errors
    /// `LinkBusy` when the client's queue is full; the agent resends the batches.
    pub fn ack(&self, node_id: &str, ack: &Ack) -> Result<(), ControllerError> {
        let topic = node_topic(node_id, Channel::Ack);
        let body = self.sealer.seal(node_id, MessageKind::Ack, ack.encode_to_vec());
        self.client.try_publish(topic, QoS::AtLeastOnce, true, body).map_err(|_| busy("ack"))
    }

    /// A job for a node: QoS 0, as the node's answer. A job's delivery
    /// guarantee is end to end (an answer, or a re-route after
    /// `jobs.attempt_timeout`); QoS 1 acks make a broker without TCP_NODELAY
    /// (rumqttd; Mosquitto unless set_tcp_nodelay) hold its next small write
    /// for the peer's delayed ACK: 40 ms a job (docs/routing.md, "Latency").
    ///
    /// # Errors
    /// `LinkBusy` when the client's queue is full.
    pub fn job(&self, node_id: &str, job: &Job) -> Result<(), ControllerError> {
        let topic = node_topic(node_id, Channel::Jobs);
        let body = self.sealer.seal(node_id, MessageKind::Job, job.encode_to_vec());
        self.client.try_publish(topic, QoS::AtMostOnce, false, body).map_err(|_| busy("job"))
    }

    /// A node's desired state: QoS 1, retained. Waits up to 5 s for room.
    ///
    /// # Errors
    /// `LinkBusy` when the client's queue stays full (the state is published
    /// again at the next connect).
    pub async fn desired(&self, d: &DesiredState) -> Result<(), ControllerError> {
        let topic = node_topic(&d.node_id, Channel::Desired);
        let body = self.sealer.seal(&d.node_id, MessageKind::Desired, d.encode_to_vec());
        let publish = self.client.publish(topic, QoS::AtLeastOnce, true, body);
        match tokio::time::timeout(DESIRED_WAIT, publish).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(busy("desired state")),
        }
    }

    /// A step of a node's WireGuard key rotation, QoS 1 retained; `None`
    /// clears the retained step (the rotation is over: an empty message,
    /// which a node ignores).
    ///
    /// # Errors
    /// `LinkBusy` when the client's queue is full.
    pub fn key_rotation(&self, node_id: &str, k: Option<&KeyRotation>) -> Result<(), ControllerError> {
        let body =
            k.map(|k| self.sealer.seal(node_id, MessageKind::KeyRotation, k.encode_to_vec())).unwrap_or_default();
        let topic = node_topic(node_id, Channel::Key);
        self.client.try_publish(topic, QoS::AtLeastOnce, true, body).map_err(|_| busy("key rotation"))
    }

    /// The controller's keys for a node that holds generation `held`, QoS 1
    /// retained (a node that comes back hears them first), signed with that
    /// generation's key (`Sealer::announcement`); `held` 0 clears the
    /// retained keys (an empty message, which a node ignores). `Ok(false)`
    /// when that generation's key is no longer kept.
    ///
    /// # Errors
    /// `LinkBusy` when the client's queue is full.
    pub fn controller_keys(&self, node_id: &str, held: u64) -> Result<bool, ControllerError> {
        let body = if held == 0 { Some(Vec::new()) } else { self.sealer.announcement(node_id, held) };
        let Some(body) = body else { return Ok(false) };
        let topic = node_topic(node_id, Channel::ControllerKeys);
        self.client.try_publish(topic, QoS::AtLeastOnce, true, body).map_err(|_| busy("controller keys"))?;
        Ok(true)
    }

    /// Commands for Mosquitto's dynamic-security plugin (JSON), QoS 1;
    /// queued at once, or sent after the reconnect if the broker is away.
    ///
    /// # Errors
    /// `LinkBusy` when the client's queue is full.
    pub fn dynsec(&self, commands: String) -> Result<(), ControllerError> {
        self.client
            .try_publish(DYNSEC_CONTROL_TOPIC, QoS::AtLeastOnce, false, commands)
            .map_err(|_| busy("dynamic-security command"))
    }
}
