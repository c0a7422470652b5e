//! The WireGuard overlay both ends configure (docs/security.md, "WireGuard"):
//! one interface per process, set up with `wireguard-control` on the kernel
//! backend where the kernel has WireGuard (Raspberry Pi OS) and the userspace
//! backend driving `wireguard-go` where it does not. Addresses and links are
//! set with iproute2's `ip`, as wg-quick does. Everything here needs root (or
//! CAP_NET_ADMIN).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;

use wireguard_control::{Backend, Device, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use crate::NetError;

/// Keepalive nodes send so NAT mappings stay open (seconds).
pub const KEEPALIVE_S: u16 = 25;

/// Which implementation runs the interface.
#[must_use]
pub fn backend() -> Backend {
    if std::path::Path::new("/sys/module/wireguard").exists() { Backend::Kernel } else { Backend::Userspace }
}

fn name(iface: &str) -> Result<InterfaceName, NetError> {
    iface.parse().map_err(|_| NetError::InterfaceName(iface.to_owned()))
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip").args(args).output().map_err(NetError::NoIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip { args: args.join(" "), stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

fn hint(e: std::io::Error, iface: &str) -> NetError {
    let why = if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (needs root or CAP_NET_ADMIN)".to_owned()
    } else if backend() == Backend::Userspace {
        " (userspace backend: install wireguard-go and set WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 on a \
         kernel without WireGuard)"
            .to_owned()
    } else {
        String::new()
    };
    NetError::WireGuard { iface: iface.to_owned(), source: e, hint: why }
}

/// One peer as the overlay wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Public key, base64.
    pub public_key: String,
    pub endpoint: Option<SocketAddr>,
    /// The addresses routed to it (a node's /32; for a node, the controller's).
    pub allowed: Vec<(Ipv4Addr, u8)>,
    pub keepalive_s: Option<u16>,
}

fn peer_config(p: &Peer) -> Result<PeerConfigBuilder, NetError> {
    let key = Key::from_base64(&p.public_key).map_err(|_| NetError::PeerKey(p.public_key.clone()))?;
    let mut b = PeerConfigBuilder::new(&key).replace_allowed_ips();
    for (a, len) in &p.allowed {
        b = b.add_allowed_ip(IpAddr::V4(*a), *len);
    }
    if let Some(e) = p.endpoint {
        b = b.set_endpoint(e);
    }
    if let Some(k) = p.keepalive_s {
        b = b.set_persistent_keepalive_interval(k);
    }
    Ok(b)
}

/// Creates (or updates) `iface` with `private_key`, `listen_port`, address
/// `address/prefix` and exactly `peers`, and brings it up.
///
/// # Errors
/// No privileges, no WireGuard implementation, or `ip` failing; each says what to install or set.
pub fn up(
    iface: &str,
    private_key: &Key,
    listen_port: Option<u16>,
    (address, prefix): (Ipv4Addr, u8),
    peers: &[Peer],
) -> Result<(), NetError> {
    let n = name(iface)?;
    let mut update = DeviceUpdate::new().set_private_key(private_key.clone()).replace_peers();
    if let Some(p) = listen_port {
        update = update.set_listen_port(p);
    }
    for p in peers {
        update = update.add_peer(peer_config(p)?);
    }
    update.apply(&n, backend()).map_err(|e| hint(e, iface))?;
    ip(&["address", "replace", &format!("{address}/{prefix}"), "dev", iface])?;
    ip(&["link", "set", "dev", iface, "up"])?;
    Ok(())
}

/// The public keys of the peers `iface` has now.
///
/// # Errors
/// When the interface cannot be read.
pub fn peer_keys(iface: &str) -> Result<Vec<String>, NetError> {
    let d = Device::get(&name(iface)?, backend()).map_err(|e| hint(e, iface))?;
    Ok(d.peers.iter().map(|p| p.config.public_key.to_base64()).collect())
}

/// Whether the peer with `public_key` has completed a handshake.
///
/// # Errors
/// When the interface cannot be read.
pub fn handshaken(iface: &str, public_key: &str) -> Result<bool, NetError> {
    let d = Device::get(&name(iface)?, backend()).map_err(|e| hint(e, iface))?;
    Ok(d.peers.iter().any(|p| p.config.public_key.to_base64() == public_key && p.stats.last_handshake_time.is_some()))
}

/// The addresses routed to each peer now, by public key.
///
/// # Errors
/// When the interface cannot be read.
pub fn peer_routes(iface: &str) -> Result<Vec<(String, Vec<Ipv4Addr>)>, NetError> {
    let d = Device::get(&name(iface)?, backend()).map_err(|e| hint(e, iface))?;
    Ok(d.peers
        .iter()
        .map(|p| {
            let ips = p
                .config
                .allowed_ips
                .iter()
                .filter_map(|a| match a.address {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect();
            (p.config.public_key.to_base64(), ips)
        })
        .collect())
}

/// Adds or updates `add` and removes the peers whose keys are in `remove`,
/// leaving the others (and their sessions) alone.
///
/// # Errors
/// As [`up`].
pub fn change_peers(iface: &str, add: &[Peer], remove: &[String]) -> Result<(), NetError> {
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let mut update = DeviceUpdate::new();
    for p in add {
        update = update.add_peer(peer_config(p)?);
    }
    for k in remove {
        let key = Key::from_base64(k).map_err(|_| NetError::PeerKey(k.clone()))?;
        update = update.remove_peer_by_key(&key);
    }
    update.apply(&name(iface)?, backend()).map_err(|e| hint(e, iface))
}

/// Removes `iface` (the userspace implementation exits when its socket goes).
pub fn down(iface: &str) {
    if let Ok(n) = name(iface) {
        if let Ok(d) = Device::get(&n, backend()) {
            let _ = d.delete();
        }
        let _ = ip(&["link", "del", "dev", iface]);
    }
}
