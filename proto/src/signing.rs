//! Signed messages (docs/security.md): what a node signs, how the controller
//! checks it, and the rule that refuses replays; and the other direction,
//! what the controller signs for a node and how the node checks it. Ed25519
//! from `ed25519-dalek`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::error::ProtoError;
use crate::v1::{MessageKind, SignedMessage};

/// Domain separation: these bytes open everything a node signs.
const DOMAIN: &[u8] = b"fleet.v1.signed";
/// ... and everything the controller signs, so that no signature of one
/// side can pass for the other's.
const CONTROLLER_DOMAIN: &[u8] = b"fleet.v1.controller-signed";

/// Why a signed message was not believed (the ingest counter's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("bad signature")]
    BadSignature,
    #[error("signature of the wrong length")]
    Malformed,
    #[error("replayed or out of order")]
    Replay,
    #[error("unknown message kind")]
    UnknownKind,
    #[error("meant for another node")]
    WrongNode,
    #[error("signed by a controller key this node does not hold")]
    UnknownKey,
}

impl Refused {
    /// A short word for metrics labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::BadSignature => "bad_signature",
            Refused::Malformed => "malformed",
            Refused::Replay => "replay",
            Refused::UnknownKind => "unknown_kind",
            Refused::WrongNode => "wrong_node",
            Refused::UnknownKey => "unknown_key",
        }
    }
}

impl MessageKind {
    /// True for the kinds the controller sends (16 and up), false for a node's.
    #[must_use]
    pub fn from_controller(self) -> bool {
        self as i32 >= 16
    }
}

/// Longest trace context accepted in an envelope (a W3C `traceparent` is 55 bytes).
pub const MAX_TRACEPARENT: usize = 128;

/// What a signature covers besides the domain.
struct Covered<'a> {
    node_id: &'a str,
    kind: i32,
    boot_no: u64,
    msg_seq: u64,
    payload: &'a [u8],
    traceparent: &'a str,
}

impl<'a> Covered<'a> {
    fn of(m: &'a SignedMessage) -> Self {
        Self {
            node_id: &m.node_id,
            kind: m.kind,
            boot_no: m.boot_no,
            msg_seq: m.msg_seq,
            payload: &m.payload,
            traceparent: &m.traceparent,
        }
    }
}

/// The bytes a node's signature covers: the domain, then each field with its
/// length (so no two different messages share the same bytes); the trace
/// context last, only when there is one (so messages without it sign as
/// before it existed).
#[must_use]
pub fn signed_bytes(
    node_id: &str,
    kind: i32,
    boot_no: u64,
    msg_seq: u64,
    payload: &[u8],
    traceparent: &str,
) -> Vec<u8> {
    bytes_in(DOMAIN, &Covered { node_id, kind, boot_no, msg_seq, payload, traceparent })
}

fn bytes_in(domain: &[u8], c: &Covered<'_>) -> Vec<u8> {
    let mut b = Vec::with_capacity(domain.len() + c.node_id.len() + c.payload.len() + c.traceparent.len() + 48);
    b.extend_from_slice(domain);
    b.extend_from_slice(&(c.node_id.len() as u64).to_be_bytes());
    b.extend_from_slice(c.node_id.as_bytes());
    b.extend_from_slice(&c.kind.to_be_bytes());
    b.extend_from_slice(&c.boot_no.to_be_bytes());
    b.extend_from_slice(&c.msg_seq.to_be_bytes());
    b.extend_from_slice(&(c.payload.len() as u64).to_be_bytes());
    b.extend_from_slice(c.payload);
    if !c.traceparent.is_empty() {
        b.extend_from_slice(&(c.traceparent.len() as u64).to_be_bytes());
        b.extend_from_slice(c.traceparent.as_bytes());
    }
    b
}

/// Signs `payload` as the node's message of `kind`.
#[must_use]
pub fn sign(
    key: &SigningKey,
    node_id: &str,
    kind: MessageKind,
    boot_no: u64,
    msg_seq: u64,
    payload: Vec<u8>,
) -> SignedMessage {
    sign_traced(key, node_id, kind, boot_no, msg_seq, payload, "")
}

/// Signs `payload` as the node's message of `kind`, carrying `traceparent`
/// (empty: none; longer than [`MAX_TRACEPARENT`]: left out).
#[must_use]
pub fn sign_traced(
    key: &SigningKey,
    node_id: &str,
    kind: MessageKind,
    boot_no: u64,
    msg_seq: u64,
    payload: Vec<u8>,
    traceparent: &str,
) -> SignedMessage {
    seal(key, DOMAIN, node_id, kind, boot_no, msg_seq, payload, traceparent)
}

/// The envelope of `payload` signed under `domain` (a node's or the
/// controller's); a trace context longer than [`MAX_TRACEPARENT`] is left out.
#[allow(clippy::too_many_arguments)] // the envelope's fields, each named
fn seal(
    key: &SigningKey,
    domain: &[u8],
    node_id: &str,
    kind: MessageKind,
    boot_no: u64,
    msg_seq: u64,
    payload: Vec<u8>,
    traceparent: &str,
) -> SignedMessage {
    let traceparent = if traceparent.len() > MAX_TRACEPARENT { "" } else { traceparent };
    let covered = Covered { node_id, kind: kind as i32, boot_no, msg_seq, payload: &payload, traceparent };
    let signature = key.sign(&bytes_in(domain, &covered)).to_bytes().to_vec();
    SignedMessage {
        node_id: node_id.into(),
        kind: kind as i32,
        boot_no,
        msg_seq,
        payload,
        signature,
        traceparent: traceparent.to_owned(),
    }
}

fn known_kind(m: &SignedMessage, from_controller: bool) -> Result<MessageKind, Refused> {
    MessageKind::try_from(m.kind)
        .ok()
        .filter(|k| *k != MessageKind::Unspecified && k.from_controller() == from_controller)
        .ok_or(Refused::UnknownKind)
}

fn check(key: &VerifyingKey, domain: &[u8], m: &SignedMessage) -> Result<(), Refused> {
    let sig: [u8; 64] = m.signature.as_slice().try_into().map_err(|_| Refused::Malformed)?;
    if m.traceparent.len() > MAX_TRACEPARENT {
        return Err(Refused::Malformed);
    }
    let bytes = bytes_in(domain, &Covered::of(m));
    key.verify(&bytes, &Signature::from_bytes(&sig)).map_err(|_| Refused::BadSignature)
}

/// Checks a node's message's signature against the node's public key.
///
/// # Errors
/// A kind this build does not know (or one only the controller sends), a
/// signature of the wrong length, or one that does not verify.
pub fn verify(key: &VerifyingKey, m: &SignedMessage) -> Result<MessageKind, Refused> {
    let kind = known_kind(m, false)?;
    check(key, DOMAIN, m)?;
    Ok(kind)
}

/// Signs `payload` as the controller's message of `kind` for `node_id`,
/// with the key of `generation`, at `time_ms` (Unix ms).
#[must_use]
pub fn sign_for_node(
    key: &SigningKey,
    generation: u64,
    node_id: &str,
    kind: MessageKind,
    time_ms: u64,
    payload: Vec<u8>,
) -> SignedMessage {
    sign_for_node_traced(key, generation, node_id, kind, time_ms, payload, "")
}

/// [`sign_for_node`] carrying `traceparent` (empty: none; too long: left out).
#[must_use]
pub fn sign_for_node_traced(
    key: &SigningKey,
    generation: u64,
    node_id: &str,
    kind: MessageKind,
    time_ms: u64,
    payload: Vec<u8>,
    traceparent: &str,
) -> SignedMessage {
    seal(key, CONTROLLER_DOMAIN, node_id, kind, generation, time_ms, payload, traceparent)
}

/// Checks a message from the controller on node `own_id`: a controller's
/// kind, meant for this node, signed by `key` (the controller key of the
/// message's generation, `m.boot_no`).
///
/// # Errors
/// A node's kind or an unknown one, another node's message, a signature of
/// the wrong length, or one that does not verify.
pub fn verify_from_controller(key: &VerifyingKey, own_id: &str, m: &SignedMessage) -> Result<MessageKind, Refused> {
    let kind = known_kind(m, true)?;
    if m.node_id != own_id {
        return Err(Refused::WrongNode);
    }
    check(key, CONTROLLER_DOMAIN, m)?;
    Ok(kind)
}

/// Messages of one boot accepted out of order, at most this far behind the
/// highest (an MQTT client re-sending after a reconnect, telemetry and status
/// on different topics).
pub const REPLAY_WINDOW: u64 = 1024;

/// `msg_seq` of the node's MQTT last will: set once per boot, before the
/// messages it follows, so it stands outside the sequence.
pub const WILL_SEQ: u64 = u64::MAX;

/// The replay rule for one node: messages of an older boot are refused; in
/// the newest boot each `msg_seq` is accepted once, up to
/// [`REPLAY_WINDOW`] behind the highest seen (like WireGuard's and IPsec's
/// anti-replay windows). The last will ([`WILL_SEQ`]) of the newest boot
/// is accepted whenever it comes: the broker sends it after each lost
/// connection, and its only effect is "offline" until the next status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayGuard {
    boot: Option<u64>,
    high: Option<u64>,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayGuard {
    /// A guard that refuses boots before `boot_no` (the highest boot stored).
    #[must_use]
    pub fn from_boot(boot_no: Option<u64>) -> Self {
        Self { boot: boot_no, ..Self::default() }
    }

    /// The newest boot seen.
    #[must_use]
    pub fn boot(&self) -> Option<u64> {
        self.boot
    }

    /// What must outlive a restart: the newest boot and the highest `msg_seq`
    /// taken in it (`None` before the first message).
    #[must_use]
    pub fn mark(&self) -> Option<(u64, u64)> {
        Some((self.boot?, self.high.unwrap_or(0)))
    }

    /// A guard after a restart, from its last saved [`mark`](Self::mark):
    /// older boots are refused, and in the marked boot every `msg_seq` up to
    /// the marked one counts as seen (an out-of-order message from before
    /// the restart is refused with the replays; telemetry is sent again).
    #[must_use]
    pub fn resume(boot_no: u64, high: u64) -> Self {
        Self { boot: Some(boot_no), high: Some(high), seen: [u64::MAX; (REPLAY_WINDOW / 64) as usize] }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Accepts `(boot_no, msg_seq)` once.
    ///
    /// # Errors
    /// `Refused::Replay` for an older boot, a seq seen already, or one too far behind.
    pub fn accept(&mut self, boot_no: u64, msg_seq: u64) -> Result<(), Refused> {
        match self.boot {
            Some(b) if boot_no < b => return Err(Refused::Replay),
            Some(b) if boot_no == b => {}
            _ => {
                self.boot = Some(boot_no);
                self.high = None;
                self.seen = Default::default();
            }
        }
        if msg_seq == WILL_SEQ {
            return Ok(());
        }
        let (word, bit) = Self::bit(msg_seq);
        match self.high {
            Some(h) if msg_seq <= h => {
                if h - msg_seq >= REPLAY_WINDOW || self.seen[word] & bit != 0 {
                    return Err(Refused::Replay);
                }
            }
            Some(h) => {
                // Forget the seqs the window slides past.
                if msg_seq - h >= REPLAY_WINDOW {
                    self.seen = Default::default();
                } else {
                    for s in h + 1..msg_seq {
                        let (w, b) = Self::bit(s);
                        self.seen[w] &= !b;
                    }
                }
                self.seen[word] &= !bit;
                self.high = Some(msg_seq);
            }
            None => self.high = Some(msg_seq),
        }
        self.seen[word] |= bit;
        Ok(())
    }
}

/// A signing key from 32 secret bytes (the agent's `signing.key`).
#[must_use]
pub fn signing_key(seed: &[u8; 32]) -> SigningKey {
    SigningKey::from_bytes(seed)
}

/// A node's public key from its 32 bytes.
///
/// # Errors
/// Bytes that are not a valid Ed25519 public key.
pub fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, ProtoError> {
    let b: [u8; 32] = bytes.try_into().map_err(|_| ProtoError::KeyLength(bytes.len()))?;
    VerifyingKey::from_bytes(&b).map_err(|e| ProtoError::BadKey(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        signing_key(&[n; 32])
    }

    #[test]
    fn a_signed_message_verifies_and_any_change_breaks_it() {
        let k = key(7);
        let public = k.verifying_key();
        let m = sign(&k, "pi-a", MessageKind::Telemetry, 3, 41, b"batch".to_vec());
        assert_eq!(verify(&public, &m), Ok(MessageKind::Telemetry));
        let changed = [
            SignedMessage { node_id: "pi-b".into(), ..m.clone() },
            SignedMessage { kind: MessageKind::Status as i32, ..m.clone() },
            SignedMessage { boot_no: 4, ..m.clone() },
            SignedMessage { msg_seq: 42, ..m.clone() },
            SignedMessage { payload: b"batcH".to_vec(), ..m.clone() },
        ];
        for c in &changed {
            assert_eq!(verify(&public, c), Err(Refused::BadSignature), "{c:?}");
        }
        // Another node's key: refused; a cut signature: malformed; no kind: refused.
        assert_eq!(verify(&key(8).verifying_key(), &m), Err(Refused::BadSignature));
        assert_eq!(
            verify(&public, &SignedMessage { signature: m.signature[..63].to_vec(), ..m.clone() }),
            Err(Refused::Malformed)
        );
        assert_eq!(verify(&public, &SignedMessage { kind: 0, ..m.clone() }), Err(Refused::UnknownKind));
        assert_eq!(verify(&public, &SignedMessage { kind: 99, ..m }), Err(Refused::UnknownKind));
    }

    #[test]
    fn the_trace_context_is_signed_when_there_is_one() {
        let k = key(7);
        let public = k.verifying_key();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let m = sign_traced(&k, "pi-a", MessageKind::Telemetry, 3, 41, b"batch".to_vec(), tp);
        assert_eq!((verify(&public, &m), m.traceparent.as_str()), (Ok(MessageKind::Telemetry), tp));
        // Changed, added or removed on the way: refused.
        let other = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b8-01";
        assert_eq!(
            verify(&public, &SignedMessage { traceparent: other.into(), ..m.clone() }),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            verify(&public, &SignedMessage { traceparent: String::new(), ..m.clone() }),
            Err(Refused::BadSignature)
        );
        let plain = sign(&k, "pi-a", MessageKind::Telemetry, 3, 41, b"batch".to_vec());
        assert_eq!(
            verify(&public, &SignedMessage { traceparent: tp.into(), ..plain.clone() }),
            Err(Refused::BadSignature)
        );
        // Without one, the bytes are those of an envelope from before trace contexts.
        let mut before = DOMAIN.to_vec();
        for part in [
            &4u64.to_be_bytes()[..],
            b"pi-a",
            &(MessageKind::Telemetry as i32).to_be_bytes(),
            &3u64.to_be_bytes(),
            &41u64.to_be_bytes(),
            &5u64.to_be_bytes(),
            b"batch",
        ] {
            before.extend_from_slice(part);
        }
        assert_eq!(signed_bytes("pi-a", MessageKind::Telemetry as i32, 3, 41, b"batch", ""), before);
        // Too long: left out when signing, refused when received.
        let long = "x".repeat(MAX_TRACEPARENT + 1);
        assert_eq!(sign_traced(&k, "pi-a", MessageKind::Telemetry, 3, 41, b"b".to_vec(), &long).traceparent, "");
        assert_eq!(verify(&public, &SignedMessage { traceparent: long, ..plain }), Err(Refused::Malformed));
        let c = sign_for_node_traced(&k, 1, "pi-a", MessageKind::Job, 5, b"j".to_vec(), tp);
        assert_eq!(verify_from_controller(&public, "pi-a", &c), Ok(MessageKind::Job));
        assert_eq!(
            verify_from_controller(&public, "pi-a", &SignedMessage { traceparent: other.into(), ..c }),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn the_controllers_messages_verify_only_as_the_controllers_for_their_node() {
        let (controller, node) = (key(1), key(2));
        let m = sign_for_node(&controller, 3, "pi-a", MessageKind::Desired, 1_700_000_000_000, b"state".to_vec());
        let public = controller.verifying_key();
        assert_eq!(verify_from_controller(&public, "pi-a", &m), Ok(MessageKind::Desired));
        assert_eq!(verify_from_controller(&public, "pi-b", &m), Err(Refused::WrongNode));
        for c in [
            SignedMessage { node_id: "pi-b".into(), ..m.clone() },
            SignedMessage { kind: MessageKind::Job as i32, ..m.clone() },
            SignedMessage { boot_no: 4, ..m.clone() },
            SignedMessage { msg_seq: 1, ..m.clone() },
            SignedMessage { payload: b"statE".to_vec(), ..m.clone() },
        ] {
            let own = c.node_id.clone();
            assert_eq!(verify_from_controller(&public, &own, &c), Err(Refused::BadSignature), "{c:?}");
        }
        // A node's key, or a node's signature on a controller's kind: refused.
        assert_eq!(verify_from_controller(&node.verifying_key(), "pi-a", &m), Err(Refused::BadSignature));
        let by_node = sign(&node, "pi-a", MessageKind::Desired, 3, 1, b"state".to_vec());
        assert_eq!(verify_from_controller(&node.verifying_key(), "pi-a", &by_node), Err(Refused::BadSignature));
        assert_eq!(verify(&node.verifying_key(), &by_node), Err(Refused::UnknownKind), "not a node's kind");
        // The two domains never share bytes: the controller's message is no node's.
        let as_node = sign(&controller, "pi-a", MessageKind::Telemetry, 3, 1, b"state".to_vec());
        let moved = SignedMessage { kind: MessageKind::Telemetry as i32, ..m.clone() };
        assert_eq!(verify(&public, &moved), Err(Refused::BadSignature));
        assert_eq!(verify_from_controller(&public, "pi-a", &as_node), Err(Refused::UnknownKind));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        // "ab" + payload "c" must not sign the same bytes as "a" + payload "bc".
        assert_ne!(signed_bytes("ab", 1, 0, 0, b"c", ""), signed_bytes("a", 1, 0, 0, b"bc", ""));
        assert_ne!(signed_bytes("a", 1, 0, 0, b"c", "t"), signed_bytes("a", 1, 0, 0, b"ct", ""));
    }

    #[test]
    fn replays_and_old_boots_are_refused() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.accept(1, 1), Ok(()));
        assert_eq!(g.accept(1, 2), Ok(()));
        assert_eq!(g.accept(1, 2), Err(Refused::Replay));
        assert_eq!(g.accept(1, 1), Err(Refused::Replay));
        assert_eq!(g.accept(2, 0), Ok(()), "a new boot starts over");
        assert_eq!(g.accept(1, 99), Err(Refused::Replay), "an old boot's message");
        assert_eq!(ReplayGuard::from_boot(g.boot()).accept(1, 5), Err(Refused::Replay), "after a restart");
        assert_eq!(ReplayGuard::from_boot(g.boot()).accept(2, 5), Ok(()));
    }

    #[test]
    fn out_of_order_within_the_window_once_each() {
        let mut g = ReplayGuard::default();
        for s in [10, 12, 11, 15, 13] {
            assert_eq!(g.accept(1, s), Ok(()), "{s}");
        }
        for s in [10, 11, 12, 13, 15] {
            assert_eq!(g.accept(1, s), Err(Refused::Replay), "{s}");
        }
        assert_eq!(g.accept(1, 14), Ok(()));
        // Far ahead: the old window is gone; too far behind is refused.
        assert_eq!(g.accept(1, 15 + REPLAY_WINDOW), Ok(()));
        assert_eq!(g.accept(1, 15), Err(Refused::Replay));
        assert_eq!(g.accept(1, 16), Ok(()), "just inside the window, not seen");
        assert_eq!(g.accept(1, 16), Err(Refused::Replay));
        // A slide by less than the window clears exactly the slots it passes.
        assert_eq!(g.accept(1, 20 + REPLAY_WINDOW), Ok(()));
        assert_eq!(g.accept(1, 19 + REPLAY_WINDOW), Ok(()));
        assert_eq!(g.accept(1, 15 + REPLAY_WINDOW), Err(Refused::Replay));
    }

    #[test]
    fn a_resumed_guard_refuses_what_was_taken_before_the_restart() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.mark(), None);
        for s in [1, 2, 5] {
            assert_eq!(g.accept(4, s), Ok(()));
        }
        let (boot, high) = g.mark().unwrap();
        assert_eq!((boot, high), (4, 5));
        let mut r = ReplayGuard::resume(boot, high);
        for s in [1, 2, 3, 4, 5] {
            assert_eq!(r.accept(4, s), Err(Refused::Replay), "{s}");
        }
        assert_eq!(r.accept(3, WILL_SEQ), Err(Refused::Replay), "an old boot's will");
        assert_eq!(r.accept(4, 6), Ok(()));
        assert_eq!(r.accept(5, 0), Ok(()), "a new boot");
    }

    #[test]
    fn the_last_will_of_the_newest_boot_is_always_accepted() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.accept(3, 1), Ok(()));
        assert_eq!(g.accept(3, WILL_SEQ), Ok(()));
        assert_eq!(g.accept(3, WILL_SEQ), Ok(()));
        assert_eq!(g.accept(3, 2), Ok(()), "the will does not move the window");
        assert_eq!(g.accept(2, WILL_SEQ), Err(Refused::Replay), "an old boot's will");
    }

    #[test]
    fn public_keys_are_checked() {
        assert!(verifying_key(&[1; 31]).unwrap_err().to_string().contains("32 bytes"));
        let k = key(9).verifying_key();
        assert_eq!(verifying_key(k.as_bytes()).unwrap(), k);
    }
}
