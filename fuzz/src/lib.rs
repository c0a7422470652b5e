//! What each fuzz target runs (docs/security.md, "Fuzzing"): every decoder
//! that reads network input, with the checks its receiver applies after it.
//! The cargo-fuzz targets in `fuzz/targets` call these; `tests/corpora.rs`
//! replays every input kept in `fuzz/corpus/<target>/` through the same
//! functions as an ordinary test. None may panic, whatever the bytes.

use ed25519_dalek::SigningKey;
use fleet_agent::uplink::trust::{Controller, Held, Trust, TrustReport};
use fleet_controller::link::classify;
use fleet_controller::link::verify::Verifier;
use fleet_controller::store::security::NodeIdentity;
use fleet_proto::signing::{sign, sign_for_node, verify, verify_from_controller};
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{EnrollRequest, Event, MessageKind, SignedMessage};
use prost::Message;
use std::sync::Arc;

/// The node the targets speak as and to.
pub const NODE: &str = "fz-node";
const MAX_PAYLOAD: usize = 1 << 20;
const NOW_MS: i64 = 1_800_000_000_000;

fn node_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn controller_key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

/// A verifier that knows [`NODE`] (enrollment required).
fn verifier() -> Verifier {
    let v = Verifier::new(true, 1_000_000);
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, node_key().verifying_key().as_bytes());
    v.set(&[NodeIdentity {
        node_id: NODE.into(),
        wg_public_key: String::new(),
        wg_next_key: None,
        signing_key: key,
        broker_hash: String::new(),
        labels: String::new(),
        overlay_address: std::net::Ipv4Addr::new(10, 77, 0, 2),
        enrolled_unix_ms: 0,
        revoked_unix_ms: None,
    }]);
    v
}

/// The signed envelope, as either side reads it.
pub fn signed_envelope(data: &[u8]) {
    if let Ok(m) = SignedMessage::decode(data) {
        let _ = verify(&node_key().verifying_key(), &m);
        let _ = verify_from_controller(&controller_key().verifying_key(), NODE, &m);
    }
}

/// The controller's inbound path from topic and bytes to a typed message:
/// the first byte is the topic's length, then the topic, then the payload.
pub fn controller_inbound(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return };
    let (topic, payload) = rest.split_at(usize::from(n).min(rest.len()));
    let topic = String::from_utf8_lossy(topic);
    let _ = classify::from_mqtt(&topic, payload, MAX_PAYLOAD, &verifier());
}

/// `payload` as [`NODE`]'s genuine signed message on `channel`, through the
/// controller's whole inbound path (so the payload's decoder and the
/// contract's checks see the fuzzer's bytes, not only the signature check).
fn through_controller(channel: Channel, kind: MessageKind, payload: &[u8]) {
    let m = sign(&node_key(), NODE, kind, 1, 1, payload.to_vec()).encode_to_vec();
    let topic = node_topic(NODE, channel);
    let _ = classify::from_mqtt(&topic, &m, MAX_PAYLOAD, &verifier());
}

pub fn telemetry_batch(data: &[u8]) {
    through_controller(Channel::Telemetry, MessageKind::Telemetry, data);
}

pub fn node_status(data: &[u8]) {
    through_controller(Channel::Status, MessageKind::Status, data);
}

pub fn reported_state(data: &[u8]) {
    through_controller(Channel::Reported, MessageKind::Reported, data);
}

pub fn job_result(data: &[u8]) {
    through_controller(Channel::Results, MessageKind::Result, data);
}

/// Events are bridged, not read, by the controller: the decoder alone, and
/// the signed path (which must hand nothing on).
pub fn event(data: &[u8]) {
    let _ = Event::decode(data);
    through_controller(Channel::Events, MessageKind::Event, data);
}

/// `payload` as the controller's genuine message of `kind` for [`NODE`],
/// through the agent's checks (its decoder and replay rules).
fn through_agent(kind: MessageKind, payload: &[u8]) {
    let controller = Controller::Keys(Box::new(Held { current: (1, controller_key().verifying_key()), next: None }));
    let mut trust = Trust::new(NODE, controller, Arc::new(TrustReport::default()), None);
    let m = sign_for_node(&controller_key(), 1, NODE, kind, 1, payload.to_vec()).encode_to_vec();
    let _ = trust.open(kind, &m, NOW_MS);
    // And the bytes as an envelope themselves.
    let _ = trust.open(kind, payload, NOW_MS);
}

pub fn job(data: &[u8]) {
    through_agent(MessageKind::Job, data);
}

pub fn ack(data: &[u8]) {
    through_agent(MessageKind::Ack, data);
}

pub fn desired_state(data: &[u8]) {
    through_agent(MessageKind::Desired, data);
}

pub fn key_rotation(data: &[u8]) {
    through_agent(MessageKind::KeyRotation, data);
}

/// The controller's keys handed over in a rotation of its key, through the
/// agent's checks and the rules of `Held`.
pub fn controller_keys(data: &[u8]) {
    through_agent(MessageKind::ControllerKeys, data);
}

/// An enrollment request as the controller's `Enroll` checks it before any lookup.
pub fn enroll_request(data: &[u8]) {
    if let Ok(q) = EnrollRequest::decode(data) {
        let _ = fleet_controller::security::enroll::check_request(&q);
    }
}

/// A target: its name (its corpus folder's) and what it runs.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 13] = [
    ("signed_envelope", signed_envelope),
    ("controller_inbound", controller_inbound),
    ("telemetry_batch", telemetry_batch),
    ("node_status", node_status),
    ("reported_state", reported_state),
    ("job_result", job_result),
    ("event", event),
    ("job", job),
    ("ack", ack),
    ("desired_state", desired_state),
    ("key_rotation", key_rotation),
    ("controller_keys", controller_keys),
    ("enroll_request", enroll_request),
];
