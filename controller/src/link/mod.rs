//! The link: the only owner of the controller's conversation with its
//! nodes. Inbound, every publish (MQTT, `mqtt`) or record (Kafka, `kafka`)
//! is checked once (`classify`: the topic parsed, the signature checked by
//! `verify`, the payload decoded and held to the contract) and handed as one
//! typed [`Inbound`] to its owner through [`Deliver`]; refusals are counted
//! by reason. Outbound, [`Link`] has one typed send per message kind. The
//! embedded broker (`broker`) and the MQTT -> Kafka bridge (`bridge`) are
//! part of it. No other module holds an MQTT client or a Kafka producer.

mod bridge;
pub mod broker;
pub mod classify;
pub mod kafka;
mod log_limit;
mod message;
pub mod mqtt;
mod outbound;
pub mod seal;
pub mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use message::{Closed, Deliver, Inbound};
pub use outbound::Link;
pub use verify::{Refusal, Verifier};

use crate::ControllerError;
use crate::metrics::Metrics;

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
    pub fn validate(&self) -> Result<(), ControllerError> {
        if !self.url.is_empty() {
            fleet_proto::parse_mqtt_url(&self.url)
                .map_err(|e| ControllerError::Invalid(format!("key `mqtt.url`: {e}")))?;
        }
        if self.max_payload_bytes < 1024 {
            return Err(ControllerError::Invalid("key `mqtt.max_payload_bytes`: use at least 1024".into()));
        }
        let g = &self.shared_group;
        if g.contains(['/', '+', '#']) {
            return Err(ControllerError::Invalid(
                "key `mqtt.shared_group`: a plain name without '/', '+' or '#', e.g. \"fleet-ingest\"".into(),
            ));
        }
        if !g.is_empty() && self.url.is_empty() {
            return Err(ControllerError::Invalid(
                "key `mqtt.shared_group`: replicas share an external broker; set `mqtt.url` too".into(),
            ));
        }
        if self.dynsec && (self.url.is_empty() || self.username.is_empty()) {
            return Err(ControllerError::Invalid(
                "key `mqtt.dynsec`: needs an external Mosquitto (`mqtt.url`) and its dynamic-security admin \
                        (`mqtt.username`, `mqtt.password`)"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// The link's reading side: the MQTT session and, when configured, the Kafka consumers.
pub struct Readers {
    mqtt: mqtt::Reader,
    telemetry: Option<kafka::TelemetryConsumer>,
    status: Option<kafka::StatusReader>,
}

impl Readers {
    /// Runs each reader as its own task on `tasks`, handing what it verifies to `owner`.
    pub fn spawn_on<O: Deliver>(self, tasks: &TaskTracker, owner: &Arc<O>, shutdown: &CancellationToken) {
        let (o, s) = (owner.clone(), shutdown.clone());
        tasks.spawn(async move { self.mqtt.run(&*o, s).await });
        if let Some(c) = self.telemetry {
            let (o, s) = (owner.clone(), shutdown.clone());
            tasks.spawn(async move { c.run(&*o, s).await });
        }
        if let Some(r) = self.status {
            let (o, s) = (owner.clone(), shutdown.clone());
            tasks.spawn(async move { r.run(&*o, s).await });
        }
    }
}

/// Starts the embedded broker when no external one is configured (letting
/// in only the controller and enrolled nodes when `require_enrollment`), and
/// builds the link: the handle that sends, the readers that run, and the
/// broker URL.
///
/// # Errors
/// A bad broker URL, the embedded broker's port in use, Kafka settings
/// librdkafka refuses.
pub async fn start(
    cfg: &MqttConfig,
    kafka: &kafka::KafkaConfig,
    verifier: &Arc<Verifier>,
    require_enrollment: bool,
    metrics: &Arc<Metrics>,
    sealer: Arc<seal::Sealer>,
) -> Result<(Link, Readers, String), ControllerError> {
    let (mut user, mut pass) = (cfg.username.clone(), cfg.password.clone());
    let url = if cfg.url.is_empty() {
        // The controller's own login to the embedded broker, new at every start.
        let max = (cfg.max_payload_bytes * 4).max(16 << 20);
        let auth = if require_enrollment {
            let (secret, _) = crate::auth::new_token("fcp")?;
            user = "fleet-controller".into();
            pass = secret.expose().to_owned();
            Some(broker::auth_handler(user.clone(), secret, verifier.clone()))
        } else {
            None
        };
        format!("mqtt://{}", broker::start_embedded(cfg.embedded_listen, max, auth).await?)
    } else {
        cfg.url.clone()
    };
    let (client, eventloop) = mqtt::client(&url, &user, &pass)?;
    let (ready, connected) = tokio::sync::watch::channel(false);
    let kafka_on = !kafka.brokers.is_empty();
    let bridge =
        if kafka_on && kafka.bridge { Some(Arc::new(bridge::Bridge::new(kafka, metrics.clone())?)) } else { None };
    let (telemetry, status) = if kafka_on && kafka.consume {
        let max = cfg.max_payload_bytes;
        (
            Some(kafka::TelemetryConsumer::new(kafka, metrics.clone(), max, verifier.clone())?),
            Some(kafka::StatusReader::new(kafka, metrics.clone(), max, verifier.clone())?),
        )
    } else {
        (None, None)
    };
    let checks = mqtt::Checks {
        verifier: verifier.clone(),
        metrics: metrics.clone(),
        max_payload: cfg.max_payload_bytes,
        bridge,
    };
    let reader = mqtt::Reader {
        client: client.clone(),
        eventloop,
        ready,
        checks,
        shared_group: cfg.shared_group.clone(),
        dynsec: cfg.dynsec,
    };
    Ok((Link::new(client, connected, sealer), Readers { mqtt: reader, telemetry, status }, url))
}
