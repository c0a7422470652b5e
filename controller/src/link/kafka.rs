//! Kafka in and out for the controller.
//!
//! - Ingest: a consumer-group member reads `fleet.telemetry`, validates each
//!   batch like an MQTT one (key = node id), hands it to the writer and commits
//!   the group's offsets only after the rows are committed to the database.
//!   While the database is behind it stops polling: memory stays bounded.
//! - Status: each replica reads the whole compacted `fleet.status` (its own
//!   group id, from the earliest offset), so every replica sees every node.
//! - Bridge: telemetry and status arriving by MQTT are republished to the same
//!   topics (key node id), marked with a `fleet-bridged` header that ingest
//!   skips: those rows were written on arrival.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::topics::{Channel, node_topic};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::log_limit::LogLimiter;
use super::mqtt::{Accepted, classify};
use crate::ControllerError;
use crate::ingest::queue::WriteItem;
use crate::metrics::{ChannelLabel, Metrics};
use crate::registry::Registry;

/// Header on bridged messages.
pub const BRIDGED_HEADER: &str = "fleet-bridged";

/// `[kafka]` of the controller.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers; empty: no Kafka. Default "".
    pub brokers: String,
    /// Consumer group shared by the replicas for telemetry. Default "fleet-controller".
    pub group_id: String,
    /// Ingest `fleet.telemetry` (agents on the Kafka uplink). Default true.
    pub consume: bool,
    /// Republish MQTT telemetry and status to Kafka. Default true.
    pub bridge: bool,
    /// Batches handed to the writer per offset commit, at most. Default 512.
    pub commit_every: usize,
    /// Extra librdkafka settings for both clients.
    pub options: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "fleet-controller".into(),
            consume: true,
            bridge: true,
            commit_every: 512,
            options: Default::default(),
        }
    }
}

fn client_config(cfg: &KafkaConfig, consumer: bool) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    if consumer {
        // A replica that dies hands its partitions over after the session
        // timeout (librdkafka's default is 45 s). `[kafka] options` can change both.
        c.set("session.timeout.ms", "10000").set("heartbeat.interval.ms", "2000");
        // librdkafka prefetches up to 64 MB by default; the writer queue
        // already holds the next writes, so a smaller prefetch bounds memory.
        c.set("queued.max.messages.kbytes", "16384");
    }
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c
}

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

fn is_bridged(m: &BorrowedMessage<'_>) -> bool {
    m.headers().is_some_and(|h| h.iter().any(|x| x.key == BRIDGED_HEADER))
}

/// What a message off Kafka turned out to be.
fn accept(
    m: &BorrowedMessage<'_>,
    channel: Channel,
    max_payload: usize,
    verifier: &super::verify::Verifier,
) -> Result<Accepted, (&'static str, String)> {
    let key = m.key().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
    let payload = m.payload().unwrap_or_default();
    // The key names the node as the MQTT topic does; the same rules apply.
    classify(&node_topic(&key, channel), payload, max_payload, verifier)
        .map(|(_, a)| a)
        .map_err(|(r, who)| (r.label(), who))
}

/// Logs the partitions the group gives this replica (operators ask which
/// replica reads which nodes; tests wait for both replicas to hold some).
pub struct GroupContext;

impl rdkafka::ClientContext for GroupContext {}

impl rdkafka::consumer::ConsumerContext for GroupContext {
    fn post_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &rdkafka::consumer::Rebalance<'_>) {
        use rdkafka::consumer::Rebalance;
        let parts = |l: &rdkafka::TopicPartitionList| {
            l.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
        };
        match rebalance {
            Rebalance::Assign(l) => {
                tracing::info!(partitions = %parts(l), "Kafka partitions assigned to this replica.")
            }
            Rebalance::Revoke(l) => {
                tracing::info!(partitions = %parts(l), "Kafka partitions revoked from this replica.")
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "Kafka consumer group rebalance failed."),
        }
    }
}

/// The telemetry consumer-group member.
pub struct TelemetryConsumer {
    pub consumer: StreamConsumer<GroupContext>,
    /// The writer's queue (bounded): waiting on it is the backpressure.
    pub writer_tx: crate::ingest::queue::WriteQueue,
    pub metrics: Arc<Metrics>,
    pub max_payload: usize,
    pub commit_every: usize,
    pub verifier: Arc<super::verify::Verifier>,
}

impl TelemetryConsumer {
    /// Joins the group on `fleet.telemetry`.
    ///
    /// # Errors
    /// Settings librdkafka refuses.
    pub fn new(
        cfg: &KafkaConfig,
        writer_tx: crate::ingest::queue::WriteQueue,
        metrics: Arc<Metrics>,
        max_payload: usize,
        verifier: Arc<super::verify::Verifier>,
    ) -> Result<Self, ControllerError> {
        let consumer: StreamConsumer<GroupContext> = client_config(cfg, true)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create_with_context(GroupContext)
            .map_err(|e| ControllerError::Config(format!("[kafka]: consumer: {e}")))?;
        consumer
            .subscribe(&[fleet_proto::topics::KAFKA_TELEMETRY])
            .map_err(|e| ControllerError::Config(format!("[kafka]: subscribe: {e}")))?;
        Ok(Self { consumer, writer_tx, metrics, max_payload, commit_every: cfg.commit_every.max(1), verifier })
    }

    /// Consumes until `shutdown`: gathers up to `commit_every` messages, waits
    /// until the writer committed them all, then commits the offsets.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut limiter = LogLimiter::default();
        loop {
            let mut waits: Vec<(fleet_proto::v1::TelemetryBatch, oneshot::Receiver<bool>)> = Vec::new();
            let mut consumed = 0usize;
            // The first message of a round waits as long as it takes; the rest only briefly.
            let first_wait = tokio::select! {
                () = shutdown.cancelled() => return,
                m = self.consumer.recv() => Some(m),
            };
            let mut next = first_wait;
            while let Some(m) = next.take() {
                match m {
                    Ok(m) => {
                        consumed += 1;
                        if !is_bridged(&m) {
                            match accept(&m, Channel::Telemetry, self.max_payload, &self.verifier) {
                                Ok(Accepted::Telemetry(b)) => {
                                    self.metrics
                                        .received
                                        .get_or_create(&ChannelLabel { channel: "kafka_telemetry" })
                                        .inc();
                                    let (tx, rx) = oneshot::channel();
                                    if self.writer_tx.send(WriteItem::with_done(b.clone(), tx)).await.is_err() {
                                        return;
                                    }
                                    self.metrics.ingest_queue.inc();
                                    waits.push((b, rx));
                                }
                                Ok(_) => {}
                                Err((reason, who)) => {
                                    self.metrics.drop_msg(reason);
                                    if limiter.allow(&who) {
                                        tracing::warn!(node = %who, reason, "Dropped a bad Kafka message.");
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error.");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                if consumed >= self.commit_every {
                    break;
                }
                next = tokio::time::timeout(Duration::from_millis(20), self.consumer.recv()).await.ok();
            }
            // Commit only what the database has: retry a failed write until it lands.
            for (batch, rx) in waits {
                let mut ok = rx.await.unwrap_or(false);
                while !ok {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    let (tx, rx) = oneshot::channel();
                    if self.writer_tx.send(WriteItem::with_done(batch.clone(), tx)).await.is_err() {
                        return;
                    }
                    self.metrics.ingest_queue.inc();
                    ok = rx.await.unwrap_or(false);
                }
            }
            if consumed > 0
                && let Err(e) = self.consumer.commit_consumer_state(CommitMode::Async)
            {
                tracing::warn!(error = %e, "Kafka offset commit failed; the batches may be consumed again (deduplicated).");
            }
        }
    }
}

/// Reads the whole compacted `fleet.status` into the live view.
///
/// # Errors
/// Settings librdkafka refuses.
pub fn status_reader(
    cfg: &KafkaConfig,
    registry: Registry,
    metrics: Arc<Metrics>,
    (max_payload, verifier): (usize, Arc<super::verify::Verifier>),
    shutdown: CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, ControllerError> {
    let group = format!("{}-status-{:x}{:x}", cfg.group_id, std::process::id(), fleet_proto::now_unix_ms());
    let consumer: StreamConsumer = client_config(cfg, true)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .map_err(|e| ControllerError::Config(format!("[kafka]: status consumer: {e}")))?;
    consumer
        .subscribe(&[fleet_proto::topics::KAFKA_STATUS])
        .map_err(|e| ControllerError::Config(format!("[kafka]: subscribe: {e}")))?;
    Ok(async move {
        loop {
            let m = tokio::select! {
                () = shutdown.cancelled() => return,
                m = consumer.recv() => m,
            };
            match m {
                // Bridged statuses came by MQTT too and are already in the view.
                Ok(m) if !is_bridged(&m) => match accept(&m, Channel::Status, max_payload, &verifier) {
                    Ok(Accepted::Status(s)) => {
                        metrics.received.get_or_create(&ChannelLabel { channel: "kafka_status" }).inc();
                        registry.update_status(*s);
                    }
                    Ok(_) => {}
                    Err((reason, _)) => metrics.drop_msg(reason),
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "Kafka status consumer error.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    })
}
