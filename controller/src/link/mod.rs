//! The link: the controller's conversation with its nodes over MQTT (`mqtt`)
//! and Kafka (`kafka`), with the embedded broker (`broker`) and the check of
//! every node's signature (`verify`).

pub mod broker;
pub mod kafka;
pub mod log_limit;
pub mod mqtt;
pub mod verify;

use std::net::SocketAddr;

use serde::Deserialize;

/// `[mqtt]`: the broker the nodes and the controller meet on.
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

impl MqttConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.is_empty() {
            fleet_proto::parse_mqtt_url(&self.url).map_err(|e| format!("key `mqtt.url`: {e}"))?;
        }
        if self.max_payload_bytes < 1024 {
            return Err("key `mqtt.max_payload_bytes`: use at least 1024".into());
        }
        let g = &self.shared_group;
        if g.contains(['/', '+', '#']) {
            return Err("key `mqtt.shared_group`: a plain name without '/', '+' or '#', e.g. \"fleet-ingest\"".into());
        }
        if !g.is_empty() && self.url.is_empty() {
            return Err("key `mqtt.shared_group`: replicas share an external broker; set `mqtt.url` too".into());
        }
        if self.dynsec && (self.url.is_empty() || self.username.is_empty()) {
            return Err("key `mqtt.dynsec`: needs an external Mosquitto (`mqtt.url`) and its dynamic-security admin \
                        (`mqtt.username`, `mqtt.password`)"
                .into());
        }
        Ok(())
    }
}
