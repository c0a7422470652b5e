//! The Spark Fleet agent: samples its node (sysinfo and the board), numbers
//! samples per boot, cuts them into `TelemetryBatch`es and publishes them by
//! MQTT at QoS 1, keeping each batch until the controller acknowledges that
//! it is committed. Publishes a retained `NodeStatus` with a last will that
//! marks the node offline. `run` is the whole agent; `main.rs` only parses flags.
#![forbid(unsafe_code)]

pub mod config;
pub mod desired;
pub mod enroll;
pub mod identity;
pub mod jobs;
pub mod power;
pub mod sampler;
pub mod signer;
pub mod spool;
pub mod uplink;

use std::time::Duration;

use fleet_hardware::Board;
use fleet_hardware::sim::{SimBoard, SimConfig};
use fleet_hardware::sysfs::SysfsBoard;
use fleet_proto::v1::{AgentCounters, Event, EventSeverity, NodeState, NodeStatus, Sample, TelemetryBatch};
use prost::Message;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
use config::{HardwareBackend, UplinkKind};
use power::PowerManager;
use sampler::Sampler;
use spool::{Outgoing, Spool};
use uplink::{Uplink, UplinkEvent};

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration error: {0}")]
    Config(String),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
}

/// What the agent did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentReport {
    pub node_id: String,
    pub boot_id: String,
    pub counters: AgentCounters,
    /// Batches still unacknowledged at exit, kept in the spool for the next start.
    pub batches_kept: u64,
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
        HardwareBackend::Sim => {
            let mut sim = SimConfig::pi_on_ups(cfg.hardware.sim_seed);
            sim.time_scale = cfg.hardware.sim_time_scale;
            sim.input = fleet_hardware::sim::SimInput::Mains { on: cfg.hardware.sim_mains };
            if cfg.hardware.sim_initial_soc_pct >= 0.0 {
                sim.initial_soc_pct = cfg.hardware.sim_initial_soc_pct;
            }
            Box::new(SimBoard::new(sim))
        }
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
    spool: Spool,
    uplink: Uplink,
    /// Spool errors so far; the first of a streak is logged at ERROR.
    spool_errors: u64,
    /// When the spool's cursor was last written (at most every `CURSOR_EVERY`, to spare SD cards).
    cursor_saved: std::time::Instant,
    power: PowerManager,
    /// The telemetry interval in force (the power profile's).
    interval: Duration,
    throttle_bits: u32,
    fan_duty: Option<f64>,
    /// The policy and interval of the config, used when the desired state sets none.
    base_policy: power::PowerPolicy,
    base_interval: Duration,
    /// Desired state in force, and the last one refused with its reason.
    desired_version: u64,
    rejected: Option<(u64, String)>,
    /// Models the desired state asks for (empty: every loaded model).
    desired_models: Vec<String>,
    /// Inference jobs: models, the bounded pool, results to publish.
    jobs: jobs::Jobs,
    /// Signs every message (enrolled nodes).
    signer: Option<signer::Signer>,
    /// What the controller gave at enrollment (overlay, broker).
    enrollment: Option<enroll::Enrollment>,
}

impl Agent {
    fn connected(&self) -> bool {
        self.uplink.connected()
    }

    /// The message as it goes on the wire: signed when the node is enrolled.
    fn seal(&mut self, kind: fleet_proto::v1::MessageKind, payload: Vec<u8>) -> Vec<u8> {
        match &mut self.signer {
            Some(s) => s.seal(kind, payload),
            None => payload,
        }
    }

    fn status(&self, state: NodeState, sampler: Option<&Sampler>) -> NodeStatus {
        NodeStatus {
            node_id: self.node_id.clone(),
            boot_id: self.boot_id.clone(),
            state: state as i32,
            time_unix_ms: fleet_proto::now_unix_ms(),
            hostname: self.hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            counters: Some(self.counters()),
            vitals: sampler.map(|s| s.vitals),
            power_profile: self.power.profile().to_proto() as i32,
            labels: self.cfg.labels.clone().into_iter().collect(),
            telemetry_interval_s: self.interval.as_secs_f64(),
            desired_version: self.desired_version,
            max_jobs: self.power.policy().settings(self.power.profile()).max_jobs,
            throttle_bits: self.throttle_bits,
            fan_duty: self.fan_duty,
            models: if self.uplink.takes_jobs() { self.jobs.models(&self.desired_models) } else { Vec::new() },
            jobs_active: self.jobs.active(),
            thermal_limit_c: Some(self.power.policy().hot_c),
        }
    }

    /// Takes a job from the controller; publishes at once when it is refused.
    fn take_job(&mut self, job: fleet_proto::v1::Job) {
        let max_jobs = self.power.policy().settings(self.power.profile()).max_jobs;
        if let Some(r) = self.jobs.take(job, max_jobs, self.power.profile().name(), &self.desired_models) {
            tracing::debug!(job_id = %r.job_id, reason = %r.error, "Job not run.");
            self.publish_result(&r);
        }
    }

    fn publish_result(&mut self, r: &fleet_proto::v1::JobResult) {
        let bytes = self.seal(fleet_proto::v1::MessageKind::Result, r.encode_to_vec());
        if !self.connected() || !self.uplink.send_result(bytes) {
            // The controller gives the job to another node after its attempt timeout.
            self.counters.publish_failures += 1;
            tracing::warn!(job_id = %r.job_id, "Job result not published (not connected or queue full).");
        }
    }

    fn counters(&self) -> AgentCounters {
        let st = self.spool.stats();
        let mut c = self.counters;
        c.batches_unacked = self.spool.pending();
        c.batches_dropped += st.dropped_batches;
        c.samples_dropped += st.dropped_samples;
        c.spool_bytes = self.spool.bytes();
        c.spool_quarantined_segments = st.quarantined_segments;
        c.spool_torn_tails = st.torn_tails_truncated;
        c
    }

    fn publish_status(&mut self, state: NodeState, sampler: Option<&Sampler>) {
        if !self.connected() {
            // Sent again on connect; while away the broker's last will speaks for us.
            return;
        }
        let bytes = self.status(state, sampler).encode_to_vec();
        let bytes = self.seal(fleet_proto::v1::MessageKind::Status, bytes);
        if !self.uplink.send_status(bytes) {
            self.counters.publish_failures += 1;
            tracing::debug!("Status not published (client queue full).");
        }
    }

    fn spool_error(&mut self, e: &spool::SpoolError) {
        self.spool_errors += 1;
        if self.spool_errors == 1 || self.spool_errors.is_power_of_two() {
            tracing::error!(error = %e, errors = self.spool_errors, "Spool error; telemetry may be lost.");
        }
    }

    /// Hands one batch to the MQTT client; a refusal leaves it to be resent.
    fn send(&mut self, mut out: Outgoing) -> bool {
        // Signed at each send: a batch sent again gets a new msg_seq (the
        // controller's (boot_id, seq) rows keep it exactly once).
        out.wire = self.seal(fleet_proto::v1::MessageKind::Telemetry, std::mem::take(&mut out.wire));
        match self.uplink.send_telemetry(out) {
            Ok(()) => {
                self.counters.batches_published += 1;
                true
            }
            Err(pos) => {
                self.counters.publish_failures += 1;
                self.spool.send_failed(pos);
                tracing::debug!("Uplink queue full; the batch waits in the spool.");
                false
            }
        }
    }

    /// Appends fresh batches to the spool and, while connected, publishes them
    /// at once (ahead of any backlog, so a replay never starves live data).
    fn append_and_send(&mut self, batches: Vec<TelemetryBatch>) {
        let now = Instant::now().into_std();
        for b in batches {
            match self.spool.append(&b) {
                Ok(pos) => {
                    if self.connected() {
                        match self.spool.take_live(pos, &b, now) {
                            Ok(Some(out)) => {
                                self.send(out);
                            }
                            Ok(None) => {}
                            Err(e) => self.spool_error(&e),
                        }
                    }
                }
                Err(e) => {
                    self.counters.batches_dropped += 1;
                    self.counters.samples_dropped += b.samples.len() as u64;
                    self.spool_error(&e);
                }
            }
        }
    }

    /// Group commit by time, backlog replay at its rate, resends of batches
    /// unacknowledged past the ack timeout, cursor persistence.
    fn deliver(&mut self, replay_per_tick: usize) {
        let now = Instant::now().into_std();
        if let Err(e) = self.spool.maybe_sync(now) {
            self.spool_error(&e);
        }
        if self.connected() {
            let mut out = match self.spool.resends(now, self.cfg.telemetry.ack_timeout, replay_per_tick) {
                Ok(v) => v,
                Err(e) => {
                    self.spool_error(&e);
                    Vec::new()
                }
            };
            match self.spool.replay(now, replay_per_tick) {
                Ok(v) => out.extend(v),
                Err(e) => self.spool_error(&e),
            }
            for o in out {
                if !self.send(o) {
                    break;
                }
            }
        }
        if now.duration_since(self.cursor_saved) >= CURSOR_EVERY {
            self.cursor_saved = now;
            if let Err(e) = self.spool.persist_cursor() {
                self.spool_error(&e);
            }
        }
    }

    /// Runs the power manager on the latest readings and acts on its
    /// decision. Returns the new telemetry interval when the profile changed it.
    fn power_step(&mut self, sampler: &mut Sampler) -> Option<Duration> {
        let d = self.power.decide(&sampler.power, sampler.temp_c);
        let board = sampler.board_mut();
        if let Some(duty) = d.fan_duty
            && let Some(fan) = board.fan()
            && fan.duty().is_none_or(|cur| (cur - duty).abs() > 0.01)
            && let Err(e) = fan.set_duty(duty)
        {
            tracing::warn!(error = %e, "Cannot set the fan duty.");
        }
        self.fan_duty = board.fan().and_then(|f| f.duty());
        self.throttle_bits = board.throttle_flags().ok().flatten().map_or(0, |f| f.bits());
        if d.shutdown {
            self.power_shutdown(&d.reason);
        }
        let from = d.changed_from?;
        let settings = self.power.policy().settings(d.profile).clone();
        if !settings.governor.is_empty()
            && let Some(g) = board.cpu_governor()
            && g.governor().ok().flatten().as_deref() != Some(settings.governor.as_str())
            && let Err(e) = g.set_governor(&settings.governor)
        {
            tracing::warn!(error = %e, governor = %settings.governor, "Cannot set the CPU governor.");
        }
        tracing::info!(from = from.name(), to = d.profile.name(), reason = %d.reason, "Power profile changed.");
        self.send_event(
            "power.profile_changed",
            if d.profile >= power::Profile::Critical { EventSeverity::Critical } else { EventSeverity::Info },
            format!("{} -> {}: {}", from.name(), d.profile.name(), d.reason),
            [("from", from.name()), ("to", d.profile.name())],
        );
        self.publish_status(NodeState::Online, Some(sampler));
        let every =
            settings.telemetry_interval.map_or(self.cfg.telemetry.interval, |p| p.max(self.cfg.telemetry.interval));
        (every != self.interval).then(|| {
            self.interval = every;
            every
        })
    }

    /// Before the battery dies: make the spool durable, then run the command once.
    fn power_shutdown(&mut self, reason: &str) {
        if let Err(e) = self.spool.sync().and_then(|()| self.spool.persist_cursor()) {
            self.spool_error(&e);
        }
        tracing::warn!(reason, "Battery nearly empty: spool flushed; running the shutdown command.");
        self.send_event("power.shutdown", EventSeverity::Critical, format!("shutting down: {reason}"), []);
        let argv = self.power.policy().shutdown_command.clone();
        let Some((program, args)) = argv.split_first() else {
            tracing::warn!("No power.shutdown_command configured; the node will run until the battery is empty.");
            return;
        };
        match std::process::Command::new(program).args(args).spawn() {
            Ok(mut child) => {
                // Reaped in the background so the agent keeps sampling until the power goes.
                std::thread::spawn(move || child.wait());
            }
            Err(e) => tracing::error!(error = %e, command = %program, "Cannot run the shutdown command."),
        }
    }

    fn send_event<const N: usize>(
        &mut self,
        kind: &str,
        severity: EventSeverity,
        message: String,
        attrs: [(&str, &str); N],
    ) {
        let ev = Event {
            node_id: self.node_id.clone(),
            boot_id: self.boot_id.clone(),
            time_unix_ms: fleet_proto::now_unix_ms(),
            kind: kind.into(),
            severity: severity as i32,
            message,
            attributes: attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        let bytes = self.seal(fleet_proto::v1::MessageKind::Event, ev.encode_to_vec());
        if !self.connected() || !self.uplink.send_event(bytes) {
            self.counters.publish_failures += 1;
        }
    }

    /// Validates and applies a desired state; keeps it on disk when it came
    /// from the controller (`fresh`). Returns the new telemetry interval if it changed.
    fn apply_desired(&mut self, d: &fleet_proto::v1::DesiredState, fresh: bool) -> Option<Duration> {
        if fresh && d.version <= self.desired_version {
            // Already running it (a retained copy after a reconnect): just say so again.
            self.report_desired();
            return None;
        }
        match desired::validate(d, &self.node_id, &self.base_policy) {
            Ok(a) => {
                if fresh && let Err(e) = desired::store(&self.cfg.data_dir, d) {
                    tracing::error!(error = %e, "Cannot keep the desired state on disk; it applies until restart.");
                }
                self.power.set_policy(a.policy);
                self.cfg.telemetry.interval = a.telemetry_interval.unwrap_or(self.base_interval);
                if !a.labels.is_empty() {
                    self.cfg.labels = a.labels;
                }
                self.desired_models = a.models;
                self.desired_version = a.version;
                tracing::info!(version = a.version, fresh, "Desired state applied.");
            }
            Err(reason) => {
                tracing::warn!(version = d.version, %reason, "Desired state refused; the previous one stays in force.");
                self.rejected = Some((d.version, reason));
            }
        }
        if fresh {
            self.report_desired();
        }
        let every = self.power.policy().settings(self.power.profile()).telemetry_interval;
        let every = every.map_or(self.cfg.telemetry.interval, |p| p.max(self.cfg.telemetry.interval));
        (every != self.interval).then(|| {
            self.interval = every;
            every
        })
    }

    /// Publishes what runs (retained on `reported`).
    fn report_desired(&mut self) {
        let (rejected_version, rejected_reason) = self.rejected.clone().unwrap_or_default();
        let (wg_public_key, (wg_generation, wg_next_public_key)) = if self.enrollment.is_some() {
            let current =
                identity::Identity::load(&self.cfg.data_dir).map(|i| i.wg_public_base64()).unwrap_or_default();
            let next = identity::load_next_wg(&self.cfg.data_dir).map(|(g, k)| (g, k.get_public().to_base64()));
            (current, next.unwrap_or_default())
        } else {
            Default::default()
        };
        let r = fleet_proto::v1::ReportedState {
            node_id: self.node_id.clone(),
            applied_version: self.desired_version,
            rejected_version,
            rejected_reason,
            time_unix_ms: fleet_proto::now_unix_ms(),
            wg_public_key,
            wg_next_public_key,
            wg_generation,
        };
        if self.connected() {
            let bytes = self.seal(fleet_proto::v1::MessageKind::Reported, r.encode_to_vec());
            self.uplink.send_reported(bytes);
        }
    }

    /// One step of a WireGuard key rotation (docs/security.md): make the next
    /// key and report it; once the controller routes to it, switch to it and
    /// report it in use. Every step is idempotent (the message is retained).
    fn on_key_rotation(&mut self, k: &fleet_proto::v1::KeyRotation) {
        let Some(e) = self.enrollment.clone() else { return };
        let dir = self.cfg.data_dir.clone();
        let next = identity::load_next_wg(&dir);
        if k.accepted_public_key.is_empty() {
            if k.generation != 0 && next.as_ref().is_none_or(|(g, _)| *g != k.generation) {
                let key = wireguard_control::Key::generate_private();
                if let Err(err) = identity::save_next_wg(&dir, k.generation, &key) {
                    tracing::error!(error = %err, "Cannot keep the next WireGuard key; rotation not started.");
                    return;
                }
                tracing::info!(generation = k.generation, "WireGuard key rotation: new key made, reporting it.");
            }
        } else if let Some((_, key)) = next.filter(|(_, key)| key.get_public().to_base64() == k.accepted_public_key) {
            if let Err(err) = identity::promote_next_wg(&dir) {
                tracing::error!(error = %err, "Cannot switch to the next WireGuard key.");
                return;
            }
            if self.cfg.overlay.enabled
                && !e.controller_wg_endpoint.is_empty()
                && let Err(err) = enroll::overlay_up(&self.cfg.overlay.interface, &e, &key)
            {
                tracing::error!(error = %err, "Cannot put the new WireGuard key on the interface.");
            }
            tracing::info!(generation = k.generation, "WireGuard key rotated; confirming through the new tunnel.");
        }
        self.report_desired();
    }

    /// Applies what the uplink reports; returns a new telemetry interval if one applies now.
    fn on_event(&mut self, ev: UplinkEvent, sampler: &mut Sampler, replay_per_tick: usize) -> Option<Duration> {
        if let UplinkEvent::Connected | UplinkEvent::Disconnected = ev
            && let Some(led) = sampler.board_mut().status_led()
        {
            // The status LED shows the link: on while connected.
            let _ = led.set_led(matches!(ev, UplinkEvent::Connected));
        }
        let acked = match ev {
            UplinkEvent::Connected => {
                self.spool.on_connect();
                self.publish_status(NodeState::Online, Some(sampler));
                self.report_desired();
                self.deliver(replay_per_tick);
                return None;
            }
            UplinkEvent::Job(job) => {
                self.take_job(*job);
                return None;
            }
            UplinkEvent::KeyRotation(k) => {
                self.on_key_rotation(&k);
                return None;
            }
            UplinkEvent::Desired(d) => {
                let every = self.apply_desired(&d, true);
                self.publish_status(NodeState::Online, Some(sampler));
                return every;
            }
            UplinkEvent::Disconnected => {
                self.spool.on_disconnect();
                return None;
            }
            UplinkEvent::Failed(pos) => {
                self.spool.send_failed(pos);
                return None;
            }
            UplinkEvent::Ack(ack) => self.spool.ack(&ack),
            UplinkEvent::Delivered(pos) => self.spool.ack_position(pos),
        };
        match acked {
            Ok(n) => self.counters.samples_acked += n,
            Err(e) => self.spool_error(&e),
        }
        None
    }
}

/// How often the delivery tick runs (replay is paced per tick).
const DELIVER_TICK: Duration = Duration::from_millis(100);
/// How long a stopping agent lets running jobs finish.
const JOB_DRAIN: Duration = Duration::from_secs(2);
/// How often the spool's acknowledged position is written to disk at most.
const CURSOR_EVERY: Duration = Duration::from_secs(1);

/// Runs the agent until `shutdown` is cancelled, then stops cleanly: the last
/// samples are cut into a batch and written to the spool, the agent waits up
/// to `shutdown_grace` for the controller's acks, publishes its offline
/// status, disconnects, and syncs the spool; what is unacknowledged is sent
/// after the next start.
///
/// # Errors
/// Bad configuration, or a data directory that cannot be used.
pub async fn run(mut cfg: AgentConfig, shutdown: CancellationToken) -> Result<AgentReport, AgentError> {
    let enrolled = enroll::load(&cfg.data_dir).map_err(|e| AgentError::Config(e.to_string()))?;
    if let Some(e) = &enrolled {
        enroll::apply(&mut cfg, e).map_err(AgentError::Config)?;
    }
    let node_id = resolve_node_id(&cfg)?;
    let signer = match &enrolled {
        Some(e) => {
            let keys = identity::Identity::load(&cfg.data_dir).map_err(|e| AgentError::Config(e.to_string()))?;
            if cfg.overlay.enabled && !e.controller_wg_endpoint.is_empty() {
                enroll::overlay_up(&cfg.overlay.interface, e, keys.wg_private())
                    .map_err(|x| AgentError::Config(format!("WireGuard overlay: {x}")))?;
                tracing::info!(interface = %cfg.overlay.interface, address = %e.overlay_address, "WireGuard overlay up.");
            }
            Some(
                signer::Signer::start(keys.signing_key().clone(), &node_id, &cfg.data_dir)
                    .map_err(AgentError::Config)?,
            )
        }
        None => None,
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        AgentError::Config(format!(
            "cannot create data_dir {}: {e}; set `data_dir` to a writable directory",
            cfg.data_dir.display()
        ))
    })?;
    let boot_id = uuid::Uuid::new_v4().to_string();
    let hostname = sysinfo::System::host_name().unwrap_or_default();
    let spool = Spool::open(&cfg.data_dir.join("spool"), cfg.spool.clone())?;
    if spool.pending() > 0 {
        tracing::info!(
            batches = spool.pending(),
            bytes = spool.bytes(),
            "Spool holds unacknowledged batches; they are sent first."
        );
    }

    let offline = NodeStatus {
        node_id: node_id.clone(),
        boot_id: boot_id.clone(),
        state: NodeState::Offline as i32,
        hostname: hostname.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let power_policy = cfg.power.clone();
    let power_policy_base = cfg.power.clone();
    let tcfg_interval = cfg.telemetry.interval;
    let uplink = match cfg.uplink {
        UplinkKind::Mqtt => {
            let will = offline.encode_to_vec();
            let will = signer.as_ref().map_or_else(|| will.clone(), |s| s.will(will.clone()));
            Uplink::Mqtt(uplink::mqtt::connect(&cfg.mqtt, &node_id, will))
        }
        UplinkKind::Kafka => Uplink::Kafka(uplink::kafka::KafkaLink::connect(&cfg.kafka, &node_id)?),
    };
    let mut spool = spool;
    if uplink.connected() {
        // Kafka has no connection to wait for: replay the backlog from the start.
        spool.on_connect();
    }
    let (jobs, mut job_results) =
        jobs::Jobs::start(&cfg.inference, &node_id, cfg.hardware.backend == HardwareBackend::Sim);
    let mut agent = Agent {
        jobs,
        desired_models: Vec::new(),
        node_id,
        boot_id,
        hostname,
        counters: AgentCounters::default(),
        spool,
        uplink,
        cfg,
        spool_errors: 0,
        cursor_saved: std::time::Instant::now(),
        power: PowerManager::new(power_policy),
        interval: tcfg_interval,
        throttle_bits: 0,
        fan_duty: None,
        base_policy: power_policy_base,
        base_interval: tcfg_interval,
        desired_version: 0,
        rejected: None,
        signer,
        enrollment: enrolled,
    };
    // Offline autonomy: run from the desired state kept on disk until the controller says more.
    if let Some(d) = desired::load(&agent.cfg.data_dir) {
        agent.apply_desired(&d, false);
    }
    tracing::info!(node_id = %agent.node_id, boot_id = %agent.boot_id, uplink = ?agent.cfg.uplink, "Agent started.");

    let mut sampler = Sampler::new(board(&agent.cfg), agent.cfg.hardware.disk_path.clone());
    let mut next_seq: u64 = 0;
    let mut pending: Vec<Sample> = Vec::new();
    let tcfg = agent.cfg.telemetry.clone();
    let replay_per_tick = (agent.cfg.spool.replay_batches_per_s as usize / 10).max(1);
    let mut sample_tick = interval(agent.interval);
    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut flush_tick = interval(tcfg.flush_interval);
    flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut status_tick = interval(tcfg.status_interval);
    status_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut deliver_tick = interval(DELIVER_TICK);
    deliver_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = sample_tick.tick() => {
                let mut samples = sampler.sample(fleet_proto::now_unix_ms());
                if let Some(every) = agent.power_step(&mut sampler) {
                    sample_tick = interval(every);
                    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                    sample_tick.reset();
                }
                samples.push(Sample {
                    metric: sampler::metric::POWER_PROFILE.into(),
                    value: f64::from(agent.power.profile().to_proto() as i32),
                    time_unix_ms: samples.first().map_or_else(fleet_proto::now_unix_ms, |s| s.time_unix_ms),
                });
                agent.counters.samples_taken += samples.len() as u64;
                pending.extend(samples);
                if pending.len() >= tcfg.max_batch_samples {
                    flush(&mut agent, &mut next_seq, &mut pending);
                }
            }
            _ = flush_tick.tick() => flush(&mut agent, &mut next_seq, &mut pending),
            _ = deliver_tick.tick() => agent.deliver(replay_per_tick),
            _ = status_tick.tick() => agent.publish_status(NodeState::Online, Some(&sampler)),
            () = agent.jobs.loaded(), if agent.jobs.is_loading() => {
                agent.publish_status(NodeState::Online, Some(&sampler));
            }
            Some(r) = job_results.recv() => agent.publish_result(&r),
            ev = agent.uplink.next_event() => {
                if let Some(every) = agent.on_event(ev, &mut sampler, replay_per_tick) {
                    sample_tick = interval(every);
                    sample_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                }
            }
        }
    }

    // Clean shutdown: stop taking jobs (say so: the router stops sending), let
    // the running ones finish briefly, then nothing sampled is silently lost.
    agent.jobs.stop();
    agent.publish_status(NodeState::Online, Some(&sampler));
    agent.jobs.drain(JOB_DRAIN).await;
    while let Ok(r) = job_results.try_recv() {
        agent.publish_result(&r);
    }
    flush(&mut agent, &mut next_seq, &mut pending);
    if let Err(e) = agent.spool.sync() {
        agent.spool_error(&e);
    }
    let deadline = Instant::now() + tcfg.shutdown_grace;
    while agent.spool.pending() > 0 && Instant::now() < deadline {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            _ = deliver_tick.tick() => agent.deliver(replay_per_tick),
            ev = agent.uplink.next_event() => { agent.on_event(ev, &mut sampler, replay_per_tick); }
        }
    }
    agent.publish_status(NodeState::Offline, Some(&sampler));
    let counters = agent.counters();
    let Agent { uplink, spool, node_id, boot_id, .. } = agent;
    uplink.close().await;
    let kept = spool.close()?;
    if kept > 0 {
        tracing::warn!(
            batches = kept,
            "Not every batch was acknowledged before shutdown; the spool sends them after the next start."
        );
    }
    tracing::info!(samples = counters.samples_taken, acked = counters.samples_acked, "Agent stopped.");
    Ok(AgentReport { node_id, boot_id, counters, batches_kept: kept })
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
    agent.append_and_send(batches);
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
