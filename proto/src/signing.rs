//! Signed messages (docs/security.md): what a node signs, how the controller
//! checks it, and the rule that refuses replays. Ed25519 from `ed25519-dalek`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::v1::{MessageKind, SignedMessage};

/// Domain separation: these bytes open everything a node signs.
const DOMAIN: &[u8] = b"fleet.v1.signed";

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
        }
    }
}

/// The bytes a signature covers: the domain, then each field with its length
/// (so no two different messages share the same bytes).
#[must_use]
pub fn signed_bytes(node_id: &str, kind: i32, boot_no: u64, msg_seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(DOMAIN.len() + node_id.len() + payload.len() + 40);
    b.extend_from_slice(DOMAIN);
    b.extend_from_slice(&(node_id.len() as u64).to_be_bytes());
    b.extend_from_slice(node_id.as_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&boot_no.to_be_bytes());
    b.extend_from_slice(&msg_seq.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    b.extend_from_slice(payload);
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
    let signature = key.sign(&signed_bytes(node_id, kind as i32, boot_no, msg_seq, &payload)).to_bytes().to_vec();
    SignedMessage { node_id: node_id.into(), kind: kind as i32, boot_no, msg_seq, payload, signature }
}

/// Checks a message's signature against the node's public key.
///
/// # Errors
/// A kind this build does not know, a signature of the wrong length, or one
/// that does not verify.
pub fn verify(key: &VerifyingKey, m: &SignedMessage) -> Result<MessageKind, Refused> {
    let kind = MessageKind::try_from(m.kind).ok().filter(|k| *k != MessageKind::Unspecified);
    let kind = kind.ok_or(Refused::UnknownKind)?;
    let sig: [u8; 64] = m.signature.as_slice().try_into().map_err(|_| Refused::Malformed)?;
    key.verify(&signed_bytes(&m.node_id, m.kind, m.boot_no, m.msg_seq, &m.payload), &Signature::from_bytes(&sig))
        .map_err(|_| Refused::BadSignature)?;
    Ok(kind)
}

/// The highest `(boot_no, msg_seq)` believed from one node: a message is
/// accepted only above it, so an old one can never be played again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayGuard {
    last: Option<(u64, u64)>,
}

impl ReplayGuard {
    /// Starts from a stored high-water mark.
    #[must_use]
    pub fn from_last(last: Option<(u64, u64)>) -> Self {
        Self { last }
    }

    /// The high-water mark, to store.
    #[must_use]
    pub fn last(&self) -> Option<(u64, u64)> {
        self.last
    }

    /// Accepts `(boot_no, msg_seq)` and raises the mark, or refuses it.
    ///
    /// # Errors
    /// [`Refused::Replay`] when it is not above the mark.
    pub fn accept(&mut self, boot_no: u64, msg_seq: u64) -> Result<(), Refused> {
        if self.last.is_some_and(|last| (boot_no, msg_seq) <= last) {
            return Err(Refused::Replay);
        }
        self.last = Some((boot_no, msg_seq));
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
pub fn verifying_key(bytes: &[u8]) -> Result<VerifyingKey, String> {
    let b: [u8; 32] = bytes.try_into().map_err(|_| format!("a public key has 32 bytes, not {}", bytes.len()))?;
    VerifyingKey::from_bytes(&b).map_err(|e| format!("not an Ed25519 public key: {e}"))
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
    fn field_boundaries_cannot_be_shifted() {
        // "ab" + payload "c" must not sign the same bytes as "a" + payload "bc".
        assert_ne!(signed_bytes("ab", 1, 0, 0, b"c"), signed_bytes("a", 1, 0, 0, b"bc"));
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
        let restored = ReplayGuard::from_last(g.last());
        assert_eq!(restored.last(), Some((2, 0)));
    }

    #[test]
    fn public_keys_are_checked() {
        assert!(verifying_key(&[1; 31]).unwrap_err().contains("32 bytes"));
        let k = key(9).verifying_key();
        assert_eq!(verifying_key(k.as_bytes()).unwrap(), k);
    }
}
