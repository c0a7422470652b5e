//! The Kafka uplink: an idempotent producer with `acks=all`, key = node id,
//! telemetry to `fleet.telemetry`, status to the compacted `fleet.status`.
//! A batch leaves the spool only on its delivery report.

use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Deserialize;

use super::UplinkEvent;
use crate::AgentError;
use crate::spool::{Outgoing, Position};

/// `[kafka]`: used when `uplink = "kafka"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port]`. Default "127.0.0.1:9092".
    pub brokers: String,
    /// Telemetry topic. Default "fleet.telemetry".
    pub telemetry_topic: String,
    /// Status topic (compacted). Default "fleet.status".
    pub status_topic: String,
    /// A batch not delivered within this time is reported failed and sent again
    /// from the spool. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Batches handed to the producer and not yet reported, at most. Default 1024.
    pub max_in_flight: usize,
    /// Extra librdkafka settings (e.g. security.protocol), applied last.
    pub options: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            telemetry_topic: fleet_proto::topics::KAFKA_TELEMETRY.into(),
            status_topic: fleet_proto::topics::KAFKA_STATUS.into(),
            message_timeout: Duration::from_secs(60),
            max_in_flight: 1024,
            options: Default::default(),
        }
    }
}

/// The producer and the delivery reports it owes.
pub struct KafkaLink {
    producer: FutureProducer,
    cfg: KafkaConfig,
    key: String,
    // Delivery reports to come, one per batch handed over, bounded by max_in_flight.
    pending: FuturesUnordered<BoxFuture<'static, UplinkEvent>>,
}

impl KafkaLink {
    /// Creates the idempotent producer (it connects in the background).
    ///
    /// # Errors
    /// A librdkafka configuration librdkafka refuses.
    pub fn connect(cfg: &KafkaConfig, node_id: &str) -> Result<Self, AgentError> {
        let timeout_ms = cfg.message_timeout.as_millis().to_string();
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cfg.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout_ms)
            .set("queue.buffering.max.messages", (cfg.max_in_flight * 2).to_string())
            .set("linger.ms", "5")
            .set("client.id", format!("fleet-agent-{node_id}"));
        for (k, v) in &cfg.options {
            c.set(k, v);
        }
        let producer: FutureProducer =
            c.create().map_err(|e| AgentError::Config(format!("[kafka]: the producer refuses its settings: {e}")))?;
        Ok(Self { producer, cfg: cfg.clone(), key: node_id.to_owned(), pending: FuturesUnordered::new() })
    }

    pub(super) fn send_telemetry(&mut self, out: Outgoing) -> Result<(), Position> {
        let pos = out.pos;
        if self.pending.len() >= self.cfg.max_in_flight {
            return Err(pos);
        }
        let record = FutureRecord::to(&self.cfg.telemetry_topic).key(&self.key).payload(&out.wire);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                self.pending.push(
                    delivery
                        .map(move |r| match r {
                            Ok(Ok(_)) => UplinkEvent::Delivered(pos),
                            Ok(Err((e, _))) => {
                                tracing::debug!(error = %e, "Kafka delivery failed; the spool sends the batch again.");
                                UplinkEvent::Failed(pos)
                            }
                            Err(_) => UplinkEvent::Failed(pos),
                        })
                        .boxed(),
                );
                Ok(())
            }
            Err((e, _)) => {
                tracing::debug!(error = %e, "Kafka producer queue full; the batch waits in the spool.");
                Err(pos)
            }
        }
    }

    pub(super) fn send_status(&mut self, status: Vec<u8>) -> bool {
        let record = FutureRecord::to(&self.cfg.status_topic).key(&self.key).payload(&status);
        // Fire and forget: the next status replaces this one anyway.
        self.producer.send_result(record).is_ok()
    }

    pub(super) fn send_event(&mut self, event: Vec<u8>) -> bool {
        let record = FutureRecord::to(fleet_proto::topics::KAFKA_EVENTS).key(&self.key).payload(&event);
        self.producer.send_result(record).is_ok()
    }

    pub(super) async fn next_event(&mut self) -> UplinkEvent {
        match self.pending.next().await {
            Some(ev) => ev,
            None => std::future::pending().await,
        }
    }

    pub(super) async fn close(mut self) {
        // Collect the reports still owed, then flush what is queued.
        let _ =
            tokio::time::timeout(Duration::from_secs(2), async { while self.pending.next().await.is_some() {} }).await;
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(2))).await;
    }
}
