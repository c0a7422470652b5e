//! The agent's TOML configuration: plain data, documented defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::AgentError;

/// The documented default configuration, printed by `fleet-agent generate-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// Everything the agent reads from its config file. See `default-config.toml`
/// for each key's meaning; `Default` equals that file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Node id; empty means the hostname. Default "".
    pub node_id: String,
    /// Directory for agent state. Default "/var/lib/fleet-agent".
    pub data_dir: PathBuf,
    /// Labels reported in the node status. Default none.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Which uplink publishes: "mqtt" (default) or "kafka".
    pub uplink: UplinkKind,
    /// Broker connection.
    pub mqtt: MqttConfig,
    /// Kafka producer (uplink = "kafka").
    pub kafka: crate::uplink::kafka::KafkaConfig,
    /// Sampling, batching and acknowledgement.
    pub telemetry: TelemetryConfig,
    /// Which board to read.
    pub hardware: HardwareConfig,
    /// The disk spool.
    pub spool: crate::spool::SpoolConfig,
    /// The power policy in force until the controller sends one.
    pub power: crate::power::PowerPolicy,
    /// Inference jobs.
    pub inference: InferenceConfig,
    /// The WireGuard overlay.
    pub overlay: OverlayConfig,
}

/// `[overlay]`: the node's end of the WireGuard tunnel (docs/security.md).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlayConfig {
    /// Bring the tunnel up when the enrollment names a controller endpoint. Default true.
    pub enabled: bool,
    /// Interface name, unique on the machine. Default "fleet0".
    pub interface: String,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        Self { enabled: true, interface: "fleet0".into() }
    }
}

/// `[inference]`: the jobs the controller sends this node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Take jobs at all. Default true.
    pub enabled: bool,
    /// Model directory (a folder per model with its model.toml); empty: only
    /// the built-in classifier. Default "".
    pub model_dir: PathBuf,
    /// Inference threads. Default 1.
    pub workers: usize,
    /// Jobs waiting for a thread at most (the power profile's `max_jobs`
    /// caps running plus waiting too). Default 4.
    pub queue: usize,
    /// Simulated hardware only: each job holds its thread this many times as
    /// long as it takes here, to behave like a Pi. Default 1.
    pub sim_slowdown: f64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { enabled: true, model_dir: PathBuf::new(), workers: 1, queue: 4, sim_slowdown: 1.0 }
    }
}

/// `[mqtt]`: how the agent reaches its broker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://host:port`. Default "mqtt://127.0.0.1:1883".
    pub url: String,
    /// Username; empty for none. Default "".
    pub username: String,
    /// Password. Default "".
    pub password: String,
    /// MQTT keep-alive. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// First reconnect delay. Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest reconnect delay. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Largest payload sent. Default 262144.
    pub max_payload_bytes: usize,
}

/// `[telemetry]`: sampling and delivery.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Sampling interval. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Batch cut interval. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Samples per batch at most. Default 512.
    pub max_batch_samples: usize,
    /// Resend after this long without the controller's ack. Default 15 s.
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// Status republish interval. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    /// Wait for acks at shutdown. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// The transport batches leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkKind {
    /// MQTT; a batch is safe on the controller's end-to-end ack.
    Mqtt,
    /// Kafka; a batch is safe on the producer's delivery report.
    Kafka,
}

/// Which board implementation the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HardwareBackend {
    /// This machine's sysfs.
    Sysfs,
    /// A simulated battery-backed Pi.
    Sim,
}

/// `[hardware]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardwareConfig {
    /// Default "sysfs".
    pub backend: HardwareBackend,
    /// Default "/sys".
    pub sys_root: PathBuf,
    /// Default 0.
    pub sim_seed: u64,
    /// Default "/".
    pub disk_path: PathBuf,
    /// Simulated seconds per real second (backend = "sim"). Default 1.
    pub sim_time_scale: f64,
    /// Whether the simulated board starts on mains. Default true.
    pub sim_mains: bool,
    /// Initial state of charge of the simulated battery; negative: from the seed. Default -1.
    pub sim_initial_soc_pct: f64,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            data_dir: PathBuf::from("/var/lib/fleet-agent"),
            labels: Default::default(),
            uplink: UplinkKind::Mqtt,
            mqtt: MqttConfig::default(),
            kafka: Default::default(),
            telemetry: TelemetryConfig::default(),
            hardware: HardwareConfig::default(),
            spool: crate::spool::SpoolConfig::default(),
            power: crate::power::PowerPolicy::default(),
            inference: InferenceConfig::default(),
            overlay: OverlayConfig::default(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            username: String::new(),
            password: String::new(),
            keep_alive: Duration::from_secs(15),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            max_payload_bytes: 262_144,
        }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            flush_interval: Duration::from_secs(1),
            max_batch_samples: 512,
            ack_timeout: Duration::from_secs(15),
            status_interval: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl Default for HardwareConfig {
    fn default() -> Self {
        Self {
            backend: HardwareBackend::Sysfs,
            sys_root: PathBuf::from("/sys"),
            sim_seed: 0,
            disk_path: PathBuf::from("/"),
            sim_time_scale: 1.0,
            sim_mains: true,
            sim_initial_soc_pct: -1.0,
        }
    }
}

impl AgentConfig {
    /// Parses and checks a config document; `origin` names it in errors.
    ///
    /// # Errors
    /// `AgentError::Config` naming the origin, the key and the reason.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, AgentError> {
        let cfg: AgentConfig =
            toml::from_str(text).map_err(|e| AgentError::Config(format!("{origin}: {}", e.to_string().trim_end())))?;
        cfg.validate().map_err(|e| AgentError::Config(format!("{origin}: {e}")))?;
        Ok(cfg)
    }

    /// Reads and parses a config file.
    ///
    /// # Errors
    /// When the file cannot be read or is not a valid config.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AgentError::Config(format!("cannot read config file {}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    fn validate(&self) -> Result<(), String> {
        if !self.node_id.is_empty() {
            fleet_proto::validate_node_id(&self.node_id).map_err(|e| format!("key `node_id`: {e}"))?;
        }
        crate::uplink::parse_mqtt_url(&self.mqtt.url).map_err(|e| format!("key `mqtt.url`: {e}"))?;
        if self.inference.workers == 0 {
            return Err("key `inference.workers`: use at least 1".into());
        }
        if !(self.inference.sim_slowdown >= 1.0 && self.inference.sim_slowdown <= 1000.0) {
            return Err("key `inference.sim_slowdown`: a factor from 1 to 1000".into());
        }
        let t = &self.telemetry;
        for (key, d) in [
            ("telemetry.interval", t.interval),
            ("telemetry.flush_interval", t.flush_interval),
            ("telemetry.ack_timeout", t.ack_timeout),
            ("telemetry.status_interval", t.status_interval),
            ("mqtt.reconnect_min", self.mqtt.reconnect_min),
        ] {
            if d < Duration::from_millis(10) {
                return Err(format!("key `{key}`: {d:?} is too short; use at least 10ms"));
            }
        }
        if self.mqtt.keep_alive < Duration::from_secs(1) {
            return Err("key `mqtt.keep_alive`: use at least 1s".into());
        }
        if t.max_batch_samples == 0 {
            return Err("key `telemetry.max_batch_samples` must be at least 1".into());
        }
        self.spool.validate()?;
        self.power.validate()?;
        if self.mqtt.max_payload_bytes < 1024 {
            return Err("key `mqtt.max_payload_bytes`: use at least 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_default_is_the_default() {
        let parsed = AgentConfig::from_toml(DEFAULT_CONFIG_TOML, "default").unwrap();
        assert_eq!(parsed, AgentConfig::default());
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = AgentConfig::from_toml("node_id = \"pi-9\"\n[telemetry]\ninterval = \"250ms\"\n", "t").unwrap();
        assert_eq!(c.node_id, "pi-9");
        assert_eq!(c.telemetry.interval, Duration::from_millis(250));
        assert_eq!(c.telemetry.flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = AgentConfig::from_toml("[telemetry]\nintervall = \"1s\"\n", "/etc/fleet/agent.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/fleet/agent.toml") && msg.contains("intervall"), "{msg}");
    }

    #[test]
    fn bad_values_are_explained() {
        let msg = AgentConfig::from_toml("[telemetry]\ninterval = \"soon\"\n", "a.toml").unwrap_err().to_string();
        assert!(msg.contains("a.toml") && msg.contains("interval"), "{msg}");
        let msg = AgentConfig::from_toml("node_id = \"a/b\"\n", "a.toml").unwrap_err().to_string();
        assert!(msg.contains("node_id"), "{msg}");
        let msg = AgentConfig::from_toml("[mqtt]\nurl = \"http://x\"\n", "a.toml").unwrap_err().to_string();
        assert!(msg.contains("mqtt.url"), "{msg}");
        let msg = AgentConfig::from_toml("[hardware]\nbackend = \"gpio\"\n", "a.toml").unwrap_err().to_string();
        assert!(msg.contains("backend"), "{msg}");
    }
}
