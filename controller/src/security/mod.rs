//! Who may do what, and the walls around the fleet (docs/security.md): the
//! API's tokens and roles (`guard`), TLS (`tls`), the audit log (`audit`),
//! the access-control calls and enrollment (`service`, `enroll`), WireGuard
//! key rotation (`rotate`), Mosquitto's dynamic security (`dynsec`) and the
//! controller's end of the WireGuard overlay (`overlay`). The pure rules
//! (tokens, roles, expiry) are in `crate::auth`.

pub mod audit;
pub mod controller_key;
pub mod dynsec;
pub mod enroll;
pub mod guard;
pub mod mark;
pub mod overlay;
pub mod rotate;
pub mod service;
pub mod setup;
pub mod signing_key;
pub mod tls;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::ControllerError;

/// gRPC TLS (`[security] tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain HTTP/2.
    Off,
    /// A CA and server certificate made in `<data_dir>/tls` at first start.
    Auto,
    /// `tls_cert` and `tls_key`.
    Files,
}

/// `[security]`: API tokens, TLS, the overlay network (docs/security.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Only enrolled nodes are heard, and only through signed messages. Default true.
    pub require_enrollment: bool,
    /// Bearer API tokens required on FleetService. Default true.
    pub api_auth: bool,
    /// Calls per second per API token (bursts of twice that). Default 1000.
    pub api_rate_per_s: u32,
    /// Messages per second per node, after its signature is checked (bursts
    /// of twice that). Default 1000 (an agent replays its spool at 500 batches/s by default).
    pub node_rate_per_s: u32,
    /// Default "auto".
    pub tls: TlsMode,
    /// PEM files for `tls = "files"`. Default "".
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Names of the "auto" certificate. Default localhost, 127.0.0.1, ::1.
    pub tls_names: Vec<String>,
    /// The broker URL given to enrolling nodes; empty: the controller's own
    /// (`mqtt.url`, or the embedded broker's address). Default "".
    pub node_broker_url: String,
    /// Overlay network of the nodes. Default 10.77.0.0/16.
    pub overlay_cidr: String,
    /// Default lifetime of bootstrap tokens. Default 1 h.
    #[serde(with = "humantime_serde")]
    pub bootstrap_ttl: Duration,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            require_enrollment: true,
            api_auth: true,
            api_rate_per_s: 1000,
            node_rate_per_s: 1000,
            tls: TlsMode::Auto,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            node_broker_url: String::new(),
            overlay_cidr: "10.77.0.0/16".into(),
            bootstrap_ttl: Duration::from_secs(3600),
        }
    }
}

impl SecurityConfig {
    /// The overlay network as (base address, prefix length).
    ///
    /// # Errors
    /// When `overlay_cidr` is not an IPv4 network such as 10.77.0.0/16 with a prefix of 8 to 30.
    pub fn overlay(&self) -> Result<(std::net::Ipv4Addr, u8), ControllerError> {
        let bad = || {
            format!(
                "key `security.overlay_cidr`: {:?} is not an IPv4 network such as \"10.77.0.0/16\" (prefix 8 to 30)",
                self.overlay_cidr
            )
        };
        let (a, p) = self.overlay_cidr.split_once('/').ok_or_else(|| ControllerError::Invalid(bad()))?;
        let addr: std::net::Ipv4Addr = a.parse().map_err(|_| ControllerError::Invalid(bad()))?;
        let prefix: u8 = p.parse().map_err(|_| ControllerError::Invalid(bad()))?;
        if !(8..=30).contains(&prefix) {
            return Err(ControllerError::Invalid(bad()));
        }
        let mask = u32::MAX << (32 - prefix);
        Ok((std::net::Ipv4Addr::from(u32::from(addr) & mask), prefix))
    }

    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), ControllerError> {
        let invalid = |m: &str| Err(ControllerError::Invalid(m.to_owned()));
        self.overlay()?;
        if !self.node_broker_url.is_empty() {
            fleet_proto::parse_mqtt_url(&self.node_broker_url)
                .map_err(|e| ControllerError::Invalid(format!("key `security.node_broker_url`: {e}")))?;
        }
        if self.tls == TlsMode::Files && (self.tls_cert.as_os_str().is_empty() || self.tls_key.as_os_str().is_empty()) {
            return invalid("keys `security.tls_cert` and `security.tls_key`: give both PEM files for tls = \"files\"");
        }
        if self.tls == TlsMode::Auto && self.tls_names.is_empty() {
            return invalid("key `security.tls_names`: give at least one name, e.g. [\"localhost\"]");
        }
        if self.api_rate_per_s == 0 || self.node_rate_per_s == 0 || self.bootstrap_ttl.is_zero() {
            return invalid(
                "keys `security.api_rate_per_s`, `security.node_rate_per_s` and `security.bootstrap_ttl` must be \
                 more than 0",
            );
        }
        Ok(())
    }
}
