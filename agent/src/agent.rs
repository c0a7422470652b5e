//! The agent's parts put together: what it is (node, boot, labels), what it
//! runs (delivery, power, desired state, jobs, overlay), and the handlers the
//! event loop in `lib.rs` calls. Each handler does its part's work through
//! that part; here they only meet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleet_proto::v1::{AgentCounters, Event, EventSeverity, NodeState, NodeStatus, Sample};
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::config::AgentConfig;
use crate::delivery::Delivery;
use crate::desired::{self, Applier, Outcome};
use crate::health::Window;
use crate::identity::Identity;
use crate::jobs::Jobs;
use crate::models::ModelStore;
use crate::models::update::{Origin, Updater};
use crate::outbox::Outbox;
use crate::overlay::NodeOverlay;
use crate::power::Profile;
use crate::power::control::{PowerControl, run_shutdown_command};
use crate::sampler::{Sampler, metric};
use crate::signer::Signer;
use crate::spool::Spool;
use crate::telemetry::Batcher;
use crate::uplink::trust::{Controller, Trust, TrustReport};
use crate::uplink::{self, Uplink, UplinkEvent, UplinkKind};
use crate::{AgentError, board, enroll, local};

mod updates;

/// Which node and which run of it this is.
pub struct Node {
    pub id: String,
    /// New at every start: seqs and acks are per boot.
    pub boot_id: String,
    pub hostname: String,
}

/// The running agent.
pub struct Agent {
    pub cfg: AgentConfig,
    pub node: Node,
    /// Labels reported in the status (the config's, the enrollment's, then the desired state's).
    labels: BTreeMap<String, String>,
    /// The telemetry interval asked for (the config's, or the desired state's); the power profile may slow it.
    base_interval: Duration,
    pub out: Outbox,
    pub delivery: Delivery,
    batcher: Batcher,
    pub sampler: Sampler,
    pub power: PowerControl,
    desired: Applier,
    pub jobs: Jobs,
    /// The enrolled node's overlay and key rotation.
    overlay: Option<NodeOverlay>,
    samples_taken: u64,
    /// What `fleet-agent status` reads (None: the socket could not be made).
    local: Option<watch::Sender<local::Live>>,
    /// What the Prometheus endpoint shows (None: `[metrics] listen` is empty).
    metrics: Option<watch::Sender<crate::metrics::Snapshot>>,
    /// When the agent last said it is not enrolled.
    nagged: Option<std::time::Instant>,
    /// The controller's messages it did not believe.
    trust: Arc<TrustReport>,
    /// Model versions the desired state asks for.
    pub updater: Updater,
    /// The desired state being watched after it was applied.
    window: Option<Window>,
}

/// Said at start and once a minute by a node that is not enrolled and hears no ack.
const NOT_ENROLLED: &str = "This node is not enrolled: a controller that requires enrollment (the default) drops \
    everything it sends, and its broker refuses its login. Enroll it: `fleet-agent enroll --controller \
    https://CONTROLLER:50051 --token-file FILE` with a token from `fleetctl tokens create`, then restart the agent. \
    Samples stay in the spool meanwhile.";

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

/// What enrollment gave this node: the overlay brought up, its signer, and
/// whose word it takes for the controller's.
type Enrolled = (Option<NodeOverlay>, Option<Signer>, Controller, Option<Origin>);

/// The enrollment (applied to the config), the overlay brought up, and the signer.
fn identity(cfg: &mut AgentConfig, node_id: &mut String) -> Result<Enrolled, AgentError> {
    let Some(e) = enroll::load(&cfg.data_dir).map_err(|e| AgentError::Config(e.to_string()))? else {
        *node_id = resolve_node_id(cfg)?;
        return Ok((None, None, Controller::Lab, None));
    };
    cfg.apply_enrollment(&e)?;
    let controller = Controller::of(&e);
    if matches!(controller, Controller::Missing) {
        tracing::warn!(
            "This node was enrolled before the controller signed its messages: it believes none of them \
            (no acks, jobs or desired state) until it enrolls again: `fleet-agent enroll --force` with a new token."
        );
    }
    *node_id = resolve_node_id(cfg)?;
    let keys = Identity::load(&cfg.data_dir).map_err(|e| AgentError::Config(e.to_string()))?;
    let origin = (!e.controller_api_url.is_empty()).then(|| Origin {
        node_id: node_id.clone(),
        key: keys.signing_key().clone(),
        url: e.controller_api_url.clone(),
        ca_pem: (!e.controller_ca_pem.is_empty()).then(|| e.controller_ca_pem.clone().into_bytes()),
    });
    let overlay = NodeOverlay::new(e, cfg.data_dir.clone(), cfg.overlay.clone());
    overlay.bring_up(keys.wg_private()).map_err(|x| AgentError::Config(x.to_string()))?;
    let signer = Signer::start(keys.signing_key().clone(), node_id, &cfg.data_dir)
        .map_err(|x| AgentError::Config(x.to_string()))?;
    Ok((Some(overlay), Some(signer), controller, origin))
}

/// The uplink the config names, with the signed last will on MQTT.
fn connect(cfg: &AgentConfig, node: &Node, signer: Option<&Signer>, trust: Trust) -> Result<Uplink, AgentError> {
    Ok(match cfg.uplink {
        UplinkKind::Mqtt => {
            let offline = NodeStatus {
                node_id: node.id.clone(),
                boot_id: node.boot_id.clone(),
                state: NodeState::Offline as i32,
                hostname: node.hostname.clone(),
                agent_version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }
            .encode_to_vec();
            let will = signer.map_or_else(|| offline.clone(), |s| s.will(offline.clone()));
            Uplink::Mqtt(uplink::mqtt::connect(&cfg.mqtt, &node.id, will, trust))
        }
        UplinkKind::Kafka => Uplink::Kafka(uplink::kafka::KafkaLink::connect(&cfg.kafka, &node.id)?),
    })
}

impl Agent {
    /// Loads the enrollment and the spool, connects the uplink, starts
    /// loading the models and applies the desired state kept on disk
    /// (offline autonomy). The receiver gets each job result to publish.
    ///
    /// # Errors
    /// Bad configuration, or a data directory that cannot be used.
    pub fn start(mut cfg: AgentConfig) -> Result<(Self, mpsc::Receiver<crate::jobs::Finished>), AgentError> {
        let mut node_id = String::new();
        let (overlay, signer, controller, origin) = identity(&mut cfg, &mut node_id)?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            AgentError::Config(format!(
                "cannot create data_dir {}: {e}; set `data_dir` to a writable directory",
                cfg.data_dir.display()
            ))
        })?;
        let node = Node {
            id: node_id,
            boot_id: uuid::Uuid::new_v4().to_string(),
            hostname: sysinfo::System::host_name().unwrap_or_default(),
        };
        let spool = Spool::open(&cfg.data_dir.join("spool"), cfg.spool.clone())?;
        if spool.pending() > 0 {
            tracing::info!(
                batches = spool.pending(),
                bytes = spool.bytes(),
                "Spool holds unacknowledged batches; they are sent first."
            );
        }
        let trust = Arc::new(TrustReport::default());
        let checks = Trust::new(&node.id, controller, trust.clone(), Some(cfg.data_dir.clone()));
        let uplink = connect(&cfg, &node, signer.as_ref(), checks)?;
        let per_tick = (cfg.spool.replay_batches_per_s as usize / 10).max(1);
        let mut delivery = Delivery::new(spool, cfg.telemetry.ack_timeout, per_tick);
        if uplink.connected() {
            // Kafka has no connection to wait for: replay the backlog from the start.
            delivery.start_replay();
        }
        let store = ModelStore::open(&cfg.data_dir).map_err(|e| AgentError::Config(e.to_string()))?;
        let base_dir = (!cfg.inference.model_dir.as_os_str().is_empty()).then(|| cfg.inference.model_dir.clone());
        let updater = Updater::new(store, cfg.models.clone(), base_dir, origin);
        let sim = cfg.hardware.backend == board::HardwareBackend::Sim;
        let (jobs, results) = Jobs::start(&cfg.inference, updater.dirs(), &node.id, sim);
        let batcher =
            Batcher::new(&node.id, &node.boot_id, cfg.telemetry.max_batch_samples, cfg.mqtt.max_payload_bytes);
        let mut agent = Agent {
            labels: cfg.labels.clone(),
            base_interval: cfg.telemetry.interval,
            out: Outbox::new(uplink, signer),
            delivery,
            batcher,
            sampler: Sampler::new(board::board(&cfg.hardware), cfg.hardware.disk_path.clone()),
            power: PowerControl::new(cfg.power.clone(), cfg.telemetry.interval),
            desired: Applier::new(cfg.power.clone(), cfg.data_dir.clone()),
            jobs,
            overlay,
            samples_taken: 0,
            local: None,
            metrics: None,
            nagged: None,
            trust,
            updater,
            window: None,
            node,
            cfg,
        };
        agent.local = agent.serve_local();
        if let Some(addr) = agent.cfg.metrics.addr()? {
            agent.metrics = Some(crate::metrics::serve(addr)?.0);
        }
        if let Some(d) = desired::load(&agent.cfg.data_dir) {
            agent.apply_desired(&d, false);
        }
        tracing::info!(node_id = %agent.node.id, boot_id = %agent.node.boot_id, uplink = ?agent.cfg.uplink, "Agent started.");
        agent.nag_unenrolled();
        Ok((agent, results))
    }

    fn serve_local(&self) -> Option<watch::Sender<local::Live>> {
        let fixed = local::Fixed {
            node_id: self.node.id.clone(),
            boot_id: self.node.boot_id.clone(),
            enrolled: self.out.signs(),
            uplink: format!("{:?}", self.cfg.uplink).to_lowercase(),
            broker: match self.cfg.uplink {
                UplinkKind::Mqtt => self.cfg.mqtt.url.clone(),
                UplinkKind::Kafka => self.cfg.kafka.brokers.clone(),
            },
            started_unix_ms: fleet_proto::now_unix_ms(),
        };
        local::serve(&self.cfg.data_dir, fixed)
            .map_err(|e| tracing::warn!(error = %e, "No status socket: `fleet-agent status` cannot ask this agent."))
            .ok()
    }

    /// Keeps what `fleet-agent status` answers up to date.
    pub fn publish_local(&mut self) {
        let Some(tx) = &self.local else { return };
        let c = self.counters();
        let live = local::Live {
            link: self.out.link(),
            last_ack_unix_ms: self.delivery.last_ack_unix_ms,
            backlog_batches: c.batches_unacked,
            spool_bytes: c.spool_bytes,
            samples_taken: c.samples_taken,
            samples_acked: c.samples_acked,
        };
        tx.send_if_modified(|l| std::mem::replace(l, live) != live);
    }

    /// Refreshes what a scrape of the metrics endpoint shows (when it is on;
    /// at each flush, about once a second).
    pub fn publish_metrics(&self) {
        let Some(tx) = &self.metrics else { return };
        let snapshot = crate::metrics::Snapshot {
            status: self.status(NodeState::Online),
            connected: self.out.connected(),
            jobs_ran: self.jobs.ran,
            jobs_refused: self.jobs.refused,
            last_ack_unix_ms: self.delivery.last_ack_unix_ms,
        };
        tx.send_replace(snapshot);
    }

    /// Says that the node is not enrolled, at start and then once a minute
    /// while nothing it sent was acknowledged (a lab controller that takes
    /// unenrolled nodes acks, and the warning stops).
    fn nag_unenrolled(&mut self) {
        let due = self.nagged.is_none_or(|at| at.elapsed() >= Duration::from_secs(60));
        if !self.out.signs() && self.delivery.last_ack_unix_ms == 0 && due {
            self.nagged = Some(std::time::Instant::now());
            tracing::warn!(node_id = %self.node.id, data_dir = %self.cfg.data_dir.display(), "{NOT_ENROLLED}");
        }
    }

    /// What the agent counted so far.
    #[must_use]
    pub fn counters(&self) -> AgentCounters {
        let mut c = AgentCounters {
            samples_taken: self.samples_taken,
            batches_published: self.out.batches_published,
            publish_failures: self.out.failures,
            controller_messages_refused: self.trust.total(),
            controller_messages_refused_by_reason: self
                .trust
                .by_reason()
                .into_iter()
                .map(|(reason, n)| (reason.to_owned(), n))
                .collect(),
            ..Default::default()
        };
        self.delivery.count_into(&mut c);
        c
    }

    fn status(&self, state: NodeState) -> NodeStatus {
        NodeStatus {
            node_id: self.node.id.clone(),
            boot_id: self.node.boot_id.clone(),
            state: state as i32,
            time_unix_ms: fleet_proto::now_unix_ms(),
            hostname: self.node.hostname.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            counters: Some(self.counters()),
            vitals: Some(self.sampler.vitals),
            power_profile: self.power.profile().to_proto() as i32,
            labels: self.labels.clone().into_iter().collect(),
            telemetry_interval_s: self.power.interval().as_secs_f64(),
            desired_version: self.desired.version(),
            max_jobs: self.power.max_jobs(),
            throttle_bits: self.power.throttle_bits(),
            fan_duty: self.power.fan_duty(),
            models: if self.out.takes_jobs() { self.jobs.models(self.desired.models()) } else { Vec::new() },
            jobs_active: self.jobs.active(),
            thermal_limit_c: Some(self.power.policy().hot_c),
            controller_key_generation: self.trust.controller_key_generation(),
            model_versions: self.updater.in_force().clone(),
        }
    }

    /// Publishes the node's status (retained).
    pub fn publish_status(&mut self, state: NodeState) {
        self.nag_unenrolled();
        let s = self.status(state);
        self.out.status(&s);
    }

    /// Publishes what runs of the desired state, and the WireGuard keys (retained).
    fn report(&mut self) {
        let keys = self.overlay.as_ref().map(NodeOverlay::keys).unwrap_or_default();
        let r = self.desired.report(&self.node.id, keys, self.updater.reports());
        self.out.reported(&r);
    }

    fn event<const N: usize>(
        &mut self,
        kind: &str,
        severity: EventSeverity,
        message: String,
        attrs: [(&str, &str); N],
    ) {
        let ev = Event {
            node_id: self.node.id.clone(),
            boot_id: self.node.boot_id.clone(),
            time_unix_ms: fleet_proto::now_unix_ms(),
            kind: kind.into(),
            severity: severity as i32,
            message,
            attributes: attrs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        self.out.event(&ev);
    }

    /// One sampling tick: read everything, let the power manager act, take
    /// the samples. Returns a new sampling interval when the profile changed it.
    pub fn sample(&mut self) -> Option<Duration> {
        let mut samples = self.sampler.sample(fleet_proto::now_unix_ms());
        let every = self.power_step();
        samples.push(Sample {
            metric: metric::POWER_PROFILE.into(),
            value: f64::from(self.power.profile().to_proto() as i32),
            time_unix_ms: samples.first().map_or_else(fleet_proto::now_unix_ms, |s| s.time_unix_ms),
        });
        self.samples_taken += samples.len() as u64;
        if self.batcher.push(samples) {
            self.flush();
        }
        every
    }

    /// Cuts what was sampled into batches: into the spool, and out while connected.
    pub fn flush(&mut self) {
        let batches = self.batcher.cut();
        self.delivery.append_and_send(batches, &mut self.out);
    }

    /// Runs the power manager on the latest readings and acts on what it
    /// asks beyond the board. Returns the new interval when it changed.
    fn power_step(&mut self) -> Option<Duration> {
        let reading = self.sampler.power;
        let temp = self.sampler.temp_c;
        let step = self.power.step(&reading, temp, self.sampler.board_mut());
        if let Some(w) = &mut self.window {
            w.power_ran();
        }
        if let Some(reason) = step.shutdown {
            // Before the battery dies: the spool durable, then the command once.
            self.delivery.make_durable();
            tracing::warn!(%reason, "Battery nearly empty: spool flushed; running the shutdown command.");
            self.event("power.shutdown", EventSeverity::Critical, format!("shutting down: {reason}"), []);
            run_shutdown_command(&self.power.policy().shutdown_command.clone());
        }
        let c = step.changed?;
        let severity = if c.to >= Profile::Critical { EventSeverity::Critical } else { EventSeverity::Info };
        let message = format!("{} -> {}: {}", c.from.name(), c.to.name(), c.reason);
        self.event("power.profile_changed", severity, message, [("from", c.from.name()), ("to", c.to.name())]);
        self.publish_status(NodeState::Online);
        self.power.retime(self.base_interval)
    }

    /// Validates and applies a desired state (`fresh`: from the controller,
    /// not from disk). Returns the new sampling interval if it changed.
    fn apply_desired(&mut self, d: &fleet_proto::v1::DesiredState, fresh: bool) -> Option<Duration> {
        let before = self.desired.current().cloned();
        match self.desired.take(d, fresh, &self.node.id) {
            Outcome::Already => {
                // Already running it (a retained copy after a reconnect): just say so again.
                self.report();
                return None;
            }
            Outcome::Apply(a) => {
                let length = a.health_window.unwrap_or(self.cfg.health.window);
                let mut w = Window::start(a.version, length, before);
                if !fresh {
                    // From disk at start: a node that boots without its
                    // network must not give up the state it last took.
                    w.heard();
                }
                self.window = Some(w);
                self.take_accepted(*a);
            }
            Outcome::Refused => {}
        }
        if fresh {
            self.report();
        }
        self.power.retime(self.base_interval)
    }

    /// Takes a job from the controller; a refusal is answered at once.
    fn take_job(&mut self, job: fleet_proto::v1::Job, traceparent: &str) {
        // A child of the controller's dispatch (the trace context came in the job's envelope).
        let span =
            tracing::debug_span!("job.run", job.id = %job.job_id, job.model = %job.model, job.attempt = job.attempt);
        fleet_net::otel::follow(&span, traceparent);
        let (max_jobs, profile) = (self.power.max_jobs(), self.power.profile().name());
        if let Some(r) = self.jobs.take(job, span.clone(), max_jobs, profile, self.desired.models()) {
            let _in = span.enter();
            tracing::debug!(job_id = %r.job_id, reason = %r.error, "Job not run.");
            self.out.result(&r);
        }
    }

    /// Applies what the uplink reports; returns a new sampling interval if one applies now.
    pub fn on_event(&mut self, ev: UplinkEvent) -> Option<Duration> {
        if let UplinkEvent::Connected | UplinkEvent::Disconnected = ev
            && let Some(led) = self.sampler.board_mut().status_led()
        {
            // The status LED shows the link: on while connected.
            let _ = led.set_led(matches!(ev, UplinkEvent::Connected));
        }
        self.delivery.on_event(&ev);
        match ev {
            UplinkEvent::Connected => {
                self.publish_status(NodeState::Online);
                self.report();
                self.delivery.tick(&mut self.out);
            }
            UplinkEvent::Job { job, traceparent } => self.take_job(*job, &traceparent),
            UplinkEvent::KeyRotation(k) => {
                if self.overlay.as_ref().is_some_and(|o| o.on_key_rotation(&k)) {
                    self.report();
                }
            }
            UplinkEvent::Desired(d) => {
                let every = self.apply_desired(&d, true);
                self.publish_status(NodeState::Online);
                return every;
            }
            UplinkEvent::Ack(_) | UplinkEvent::Delivered(_) => {
                if let Some(w) = &mut self.window {
                    w.heard();
                }
            }
            UplinkEvent::Disconnected | UplinkEvent::Failed(_) => {}
        }
        None
    }
}
