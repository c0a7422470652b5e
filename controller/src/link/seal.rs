//! The controller's signature on everything it sends a node
//! (docs/security.md, "Both directions"): each payload goes out inside a
//! `SignedMessage` for that node, signed with the controller's key under the
//! controller's domain, so a node believes no broker and no other node.

use ed25519_dalek::SigningKey;
use fleet_proto::signing::sign_for_node;
use fleet_proto::v1::MessageKind;
use prost::Message;

/// The controller's signing key and its generation.
pub struct Sealer {
    key: SigningKey,
    generation: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The public half only.
        f.debug_struct("Sealer").field("public", &self.public_key()).field("generation", &self.generation).finish()
    }
}

impl Sealer {
    #[must_use]
    pub fn new(key: SigningKey, generation: u64) -> Self {
        Self { key, generation }
    }

    /// The public key nodes check with (32 bytes), handed out at enrollment.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// `payload` as the signed message of `kind` for `node_id`, encoded.
    #[must_use]
    pub fn seal(&self, node_id: &str, kind: MessageKind, payload: Vec<u8>) -> Vec<u8> {
        let now = u64::try_from(fleet_proto::now_unix_ms()).unwrap_or(0);
        sign_for_node(&self.key, self.generation, node_id, kind, now, payload).encode_to_vec()
    }
}
