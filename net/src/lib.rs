//! The network I/O that both the agent and the controller (with `fleetctl`)
//! need, kept out of the wire contract (`fleet-proto` stays types, topics and
//! signing): `client` opens the TLS gRPC channel to the controller's API,
//! `overlay` configures the WireGuard interface of either end, and `otel`
//! exports traces and carries their context across the wire, `systemd` speaks
//! the service protocol of `Type=notify` units.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod otel;
pub mod overlay;
pub mod signals;
pub mod systemd;

pub use error::NetError;

/// An optional listen address from a config key: empty is none; anything
/// else must be a socket address, or the message names the key and an
/// example to give instead.
///
/// # Errors
/// A value that is no socket address.
pub fn optional_listen(key: &str, value: &str, example: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|e| format!("key `{key}` = {value:?}: {e}; give an address such as {example}, or leave it empty"))
}
