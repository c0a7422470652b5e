//! The controller's TOML configuration: plain data, documented defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ControllerError;

/// The documented default configuration, printed by `fleet-controller generate-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// See `default-config.toml` for every key; `Default` equals that file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// SQLite directory. Default "./fleet-data".
    pub data_dir: PathBuf,
    /// PostgreSQL URL; empty for SQLite. Default "".
    pub database_url: String,
    pub mqtt: MqttConfig,
    pub grpc: ListenConfig,
    pub http: ListenConfig,
    pub ingest: IngestConfig,
    pub kafka: crate::ingest::kafka::KafkaConfig,
    pub storage: crate::store::StorageConfig,
    pub jobs: JobsConfig,
    pub router: RouterSection,
    pub cloud: CloudConfig,
    pub security: SecurityConfig,
    pub wireguard: crate::overlay::WireGuardConfig,
}

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
    pub fn overlay(&self) -> Result<(std::net::Ipv4Addr, u8), String> {
        let bad = || {
            format!(
                "key `security.overlay_cidr`: {:?} is not an IPv4 network such as \"10.77.0.0/16\" (prefix 8 to 30)",
                self.overlay_cidr
            )
        };
        let (a, p) = self.overlay_cidr.split_once('/').ok_or_else(bad)?;
        let addr: std::net::Ipv4Addr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        Ok((std::net::Ipv4Addr::from(u32::from(addr) & mask), prefix))
    }
}

/// `[jobs]`: inference jobs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Time a job gets when the caller sets none. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// An edge node that has not answered within this long loses the job to
    /// the next best site (as when it goes offline). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Jobs in flight at most; more are refused with RESOURCE_EXHAUSTED. Default 10000.
    pub max_in_flight: usize,
    /// Finished jobs kept in memory (with embeddings) for GetJob. Default 10000.
    pub recent: usize,
    /// Finished jobs waiting to be recorded in the store; more are not
    /// recorded and are counted. Default 4096.
    pub record_queue: usize,
    /// How long job records are kept. Default 30 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(5),
            max_in_flight: 10_000,
            recent: 10_000,
            record_queue: 4096,
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

/// `[router]`: where jobs run (docs/routing.md).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterSection {
    /// The cloud tier competes at this score (0-1000): an edge node scoring
    /// lower loses the job to the cloud. Default 250.
    pub cloud_score: i32,
    /// A node this close to its thermal limit gets no job. Default 2.0 °C.
    pub hot_margin_c: f64,
    /// A node whose measured round trip is over this gets no job. Default 1000 ms.
    pub max_rtt_ms: f64,
}

impl Default for RouterSection {
    fn default() -> Self {
        let r = crate::router::RouterConfig::default();
        Self { cloud_score: r.cloud_score, hot_margin_c: r.score.hot_margin_c, max_rtt_ms: r.score.max_rtt_ms }
    }
}

impl RouterSection {
    /// The router's settings.
    #[must_use]
    pub fn router(&self) -> crate::router::RouterConfig {
        crate::router::RouterConfig {
            cloud_score: self.cloud_score,
            score: crate::router::ScoreConfig { hot_margin_c: self.hot_margin_c, max_rtt_ms: self.max_rtt_ms },
        }
    }
}

/// `[cloud]`: the cloud inference tier inside the controller.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    /// Run jobs here when no edge node should. Default true.
    pub enabled: bool,
    /// Model directory (a folder per model with its model.toml); empty: only
    /// the built-in classifier. Default "".
    pub model_dir: PathBuf,
    /// Inference threads. Default 2.
    pub workers: usize,
    /// Jobs waiting for a thread at most; beyond it the cloud tier counts as
    /// busy for the router. Default 64.
    pub queue: usize,
}

impl Default for CloudConfig {
    fn default() -> Self {
        Self { enabled: true, model_dir: PathBuf::new(), workers: 2, queue: 64 }
    }
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// External broker URL; empty starts the embedded one. Default "".
    pub url: String,
    /// Embedded broker address. Default 127.0.0.1:1883.
    pub embedded_listen: SocketAddr,
    /// Default "".
    pub username: String,
    /// Default "".
    pub password: String,
    /// Larger payloads are dropped. Default 1048576.
    pub max_payload_bytes: usize,
    /// Several replicas: telemetry is read through the shared subscription
    /// `$share/{shared_group}/...`, so each batch goes to one replica. Status
    /// and reported state stay unshared (every replica sees every node).
    /// Empty: not shared. Default "".
    pub shared_group: String,
    /// The external broker is Mosquitto with the dynamic-security plugin and
    /// `username` is its admin: the controller creates a client per enrolled
    /// node, allowed only its own topics, and deletes it on revoke. Default false.
    pub dynsec: bool,
}

/// `[grpc]` / `[http]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Socket address to listen on.
    pub listen: SocketAddr,
}

/// `[ingest]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Writer queue capacity in batches. Default 4096.
    pub queue_batches: usize,
    /// Writer queue capacity in rows (samples), whatever the batch sizes. Default 200000.
    pub queue_rows: usize,
    /// Rows per database write at most. Default 20000.
    pub max_rows_per_write: usize,
    /// Database writes in flight at once (PostgreSQL; SQLite has one). Default 2.
    pub writers: usize,
    /// Longest wait to fill a write. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub max_write_delay: Duration,
    /// Samples with a time further than this ahead of the controller's clock
    /// are refused (and counted). Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./fleet-data"),
            database_url: String::new(),
            mqtt: MqttConfig::default(),
            grpc: ListenConfig { listen: SocketAddr::from(([127, 0, 0, 1], 50051)) },
            http: ListenConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)) },
            ingest: IngestConfig::default(),
            kafka: Default::default(),
            storage: Default::default(),
            jobs: JobsConfig::default(),
            router: RouterSection::default(),
            cloud: CloudConfig::default(),
            security: SecurityConfig::default(),
            wireguard: Default::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            embedded_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            username: String::new(),
            password: String::new(),
            max_payload_bytes: 1 << 20,
            shared_group: String::new(),
            dynsec: false,
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            queue_batches: 4096,
            max_rows_per_write: 20_000,
            queue_rows: 200_000,
            writers: 2,
            max_write_delay: Duration::from_millis(100),
            max_future_skew: Duration::from_secs(300),
        }
    }
}

impl ControllerConfig {
    /// Parses and checks a config document; `origin` names it in errors.
    ///
    /// # Errors
    /// `ControllerError::Config` naming the origin, the key and the reason.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ControllerError> {
        let cfg: ControllerConfig = toml::from_str(text)
            .map_err(|e| ControllerError::Config(format!("{origin}: {}", e.to_string().trim_end())))?;
        cfg.validate().map_err(|e| ControllerError::Config(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid config.
    pub fn load(path: &Path) -> Result<Self, ControllerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ControllerError::Config(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Checks values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), String> {
        let pg = ["postgres://", "postgresql://"];
        if !self.database_url.is_empty() && !pg.iter().any(|p| self.database_url.starts_with(p)) {
            return Err(
                "key `database_url`: expected postgres://user:password@host:port/db (or empty for SQLite)".into()
            );
        }
        if !self.mqtt.url.is_empty() {
            fleet_proto::parse_mqtt_url(&self.mqtt.url).map_err(|e| format!("key `mqtt.url`: {e}"))?;
        }
        if self.mqtt.max_payload_bytes < 1024 {
            return Err("key `mqtt.max_payload_bytes`: use at least 1024".into());
        }
        let g = &self.mqtt.shared_group;
        if g.contains(['/', '+', '#']) {
            return Err("key `mqtt.shared_group`: a plain name without '/', '+' or '#', e.g. \"fleet-ingest\"".into());
        }
        if !g.is_empty() && self.mqtt.url.is_empty() {
            return Err("key `mqtt.shared_group`: replicas share an external broker; set `mqtt.url` too".into());
        }
        if self.ingest.queue_batches == 0
            || self.ingest.queue_rows == 0
            || self.ingest.max_rows_per_write == 0
            || self.ingest.writers == 0
        {
            return Err(
                "keys `ingest.queue_batches`, `ingest.queue_rows`, `ingest.max_rows_per_write` and `ingest.writers` \
                 must be at least 1"
                    .into(),
            );
        }
        if self.cloud.workers == 0 || self.jobs.max_in_flight == 0 {
            return Err("keys `cloud.workers` and `jobs.max_in_flight` must be at least 1".into());
        }
        if self.jobs.attempt_timeout.is_zero() || self.jobs.default_timeout.is_zero() {
            return Err("keys `jobs.attempt_timeout` and `jobs.default_timeout` must be more than 0".into());
        }
        self.security.overlay()?;
        if self.wireguard.enabled {
            let ok = self
                .wireguard
                .endpoint
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err("key `wireguard.endpoint`: give the host:port nodes reach this controller at, e.g. \
                            \"controller.example.net:51820\""
                    .into());
            }
        }
        if self.mqtt.dynsec && (self.mqtt.url.is_empty() || self.mqtt.username.is_empty()) {
            return Err("key `mqtt.dynsec`: needs an external Mosquitto (`mqtt.url`) and its dynamic-security admin \
                        (`mqtt.username`, `mqtt.password`)"
                .into());
        }
        if !self.security.node_broker_url.is_empty() {
            fleet_proto::parse_mqtt_url(&self.security.node_broker_url)
                .map_err(|e| format!("key `security.node_broker_url`: {e}"))?;
        }
        if self.security.tls == TlsMode::Files
            && (self.security.tls_cert.as_os_str().is_empty() || self.security.tls_key.as_os_str().is_empty())
        {
            return Err(
                "keys `security.tls_cert` and `security.tls_key`: give both PEM files for tls = \"files\"".into()
            );
        }
        if self.security.tls == TlsMode::Auto && self.security.tls_names.is_empty() {
            return Err("key `security.tls_names`: give at least one name, e.g. [\"localhost\"]".into());
        }
        if self.security.api_rate_per_s == 0
            || self.security.node_rate_per_s == 0
            || self.security.bootstrap_ttl.is_zero()
        {
            return Err(
                "keys `security.api_rate_per_s`, `security.node_rate_per_s` and `security.bootstrap_ttl` must \
                        be more than 0"
                    .into(),
            );
        }
        if !(0..=1000).contains(&self.router.cloud_score) {
            return Err("key `router.cloud_score`: a score from 0 (cloud last) to 1000 (cloud first)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_is_the_default() {
        assert_eq!(ControllerConfig::from_toml(DEFAULT_CONFIG_TOML, "d").unwrap(), ControllerConfig::default());
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let m = ControllerConfig::from_toml("[grpc]\nlisten = \"nowhere\"\n", "c.toml").unwrap_err().to_string();
        assert!(m.contains("c.toml") && m.contains("listen"), "{m}");
        let m = ControllerConfig::from_toml("[ingest]\nqueue = 3\n", "c.toml").unwrap_err().to_string();
        assert!(m.contains("queue"), "{m}");
        let m = ControllerConfig::from_toml("database_url = \"mysql://x\"\n", "c.toml").unwrap_err().to_string();
        assert!(m.contains("database_url"), "{m}");
        let m = ControllerConfig::from_toml("[mqtt]\nurl = \"mqtts:/x\"\n", "c.toml").unwrap_err().to_string();
        assert!(m.contains("mqtt.url"), "{m}");
    }
}
