//! The controller library's error type, and the one place its variants
//! become gRPC status codes.

use std::net::SocketAddr;

/// Errors of the controller library; mapped to gRPC codes in one place.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("configuration error: {0}")]
    Config(String),
    /// A value refused; the sentence names the key or field and why.
    #[error("{0}")]
    Invalid(String),
    #[error("the system's random source failed: {0}; no secret can be made safely")]
    Random(getrandom::Error),
    #[error(transparent)]
    Net(#[from] fleet_net::NetError),
    #[error("cannot listen on {addr} for the {what}: {reason}; choose another address with {flag}")]
    PortInUse { what: &'static str, addr: SocketAddr, flag: &'static str, reason: String },
    #[error("node {0} is not known to this controller")]
    UnknownNode(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Io(String),
    #[error("the controller is stopping")]
    Stopped,
    #[error("the MQTT client's queue is full: the {0} was not sent; it is sent again later")]
    LinkBusy(&'static str),
    /// An API token over one of its quotas; the sentence names the quota, its
    /// limit and when it resets.
    #[error("{0}")]
    OverQuota(String),
    #[error("no API token named {0:?} (fleetctl usage lists every token)")]
    UnknownToken(String),
    /// Something asked for is not there; the sentence names it and where to look.
    #[error("{0}")]
    NotFound(String),
    /// Something to create is there already and never changes.
    #[error("{0}")]
    AlreadyExists(String),
    /// An offset past the end of what is there.
    #[error("{0}")]
    OutOfRange(String),
}

impl From<ControllerError> for tonic::Status {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::UnknownNode(_) | ControllerError::UnknownToken(_) | ControllerError::NotFound(_) => {
                tonic::Status::not_found(e.to_string())
            }
            ControllerError::AlreadyExists(_) => tonic::Status::already_exists(e.to_string()),
            ControllerError::OutOfRange(_) => tonic::Status::out_of_range(e.to_string()),
            ControllerError::OverQuota(_) => tonic::Status::resource_exhausted(e.to_string()),
            ControllerError::Config(_) | ControllerError::Invalid(_) => tonic::Status::invalid_argument(e.to_string()),
            ControllerError::Db(_) | ControllerError::Migrate(_) => {
                tracing::error!(error = %e, "Database error answering a gRPC call.");
                tonic::Status::unavailable("the telemetry store is unavailable; retry later")
            }
            ControllerError::LinkBusy(_) | ControllerError::Stopped => tonic::Status::unavailable(e.to_string()),
            ControllerError::PortInUse { .. }
            | ControllerError::Io(_)
            | ControllerError::Random(_)
            | ControllerError::Net(_) => tonic::Status::internal(e.to_string()),
        }
    }
}
