//! How batches and status leave the node: MQTT (default) or Kafka. Both
//! publish from the spool; they differ in what makes a batch safe:
//! over MQTT the controller's end-to-end `Ack`, over Kafka the delivery report
//! of an idempotent `acks=all` producer (the Kafka log is durable).

pub mod held;
pub mod kafka;
pub mod mqtt;
pub mod trust;

use fleet_proto::v1::Ack;

use serde::Deserialize;

use crate::spool::{Outgoing, Position};

/// The transport batches leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkKind {
    /// MQTT; a batch is safe on the controller's end-to-end ack.
    Mqtt,
    /// Kafka; a batch is safe on the producer's delivery report.
    Kafka,
}

/// Something the uplink reports to the agent loop.
#[derive(Debug, Clone, PartialEq)]
pub enum UplinkEvent {
    Connected,
    Disconnected,
    /// The controller committed these seqs (MQTT).
    Ack(Ack),
    /// The broker durably has the batch at this position (Kafka).
    Delivered(Position),
    /// The batch at this position could not be delivered; send it again later.
    Failed(Position),
    /// The controller published a desired state for this node (MQTT).
    Desired(fleet_proto::v1::DesiredState),
    /// The controller sent an inference job (MQTT), with the trace context it came in.
    Job {
        job: Box<fleet_proto::v1::Job>,
        traceparent: String,
    },
    /// A WireGuard key rotation step (MQTT).
    KeyRotation(fleet_proto::v1::KeyRotation),
}

/// The uplink in use.
pub enum Uplink {
    Mqtt(mqtt::MqttLink),
    Kafka(kafka::KafkaLink),
}

impl Uplink {
    /// True when a publish now has a chance to go out.
    #[must_use]
    pub fn connected(&self) -> bool {
        match self {
            Uplink::Mqtt(l) => l.conn.borrow().connected,
            Uplink::Kafka(_) => true,
        }
    }

    /// The broker connection, or why there is none (Kafka: always "connected").
    #[must_use]
    pub fn link(&self) -> crate::local::Link {
        match self {
            Uplink::Mqtt(l) => l.conn.borrow().link,
            Uplink::Kafka(_) => crate::local::Link::Connected,
        }
    }

    /// Hands a batch over.
    ///
    /// # Errors
    /// The batch's position when the client's queue is full (the spool keeps it).
    pub fn send_telemetry(&mut self, out: Outgoing) -> Result<(), Position> {
        match self {
            Uplink::Mqtt(l) => l.send_telemetry(out),
            Uplink::Kafka(l) => l.send_telemetry(out),
        }
    }

    /// Publishes the node status (retained on MQTT, compacted key on Kafka).
    pub fn send_status(&mut self, status: Vec<u8>) -> bool {
        match self {
            Uplink::Mqtt(l) => l.send_status(status),
            Uplink::Kafka(l) => l.send_status(status),
        }
    }

    /// Publishes what the node runs of its desired state (retained on MQTT;
    /// Kafka agents have no desired-state channel and report nothing).
    pub fn send_reported(&mut self, reported: Vec<u8>) -> bool {
        match self {
            Uplink::Mqtt(l) => l.send_reported(reported),
            Uplink::Kafka(_) => false,
        }
    }

    /// Publishes a node event (power, thermal).
    pub fn send_event(&mut self, event: Vec<u8>) -> bool {
        match self {
            Uplink::Mqtt(l) => l.send_event(event),
            Uplink::Kafka(l) => l.send_event(event),
        }
    }

    /// Publishes a job result (MQTT; Kafka agents take no jobs).
    pub fn send_result(&mut self, result: Vec<u8>) -> bool {
        match self {
            Uplink::Mqtt(l) => l.send_result(result),
            Uplink::Kafka(_) => false,
        }
    }

    /// True when this uplink carries jobs (MQTT).
    #[must_use]
    pub fn takes_jobs(&self) -> bool {
        matches!(self, Uplink::Mqtt(_))
    }

    /// The next event; waits for ever if there is none to come.
    pub async fn next_event(&mut self) -> UplinkEvent {
        match self {
            Uplink::Mqtt(l) => l.next_event().await,
            Uplink::Kafka(l) => l.next_event().await,
        }
    }

    /// Says goodbye (MQTT disconnect, Kafka flush) within a bounded time.
    pub async fn close(self) {
        match self {
            Uplink::Mqtt(l) => l.close().await,
            Uplink::Kafka(l) => l.close().await,
        }
    }
}
