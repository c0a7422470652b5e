//! Kafka in and out for the controller.
//!
//! - Ingest: a consumer-group member reads `fleet.telemetry`, validates each
//!   batch like an MQTT one (key = node id), hands it to the writer and commits
//!   the group's offsets only after the rows are committed to the database.
//!   While the database is behind it stops polling: memory stays bounded.
//! - Status: each replica reads the whole compacted `fleet.status` (its own
//!   group id, from the earliest offset), so every replica sees every node.
//! - The bridge (`bridge`) republishes what arrives by MQTT to the same
//!   topics, marked with a `fleet-bridged` header that both readers skip.

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::topics::Channel;
use fleet_proto::v1::TelemetryBatch;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::classify::check;
use super::log_limit::LogLimiter;
use super::message::{Closed, Deliver, Inbound};
use super::verify::{Refusal, Verifier};
use crate::ControllerError;
use crate::metrics::{ChannelLabel, Metrics};

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

/// librdkafka settings of one of our clients.
pub(super) fn client_config(cfg: &KafkaConfig, consumer: bool) -> ClientConfig {
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

fn is_bridged(m: &BorrowedMessage<'_>) -> bool {
    m.headers().is_some_and(|h| h.iter().any(|x| x.key == BRIDGED_HEADER))
}

/// What a message off Kafka turned out to be: its key names the node as an
/// MQTT topic does, and the same checks apply.
fn accept(
    m: &BorrowedMessage<'_>,
    channel: Channel,
    max_payload: usize,
    verifier: &Verifier,
) -> Result<Option<Inbound>, (Refusal, String)> {
    let key = m.key().map(String::from_utf8_lossy).unwrap_or_default().into_owned();
    if fleet_proto::validate_node_id(&key).is_err() {
        return Err((Refusal::BadTopic, key));
    }
    let payload = m.payload().unwrap_or_default();
    check(&key, channel, payload, max_payload, verifier).map_err(|r| (r, key))
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
    consumer: StreamConsumer<GroupContext>,
    metrics: Arc<Metrics>,
    max_payload: usize,
    commit_every: usize,
    verifier: Arc<Verifier>,
}

/// One message of a round, in the order consumed: where it is, and for a
/// telemetry batch handed on, the batch and the receiver of its outcome.
struct Taken {
    partition: i32,
    offset: i64,
    batch: Option<(TelemetryBatch, oneshot::Receiver<bool>)>,
}

/// The messages of one round.
type Waits = Vec<Taken>;

impl TelemetryConsumer {
    /// Joins the group on `fleet.telemetry`.
    ///
    /// # Errors
    /// Settings librdkafka refuses.
    pub fn new(
        cfg: &KafkaConfig,
        metrics: Arc<Metrics>,
        max_payload: usize,
        verifier: Arc<Verifier>,
    ) -> Result<Self, ControllerError> {
        let consumer: StreamConsumer<GroupContext> = client_config(cfg, true)
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            // Offsets are stored by hand, each only once its message's rows are
            // committed: an asynchronous commit sends whatever is stored when it
            // runs, and by then the next round's messages are consumed already.
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create_with_context(GroupContext)
            .map_err(|e| ControllerError::Config(format!("[kafka]: consumer: {e}")))?;
        consumer
            .subscribe(&[fleet_proto::topics::KAFKA_TELEMETRY])
            .map_err(|e| ControllerError::Config(format!("[kafka]: subscribe: {e}")))?;
        Ok(Self { consumer, metrics, max_payload, commit_every: cfg.commit_every.max(1), verifier })
    }

    /// Consumes until `shutdown`: gathers up to `commit_every` messages, waits
    /// until the owner committed them all, then commits the offsets.
    pub async fn run(self, owner: &impl Deliver, shutdown: CancellationToken) {
        let mut limiter = LogLimiter::default();
        loop {
            // The first message of a round waits as long as it takes; the rest only briefly.
            let mut next = tokio::select! {
                () = shutdown.cancelled() => return,
                m = self.consumer.recv() => Some(m),
            };
            let (mut waits, mut consumed): (Waits, usize) = (Vec::new(), 0);
            while let Some(m) = next.take() {
                match m {
                    Ok(m) => {
                        consumed += 1;
                        if self.take(&m, owner, &mut waits, &mut limiter).await.is_err() {
                            return;
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
            if self.committed(waits, owner, &shutdown).await.is_err() {
                return;
            }
            if consumed > 0
                && let Err(e) = self.consumer.commit_consumer_state(CommitMode::Async)
            {
                tracing::warn!(error = %e, "Kafka offset commit failed; the batches may be consumed again (deduplicated).");
            }
        }
    }

    /// Checks one message and hands its batch on, keeping its outcome's receiver.
    async fn take(
        &self,
        m: &BorrowedMessage<'_>,
        owner: &impl Deliver,
        waits: &mut Waits,
        limiter: &mut LogLimiter,
    ) -> Result<(), Closed> {
        let mut taken = Taken { partition: m.partition(), offset: m.offset(), batch: None };
        if is_bridged(m) {
            waits.push(taken);
            return Ok(());
        }
        match accept(m, Channel::Telemetry, self.max_payload, &self.verifier) {
            Ok(Some(Inbound::Telemetry { batch, span, .. })) => {
                self.metrics.received.get_or_create(&ChannelLabel { channel: "kafka_telemetry" }).inc();
                let (tx, rx) = oneshot::channel();
                owner.deliver(Inbound::Telemetry { batch: batch.clone(), done: Some(tx), span }).await?;
                taken.batch = Some((batch, rx));
            }
            Ok(_) => {}
            Err((reason, who)) => {
                self.metrics.drop_msg(reason.label());
                if limiter.allow(&who) {
                    tracing::warn!(node = %who, reason = reason.label(), "Dropped a bad Kafka message.");
                }
            }
        }
        waits.push(taken);
        Ok(())
    }

    /// Waits, in the order consumed, until each message's batch is committed
    /// (handing a failed one on again every second until it lands), and only
    /// then stores its offset: what is committed to Kafka never passes a row
    /// the database does not have.
    async fn committed(&self, waits: Waits, owner: &impl Deliver, shutdown: &CancellationToken) -> Result<(), Closed> {
        for t in waits {
            if let Some((batch, rx)) = t.batch {
                let mut ok = rx.await.unwrap_or(false);
                while !ok {
                    tokio::select! {
                        () = shutdown.cancelled() => return Err(Closed),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    let (tx, rx) = oneshot::channel();
                    let span = tracing::debug_span!("batch.ingest", again = true);
                    owner.deliver(Inbound::Telemetry { batch: batch.clone(), done: Some(tx), span }).await?;
                    ok = rx.await.unwrap_or(false);
                }
            }
            // The next offset to read. A partition taken away meanwhile refuses
            // it: its new owner reads the message again (deduplicated).
            let mut next = TopicPartitionList::new();
            let stored = next
                .add_partition_offset(fleet_proto::topics::KAFKA_TELEMETRY, t.partition, Offset::Offset(t.offset + 1))
                .and_then(|()| self.consumer.store_offsets(&next));
            if let Err(e) = stored {
                tracing::debug!(error = %e, partition = t.partition, "Kafka offset not stored (partition revoked?).");
            }
        }
        Ok(())
    }
}

/// Reads the whole compacted `fleet.status` into the live view.
pub struct StatusReader {
    consumer: StreamConsumer,
    metrics: Arc<Metrics>,
    max_payload: usize,
    verifier: Arc<Verifier>,
}

impl StatusReader {
    /// A consumer of `fleet.status` in a group of its own, from the earliest offset.
    ///
    /// # Errors
    /// Settings librdkafka refuses.
    pub fn new(
        cfg: &KafkaConfig,
        metrics: Arc<Metrics>,
        max_payload: usize,
        verifier: Arc<Verifier>,
    ) -> Result<Self, ControllerError> {
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
        Ok(Self { consumer, metrics, max_payload, verifier })
    }

    /// Reads until `shutdown` (or until `owner` stops).
    pub async fn run(self, owner: &impl Deliver, shutdown: CancellationToken) {
        loop {
            let m = tokio::select! {
                () = shutdown.cancelled() => return,
                m = self.consumer.recv() => m,
            };
            match m {
                // Bridged statuses came by MQTT too and are already in the view.
                Ok(m) if !is_bridged(&m) => match accept(&m, Channel::Status, self.max_payload, &self.verifier) {
                    Ok(Some(s @ Inbound::Status(_))) => {
                        self.metrics.received.get_or_create(&ChannelLabel { channel: "kafka_status" }).inc();
                        if owner.deliver(s).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err((reason, _)) => self.metrics.drop_msg(reason.label()),
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "Kafka status consumer error.");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
