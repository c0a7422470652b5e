//! The controller's MQTT client: subscribes to every node's uplink channels,
//! drops and counts anything malformed, updates the live view from status
//! messages, and queues telemetry for the writer (waiting when the queue is
//! full, which stops reading from the broker: backpressure, not buffering).

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::topics::{Channel, all_nodes_filter, parse_node_topic};
use fleet_proto::v1::{NodeStatus, TelemetryBatch};
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio_util::sync::CancellationToken;

use super::log_limit::LogLimiter;
use crate::metrics::{ChannelLabel, Metrics};
use crate::registry::Registry;

/// Samples per batch at most; larger batches are refused as invalid.
pub const MAX_SAMPLES_PER_BATCH: usize = 100_000;
/// Longest metric name and boot id accepted.
const MAX_NAME_LEN: usize = 128;

/// Builds the controller's MQTT client for `url`.
///
/// # Errors
/// When the URL is not an mqtt:// URL.
pub fn client(url: &str, username: &str, password: &str) -> Result<(AsyncClient, EventLoop), String> {
    let (host, port) = fleet_proto::parse_mqtt_url(url)?;
    let id = format!("fleet-controller-{}", &uuid_like());
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_clean_session(true);
    // Accept anything the broker passes; our own limit is checked per message.
    opts.set_max_packet_size(256 * 1024 * 1024, 1024 * 1024);
    if !username.is_empty() {
        opts.set_credentials(username, password);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    // No Nagle: jobs and acks are small and must not wait for a delayed ACK.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    Ok((client, eventloop))
}

fn uuid_like() -> String {
    format!("{:x}{:x}", std::process::id(), fleet_proto::now_unix_ms())
}

/// Everything the reader needs.
pub struct Reader {
    pub client: AsyncClient,
    pub eventloop: EventLoop,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// The writer's queue. Bounded: a full queue makes the reader wait.
    pub writer_tx: crate::ingest::queue::WriteQueue,
    /// Republishes accepted telemetry and status to Kafka, when configured.
    pub bridge: Option<Arc<super::kafka::Bridge>>,
    pub max_payload_bytes: usize,
    /// True while connected with every subscription acknowledged by the broker.
    pub ready: tokio::sync::watch::Sender<bool>,
    /// Telemetry through `$share/{group}/...` when not empty (replicas).
    pub shared_group: String,
    /// Takes the nodes' job results.
    pub jobs: Option<crate::jobs::JobManager>,
    /// Checks signatures before anything is believed.
    pub verifier: Arc<super::verify::Verifier>,
    /// Mosquitto's dynamic security, when the controller manages it.
    pub dynsec: Option<crate::security::dynsec::Dynsec>,
    /// WireGuard key rotations follow the nodes' reports.
    pub rotation: Option<Arc<crate::security::rotate::Rotation>>,
}

/// Why a message was refused; each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Oversized,
    BadTopic,
    Decode,
    NodeMismatch,
    Invalid,
    /// An enrolled node's message without a signature.
    Unsigned,
    /// A node that is not enrolled (enrollment required).
    UnknownNode,
    Revoked,
    BadSignature,
    Replay,
    /// Signed as one kind of message, sent on another channel.
    KindMismatch,
    /// Over the node's message rate (security.node_rate_per_s).
    RateLimited,
}

impl Refusal {
    /// The `reason` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Oversized => "oversized",
            Refusal::BadTopic => "bad_topic",
            Refusal::Decode => "decode",
            Refusal::NodeMismatch => "node_mismatch",
            Refusal::Invalid => "invalid",
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownNode => "unknown_node",
            Refusal::Revoked => "revoked",
            Refusal::BadSignature => "bad_signature",
            Refusal::Replay => "replay",
            Refusal::KindMismatch => "kind_mismatch",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// A message the reader accepted.
#[derive(Debug)]
pub enum Accepted {
    Telemetry(TelemetryBatch),
    Status(Box<NodeStatus>),
    Reported(fleet_proto::v1::ReportedState),
    /// A node's answer to a job.
    Result(fleet_proto::v1::JobResult),
    /// Retained-message clear (empty payload) or a channel not handled yet.
    Ignored,
}

/// Checks one publish; pure, so tests can throw anything at it.
///
/// # Errors
/// The refusal and the node id it concerns (or the topic if none).
pub fn classify(
    topic: &str,
    payload: &[u8],
    max_payload: usize,
    verifier: &super::verify::Verifier,
) -> Result<(Channel, Accepted), (Refusal, String)> {
    let Some((node_id, channel)) = parse_node_topic(topic) else {
        return Err((Refusal::BadTopic, topic.to_owned()));
    };
    if fleet_proto::validate_node_id(node_id).is_err() {
        return Err((Refusal::BadTopic, topic.to_owned()));
    }
    if payload.len() > max_payload {
        return Err((Refusal::Oversized, node_id.to_owned()));
    }
    let who = || node_id.to_owned();
    // A retained message cleared (empty), or a channel the controller does not read.
    let read = matches!(channel, Channel::Telemetry | Channel::Status | Channel::Reported | Channel::Results);
    if !read || (payload.is_empty() && matches!(channel, Channel::Status | Channel::Reported)) {
        return Ok((channel, Accepted::Ignored));
    }
    let opened = verifier.open(node_id, channel, payload).map_err(|r| (r, who()))?;
    let payload: &[u8] = &opened;
    match channel {
        Channel::Telemetry => {
            let b = TelemetryBatch::decode(payload).map_err(|_| (Refusal::Decode, who()))?;
            if b.node_id != node_id {
                return Err((Refusal::NodeMismatch, who()));
            }
            let valid = !b.boot_id.is_empty()
                && b.boot_id.len() <= MAX_NAME_LEN
                && !b.samples.is_empty()
                && b.samples.len() <= MAX_SAMPLES_PER_BATCH
                && b.first_seq.checked_add(b.samples.len() as u64).is_some_and(|e| i64::try_from(e).is_ok())
                && b.samples.iter().all(|s| !s.metric.is_empty() && s.metric.len() <= MAX_NAME_LEN);
            if !valid {
                return Err((Refusal::Invalid, who()));
            }
            Ok((channel, Accepted::Telemetry(b)))
        }
        Channel::Status => {
            let s = NodeStatus::decode(payload).map_err(|_| (Refusal::Decode, who()))?;
            if s.node_id != node_id {
                return Err((Refusal::NodeMismatch, who()));
            }
            Ok((channel, Accepted::Status(Box::new(s))))
        }
        Channel::Reported => {
            let r = fleet_proto::v1::ReportedState::decode(payload).map_err(|_| (Refusal::Decode, who()))?;
            if r.node_id != node_id {
                return Err((Refusal::NodeMismatch, who()));
            }
            Ok((channel, Accepted::Reported(r)))
        }
        Channel::Results => {
            let r = fleet_proto::v1::JobResult::decode(payload).map_err(|_| (Refusal::Decode, who()))?;
            if r.node_id != node_id {
                return Err((Refusal::NodeMismatch, who()));
            }
            Ok((channel, Accepted::Result(r)))
        }
        _ => Ok((channel, Accepted::Ignored)),
    }
}

impl Reader {
    /// Reads until `shutdown`; reconnects with backoff on broker errors.
    pub async fn run(self, shutdown: CancellationToken) {
        let Reader {
            client,
            mut eventloop,
            registry,
            metrics,
            writer_tx,
            max_payload_bytes,
            ready,
            bridge,
            shared_group,
            jobs,
            verifier,
            dynsec,
            rotation,
        } = self;
        let channels = [Channel::Telemetry, Channel::Status, Channel::Reported, Channel::Events, Channel::Results];
        let mut subacks = 0;
        // The event loop is not Sync, so handling borrows only this part.
        let expected_subacks = channels.len() + usize::from(dynsec.is_some());
        let handler = Handler { registry, metrics, writer_tx, max_payload_bytes, bridge, jobs, verifier, rotation };
        let mut limiter = LogLimiter::default();
        let mut backoff = Duration::from_millis(200);
        let mut connected = false;
        loop {
            let ev = tokio::select! {
                () = shutdown.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff = Duration::from_millis(200);
                    subacks = 0;
                    if let Some(d) = &dynsec {
                        // Its own rights first, then the revocations it may have missed.
                        d.setup();
                        for node in handler.verifier.revoked() {
                            d.remove_node(&node);
                        }
                        if let Err(e) = client.try_subscribe(crate::security::dynsec::RESPONSE_TOPIC, QoS::AtLeastOnce)
                        {
                            tracing::error!(error = %e, "Cannot subscribe to the dynamic-security answers.");
                        }
                    }
                    for c in channels {
                        let filter = match c {
                            Channel::Telemetry if !shared_group.is_empty() => {
                                format!("$share/{shared_group}/{}", all_nodes_filter(c))
                            }
                            _ => all_nodes_filter(c),
                        };
                        if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "Cannot subscribe to node topics.");
                        }
                    }
                    tracing::info!("Controller connected to the MQTT broker.");
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == expected_subacks {
                        ready.send_replace(true);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if handler.handle(p, &mut limiter, &shutdown).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        tracing::warn!(error = %e, "Controller lost the MQTT broker; reconnecting.");
                    } else {
                        tracing::debug!(error = %e, "Controller cannot reach the MQTT broker yet.");
                    }
                    connected = false;
                    ready.send_replace(false);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let _ = client.try_disconnect();
    }
}

struct Handler {
    registry: Registry,
    metrics: Arc<Metrics>,
    writer_tx: crate::ingest::queue::WriteQueue,
    max_payload_bytes: usize,
    bridge: Option<Arc<super::kafka::Bridge>>,
    jobs: Option<crate::jobs::JobManager>,
    verifier: Arc<super::verify::Verifier>,
    rotation: Option<Arc<crate::security::rotate::Rotation>>,
}

impl Handler {
    /// Handles one publish. `Err` only when the writer is gone (shutdown).
    async fn handle(&self, p: Publish, limiter: &mut LogLimiter, shutdown: &CancellationToken) -> Result<(), ()> {
        if p.topic == crate::security::dynsec::RESPONSE_TOPIC {
            crate::security::dynsec::log_response(&p.payload);
            return Ok(());
        }
        match classify(&p.topic, &p.payload, self.max_payload_bytes, &self.verifier) {
            Err((reason, who)) => {
                self.metrics.drop_msg(reason.label());
                if limiter.allow(&who) {
                    tracing::warn!(node = %who, topic = %p.topic, bytes = p.payload.len(), reason = reason.label(),
                        "Dropped a bad message (logged once per node per minute).");
                }
                Ok(())
            }
            Ok((channel, accepted)) => {
                // The node's own message (signature checked): now its rate.
                if !matches!(accepted, Accepted::Ignored)
                    && let Some((node, _)) = parse_node_topic(&p.topic)
                    && let Err(reason) = self.verifier.within_rate(node)
                {
                    self.metrics.drop_msg(reason.label());
                    if limiter.allow(node) {
                        tracing::warn!(
                            node,
                            reason = reason.label(),
                            "Dropped messages over the node's rate (logged once per node per minute)."
                        );
                    }
                    return Ok(());
                }
                self.metrics.received.get_or_create(&ChannelLabel { channel: channel.as_str() }).inc();
                if let Some(bridge) = &self.bridge
                    && let Some((node, _)) = fleet_proto::topics::parse_node_topic(&p.topic)
                {
                    bridge.publish(channel, node, &p.payload);
                }
                match accepted {
                    Accepted::Telemetry(b) => {
                        self.metrics.ingest_queue.inc();
                        tokio::select! {
                            r = self.writer_tx.send(b.into()) => r.map_err(|_| ()),
                            () = shutdown.cancelled() => Err(()),
                        }
                    }
                    Accepted::Status(s) => {
                        self.registry.update_status(*s);
                        Ok(())
                    }
                    Accepted::Reported(r) => {
                        if let Some(rot) = &self.rotation {
                            rot.on_reported(&r).await;
                        }
                        self.registry.update_reported(r);
                        Ok(())
                    }
                    Accepted::Result(r) => {
                        if let Some(jobs) = &self.jobs {
                            let node = r.node_id.clone();
                            jobs.on_result(&node, r);
                        }
                        Ok(())
                    }
                    Accepted::Ignored => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::Sample;

    fn open() -> super::super::verify::Verifier {
        super::super::verify::Verifier::new(false, 1000)
    }

    fn batch(node: &str) -> TelemetryBatch {
        TelemetryBatch {
            node_id: node.into(),
            boot_id: "b".into(),
            first_seq: 0,
            samples: vec![Sample { metric: "m".into(), value: 1.0, time_unix_ms: 1 }],
            low_water_seq: 0,
        }
    }

    #[test]
    fn refusals() {
        let t = "fleet/v1/nodes/a/telemetry";
        assert_eq!(classify(t, &[0xff; 16], 1024, &open()).unwrap_err().0, Refusal::Decode);
        assert_eq!(classify(t, &[0u8; 2048], 1024, &open()).unwrap_err().0, Refusal::Oversized);
        assert_eq!(classify(t, &batch("b").encode_to_vec(), 1024, &open()).unwrap_err().0, Refusal::NodeMismatch);
        assert_eq!(classify("fleet/v1/nodes/a+/telemetry", b"", 1024, &open()).unwrap_err().0, Refusal::BadTopic);
        assert_eq!(classify("other/topic", b"", 1024, &open()).unwrap_err().0, Refusal::BadTopic);
        // A status published on a telemetry topic is the wrong type.
        let status = NodeStatus { node_id: "a".into(), boot_id: "b".into(), state: 1, ..Default::default() };
        assert!(classify(t, &status.encode_to_vec(), 1024, &open()).is_err());
        let mut empty = batch("a");
        empty.samples.clear();
        assert_eq!(classify(t, &empty.encode_to_vec(), 1024, &open()).unwrap_err().0, Refusal::Invalid);
        let mut huge = batch("a");
        huge.first_seq = u64::MAX;
        assert_eq!(classify(t, &huge.encode_to_vec(), 1024, &open()).unwrap_err().0, Refusal::Invalid);
    }

    #[test]
    fn accepted() {
        let (c, a) = classify("fleet/v1/nodes/a/telemetry", &batch("a").encode_to_vec(), 1024, &open()).unwrap();
        assert_eq!(c, Channel::Telemetry);
        assert!(matches!(a, Accepted::Telemetry(_)));
        let (_, a) = classify("fleet/v1/nodes/a/status", b"", 1024, &open()).unwrap();
        assert!(matches!(a, Accepted::Ignored));
    }
}
