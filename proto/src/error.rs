//! The wire contract's errors: what is wrong with a broker URL or a key a
//! node presented. (Node ids have `NodeIdError`; signatures `signing::Refused`.)

/// Something that does not follow the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("{0:?} is not an mqtt:// URL (expected mqtt://host:port)")]
    NotMqttUrl(String),
    #[error("{url:?} has a bad port {port:?}")]
    BadPort { url: String, port: String },
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("a public key has 32 bytes, not {0}")]
    KeyLength(usize),
    #[error("not an Ed25519 public key: {0}")]
    BadKey(String),
}
