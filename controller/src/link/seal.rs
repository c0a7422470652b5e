//! The controller's signature on everything it sends a node
//! (docs/security.md, "Both directions"): each payload goes out inside a
//! `SignedMessage` for that node, signed with the controller's key under the
//! controller's domain, so a node believes no broker and no other node.
//!
//! The sealer holds every generation of the key still kept: the one that
//! signs, the newest (above it while a rotation is open), and older ones,
//! which only sign the `ControllerKeys` announcement for a node that still
//! holds them (a node offline through a rotation).

use std::collections::BTreeMap;
use std::sync::RwLock;

use ed25519_dalek::SigningKey;
use fleet_proto::signing::sign_for_node_traced;
use fleet_proto::v1::{ControllerKeys, MessageKind};
use prost::Message;

/// The generations of the controller's key that are kept, and which one signs.
#[derive(Clone)]
pub struct Keys {
    /// Every kept generation's key.
    pub by_generation: BTreeMap<u64, SigningKey>,
    /// The generation that signs (one of `by_generation`).
    pub signing: u64,
}

impl Keys {
    /// The newest generation kept.
    #[must_use]
    pub fn newest(&self) -> u64 {
        self.by_generation.keys().next_back().copied().unwrap_or(self.signing)
    }

    fn public(&self, generation: u64) -> Vec<u8> {
        self.by_generation.get(&generation).map(|k| k.verifying_key().to_bytes().to_vec()).unwrap_or_default()
    }
}

/// The controller's signing keys; shared by the link and the services.
pub struct Sealer {
    keys: RwLock<Keys>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The public half only.
        f.debug_struct("Sealer").field("public", &self.public_key()).field("generation", &self.generation()).finish()
    }
}

impl Sealer {
    /// # Panics
    /// When `keys.signing` is not one of `keys.by_generation` (a bug in the loader).
    #[must_use]
    pub fn new(keys: Keys) -> Self {
        assert!(keys.by_generation.contains_key(&keys.signing), "the signing generation must be kept");
        Self { keys: RwLock::new(keys) }
    }

    fn read<T>(&self, f: impl FnOnce(&Keys) -> T) -> T {
        f(&self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Takes the keys as they are now on disk (a rotation started or
    /// finished here or by another replica). Keys without the signing one
    /// are ignored.
    pub fn replace(&self, keys: Keys) {
        if keys.by_generation.contains_key(&keys.signing) {
            *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        }
    }

    /// The signing key's public half nodes check with (32 bytes), handed out at enrollment.
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.read(|k| k.public(k.signing))
    }

    /// The generation that signs.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.read(|k| k.signing)
    }

    /// The newest generation (above `generation` while a rotation is open).
    #[must_use]
    pub fn newest(&self) -> u64 {
        self.read(Keys::newest)
    }

    /// True when the key of `generation` is still kept.
    #[must_use]
    pub fn keeps(&self, generation: u64) -> bool {
        self.read(|k| k.by_generation.contains_key(&generation))
    }

    /// `payload` as the signed message of `kind` for `node_id`, encoded.
    #[must_use]
    pub fn seal(&self, node_id: &str, kind: MessageKind, payload: Vec<u8>) -> Vec<u8> {
        self.read(|k| Self::seal_with(k, k.signing, node_id, kind, payload)).unwrap_or_default()
    }

    /// The `ControllerKeys` announcement for a node that holds `held`,
    /// signed with that generation's key (the one the node can check); `None`
    /// when that key is no longer kept.
    #[must_use]
    pub fn announcement(&self, node_id: &str, held: u64) -> Option<Vec<u8>> {
        self.read(|k| {
            let keys = ControllerKeys {
                signing_generation: k.signing,
                signing_key: k.public(k.signing),
                newest_generation: k.newest(),
                newest_key: k.public(k.newest()),
            };
            Self::seal_with(k, held, node_id, MessageKind::ControllerKeys, keys.encode_to_vec())
        })
    }

    fn seal_with(k: &Keys, generation: u64, node_id: &str, kind: MessageKind, payload: Vec<u8>) -> Option<Vec<u8>> {
        let key = k.by_generation.get(&generation)?;
        let now = u64::try_from(fleet_proto::now_unix_ms()).unwrap_or(0);
        // The current span's context goes along (a job's dispatch, a batch's ack).
        let traceparent = fleet_net::otel::current_traceparent();
        Some(sign_for_node_traced(key, generation, node_id, kind, now, payload, &traceparent).encode_to_vec())
    }
}
