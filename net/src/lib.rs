//! The network I/O that both the agent and the controller (with `fleetctl`)
//! need, kept out of the wire contract (`fleet-proto` stays types, topics and
//! signing): `client` opens the TLS gRPC channel to the controller's API, and
//! `overlay` configures the WireGuard interface of either end.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod overlay;

pub use error::NetError;
