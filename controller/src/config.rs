//! The controller's TOML configuration: the sections of its components,
//! composed. Each section is plain data with documented defaults and lives
//! with the component that reads it; this file only puts them together.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ControllerError;
use crate::api::server::GrpcConfig;
use crate::http::HttpConfig;
use crate::ingest::IngestConfig;
use crate::jobs::JobsConfig;
use crate::jobs::cloud::CloudConfig;
use crate::link::MqttConfig;
use crate::link::kafka::KafkaConfig;
use crate::router::RouterSection;
use crate::security::SecurityConfig;
use crate::security::overlay::WireGuardConfig;
use crate::store::StorageConfig;

/// The documented default configuration, printed by `fleet-controller generate-config`.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../default-config.toml");

/// See `default-config.toml` for every key; `Default` equals that file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// SQLite directory, the TLS files, the admin token and the WireGuard key. Default "./fleet-data".
    pub data_dir: PathBuf,
    /// PostgreSQL URL; empty for SQLite. Default "".
    pub database_url: String,
    pub mqtt: MqttConfig,
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub ingest: IngestConfig,
    pub kafka: KafkaConfig,
    pub storage: StorageConfig,
    pub jobs: JobsConfig,
    pub router: RouterSection,
    pub cloud: CloudConfig,
    pub security: SecurityConfig,
    pub wireguard: WireGuardConfig,
    /// Traces to an OTLP endpoint (docs/tracing.md). Default off.
    pub otel: fleet_net::otel::OtelConfig,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./fleet-data"),
            database_url: String::new(),
            mqtt: MqttConfig::default(),
            grpc: GrpcConfig::default(),
            http: HttpConfig::default(),
            ingest: IngestConfig::default(),
            kafka: KafkaConfig::default(),
            storage: StorageConfig::default(),
            jobs: JobsConfig::default(),
            router: RouterSection::default(),
            cloud: CloudConfig::default(),
            security: SecurityConfig::default(),
            wireguard: WireGuardConfig::default(),
            otel: fleet_net::otel::OtelConfig::default(),
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

    /// Checks values the types cannot: each section its own, then the keys
    /// of this top level.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), ControllerError> {
        let pg = ["postgres://", "postgresql://"];
        if !self.database_url.is_empty() && !pg.iter().any(|p| self.database_url.starts_with(p)) {
            return Err(ControllerError::Invalid(
                "key `database_url`: expected postgres://user:password@host:port/db (or empty for SQLite)".into(),
            ));
        }
        self.mqtt.validate()?;
        self.grpc.health_addr()?;
        self.ingest.validate()?;
        self.cloud.validate()?;
        self.jobs.validate()?;
        self.security.validate()?;
        self.wireguard.validate()?;
        self.otel.validate().map_err(|e| ControllerError::Invalid(e.to_string()))?;
        self.router.validate()
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
