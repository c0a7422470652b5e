//! What can go wrong in a `fleetctl` command, each saying what to do.

/// A failed `fleetctl` command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A settings file, the CA or the token could not be read (the message names it).
    #[error("{0}")]
    Settings(String),
    /// The controller could not be reached.
    #[error("{}", connect_text(.0))]
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

/// A connection failure; a certificate the CA does not vouch for already says
/// what to do, anything else may be a controller that is not running.
fn connect_text(e: &str) -> String {
    if e.contains("certificate") { e.to_owned() } else { format!("{e} (is fleet-controller running? set --server)") }
}

fn status_text(e: &tonic::Status) -> String {
    // A plain-text client against the TLS server fails in the transport or
    // in HTTP/2 framing, depending on timing: both get the hint.
    let transport = e.code() == tonic::Code::Unknown && e.message().contains("transport error");
    let framing = e.code() == tonic::Code::Internal && e.message().contains("h2 protocol error");
    if transport || framing {
        return format!(
            "the connection failed ({}): if the controller uses TLS (its default), use an https:// --server",
            e.message()
        );
    }
    format!("{:?}: {}", e.code(), e.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_against_tls_says_to_use_https() {
        for e in [tonic::Status::unknown("transport error"), tonic::Status::internal("h2 protocol error: http2 error")]
        {
            assert!(CtlError::Api(e).to_string().contains("use an https:// --server"));
        }
        assert_eq!(CtlError::Api(tonic::Status::not_found("no node x")).to_string(), "NotFound: no node x");
    }
}
