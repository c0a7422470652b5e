//! The controller's MQTT session: subscribes to every node's uplink
//! channels, checks each publish (`classify`), drops and counts what is
//! refused, and hands the rest to its owner, waiting while the owner is full
//! (which stops reading from the broker: backpressure, not buffering).

use std::sync::Arc;
use std::time::Duration;

use fleet_proto::topics::{Channel, all_nodes_filter};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::bridge::Bridge;
use super::classify::{Rejected, from_mqtt};
use super::log_limit::LogLimiter;
use super::message::{Closed, Deliver, Inbound};
use super::outbound::DYNSEC_RESPONSE_TOPIC;
use super::verify::Verifier;
use crate::ControllerError;
use crate::metrics::{ChannelLabel, Metrics};

/// The uplink channels the controller subscribes to.
const CHANNELS: [Channel; 5] =
    [Channel::Telemetry, Channel::Status, Channel::Reported, Channel::Events, Channel::Results];

/// Builds the controller's MQTT client for `url`.
///
/// # Errors
/// When the URL is not an mqtt:// URL.
pub fn client(url: &str, username: &str, password: &str) -> Result<(AsyncClient, EventLoop), ControllerError> {
    let (host, port) = fleet_proto::parse_mqtt_url(url).map_err(|e| ControllerError::Config(e.to_string()))?;
    let id = format!("fleet-controller-{:x}{:x}", std::process::id(), fleet_proto::now_unix_ms());
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(15));
    opts.set_clean_session(true);
    // Accept anything the broker passes; our own limit is checked per message.
    opts.set_max_packet_size(256 * 1024 * 1024, 1024 * 1024);
    if !username.is_empty() {
        opts.set_credentials(username, password);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 4096);
    // No Nagle: jobs and acks are small and must not wait for a delayed ACK.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    Ok((client, eventloop))
}

/// The reading side of the MQTT session.
pub struct Reader {
    pub(super) client: AsyncClient,
    pub(super) eventloop: EventLoop,
    /// True while connected with every subscription acknowledged.
    pub(super) ready: watch::Sender<bool>,
    pub(super) checks: Checks,
    /// Telemetry through `$share/{group}/...` when not empty (replicas).
    pub(super) shared_group: String,
    /// Subscribe to Mosquitto's dynamic-security answers.
    pub(super) dynsec: bool,
}

/// What checking and handing on a publish needs (the event loop is not
/// `Sync`, so handling borrows only this part).
pub(super) struct Checks {
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<Metrics>,
    pub max_payload: usize,
    /// Republishes accepted telemetry and status to Kafka, when configured.
    pub bridge: Option<Arc<Bridge>>,
}

impl Reader {
    /// Reads until `shutdown` (or until `owner` stops); reconnects with
    /// backoff on broker errors.
    pub async fn run(mut self, owner: &impl Deliver, shutdown: CancellationToken) {
        let expected_subacks = CHANNELS.len() + usize::from(self.dynsec);
        let mut limiter = LogLimiter::default();
        let mut backoff = Duration::from_millis(200);
        let (mut connected, mut subacks) = (false, 0);
        loop {
            let ev = tokio::select! {
                () = shutdown.cancelled() => break,
                ev = self.eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    (connected, subacks, backoff) = (true, 0, Duration::from_millis(200));
                    owner.connected();
                    self.subscribe();
                    tracing::info!("Controller connected to the MQTT broker.");
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subacks += 1;
                    if subacks == expected_subacks {
                        self.ready.send_replace(true);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if self.checks.handle(p, owner, &mut limiter, &shutdown).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        tracing::warn!(error = %e, "Controller lost the MQTT broker; reconnecting.");
                    } else {
                        tracing::debug!(error = %e, "Controller cannot reach the MQTT broker yet.");
                    }
                    connected = false;
                    self.ready.send_replace(false);
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let _ = self.client.try_disconnect();
    }

    fn subscribe(&self) {
        if self.dynsec
            && let Err(e) = self.client.try_subscribe(DYNSEC_RESPONSE_TOPIC, QoS::AtLeastOnce)
        {
            tracing::error!(error = %e, "Cannot subscribe to the dynamic-security answers.");
        }
        for c in CHANNELS {
            let filter = match c {
                Channel::Telemetry if !self.shared_group.is_empty() => {
                    format!("$share/{}/{}", self.shared_group, all_nodes_filter(c))
                }
                _ => all_nodes_filter(c),
            };
            if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                tracing::error!(error = %e, "Cannot subscribe to node topics.");
            }
        }
    }
}

impl Checks {
    /// Handles one publish.
    ///
    /// # Errors
    /// `Closed` only when the owner is gone (shutdown).
    async fn handle(
        &self,
        p: Publish,
        owner: &impl Deliver,
        limiter: &mut LogLimiter,
        shutdown: &CancellationToken,
    ) -> Result<(), Closed> {
        if p.topic == DYNSEC_RESPONSE_TOPIC {
            return owner.deliver(Inbound::DynsecAnswer(p.payload.to_vec())).await;
        }
        let v = match from_mqtt(&p.topic, &p.payload, self.max_payload, &self.verifier) {
            Ok(v) => v,
            Err(Rejected { reason, who }) => {
                self.metrics.drop_msg(reason.label());
                if limiter.allow(&who) {
                    tracing::warn!(node = %who, topic = %p.topic, bytes = p.payload.len(), reason = reason.label(),
                        "Dropped a bad message (logged once per node per minute).");
                }
                return Ok(());
            }
        };
        // The node's own message (signature checked): now its rate.
        if v.inbound.is_some()
            && let Err(reason) = self.verifier.within_rate(v.node_id)
        {
            self.metrics.drop_msg(reason.label());
            if limiter.allow(v.node_id) {
                tracing::warn!(
                    node = v.node_id,
                    reason = reason.label(),
                    "Dropped messages over the node's rate (logged once per node per minute)."
                );
            }
            return Ok(());
        }
        self.metrics.received.get_or_create(&ChannelLabel { channel: v.channel.as_str() }).inc();
        if let Some(bridge) = &self.bridge {
            bridge.publish(v.channel, v.node_id, &p.payload);
        }
        let Some(msg) = v.inbound else { return Ok(()) };
        tokio::select! {
            r = owner.deliver(msg) => r,
            () = shutdown.cancelled() => Err(Closed),
        }
    }
}
