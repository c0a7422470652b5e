//! What can go wrong opening a channel to the controller or configuring a
//! WireGuard interface; each message says what to change or install.

/// A failed network step.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{url:?} is not a URL such as https://controller:50051: {why}")]
    BadUrl { url: String, why: String },
    #[error("TLS settings for {url}: {why}; check the CA file (PEM)")]
    Tls { url: String, why: String },
    #[error("a CA was given but {0} is plain http://; use https://")]
    CaForHttp(String),
    #[error("cannot reach the controller at {url}: {why}{hint}")]
    Unreachable { url: String, why: String, hint: &'static str },
    #[error("the API token has characters a token never has; copy it again")]
    BadToken,
    #[error("{0:?} is not a usable interface name (1-15 characters)")]
    InterfaceName(String),
    #[error("cannot run `ip` (install iproute2): {0}")]
    NoIp(std::io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("configuring WireGuard interface {iface}: {source}{hint}")]
    WireGuard { iface: String, source: std::io::Error, hint: String },
    #[error("peer key {0:?} is not base64")]
    PeerKey(String),
    #[error("[otel] {0}")]
    Otel(String),
}
