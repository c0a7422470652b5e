//! The MQTT -> Kafka bridge: telemetry, status, events and results that
//! arrive by MQTT are republished to the same Kafka topics (key: node id),
//! marked with the `fleet-bridged` header that ingest skips (those rows were
//! written on arrival).

use std::sync::Arc;

use fleet_proto::topics::Channel;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

use super::kafka::{BRIDGED_HEADER, KafkaConfig, client_config};
use crate::ControllerError;
use crate::metrics::Metrics;

/// Counts bridge deliveries that failed.
pub struct BridgeContext {
    metrics: Arc<Metrics>,
}

impl rdkafka::ClientContext for BridgeContext {}

impl ProducerContext for BridgeContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.metrics.drop_msg("kafka_bridge_failed");
        }
    }
}

/// The MQTT -> Kafka bridge.
pub struct Bridge {
    producer: ThreadedProducer<BridgeContext>,
    metrics: Arc<Metrics>,
}

impl Bridge {
    /// Creates the producer.
    ///
    /// # Errors
    /// Settings librdkafka refuses.
    pub fn new(cfg: &KafkaConfig, metrics: Arc<Metrics>) -> Result<Self, ControllerError> {
        let producer = client_config(cfg, false)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "100000")
            .create_with_context(BridgeContext { metrics: metrics.clone() })
            .map_err(|e| ControllerError::Config(format!("[kafka]: bridge producer: {e}")))?;
        Ok(Self { producer, metrics })
    }

    /// Republishes one message; a full producer queue drops it (counted).
    pub fn publish(&self, channel: Channel, node_id: &str, payload: &[u8]) {
        let topic = match channel {
            Channel::Telemetry => fleet_proto::topics::KAFKA_TELEMETRY,
            Channel::Status => fleet_proto::topics::KAFKA_STATUS,
            Channel::Events => fleet_proto::topics::KAFKA_EVENTS,
            Channel::Results => fleet_proto::topics::KAFKA_RESULTS,
            _ => return,
        };
        let headers = OwnedHeaders::new().insert(Header { key: BRIDGED_HEADER, value: Some("1") });
        let record = BaseRecord::to(topic).key(node_id).payload(payload).headers(headers);
        if self.producer.send(record).is_err() {
            self.metrics.drop_msg("kafka_bridge_full");
        }
    }
}
