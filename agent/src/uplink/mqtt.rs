//! The MQTT connection: drives rumqttc's event loop, reconnects with backoff,
//! and hands the agent connection changes and controller acks through
//! a `watch` (latest state wins) and a bounded queue of acks filled with
//! `try_send`, so the driver never blocks on the agent.

use std::time::Duration;

use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::MessageKind;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::UplinkEvent;
use super::trust::Trust;
use crate::AgentError;
use crate::local::Link;
use crate::spool::{Outgoing, Position};

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

impl MqttConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), AgentError> {
        fleet_proto::parse_mqtt_url(&self.url).map_err(|e| AgentError::Invalid(format!("key `mqtt.url`: {e}")))?;
        if self.reconnect_min < Duration::from_millis(10) {
            return Err(AgentError::Invalid(format!(
                "key `mqtt.reconnect_min`: {:?} is too short; use at least 10ms",
                self.reconnect_min
            )));
        }
        if self.keep_alive < Duration::from_secs(1) {
            return Err(AgentError::Invalid("key `mqtt.keep_alive`: use at least 1s".into()));
        }
        if self.max_payload_bytes < 1024 {
            return Err(AgentError::Invalid("key `mqtt.max_payload_bytes`: use at least 1024".into()));
        }
        Ok(())
    }
}

/// Acks buffered between the MQTT driver and the agent loop.
const ACK_QUEUE: usize = 256;

/// Connection state as the driver last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnState {
    pub connected: bool,
    /// Incremented at every successful connect.
    pub generation: u64,
    /// Connected, or why not (for `fleet-agent status`).
    pub link: Link,
}

/// A problem that lasts is said again at most this often.
const NAG_EVERY: Duration = Duration::from_secs(60);

/// What the agent holds of its MQTT connection.
pub struct MqttLink {
    pub client: AsyncClient,
    pub conn: watch::Receiver<ConnState>,
    /// Acks and desired states from the controller. Bounded; a full queue
    /// drops an ack (the next one, or the retained one after a resend, covers
    /// the same seqs) or a desired state (retained: it comes again on reconnect).
    pub incoming: mpsc::Receiver<UplinkEvent>,
    /// Stops the driver once the agent has said goodbye.
    pub stop: CancellationToken,
    /// The driver task; aborted if the agent is dropped (e.g. a crash in tests).
    pub driver: tokio_util::task::AbortOnDropHandle<()>,
    telemetry_topic: String,
    status_topic: String,
    events_topic: String,
    reported_topic: String,
    results_topic: String,
}

impl MqttLink {
    pub(super) fn send_telemetry(&mut self, out: Outgoing) -> Result<(), Position> {
        let Outgoing { pos, wire } = out;
        // The spool still holds the batch: a refusal only needs its position.
        self.client.try_publish(self.telemetry_topic.clone(), QoS::AtLeastOnce, false, wire).map_err(|_| pos)
    }

    pub(super) fn send_status(&mut self, status: Vec<u8>) -> bool {
        self.client.try_publish(self.status_topic.clone(), QoS::AtLeastOnce, true, status).is_ok()
    }

    pub(super) fn send_reported(&mut self, reported: Vec<u8>) -> bool {
        self.client.try_publish(self.reported_topic.clone(), QoS::AtLeastOnce, true, reported).is_ok()
    }

    pub(super) fn send_event(&mut self, event: Vec<u8>) -> bool {
        self.client.try_publish(self.events_topic.clone(), QoS::AtLeastOnce, false, event).is_ok()
    }

    /// QoS 0: the controller re-routes a job whose answer does not come (docs/routing.md, "Latency").
    pub(super) fn send_result(&mut self, result: Vec<u8>) -> bool {
        self.client.try_publish(self.results_topic.clone(), QoS::AtMostOnce, false, result).is_ok()
    }

    pub(super) async fn next_event(&mut self) -> UplinkEvent {
        tokio::select! {
            Ok(()) = self.conn.changed() => {
                if self.conn.borrow_and_update().connected { UplinkEvent::Connected } else { UplinkEvent::Disconnected }
            }
            Some(ev) = self.incoming.recv() => ev,
            else => std::future::pending().await,
        }
    }

    pub(super) async fn close(mut self) {
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.driver).await;
        self.stop.cancel();
    }
}

/// Builds the client with its last will and starts the driver.
#[must_use]
pub fn connect(cfg: &MqttConfig, node_id: &str, offline_status: Vec<u8>, trust: Trust) -> MqttLink {
    let (host, port) = fleet_proto::parse_mqtt_url(&cfg.url).unwrap_or_else(|_| ("127.0.0.1".into(), 1883));
    let mut opts = MqttOptions::new(format!("fleet-agent-{node_id}"), host, port);
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_clean_session(true);
    opts.set_max_packet_size(1 << 20, cfg.max_payload_bytes + 1024);
    opts.set_last_will(LastWill::new(node_topic(node_id, Channel::Status), offline_status, QoS::AtLeastOnce, true));
    if !cfg.username.is_empty() {
        opts.set_credentials(cfg.username.clone(), cfg.password.clone());
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    // No Nagle: job results and status are small and must not wait for a delayed ACK.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (conn_tx, conn) = watch::channel(ConnState::default());
    let (ack_tx, incoming) = mpsc::channel(ACK_QUEUE);
    let stop = CancellationToken::new();
    let driver = tokio::spawn(drive(
        eventloop,
        client.clone(),
        Topics {
            ack: node_topic(node_id, Channel::Ack),
            desired: node_topic(node_id, Channel::Desired),
            jobs: node_topic(node_id, Channel::Jobs),
            key: node_topic(node_id, Channel::Key),
            controller_keys: node_topic(node_id, Channel::ControllerKeys),
            url: cfg.url.clone(),
        },
        (cfg.reconnect_min, cfg.reconnect_max),
        conn_tx,
        (ack_tx, trust),
        stop.clone(),
    ));
    MqttLink {
        client,
        conn,
        incoming,
        stop,
        driver: tokio_util::task::AbortOnDropHandle::new(driver),
        telemetry_topic: node_topic(node_id, Channel::Telemetry),
        status_topic: node_topic(node_id, Channel::Status),
        events_topic: node_topic(node_id, Channel::Events),
        reported_topic: node_topic(node_id, Channel::Reported),
        results_topic: node_topic(node_id, Channel::Results),
    }
}

/// The topics the controller sends this node, and the broker's URL (for messages).
struct Topics {
    ack: String,
    desired: String,
    jobs: String,
    key: String,
    controller_keys: String,
    url: String,
}

/// What a publish from the controller is, if it is one the agent takes
/// (`Trust` checks it). Retained messages cleared (empty) are ignored.
fn inbound(p: &rumqttc::Publish, t: &Topics, trust: &mut Trust) -> Option<UplinkEvent> {
    if p.payload.is_empty() {
        return None;
    }
    let kind = if p.topic == t.ack {
        MessageKind::Ack
    } else if p.topic == t.desired {
        MessageKind::Desired
    } else if p.topic == t.key {
        MessageKind::KeyRotation
    } else if p.topic == t.jobs {
        MessageKind::Job
    } else if p.topic == t.controller_keys {
        MessageKind::ControllerKeys
    } else {
        return None;
    };
    trust.open(kind, &p.payload, fleet_proto::now_unix_ms())
}

/// Hands an event to the agent loop without waiting; a full queue drops it
/// (acks: a later one covers the same seqs; desired state and key rotation:
/// retained, they come again; jobs: unanswered, the controller re-routes them).
fn queue(tx: &mpsc::Sender<UplinkEvent>, ev: UplinkEvent) {
    if let Err(mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
        match ev {
            UplinkEvent::Ack(_) => tracing::debug!("Ack queue full; the ack is dropped (a later one covers it)."),
            UplinkEvent::Job { .. } => tracing::warn!("Queue full; an inference job is dropped."),
            _ => tracing::warn!("Queue full; a retained message is dropped (it comes again)."),
        }
    }
}

async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    topics: Topics,
    (backoff_min, backoff_max): (Duration, Duration),
    conn_tx: watch::Sender<ConnState>,
    (ack_tx, mut trust): (mpsc::Sender<UplinkEvent>, Trust),
    stop: CancellationToken,
) {
    let mut backoff = backoff_min;
    // When, and about what, the last warning was: a new problem is said at once.
    let mut nagged: Option<(tokio::time::Instant, Link)> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = backoff_min;
                nagged = None;
                // The controller's keys first: a node back from a rotation takes them before the rest.
                for t in [&topics.controller_keys, &topics.ack, &topics.desired, &topics.jobs, &topics.key] {
                    if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, topic = %t, "Could not subscribe.");
                    }
                }
                conn_tx.send_modify(|s| {
                    s.connected = true;
                    s.link = Link::Connected;
                    s.generation += 1;
                });
                tracing::info!("Connected to the MQTT broker.");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Some(ev) = inbound(&p, &topics, &mut trust) {
                    queue(&ack_tx, ev);
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                let link = refused_or_unreachable(&e);
                if conn_tx.borrow().connected {
                    tracing::warn!(error = %e, "Lost the MQTT broker; reconnecting.");
                } else if nagged.is_none_or(|(at, what)| what != link || at.elapsed() >= NAG_EVERY) {
                    nagged = Some((tokio::time::Instant::now(), link));
                    say_why(&e, link, &topics.url);
                } else {
                    tracing::debug!(error = %e, retry_in = ?backoff, "MQTT connect failed.");
                }
                conn_tx.send_modify(|s| {
                    s.connected = false;
                    s.link = link;
                });
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(backoff_max);
            }
        }
    }
    conn_tx.send_modify(|s| s.connected = false);
}

/// Mosquitto refuses a login with a CONNACK code; the embedded broker
/// (rumqttd) closes the connection at the login instead: both are a refusal
/// when they come before the connection was accepted.
fn refused_or_unreachable(e: &ConnectionError) -> Link {
    match e {
        ConnectionError::ConnectionRefused(_) | ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => {
            Link::Refused
        }
        _ => Link::Unreachable,
    }
}

/// Why this node cannot connect, with what fixes it (once a minute at most).
fn say_why(e: &ConnectionError, link: Link, url: &str) {
    if link == Link::Refused {
        tracing::warn!(error = %e, broker = url,
            "The MQTT broker refused this node's login: the controller's broker lets in enrolled nodes only. \
             Enroll it: `fleet-agent enroll --controller https://CONTROLLER:50051 --token-file FILE` with a token \
             from `fleetctl tokens create`, then restart the agent; if it is enrolled, check `mqtt.url`. \
             Samples stay in the spool meanwhile.");
    } else {
        tracing::warn!(error = %e, broker = url,
            "Cannot reach the MQTT broker; retrying. Check `mqtt.url`, the network and (enrolled nodes) the \
             WireGuard tunnel. Samples stay in the spool meanwhile.");
    }
}
