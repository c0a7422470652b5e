//! What can go wrong in a `fleetctl` command, each saying what to do.

/// A failed `fleetctl` command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A settings file, the CA or the token could not be read (the message names it).
    #[error("{0}")]
    Settings(String),
    /// The controller could not be reached.
    #[error("{0} (is fleet-controller running? set --server)")]
    Connect(String),
    /// The controller answered with an error.
    #[error("{}", status_text(.0))]
    Api(#[from] tonic::Status),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A job ended without an answer (the job is printed above).
    #[error("the job did not succeed")]
    JobFailed,
}

fn status_text(e: &tonic::Status) -> String {
    if e.code() == tonic::Code::Unknown && e.message().contains("transport error") {
        return format!(
            "the connection failed ({}): if the controller uses TLS (its default), use an https:// --server",
            e.message()
        );
    }
    format!("{:?}: {}", e.code(), e.message())
}
