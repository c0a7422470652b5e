//! The agent's TOML configuration: the sections of its parts, composed.
//! Each section is plain data with documented defaults and lives with the
//! part that reads it; this file only puts them together.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::AgentError;
use crate::board::HardwareConfig;
use crate::enroll::Enrollment;
use crate::jobs::InferenceConfig;
use crate::overlay::OverlayConfig;
use crate::power::PowerPolicy;
use crate::spool::SpoolConfig;
use crate::telemetry::TelemetryConfig;
use crate::uplink::UplinkKind;
use crate::uplink::kafka::KafkaConfig;
use crate::uplink::mqtt::MqttConfig;

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
    pub kafka: KafkaConfig,
    /// Sampling, batching and acknowledgement.
    pub telemetry: TelemetryConfig,
    /// Which board to read.
    pub hardware: HardwareConfig,
    /// The disk spool.
    pub spool: SpoolConfig,
    /// The power policy in force until the controller sends one.
    pub power: PowerPolicy,
    /// Inference jobs.
    pub inference: InferenceConfig,
    /// The WireGuard overlay.
    pub overlay: OverlayConfig,
    /// Traces to an OTLP endpoint (docs/tracing.md). Default off.
    pub otel: fleet_net::otel::OtelConfig,
    /// The Prometheus endpoint (docs/metrics.md). Default off.
    pub metrics: crate::metrics::MetricsConfig,
    /// Model versions the controller sends (docs/rollouts.md).
    pub models: crate::models::update::ModelsConfig,
    /// The health window after a change the controller sent (docs/rollouts.md).
    pub health: crate::health::HealthConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            data_dir: PathBuf::from("/var/lib/fleet-agent"),
            labels: Default::default(),
            uplink: UplinkKind::Mqtt,
            mqtt: MqttConfig::default(),
            kafka: KafkaConfig::default(),
            telemetry: TelemetryConfig::default(),
            hardware: HardwareConfig::default(),
            spool: SpoolConfig::default(),
            power: PowerPolicy::default(),
            inference: InferenceConfig::default(),
            overlay: OverlayConfig::default(),
            otel: fleet_net::otel::OtelConfig::default(),
            metrics: crate::metrics::MetricsConfig::default(),
            models: crate::models::update::ModelsConfig::default(),
            health: crate::health::HealthConfig::default(),
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

    /// Applies an enrollment to the config: its node id (a different configured
    /// id is an error), broker URL and credentials, and labels (the config's win).
    ///
    /// # Errors
    /// A configured node id other than the enrolled one.
    pub fn apply_enrollment(&mut self, e: &Enrollment) -> Result<(), AgentError> {
        if !self.node_id.is_empty() && self.node_id != e.node_id {
            return Err(AgentError::Config(format!(
                "node_id is {:?} in the config but this node is enrolled as {:?}: remove node_id from the config, or enroll again with --force",
                self.node_id, e.node_id
            )));
        }
        self.node_id.clone_from(&e.node_id);
        self.mqtt.url.clone_from(&e.broker_url);
        self.mqtt.username.clone_from(&e.broker_username);
        self.mqtt.password.clone_from(&e.broker_password);
        for (k, v) in &e.labels {
            self.labels.entry(k.clone()).or_insert_with(|| v.clone());
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), AgentError> {
        if !self.node_id.is_empty() {
            fleet_proto::validate_node_id(&self.node_id)
                .map_err(|e| AgentError::Invalid(format!("key `node_id`: {e}")))?;
        }
        self.mqtt.validate()?;
        self.inference.validate()?;
        self.otel.validate().map_err(|e| AgentError::Invalid(e.to_string()))?;
        self.metrics.addr()?;
        self.telemetry.validate()?;
        self.spool.validate()?;
        self.power.validate()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
