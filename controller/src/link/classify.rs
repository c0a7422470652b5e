//! From bytes on a channel to one typed message: the node and channel come
//! from the transport (an MQTT topic, parsed once; a Kafka key and topic),
//! the signature is checked (`verify`), then the payload is decoded and
//! held to the contract's limits. Pure, so tests can throw anything at it.

use fleet_proto::topics::{Channel, parse_node_topic};
use fleet_proto::v1::{Event, JobResult, NodeStatus, ReportedState, TelemetryBatch};
use prost::Message;

use super::message::Inbound;
use super::verify::{Refusal, Verifier};

/// Samples per batch at most; larger batches are refused as invalid.
pub const MAX_SAMPLES_PER_BATCH: usize = 100_000;
/// Longest metric name and boot id accepted.
const MAX_NAME_LEN: usize = 128;

/// A message that passed every check.
#[derive(Debug)]
pub struct Verified<'a> {
    pub node_id: &'a str,
    pub channel: Channel,
    /// `None`: nothing to hand on (a retained message cleared, or a channel
    /// the controller does not read).
    pub inbound: Option<Inbound>,
}

/// A message that did not, and whom it concerns (the node, or the topic when
/// no node could be read from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Refusal,
    pub who: String,
}

/// Checks one MQTT publish: its topic is parsed here, once.
///
/// # Errors
/// Why it was refused, and whom it concerns.
pub fn from_mqtt<'a>(
    topic: &'a str,
    payload: &[u8],
    max_payload: usize,
    verifier: &Verifier,
) -> Result<Verified<'a>, Rejected> {
    let Some((node_id, channel)) = parse_node_topic(topic) else {
        return Err(Rejected { reason: Refusal::BadTopic, who: topic.to_owned() });
    };
    if fleet_proto::validate_node_id(node_id).is_err() {
        return Err(Rejected { reason: Refusal::BadTopic, who: topic.to_owned() });
    }
    let inbound = check(node_id, channel, payload, max_payload, verifier)
        .map_err(|reason| Rejected { reason, who: node_id.into() })?;
    Ok(Verified { node_id, channel, inbound })
}

/// Checks a payload that `node_id` sent on `channel` (a valid node id).
///
/// # Errors
/// Why it was refused.
pub fn check(
    node_id: &str,
    channel: Channel,
    payload: &[u8],
    max_payload: usize,
    verifier: &Verifier,
) -> Result<Option<Inbound>, Refusal> {
    if payload.len() > max_payload {
        return Err(Refusal::Oversized);
    }
    // A retained message cleared (empty), or a channel the controller does not read.
    let read = matches!(
        channel,
        Channel::Telemetry | Channel::Status | Channel::Reported | Channel::Results | Channel::Events
    );
    if !read || (payload.is_empty() && matches!(channel, Channel::Status | Channel::Reported)) {
        return Ok(None);
    }
    // The sender's span (from the envelope) is this one's parent: set before
    // the span is entered or has children (an OpenTelemetry span's parent is
    // fixed once it starts).
    let span = tracing::debug_span!("message.verify", node.id = node_id, channel = channel.as_str());
    let opened = verifier.open(node_id, channel, payload)?;
    fleet_net::otel::follow(&span, &opened.traceparent);
    decode(node_id, channel, &opened.payload, &span).map(Some)
}

fn decode(node_id: &str, channel: Channel, payload: &[u8], verified: &tracing::Span) -> Result<Inbound, Refusal> {
    match channel {
        Channel::Telemetry => {
            let b = TelemetryBatch::decode(payload).map_err(|_| Refusal::Decode)?;
            same_node(&b.node_id, node_id)?;
            if !valid_batch(&b) {
                return Err(Refusal::Invalid);
            }
            let span = tracing::debug_span!(parent: verified, "batch.ingest", samples = b.samples.len(), first_seq = b.first_seq);
            Ok(Inbound::Telemetry { batch: b, done: None, span })
        }
        Channel::Status => {
            let s = NodeStatus::decode(payload).map_err(|_| Refusal::Decode)?;
            same_node(&s.node_id, node_id)?;
            Ok(Inbound::Status(Box::new(s)))
        }
        Channel::Reported => {
            let r = ReportedState::decode(payload).map_err(|_| Refusal::Decode)?;
            same_node(&r.node_id, node_id)?;
            Ok(Inbound::Reported(r))
        }
        Channel::Events => {
            let e = Event::decode(payload).map_err(|_| Refusal::Decode)?;
            same_node(&e.node_id, node_id)?;
            Ok(Inbound::Event(e))
        }
        _ => {
            let r = JobResult::decode(payload).map_err(|_| Refusal::Decode)?;
            same_node(&r.node_id, node_id)?;
            let span =
                tracing::debug_span!(parent: verified, "job.result", job.id = %r.job_id, job.attempt = r.attempt);
            Ok(Inbound::Result(r, span))
        }
    }
}

fn same_node(inside: &str, on: &str) -> Result<(), Refusal> {
    if inside == on { Ok(()) } else { Err(Refusal::NodeMismatch) }
}

/// The contract's limits on a batch: a run id, 1 to 100,000 samples with
/// named metrics, and a seq range that fits the store.
fn valid_batch(b: &TelemetryBatch) -> bool {
    !b.boot_id.is_empty()
        && b.boot_id.len() <= MAX_NAME_LEN
        && !b.samples.is_empty()
        && b.samples.len() <= MAX_SAMPLES_PER_BATCH
        && b.first_seq.checked_add(b.samples.len() as u64).is_some_and(|e| i64::try_from(e).is_ok())
        && b.samples.iter().all(|s| !s.metric.is_empty() && s.metric.len() <= MAX_NAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::v1::Sample;

    fn open() -> Verifier {
        Verifier::new(false, 1000)
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

    fn refusal(topic: &str, payload: &[u8]) -> Refusal {
        from_mqtt(topic, payload, 1024, &open()).unwrap_err().reason
    }

    #[test]
    fn refusals() {
        let t = "fleet/v1/nodes/a/telemetry";
        assert_eq!(refusal(t, &[0xff; 16]), Refusal::Decode);
        assert_eq!(refusal(t, &[0u8; 2048]), Refusal::Oversized);
        assert_eq!(refusal(t, &batch("b").encode_to_vec()), Refusal::NodeMismatch);
        assert_eq!(refusal("fleet/v1/nodes/a+/telemetry", b""), Refusal::BadTopic);
        assert_eq!(refusal("other/topic", b""), Refusal::BadTopic);
        // A status published on a telemetry topic is the wrong type.
        let status = NodeStatus { node_id: "a".into(), boot_id: "b".into(), state: 1, ..Default::default() };
        assert!(from_mqtt(t, &status.encode_to_vec(), 1024, &open()).is_err());
        let mut empty = batch("a");
        empty.samples.clear();
        assert_eq!(refusal(t, &empty.encode_to_vec()), Refusal::Invalid);
        let mut huge = batch("a");
        huge.first_seq = u64::MAX;
        assert_eq!(refusal(t, &huge.encode_to_vec()), Refusal::Invalid);
        // Events are checked like the rest.
        let e = "fleet/v1/nodes/a/events";
        assert_eq!(refusal(e, &[0xff; 16]), Refusal::Decode);
        let other = Event { node_id: "b".into(), kind: "power.profile_changed".into(), ..Default::default() };
        assert_eq!(refusal(e, &other.encode_to_vec()), Refusal::NodeMismatch);
    }

    #[test]
    fn accepted() {
        let v = from_mqtt("fleet/v1/nodes/a/telemetry", &batch("a").encode_to_vec(), 1024, &open()).unwrap();
        assert_eq!((v.node_id, v.channel), ("a", Channel::Telemetry));
        assert!(matches!(v.inbound, Some(Inbound::Telemetry { .. })));
        let v = from_mqtt("fleet/v1/nodes/a/status", b"", 1024, &open()).unwrap();
        assert!(v.inbound.is_none());
    }
}
