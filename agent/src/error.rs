//! The agent library's error type.

use fleet_net::NetError;

use crate::identity::IdentityError;
use crate::spool::SpoolError;

/// Errors of the agent library; those out of `run` stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration error: {0}")]
    Config(String),
    /// A value refused; the sentence names the key or field and why.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("WireGuard overlay: {0}")]
    Overlay(#[from] NetError),
    #[error("cannot store the boot counter: {0}; data_dir must be writable")]
    BootCounter(IdentityError),
}
