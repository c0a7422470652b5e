//! Signs every message an enrolled node sends (docs/security.md, "Signed
//! envelope"): `SignedMessage { node_id, kind, boot_no, msg_seq, payload,
//! signature }`. `boot_no` is kept in `data_dir/boot_no` and raised (and
//! synced) at every start before anything is sent, so the controller can
//! refuse an older boot's messages without trusting a clock.

use std::path::Path;

use ed25519_dalek::SigningKey;
use fleet_proto::signing::{WILL_SEQ, sign, sign_traced};
use fleet_proto::v1::MessageKind;
use prost::Message;

use crate::AgentError;

/// The boot counter's file in `data_dir`.
pub const BOOT_NO_FILE: &str = "boot_no";

/// The node's signer for this boot.
pub struct Signer {
    key: SigningKey,
    node_id: String,
    boot_no: u64,
    next_seq: u64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("node_id", &self.node_id).field("boot_no", &self.boot_no).finish_non_exhaustive()
    }
}

/// Reads, raises and durably stores the boot counter.
///
/// # Errors
/// A counter file that cannot be written (then signing cannot be trusted).
pub fn next_boot_no(dir: &Path) -> Result<u64, AgentError> {
    let path = dir.join(BOOT_NO_FILE);
    let last = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
    let next = last + 1;
    // Written like the keys: complete and synced before anything is signed with it.
    crate::identity::write_secret(&path, &next.to_string()).map_err(AgentError::BootCounter)?;
    Ok(next)
}

impl Signer {
    /// A signer for this boot (raises the boot counter in `dir`).
    ///
    /// # Errors
    /// When the boot counter cannot be stored.
    pub fn start(key: SigningKey, node_id: &str, dir: &Path) -> Result<Self, AgentError> {
        Ok(Self { key, node_id: node_id.to_owned(), boot_no: next_boot_no(dir)?, next_seq: 1 })
    }

    /// This boot's number.
    #[must_use]
    pub fn boot_no(&self) -> u64 {
        self.boot_no
    }

    /// Wraps `payload` in a signed envelope with the next sequence number and
    /// the trace context of the current span (none when nothing is traced).
    pub fn seal(&mut self, kind: MessageKind, payload: Vec<u8>) -> Vec<u8> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let traceparent = fleet_net::otel::current_traceparent();
        sign_traced(&self.key, &self.node_id, kind, self.boot_no, seq, payload, &traceparent).encode_to_vec()
    }

    /// The last will (an offline status), outside the sequence.
    #[must_use]
    pub fn will(&self, status: Vec<u8>) -> Vec<u8> {
        sign(&self.key, &self.node_id, MessageKind::Status, self.boot_no, WILL_SEQ, status).encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boots_rise_and_messages_verify_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[5; 32]);
        let public = key.verifying_key();
        let mut s = Signer::start(key.clone(), "pi-a", dir.path()).unwrap();
        assert_eq!(s.boot_no(), 1);
        let mut guard = fleet_proto::signing::ReplayGuard::default();
        for _ in 0..3 {
            let m = fleet_proto::v1::SignedMessage::decode(s.seal(MessageKind::Telemetry, b"b".to_vec()).as_slice())
                .unwrap();
            assert_eq!(fleet_proto::signing::verify(&public, &m), Ok(MessageKind::Telemetry));
            assert_eq!(m.boot_no, 1);
            guard.accept(m.boot_no, m.msg_seq).unwrap();
        }
        let w = fleet_proto::v1::SignedMessage::decode(s.will(b"off".to_vec()).as_slice()).unwrap();
        assert_eq!(w.msg_seq, WILL_SEQ);
        assert!(fleet_proto::signing::verify(&public, &w).is_ok());
        // The next start is a later boot: the controller refuses the old one's messages after it.
        let s2 = Signer::start(key, "pi-a", dir.path()).unwrap();
        assert_eq!(s2.boot_no(), 2);
        assert_eq!(std::fs::read_to_string(dir.path().join(BOOT_NO_FILE)).unwrap().trim(), "2");
    }
}
