//! The agent library's error type.

use crate::spool::SpoolError;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration error: {0}")]
    Config(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}
