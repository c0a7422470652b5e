//! What the agent believes of the controller (docs/security.md, "Both
//! directions"). Every message the controller sends a node comes inside a
//! `SignedMessage` for that node, signed with the controller's key of the
//! generation enrollment handed out; the agent checks it before anything
//! acts on it, and each kind's own replay rule: a job is taken once and not
//! after its deadline, a desired state never moves back a version, a key
//! rotation never moves back a generation. An ack needs no rule of its own:
//! it only ever says what the controller holds, so an old one changes
//! nothing. Refusals are counted by reason and said once a minute.
//!
//! The controller's key rotates with an overlap (docs/security.md): a
//! `ControllerKeys` message, signed with a key the node holds, hands it the
//! key that signs and the newest; the node takes both, keeps them in its
//! enrollment, reports the newest in its status, and drops the older at the
//! first message signed with the newer.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_proto::signing::{Refused, verify_from_controller};
use fleet_proto::v1::{Ack, ControllerKeys, DesiredState, Job, KeyRotation, MessageKind, SignedMessage};
use prost::Message;

use super::UplinkEvent;
pub use super::held::Held;

/// How often refusals are said at most.
const SAY_EVERY: Duration = Duration::from_secs(60);
/// Job ids remembered (until each one's deadline); past this, the oldest
/// deadlines go first.
const JOBS_REMEMBERED: usize = 4096;

/// Whose word the agent takes for the controller's.
#[derive(Debug, Clone)]
pub enum Controller {
    /// Not enrolled: a lab controller that takes unenrolled nodes, on the
    /// broker's word (the node signs nothing either).
    Lab,
    /// The controller's keys, from enrollment and rotations since.
    Keys(Box<Held>),
    /// Enrolled before the controller signed its messages: nothing is
    /// believed until the node enrolls again.
    Missing,
}

impl Controller {
    /// Whose word a node with enrollment `e` takes for the controller's.
    #[must_use]
    pub fn of(e: &crate::enroll::Enrollment) -> Self {
        let key = |text: &str, generation: u64| {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
            let key = fleet_proto::signing::verifying_key(&bytes).ok()?;
            (generation > 0).then_some((generation, key))
        };
        match key(&e.controller_signing_key, e.controller_key_generation) {
            Some(current) => Controller::Keys(Box::new(Held {
                current,
                next: key(&e.controller_next_signing_key, e.controller_next_key_generation)
                    .filter(|(g, _)| *g > current.0),
            })),
            None => Controller::Missing,
        }
    }
}

/// What the checks report to the agent's status: refusals by reason
/// (`Refused::as_str`) and the newest controller key generation held.
#[derive(Debug, Default)]
pub struct TrustReport {
    counts: std::sync::Mutex<HashMap<&'static str, u64>>,
    total: AtomicU64,
    generation: AtomicU64,
}

impl TrustReport {
    /// The newest generation of the controller's key held (0: not enrolled).
    #[must_use]
    pub fn controller_key_generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn add(&self, r: Refused) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut c) = self.counts.lock() {
            *c.entry(r.as_str()).or_default() += 1;
        }
    }

    /// Every refusal so far.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Refusals per reason, sorted.
    #[must_use]
    pub fn by_reason(&self) -> Vec<(&'static str, u64)> {
        let mut v: Vec<_> = self.counts.lock().map(|c| c.iter().map(|(k, v)| (*k, *v)).collect()).unwrap_or_default();
        v.sort_unstable();
        v
    }
}

/// The checks, one per node; owned by the uplink's driver.
pub struct Trust {
    node_id: String,
    controller: Controller,
    report: Arc<TrustReport>,
    /// Where the enrollment is kept (the controller's keys go with it); `None` in tests.
    data_dir: Option<std::path::PathBuf>,
    jobs: HashMap<String, i64>,
    desired_high: u64,
    rotation_high: u64,
    said: Option<Instant>,
}

impl Trust {
    #[must_use]
    pub fn new(
        node_id: &str,
        controller: Controller,
        report: Arc<TrustReport>,
        data_dir: Option<std::path::PathBuf>,
    ) -> Self {
        if let Controller::Keys(h) = &controller {
            report.generation.store(h.newest(), Ordering::Relaxed);
        }
        Self {
            node_id: node_id.to_owned(),
            controller,
            report,
            data_dir,
            jobs: HashMap::new(),
            desired_high: 0,
            rotation_high: 0,
            said: None,
        }
    }

    /// The keys changed: kept with the enrollment (a restart holds them too)
    /// and reported.
    fn keys_changed(&self, h: &Held) {
        self.report.generation.store(h.newest(), Ordering::Relaxed);
        tracing::info!(signing = h.current.0, newest = h.newest(), "The controller's keys changed.");
        if let Some(dir) = &self.data_dir
            && let Err(e) = h.keep(dir)
        {
            tracing::warn!(error = %e, "The controller's new keys could not be kept on disk; they are held until the agent stops, and come again from the controller.");
        }
    }

    /// The event a message of `kind` from the controller stands for, if it
    /// passes every check; a refusal is counted and, once a minute, said.
    pub fn open(&mut self, kind: MessageKind, body: &[u8], now_ms: i64) -> Option<UplinkEvent> {
        match self.check(kind, body, now_ms) {
            Ok(ev) => ev,
            Err(r) => {
                self.report.add(r);
                if self.said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                    self.said = Some(Instant::now());
                    let hint = if matches!(self.controller, Controller::Missing) {
                        "this node was enrolled before the controller signed its messages: enroll it again \
                         (`fleet-agent enroll --force` with a new token)"
                    } else {
                        "a message on this node's topics that the controller did not sign for it: another \
                         client of the broker, or a replay; nothing was done"
                    };
                    tracing::warn!(
                        reason = r.as_str(),
                        ?kind,
                        refused_so_far = self.report.total(),
                        "Message refused: {hint}."
                    );
                }
                None
            }
        }
    }

    fn check(&mut self, kind: MessageKind, body: &[u8], now_ms: i64) -> Result<Option<UplinkEvent>, Refused> {
        let m = SignedMessage::decode(body).map_err(|_| Refused::Malformed)?;
        if m.kind != kind as i32 {
            return Err(Refused::UnknownKind);
        }
        match &self.controller {
            Controller::Keys(h) => {
                verify_from_controller(h.key(m.boot_no).ok_or(Refused::UnknownKey)?, &self.node_id, &m)?;
            }
            Controller::Missing => return Err(Refused::UnknownKey),
            Controller::Lab if m.node_id != self.node_id => return Err(Refused::WrongNode),
            Controller::Lab => {}
        }
        if kind == MessageKind::ControllerKeys {
            self.take_keys(&m.payload)?;
            return Ok(None);
        }
        let ev = self.event(kind, &m.payload, &m.traceparent, now_ms)?;
        // The controller signs with the newer key: the rotation is over for this node.
        if let Controller::Keys(h) = &mut self.controller
            && h.promote(m.boot_no)
        {
            let h = h.clone();
            self.keys_changed(&h);
        }
        Ok(Some(ev))
    }

    /// The controller's keys, signed with one this node holds.
    fn take_keys(&mut self, payload: &[u8]) -> Result<(), Refused> {
        let keys = ControllerKeys::decode(payload).map_err(|_| Refused::Malformed)?;
        let Controller::Keys(h) = &mut self.controller else { return Ok(()) };
        if h.take(&keys)? {
            let h = h.clone();
            self.keys_changed(&h);
        }
        Ok(())
    }

    /// The event of a checked message, by its kind's own replay rule.
    fn event(&mut self, kind: MessageKind, payload: &[u8], trace: &str, now_ms: i64) -> Result<UplinkEvent, Refused> {
        match kind {
            MessageKind::Ack => Ack::decode(payload).map(UplinkEvent::Ack).map_err(|_| Refused::Malformed),
            MessageKind::Job => {
                let job = Job::decode(payload).map_err(|_| Refused::Malformed)?;
                self.fresh_job(&job, now_ms)?;
                Ok(UplinkEvent::Job { job: Box::new(job), traceparent: trace.to_owned() })
            }
            MessageKind::Desired => {
                let d = DesiredState::decode(payload).map_err(|_| Refused::Malformed)?;
                if d.node_id != self.node_id {
                    return Err(Refused::WrongNode);
                }
                // The same version again is a retained copy after a reconnect.
                if d.version < self.desired_high {
                    return Err(Refused::Replay);
                }
                self.desired_high = d.version;
                Ok(UplinkEvent::Desired(d))
            }
            MessageKind::KeyRotation => {
                let k = KeyRotation::decode(payload).map_err(|_| Refused::Malformed)?;
                if k.generation < self.rotation_high {
                    return Err(Refused::Replay);
                }
                self.rotation_high = k.generation;
                Ok(UplinkEvent::KeyRotation(k))
            }
            _ => Err(Refused::UnknownKind),
        }
    }

    /// A job is taken once, and not after its deadline.
    fn fresh_job(&mut self, job: &Job, now_ms: i64) -> Result<(), Refused> {
        if job.deadline_unix_ms != 0 && job.deadline_unix_ms < now_ms {
            return Err(Refused::Replay);
        }
        self.jobs.retain(|_, deadline| *deadline >= now_ms);
        let id = format!("{}#{}", job.job_id, job.attempt);
        if self.jobs.contains_key(&id) {
            return Err(Refused::Replay);
        }
        if self.jobs.len() >= JOBS_REMEMBERED
            && let Some(oldest) = self.jobs.iter().min_by_key(|(_, d)| **d).map(|(k, _)| k.clone())
        {
            self.jobs.remove(&oldest);
        }
        self.jobs.insert(id, if job.deadline_unix_ms == 0 { i64::MAX } else { job.deadline_unix_ms });
        Ok(())
    }
}

#[cfg(test)]
#[path = "trust_tests.rs"]
mod tests;
