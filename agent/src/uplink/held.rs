//! The controller's keys a node holds (docs/security.md, "Rotating the
//! controller's key"): the one that signs what the controller sends, and
//! during a rotation the newest, handed over in a `ControllerKeys` message
//! signed with a key the node already holds. Only ever forward: an older
//! announcement changes nothing, and the older key goes at the first message
//! signed with the newer.

use std::path::Path;

use ed25519_dalek::VerifyingKey;
use fleet_proto::signing::Refused;
use fleet_proto::v1::ControllerKeys;

/// The generations held and their keys.
#[derive(Debug, Clone)]
pub struct Held {
    pub current: (u64, VerifyingKey),
    pub next: Option<(u64, VerifyingKey)>,
}

impl Held {
    pub(super) fn key(&self, generation: u64) -> Option<&VerifyingKey> {
        std::iter::once(&self.current).chain(&self.next).find(|(g, _)| *g == generation).map(|(_, k)| k)
    }

    /// The newest generation held (reported in the node's status).
    #[must_use]
    pub fn newest(&self) -> u64 {
        self.next.map_or(self.current.0, |(g, _)| g)
    }

    /// A message signed with `generation` passed: when that is the next key,
    /// it is the key from now on. True when anything changed.
    pub(super) fn promote(&mut self, generation: u64) -> bool {
        match self.next {
            Some((g, key)) if g == generation => {
                self.current = (g, key);
                self.next = None;
                true
            }
            _ => false,
        }
    }

    /// Takes the controller's keys from a checked announcement; true when
    /// anything changed.
    ///
    /// # Errors
    /// `Malformed` for keys that are not keys or out of order, `Replay` for
    /// an announcement older than what is held.
    pub(super) fn take(&mut self, k: &ControllerKeys) -> Result<bool, Refused> {
        let key = |bytes: &[u8]| fleet_proto::signing::verifying_key(bytes).map_err(|_| Refused::Malformed);
        let (signing, newest) =
            ((k.signing_generation, key(&k.signing_key)?), (k.newest_generation, key(&k.newest_key)?));
        if signing.0 == 0 || newest.0 < signing.0 {
            return Err(Refused::Malformed);
        }
        if newest.0 < self.newest() {
            return Err(Refused::Replay);
        }
        // A retained copy from before this node saw the newer key used keeps it.
        let current = if signing.0 >= self.current.0 { signing } else { self.current };
        let next = (newest.0 > current.0).then_some(newest);
        let changed = current != self.current || next != self.next;
        self.current = current;
        self.next = next;
        Ok(changed)
    }

    /// Keeps the keys with the node's enrollment.
    ///
    /// # Errors
    /// The enrollment file cannot be read or written.
    pub fn keep(&self, data_dir: &Path) -> Result<(), crate::enroll::EnrollError> {
        let next = self.next.map(|(g, k)| (g, k.to_bytes()));
        crate::enroll::keep_controller_keys(data_dir, (self.current.0, self.current.1.to_bytes()), next)
    }
}
