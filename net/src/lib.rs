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
pub mod systemd;

pub use error::NetError;
