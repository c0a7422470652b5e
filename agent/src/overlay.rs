//! The node's end of the WireGuard overlay (docs/security.md): the
//! `[overlay]` settings, bringing the tunnel up to the controller, and the
//! node's steps of a key rotation.

use std::path::PathBuf;

use fleet_proto::v1::KeyRotation;
use serde::Deserialize;
use wireguard_control::Key;

use crate::AgentError;
use crate::enroll::Enrollment;
use crate::identity::{Identity, load_next_wg, promote_next_wg, save_next_wg};

/// `[overlay]`: the node's end of the WireGuard tunnel (docs/security.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlayConfig {
    /// Bring the tunnel up when the enrollment names a controller endpoint. Default true.
    pub enabled: bool,
    /// Interface name, unique on the machine. Default "fleet0".
    pub interface: String,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self { enabled: true, interface: "fleet0".into() }
    }
}

/// Brings up the node's end of the overlay, when the controller runs one:
/// this node's key, its overlay address, the controller as the only peer.
///
/// # Errors
/// A bad endpoint, or the interface cannot be configured (privileges, no WireGuard).
pub fn up(iface: &str, e: &Enrollment, key: &Key) -> Result<(), AgentError> {
    use std::net::ToSocketAddrs;
    let bad = |what: String| AgentError::Invalid(format!("{what} in the enrollment; enroll again with --force"));
    let endpoint = e
        .controller_wg_endpoint
        .to_socket_addrs()
        .map_err(|x| bad(format!("controller WireGuard endpoint {:?}: {x}", e.controller_wg_endpoint)))?
        .next()
        .ok_or_else(|| bad(format!("controller WireGuard endpoint {:?} has no address", e.controller_wg_endpoint)))?;
    let allowed = e
        .controller_allowed_ips
        .iter()
        .map(|c| {
            let (a, p) = c.split_once('/').unwrap_or((c, "32"));
            Ok((
                a.parse().map_err(|_| bad(format!("allowed IP {c:?}")))?,
                p.parse().map_err(|_| bad(format!("allowed IP {c:?}")))?,
            ))
        })
        .collect::<Result<Vec<_>, AgentError>>()?;
    let address = e.overlay_address.parse().map_err(|_| bad(format!("overlay address {:?}", e.overlay_address)))?;
    let prefix = u8::try_from(e.overlay_prefix_len).map_err(|_| bad("overlay prefix".to_owned()))?;
    let peer = fleet_net::overlay::Peer {
        public_key: e.controller_wg_public_key.clone(),
        endpoint: Some(endpoint),
        allowed,
        keepalive_s: Some(u16::try_from(e.persistent_keepalive_s).unwrap_or(fleet_net::overlay::KEEPALIVE_S)),
    };
    Ok(fleet_net::overlay::up(iface, key, None, (address, prefix), &[peer])?)
}

/// An enrolled node's overlay: its enrollment, where its keys are, and
/// whether it runs a tunnel.
#[derive(Debug, Clone)]
pub struct NodeOverlay {
    enrollment: Enrollment,
    data_dir: PathBuf,
    cfg: OverlayConfig,
}

/// The node's WireGuard keys as it reports them: the key in use, and a
/// rotation's generation and next key (0 and empty when none runs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeysReport {
    pub current: String,
    pub generation: u64,
    pub next: String,
}

impl NodeOverlay {
    /// The overlay of a node enrolled as `enrollment`, keys in `data_dir`.
    #[must_use]
    pub fn new(enrollment: Enrollment, data_dir: PathBuf, cfg: OverlayConfig) -> Self {
        Self { enrollment, data_dir, cfg }
    }

    /// Whether this node runs a tunnel: enabled, and the controller has an endpoint.
    #[must_use]
    pub fn tunnel(&self) -> bool {
        self.cfg.enabled && !self.enrollment.controller_wg_endpoint.is_empty()
    }

    /// Brings the tunnel up with `key`, when this node runs one.
    ///
    /// # Errors
    /// As [`up`].
    pub fn bring_up(&self, key: &Key) -> Result<(), AgentError> {
        if !self.tunnel() {
            return Ok(());
        }
        up(&self.cfg.interface, &self.enrollment, key)?;
        tracing::info!(interface = %self.cfg.interface, address = %self.enrollment.overlay_address, "WireGuard overlay up.");
        Ok(())
    }

    /// The keys as the node reports them.
    #[must_use]
    pub fn keys(&self) -> KeysReport {
        let current = Identity::load(&self.data_dir).map(|i| i.wg_public_base64()).unwrap_or_default();
        let (generation, next) =
            load_next_wg(&self.data_dir).map(|(g, k)| (g, k.get_public().to_base64())).unwrap_or_default();
        KeysReport { current, generation, next }
    }

    /// One step of a WireGuard key rotation (docs/security.md): make the
    /// next key and keep it; once the controller routes to it, switch to it.
    /// Every step is idempotent (the message is retained). True when the
    /// keys should be reported now (false after a step that failed).
    pub fn on_key_rotation(&self, k: &KeyRotation) -> bool {
        let dir = &self.data_dir;
        let next = load_next_wg(dir);
        if k.accepted_public_key.is_empty() {
            if k.generation != 0 && next.as_ref().is_none_or(|(g, _)| *g != k.generation) {
                let key = Key::generate_private();
                if let Err(err) = save_next_wg(dir, k.generation, &key) {
                    tracing::error!(error = %err, "Cannot keep the next WireGuard key; rotation not started.");
                    return false;
                }
                tracing::info!(generation = k.generation, "WireGuard key rotation: new key made, reporting it.");
            }
        } else if let Some((_, key)) = next.filter(|(_, key)| key.get_public().to_base64() == k.accepted_public_key) {
            if let Err(err) = promote_next_wg(dir) {
                tracing::error!(error = %err, "Cannot switch to the next WireGuard key.");
                return false;
            }
            if self.tunnel()
                && let Err(err) = up(&self.cfg.interface, &self.enrollment, &key)
            {
                tracing::error!(error = %err, "Cannot put the new WireGuard key on the interface.");
            }
            tracing::info!(generation = k.generation, "WireGuard key rotated; confirming through the new tunnel.");
        }
        true
    }
}
