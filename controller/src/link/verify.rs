//! Nothing a node sends is believed before its signature is checked
//! (docs/security.md, "Signed envelope"): an enrolled node's messages must be
//! `SignedMessage`s signed with its key, for the node and channel they
//! arrive on, and new by the replay rule. With `require_enrollment`, a node
//! that is not enrolled is not heard at all; without it (a lab), its plain
//! messages are taken as before.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use fleet_proto::signing::{ReplayGuard, verify};
use fleet_proto::topics::Channel;
use fleet_proto::v1::{MessageKind, SignedMessage};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::store::Store;
use crate::store::security::NodeIdentity;

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

/// How often the keys are read again from the store (enrollments and
/// revocations made on other replicas).
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct NodeKey {
    key: VerifyingKey,
    revoked: bool,
    /// SHA-256 (hex) of the broker password.
    broker_hash: String,
}

/// The keys of the enrolled nodes, their replay windows and message rates.
pub struct Verifier {
    required: bool,
    keys: RwLock<HashMap<String, NodeKey>>,
    guards: Mutex<HashMap<String, ReplayGuard>>,
    /// Messages per second per node (after the signature: only a node's own
    /// messages count against it).
    rate: governor::DefaultKeyedRateLimiter<String>,
}

fn kind_of(channel: Channel) -> Option<MessageKind> {
    match channel {
        Channel::Telemetry => Some(MessageKind::Telemetry),
        Channel::Status => Some(MessageKind::Status),
        Channel::Reported => Some(MessageKind::Reported),
        Channel::Events => Some(MessageKind::Event),
        Channel::Results => Some(MessageKind::Result),
        _ => None,
    }
}

impl Verifier {
    /// A verifier with no keys yet; each node may send `rate_per_s` messages
    /// a second (bursts of twice that).
    #[must_use]
    pub fn new(require_enrollment: bool, rate_per_s: u32) -> Self {
        let rate = std::num::NonZeroU32::new(rate_per_s).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_second(rate)
            .allow_burst(rate.saturating_mul(std::num::NonZeroU32::MIN.saturating_add(1)));
        Self {
            required: require_enrollment,
            keys: RwLock::default(),
            guards: Mutex::default(),
            rate: governor::RateLimiter::keyed(quota),
        }
    }

    /// Whether `node_id` is within its message rate (MQTT ingest asks after
    /// [`Verifier::open`]; Kafka does not: the log is durable, the consumer
    /// reads at its own pace, and a refused record would be lost).
    ///
    /// # Errors
    /// `Refusal::RateLimited`.
    pub fn within_rate(&self, node_id: &str) -> Result<(), Refusal> {
        self.rate.check_key(&node_id.to_owned()).map_err(|_| Refusal::RateLimited)
    }

    /// Takes the identities as stored (revoked ones included).
    pub fn set(&self, identities: &[NodeIdentity]) {
        let mut keys = HashMap::with_capacity(identities.len());
        for i in identities {
            let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &i.signing_key)
                .ok()
                .and_then(|b| fleet_proto::signing::verifying_key(&b).ok());
            match key {
                Some(key) => {
                    keys.insert(
                        i.node_id.clone(),
                        NodeKey { key, revoked: i.revoked_unix_ms.is_some(), broker_hash: i.broker_hash.clone() },
                    );
                }
                None => {
                    tracing::error!(node_id = %i.node_id, "Stored signing key is not an Ed25519 key; the node is not heard.")
                }
            }
        }
        let mut guards = self.guards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guards.retain(|id, _| keys.get(id).is_some_and(|k| !k.revoked));
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
    }

    /// The enrolled, unrevoked key of `node_id` (a node's signed download requests).
    #[must_use]
    pub fn key_of(&self, node_id: &str) -> Option<VerifyingKey> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.get(node_id).filter(|k| !k.revoked).map(|k| k.key)
    }

    /// Starts each node's replay guard from its saved mark (at start, before
    /// any message is read): nothing taken before the restart is taken again.
    pub fn resume(&self, marks: &[crate::store::replay::ReplayMark]) {
        let mut guards = self.guards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (node, boot, seq) in marks {
            guards.insert(node.clone(), ReplayGuard::resume(*boot, *seq));
        }
    }

    /// Every node's replay mark now (saved by [`keep_marks`]).
    #[must_use]
    pub fn marks(&self) -> Vec<crate::store::replay::ReplayMark> {
        let guards = self.guards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guards.iter().filter_map(|(n, g)| g.mark().map(|(b, s)| (n.clone(), b, s))).collect()
    }

    /// Node ids that were revoked.
    #[must_use]
    pub fn revoked(&self) -> Vec<String> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.iter().filter(|(_, k)| k.revoked).map(|(id, _)| id.clone()).collect()
    }

    /// Whether `username`/`password` are an enrolled, unrevoked node's broker
    /// credentials (the embedded broker's login check).
    #[must_use]
    pub fn broker_login(&self, username: &str, password: &str) -> bool {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.get(username)
            .is_some_and(|k| !k.revoked && crate::auth::same_secret(&crate::auth::hash_token(password), &k.broker_hash))
    }

    /// The message inside `payload` from `node_id` on `channel`, once it is
    /// known to come from that node and to be new.
    ///
    /// # Errors
    /// Why it is not believed (each a `reason` of `fleet_messages_dropped_total`).
    pub fn open<'a>(&self, node_id: &str, channel: Channel, payload: &'a [u8]) -> Result<Opened<'a>, Refusal> {
        let known = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(node_id).cloned();
        let Some(k) = known else {
            return if self.required { Err(Refusal::UnknownNode) } else { Ok(Opened::bare(payload)) };
        };
        if k.revoked {
            return Err(Refusal::Revoked);
        }
        let m = SignedMessage::decode(payload).map_err(|_| Refusal::Unsigned)?;
        if m.signature.is_empty() {
            return Err(Refusal::Unsigned);
        }
        if m.node_id != node_id {
            return Err(Refusal::NodeMismatch);
        }
        let kind = verify(&k.key, &m).map_err(|_| Refusal::BadSignature)?;
        if kind_of(channel) != Some(kind) {
            return Err(Refusal::KindMismatch);
        }
        let mut guards = self.guards.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guards.entry(node_id.to_owned()).or_default().accept(m.boot_no, m.msg_seq).map_err(|_| Refusal::Replay)?;
        Ok(Opened { payload: Cow::Owned(m.payload), traceparent: m.traceparent })
    }
}

/// A message that passed every check: its payload, and the trace context
/// its envelope carried (empty for a bare message or an untraced sender).
#[derive(Debug)]
pub struct Opened<'a> {
    pub payload: Cow<'a, [u8]>,
    pub traceparent: String,
}

impl<'a> Opened<'a> {
    fn bare(payload: &'a [u8]) -> Self {
        Self { payload: Cow::Borrowed(payload), traceparent: String::new() }
    }
}

/// Starts [`keep_loaded`] and [`keep_marks`] on `tasks`.
pub fn spawn_keepers(
    tasks: &tokio_util::task::TaskTracker,
    verifier: &Arc<Verifier>,
    store: &Store,
    changes: tokio::sync::broadcast::Receiver<String>,
    shutdown: &CancellationToken,
) {
    tasks.spawn(keep_loaded(verifier.clone(), store.clone(), changes, shutdown.clone()));
    tasks.spawn(keep_marks(verifier.clone(), store.clone(), shutdown.clone()));
}

/// How often the replay marks that moved are saved.
const MARKS_EVERY: Duration = Duration::from_secs(1);

/// Saves the replay marks that moved, every [`MARKS_EVERY`] and once more at
/// shutdown, so a restarted controller refuses what it took before: all of it
/// after a clean stop; after a crash, all but what came in the last second.
pub async fn keep_marks(verifier: Arc<Verifier>, store: Store, shutdown: CancellationToken) {
    let mut saved: HashMap<String, (u64, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(MARKS_EVERY);
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let moved: Vec<_> = verifier.marks().into_iter().filter(|(n, b, s)| saved.get(n) != Some(&(*b, *s))).collect();
        if !moved.is_empty() {
            match store.save_replay_marks(&moved).await {
                Ok(()) => saved.extend(moved.into_iter().map(|(n, b, s)| (n, (b, s)))),
                Err(e) => tracing::warn!(error = %e, "Replay marks not saved; retrying in a second."),
            }
        }
        if last {
            break;
        }
    }
}

/// Keeps `verifier` in step with the store: at once after each enrollment or
/// revocation on this controller (`changes`), and every [`RELOAD_EVERY`].
pub async fn keep_loaded(
    verifier: Arc<Verifier>,
    store: Store,
    mut changes: tokio::sync::broadcast::Receiver<String>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = changes.recv() => {}
        }
        verifier.rate.retain_recent();
        match store.identities().await {
            Ok(all) => verifier.set(&all),
            Err(e) => tracing::warn!(error = %e, "Cannot read node identities; keeping the keys known."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_proto::signing::sign;

    fn identity(id: &str, key: &ed25519_dalek::SigningKey, revoked: bool) -> NodeIdentity {
        NodeIdentity {
            node_id: id.into(),
            wg_public_key: String::new(),
            wg_next_key: None,
            signing_key: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                key.verifying_key().as_bytes(),
            ),
            broker_hash: String::new(),
            labels: String::new(),
            overlay_address: std::net::Ipv4Addr::new(10, 77, 0, 2),
            enrolled_unix_ms: 0,
            revoked_unix_ms: revoked.then_some(1),
        }
    }

    #[test]
    fn only_the_nodes_own_fresh_signed_messages_get_through() {
        let a = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let b = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let v = Verifier::new(true, 1000);
        v.set(&[identity("a", &a, false), identity("b", &b, false)]);
        let m = sign(&a, "a", MessageKind::Telemetry, 1, 1, b"batch".to_vec()).encode_to_vec();
        assert_eq!(v.open("a", Channel::Telemetry, &m).unwrap().payload.as_ref(), b"batch");
        assert_eq!(v.open("a", Channel::Telemetry, &m).unwrap_err(), Refusal::Replay);
        // B's topic, A's message and key: the envelope names A.
        assert_eq!(v.open("b", Channel::Telemetry, &m).unwrap_err(), Refusal::NodeMismatch);
        // Forged for B with A's key.
        let forged = sign(&a, "b", MessageKind::Telemetry, 1, 1, b"x".to_vec()).encode_to_vec();
        assert_eq!(v.open("b", Channel::Telemetry, &forged).unwrap_err(), Refusal::BadSignature);
        // Plain (unsigned) messages of an enrolled node.
        assert_eq!(v.open("b", Channel::Telemetry, b"\x0a\x01b").unwrap_err(), Refusal::Unsigned);
        // A status signed as telemetry.
        let wrong = sign(&b, "b", MessageKind::Telemetry, 1, 2, b"s".to_vec()).encode_to_vec();
        assert_eq!(v.open("b", Channel::Status, &wrong).unwrap_err(), Refusal::KindMismatch);
        // Not enrolled: not heard when enrollment is required, taken as is otherwise.
        assert_eq!(v.open("c", Channel::Telemetry, b"plain").unwrap_err(), Refusal::UnknownNode);
        let open = Verifier::new(false, 1000);
        assert_eq!(open.open("c", Channel::Telemetry, b"plain").unwrap().payload.as_ref(), b"plain");
        // Revoked: refused whatever it sends.
        v.set(&[identity("a", &a, true), identity("b", &b, false)]);
        let m2 = sign(&a, "a", MessageKind::Telemetry, 1, 2, b"batch".to_vec()).encode_to_vec();
        assert_eq!(v.open("a", Channel::Telemetry, &m2).unwrap_err(), Refusal::Revoked);
    }

    #[test]
    fn each_node_has_its_own_message_rate() {
        let a = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let b = ed25519_dalek::SigningKey::from_bytes(&[2; 32]);
        let v = Verifier::new(true, 5);
        v.set(&[identity("a", &a, false), identity("b", &b, false)]);
        let send = |key: &ed25519_dalek::SigningKey, id: &str, seq: u64| {
            let m = sign(key, id, MessageKind::Telemetry, 1, seq, b"x".to_vec()).encode_to_vec();
            v.open(id, Channel::Telemetry, &m).map(|_| ())?;
            v.within_rate(id)
        };
        // A burst of twice the rate, then refusals; B is not affected.
        let refused = (1..=20).filter(|s| send(&a, "a", *s) == Err(Refusal::RateLimited)).count();
        assert!((9..=11).contains(&refused), "{refused} of 20 refused at 5/s with bursts of 10");
        assert_eq!(send(&b, "b", 1), Ok(()));
        // A forged message does not use up the victim's rate (it fails before).
        for s in 100..200 {
            let forged = sign(&a, "b", MessageKind::Telemetry, 1, s, b"x".to_vec()).encode_to_vec();
            assert_eq!(v.open("b", Channel::Telemetry, &forged).unwrap_err(), Refusal::BadSignature);
        }
        assert_eq!(send(&b, "b", 2), Ok(()));
    }
}
