//! The controller's end of the WireGuard overlay (docs/security.md,
//! "WireGuard"): one interface holding a peer per enrolled, unrevoked node
//! (its /32), added at enrollment and removed at revocation, and kept in
//! step with the store (other replicas' changes) every couple of seconds.
//! Peers are changed one by one: the others' sessions are never reset.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use fleet_net::overlay::{self, Peer};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use wireguard_control::Key;

use crate::ControllerError;
use crate::store::Store;

/// How often the peers are compared with the store.
const SYNC_EVERY: Duration = Duration::from_secs(2);
/// ...and how often while a key rotation waits for the node's first handshake.
const ROTATION_POLL: Duration = Duration::from_millis(200);

/// `[wireguard]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WireGuardConfig {
    /// Run the overlay. Default false.
    pub enabled: bool,
    /// Interface name. Default "fleet-wg0".
    pub interface: String,
    /// UDP port. Default 51820.
    pub listen_port: u16,
    /// host:port the nodes send to (this machine's public address). Default "".
    pub endpoint: String,
}

impl Default for WireGuardConfig {
    fn default() -> Self {
        Self { enabled: false, interface: "fleet-wg0".into(), listen_port: 51820, endpoint: String::new() }
    }
}

impl WireGuardConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if self.enabled {
            let ok = self.endpoint.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ControllerError::Invalid(
                    "key `wireguard.endpoint`: give the host:port nodes reach this controller at, e.g. \
                            \"controller.example.net:51820\""
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// The controller's key: `<data_dir>/wg.key` (made at first start, mode 0600).
///
/// # Errors
/// An unreadable or damaged key file.
pub fn load_or_make_key(data_dir: &Path) -> Result<Key, ControllerError> {
    let path = data_dir.join("wg.key");
    match std::fs::read_to_string(&path) {
        Ok(t) => Key::from_base64(t.trim()).map_err(|_| {
            ControllerError::Config(format!(
                "{} is not a WireGuard key; move it away to make a new one",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = Key::generate_private();
            fleet_durable::write_private(&path, format!("{}\n", k.to_base64()).as_bytes())
                .map_err(|e| ControllerError::Io(format!("cannot write {}: {e}", path.display())))?;
            Ok(k)
        }
        Err(e) => Err(ControllerError::Io(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The peers wanted now. A node in the middle of a key rotation has two:
/// the new key's, without addresses until it has made a handshake (the node
/// switched), then with the node's address; the old key's the other way round.
fn wanted(
    identities: &[crate::store::security::NodeIdentity],
    switched: &dyn Fn(&str) -> bool,
) -> HashMap<String, Peer> {
    let mut out = HashMap::new();
    for i in identities.iter().filter(|i| i.revoked_unix_ms.is_none()) {
        let mut put = |key: &str, routed: bool| {
            let allowed = if routed { vec![(i.overlay_address, 32)] } else { Vec::new() };
            out.insert(key.to_owned(), Peer { public_key: key.to_owned(), endpoint: None, allowed, keepalive_s: None });
        };
        match &i.wg_next_key {
            Some(next) => {
                let moved = switched(next);
                put(next, moved);
                put(&i.wg_public_key, !moved);
            }
            None => put(&i.wg_public_key, true),
        }
    }
    out
}

/// Brings the interface up with every live node as a peer.
///
/// # Errors
/// The interface cannot be configured (privileges, no WireGuard).
pub async fn start(
    cfg: &WireGuardConfig,
    key: &Key,
    (base, prefix): (Ipv4Addr, u8),
    store: &Store,
) -> Result<(), ControllerError> {
    let peers: Vec<Peer> = wanted(&store.identities().await?, &|_| false).into_values().collect();
    let address = Ipv4Addr::from(u32::from(base) + 1);
    let (iface, key, port) = (cfg.interface.clone(), key.clone(), cfg.listen_port);
    tokio::task::spawn_blocking(move || overlay::up(&iface, &key, Some(port), (address, prefix), &peers))
        .await
        .map_err(|e| ControllerError::Io(e.to_string()))?
        .map_err(|e| ControllerError::Config(format!("[wireguard]: {e}")))?;
    tracing::info!(interface = %cfg.interface, %address, port, "WireGuard overlay up.");
    Ok(())
}

/// Keeps the peers equal to the live identities: at once on `changes`
/// (enrollments, revocations, rotations here), every [`SYNC_EVERY`], and
/// every [`ROTATION_POLL`] while a rotation waits for the node's handshake.
pub async fn keep_in_step(
    iface: String,
    store: Store,
    mut changes: tokio::sync::broadcast::Receiver<String>,
    shutdown: CancellationToken,
) {
    let mut every = SYNC_EVERY;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
            _ = changes.recv() => {}
        }
        let all = match store.identities().await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read node identities; WireGuard peers unchanged.");
                continue;
            }
        };
        let rotating = all.iter().any(|i| i.revoked_unix_ms.is_none() && i.wg_next_key.is_some());
        every = if rotating { ROTATION_POLL } else { SYNC_EVERY };
        let iface2 = iface.clone();
        let r = tokio::task::spawn_blocking(move || sync(&iface2, &all)).await;
        match r {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((changed, removed))) => tracing::info!(changed, removed, "WireGuard peers updated."),
            Ok(Err(e)) => tracing::error!(error = %e, "Cannot update the WireGuard peers."),
            Err(e) => tracing::error!(error = %e, "WireGuard peer update failed."),
        }
    }
}

/// One comparison of the interface with the identities; (changed, removed).
fn sync(iface: &str, all: &[crate::store::security::NodeIdentity]) -> Result<(usize, usize), fleet_net::NetError> {
    let have: HashMap<String, Vec<Ipv4Addr>> = overlay::peer_routes(iface)?.into_iter().collect();
    let want = wanted(all, &|k| overlay::handshaken(iface, k).unwrap_or(false));
    let mut change: Vec<Peer> = want
        .values()
        .filter(|p| have.get(&p.public_key).is_none_or(|ips| *ips != p.allowed.iter().map(|a| a.0).collect::<Vec<_>>()))
        .cloned()
        .collect();
    // Addresses leave a peer before they go to another.
    change.sort_by_key(|p| !p.allowed.is_empty());
    let remove: Vec<String> = have.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
    overlay::change_peers(iface, &change, &remove)?;
    Ok((change.len(), remove.len()))
}
