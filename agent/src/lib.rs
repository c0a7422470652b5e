//! The Spark Fleet agent: samples its node (sysinfo and the board), numbers
//! samples per boot, cuts them into `TelemetryBatch`es and publishes them by
//! MQTT at QoS 1, keeping each batch until the controller acknowledges that
//! it is committed. Publishes a retained `NodeStatus` with a last will that
//! marks the node offline. `run` is the whole agent; `main.rs` only parses flags.
#![forbid(unsafe_code)]

pub mod config;
pub mod outbox;
pub mod sampler;
pub mod uplink;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_hardware::Board;
use fleet_hardware::sim::{SimBoard, SimConfig};
use fleet_hardware::sysfs::SysfsBoard;
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{AgentCounters, NodeState, NodeStatus, Sample, TelemetryBatch};
use prost::Message;
use rumqttc::QoS;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
use config::HardwareBackend;
use outbox::Outbox;
use sampler::Sampler;

/// File in `data_dir` holding batches still unacknowledged at shutdown.
pub const UNSENT_FILE: &str = "unsent.pb";
/// Batches (re)sent per delivery tick at most, so a backlog cannot starve live data.
const RESEND_PER_TICK: usize = 64;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration error: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        AgentError::Io { path: path.to_owned(), source }
    }
}

/// What the agent did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    pub node_id: String,
    pub boot_id: String,
    pub counters: AgentCounters,
    /// Batches still unacknowledged at exit, kept in `data_dir` for the next start.
    pub batches_kept: usize,
}

/// The node id to use: the configured one, else the hostname.
///
/// # Errors
/// When no valid id can be found.
pub fn resolve_node_id(cfg: &AgentConfig) -> Result<String, AgentError> {
    let id =
        if cfg.node_id.is_empty() { sysinfo::System::host_name().unwrap_or_default() } else { cfg.node_id.clone() };
    fleet_proto::validate_node_id(&id)
        .map_err(|e| AgentError::Config(format!("{e}; set `node_id` in the config file")))?;
    Ok(id)
}

fn board(cfg: &AgentConfig) -> Box<dyn Board> {
    match cfg.hardware.backend {
        HardwareBackend::Sysfs => Box::new(SysfsBoard::new(&cfg.hardware.sys_root)),
        HardwareBackend::Sim => Box::new(SimBoard::new(SimConfig::pi_on_ups(cfg.hardware.sim_seed))),
    }
}

/// Cuts samples into batches of at most `max_samples` whose encoding fits `max_bytes`.
fn cut_batches(
    node_id: &str,
    boot_id: &str,
    next_seq: &mut u64,
    samples: Vec<Sample>,
    max_samples: usize,
    max_bytes: usize,
) -> Vec<TelemetryBatch> {
    let mut out = Vec::new();
    let mut rest = samples;
    while !rest.is_empty() {
        let mut take = rest.len().min(max_samples.max(1));
        loop {
            let b = TelemetryBatch {
                node_id: node_id.to_owned(),
                boot_id: boot_id.to_owned(),
                first_seq: *next_seq,
                samples: rest[..take].to_vec(),
                low_water_seq: 0,
            };
            if b.encoded_len() <= max_bytes || take == 1 {
                *next_seq += take as u64;
                rest.drain(..take);
                out.push(b);
                break;
            }
            take /= 2;
        }
    }
    out
}

struct Agent {
    cfg: AgentConfig,
    node_id: String,
    boot_id: String,
    hostname: String,
    counters: AgentCounters,
    outbox: Outbox,
    link: uplink::MqttLink,
    telemetry_topic: String,
    status_topic: String,
}

impl Agent {
    fn status(&self, state: NodeState, sampler: Option<&Sampler>) -> NodeStatus {
        let mut counters = self.counters;
        counters.batches_unacked = self.outbox.len() as u64;
        counters.batches_dropped = self.outbox.dropped_batches;
        NodeStatus {
            node_id: self.node_id.clone(),
            boot_id: self.boot_id.clone(),
            state: state as i32,
            time_unix_ms: fleet_proto::now_unix_ms(),
            hostname: self.hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            counters: Some(counters),
            vitals: sampler.map(|s| s.vitals),
            power_profile: 0,
            labels: self.cfg.labels.clone().into_iter().collect(),
            telemetry_interval_s: self.cfg.telemetry.interval.as_secs_f64(),
            desired_version: 0,
        }
    }

    fn publish_status(&mut self, state: NodeState, sampler: Option<&Sampler>) {
        if !self.link.conn.borrow().connected {
            // Sent again on connect; while away the broker's last will speaks for us.
            return;
        }
        let bytes = self.status(state, sampler).encode_to_vec();
        if let Err(e) = self.link.client.try_publish(self.status_topic.clone(), QoS::AtLeastOnce, true, bytes) {
            self.counters.publish_failures += 1;
            tracing::debug!(error = %e, "Status not published.");
        }
    }

    /// Publishes fresh batches at once, ahead of any backlog, so live data is
    /// never starved by a replay; batches the client refuses wait in the outbox.
    fn publish_live(&mut self, batches: Vec<TelemetryBatch>) {
        let connected = self.link.conn.borrow().connected;
        for mut b in batches {
            if connected {
                b.low_water_seq = self.outbox.low_water(&b.boot_id, b.first_seq);
                let bytes = b.encode_to_vec();
                match self.link.client.try_publish(self.telemetry_topic.clone(), QoS::AtLeastOnce, false, bytes) {
                    Ok(()) => {
                        self.counters.batches_published += 1;
                        self.outbox.push_sent(b, Instant::now().into_std());
                        continue;
                    }
                    Err(e) => {
                        self.counters.publish_failures += 1;
                        tracing::debug!(error = %e, "MQTT client queue full; batch stays in the outbox.");
                    }
                }
            }
            self.outbox.push(b);
        }
    }

    /// Hands due batches (never sent, or unacknowledged past the ack timeout)
    /// to the MQTT client, oldest first and at most `RESEND_PER_TICK` a call;
    /// only while connected.
    fn deliver(&mut self) {
        if !self.link.conn.borrow().connected {
            return;
        }
        let due = self.outbox.due(Instant::now().into_std(), self.cfg.telemetry.ack_timeout, RESEND_PER_TICK);
        for b in due {
            let bytes = b.encode_to_vec();
            match self.link.client.try_publish(self.telemetry_topic.clone(), QoS::AtLeastOnce, false, bytes) {
                Ok(()) => self.counters.batches_published += 1,
                Err(e) => {
                    self.counters.publish_failures += 1;
                    self.outbox.mark_unsent(&b.boot_id, b.first_seq);
                    tracing::debug!(error = %e, "MQTT client queue full; batch stays in the outbox.");
                    break;
                }
            }
        }
    }

    fn take_ack(&mut self, ack: &fleet_proto::v1::Ack) {
        self.counters.samples_acked += self.outbox.ack(ack);
    }
}

/// Runs the agent until `shutdown` is cancelled, then stops cleanly: the last
/// samples are cut into a batch, the agent waits up to `shutdown_grace` for the
/// controller's ack, publishes its offline status, disconnects, and keeps any
/// unacknowledged batch in `data_dir` for the next start.
///
/// # Errors
/// Bad configuration, or a data directory that cannot be used.
pub async fn run(cfg: AgentConfig, shutdown: CancellationToken) -> Result<AgentReport, AgentError> {
    let node_id = resolve_node_id(&cfg)?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        AgentError::Config(format!(
            "cannot create data_dir {}: {e}; set `data_dir` to a writable directory",
            cfg.data_dir.display()
        ))
    })?;
    let unsent_path = cfg.data_dir.join(UNSENT_FILE);
    let boot_id = uuid::Uuid::new_v4().to_string();
    let hostname = sysinfo::System::host_name().unwrap_or_default();

    let mut outbox = Outbox::new(cfg.telemetry.max_unacked_batches);
    let restored = outbox.restore(&unsent_path)?;
    if restored > 0 {
        tracing::info!(batches = restored, "Resending batches kept from the previous run.");
    }

    let offline = NodeStatus {
        node_id: node_id.clone(),
        boot_id: boot_id.clone(),
        state: NodeState::Offline as i32,
        hostname: hostname.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let link = uplink::connect(&cfg.mqtt, &node_id, offline.encode_to_vec());
    let mut agent = Agent {
        telemetry_topic: node_topic(&node_id, Channel::Telemetry),
        status_topic: node_topic(&node_id, Channel::Status),
        node_id,
        boot_id,
        hostname,
        counters: AgentCounters::default(),
        outbox,
        link,
        cfg,
    };
    tracing::info!(node_id = %agent.node_id, boot_id = %agent.boot_id, broker = %agent.cfg.mqtt.url, "Agent started.");

    let mut sampler = Sampler::new(board(&agent.cfg), agent.cfg.hardware.disk_path.clone());
    let mut next_seq: u64 = 0;
    let mut pending: Vec<Sample> = Vec::new();
    let tcfg = agent.cfg.telemetry.clone();
    let mut sample_tick = interval(tcfg.interval);
    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut flush_tick = interval(tcfg.flush_interval);
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status_tick = interval(tcfg.status_interval);
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deliver_tick = interval((tcfg.ack_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)));
    deliver_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn = agent.link.conn.clone();

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sample_tick.tick() => {
                let samples = sampler.sample(fleet_proto::now_unix_ms());
                agent.counters.samples_taken += samples.len() as u64;
                pending.extend(samples);
                if pending.len() >= tcfg.max_batch_samples {
                    flush(&mut agent, &mut next_seq, &mut pending);
                }
            }
            _ = flush_tick.tick() => flush(&mut agent, &mut next_seq, &mut pending),
            _ = deliver_tick.tick() => agent.deliver(),
            _ = status_tick.tick() => agent.publish_status(NodeState::Online, Some(&sampler)),
            Ok(()) = conn.changed() => {
                if conn.borrow_and_update().connected {
                    agent.publish_status(NodeState::Online, Some(&sampler));
                    agent.deliver();
                }
            }
            Some(ack) = agent.link.acks.recv() => agent.take_ack(&ack),
        }
    }

    // Clean shutdown: nothing sampled is silently lost.
    flush(&mut agent, &mut next_seq, &mut pending);
    let deadline = Instant::now() + tcfg.shutdown_grace;
    while !agent.outbox.is_empty() && Instant::now() < deadline {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            _ = deliver_tick.tick() => agent.deliver(),
            Some(ack) = agent.link.acks.recv() => agent.take_ack(&ack),
        }
    }
    agent.publish_status(NodeState::Offline, Some(&sampler));
    let _ = agent.link.client.try_disconnect();
    let stop = agent.link.stop.clone();
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut agent.link.driver).await;
    stop.cancel();
    let kept = agent.outbox.persist(&unsent_path)?;
    if kept > 0 {
        tracing::warn!(batches = kept, path = %unsent_path.display(),
            "Controller did not acknowledge every batch before shutdown; kept them for the next start.");
    }
    let mut counters = agent.counters;
    counters.batches_dropped = agent.outbox.dropped_batches;
    counters.batches_unacked = kept as u64;
    tracing::info!(samples = counters.samples_taken, acked = counters.samples_acked, "Agent stopped.");
    Ok(AgentReport { node_id: agent.node_id, boot_id: agent.boot_id, counters, batches_kept: kept })
}

fn flush(agent: &mut Agent, next_seq: &mut u64, pending: &mut Vec<Sample>) {
    if pending.is_empty() {
        return;
    }
    let batches = cut_batches(
        &agent.node_id,
        &agent.boot_id,
        next_seq,
        std::mem::take(pending),
        agent.cfg.telemetry.max_batch_samples,
        agent.cfg.mqtt.max_payload_bytes,
    );
    agent.publish_live(batches);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_numbered_contiguously_and_fit() {
        let samples: Vec<Sample> =
            (0..100).map(|i| Sample { metric: "cpu.usage_pct".into(), value: f64::from(i), time_unix_ms: 1 }).collect();
        let mut seq = 7;
        let b = cut_batches("n", "b", &mut seq, samples, 30, 600);
        assert_eq!(seq, 107);
        let mut expect = 7;
        for batch in &b {
            assert_eq!(batch.first_seq, expect);
            assert!(batch.encoded_len() <= 600);
            expect += batch.samples.len() as u64;
        }
        assert!(b.iter().all(|x| x.samples.len() <= 30));
    }
}
