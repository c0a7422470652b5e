//! Inference jobs: the controller's side of ARCHITECTURE.md flow 4.
//!
//! `submit` asks the router for a site, sends the job to that edge node over
//! MQTT (`fleet/v1/nodes/{id}/jobs`) or runs it on the cloud tier's bounded
//! pool, and waits for the result. A node that refuses, fails, goes offline
//! or stays silent past `attempt_timeout` loses the job to the next best site
//! while the deadline allows; an edge answer under the job's confidence
//! threshold is re-run on the cloud tier (joint inference) and both answers
//! are kept. Finished jobs stay in memory (bounded) and are recorded in the
//! store in batches.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_inference::{Output, Pool, Ran, RunError};
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{
    Job, JobAttempt, JobResult, JobStatus, JobTimings, JobView, Node, NodeState, Placement, Site, SubmitJobRequest, job,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::config::JobsConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::{CloudView, Decision, JobSpec, Router, RouterConfig, Target};
use crate::store::Store;

/// Longest model name accepted.
const MAX_MODEL_LEN: usize = 128;
/// Largest input accepted (the inference crate's own limit).
const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest timeout a caller may give.
const MAX_TIMEOUT_MS: u32 = 600_000;
/// How often deadlines and silent nodes are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// The job manager. Cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: JobsConfig,
    state: Mutex<State>,
    /// The cloud tier, when enabled.
    cloud: Option<Pool>,
    /// Cloud answers come back here (bounded by the pool's places, so never full).
    cloud_done: mpsc::Sender<CloudDone>,
    mqtt: rumqttc::AsyncClient,
    /// Finished jobs for the store; full means the job is not recorded (counted).
    record: mpsc::Sender<JobView>,
    store: Store,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
}

struct State {
    router: Router,
    live: HashMap<String, Live>,
    recent: HashMap<String, JobView>,
    recent_order: VecDeque<String>,
}

struct Live {
    view: JobView,
    text: String,
    labels: BTreeMap<String, String>,
    placement: Placement,
    pin: String,
    tried: Vec<Arc<str>>,
    current: Option<Current>,
    submitted: Instant,
    deadline: Instant,
    /// Callers waiting for the end (SubmitJob without detach).
    waiters: Vec<oneshot::Sender<JobView>>,
}

struct Current {
    attempt: u32,
    target: Target,
    sent: Instant,
    route_us: u64,
}

struct CloudDone {
    job_id: String,
    attempt: u32,
    result: Result<Ran, RunError>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

impl JobManager {
    /// Starts the manager's tasks: the router following the live view, the
    /// deadline sweeper, cloud answers, and the recorder.
    #[must_use]
    pub fn start(
        cfg: JobsConfig,
        router: RouterConfig,
        cloud: Option<Pool>,
        (mqtt, registry, store, metrics): (rumqttc::AsyncClient, Registry, Store, Arc<Metrics>),
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Self {
        let (cloud_done, cloud_rx) = mpsc::channel(1024);
        let (record, record_rx) = mpsc::channel(cfg.record_queue.max(1));
        let mut router = Router::new(router);
        for n in registry.list() {
            if let Some(s) = &n.status {
                router.observe(s);
            }
        }
        let m = JobManager {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(State {
                    router,
                    live: HashMap::new(),
                    recent: HashMap::new(),
                    recent_order: VecDeque::new(),
                }),
                cloud,
                cloud_done,
                mqtt,
                record,
                store,
                metrics,
                tasks: tasks.clone(),
            }),
        };
        tasks.spawn(m.clone().follow(registry, shutdown.clone()));
        tasks.spawn(m.clone().sweep(shutdown.clone()));
        tasks.spawn(m.clone().cloud_answers(cloud_rx, shutdown.clone()));
        tasks.spawn(m.clone().recorder(record_rx, shutdown.clone()));
        m
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cloud_view(&self, model: &str) -> CloudView {
        match &self.inner.cloud {
            None => CloudView { enabled: false, has_model: false, saturated: false },
            Some(p) => CloudView { enabled: true, has_model: p.runtime().has(model), saturated: p.is_full() },
        }
    }

    /// Validates, routes and dispatches a job. Returns its view now and, unless
    /// detached, a receiver of its final view.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad request, RESOURCE_EXHAUSTED when too many
    /// jobs are in flight, UNAVAILABLE with the router's reason when no site can run it.
    pub fn submit(&self, req: SubmitJobRequest) -> Result<(JobView, Option<oneshot::Receiver<JobView>>), Status> {
        if req.model.is_empty() || req.model.len() > MAX_MODEL_LEN {
            return Err(bad("model", "give a model name such as minilm or severity"));
        }
        if req.text.is_empty() || req.text.len() > MAX_TEXT_BYTES {
            return Err(bad("text", format!("give 1 to {MAX_TEXT_BYTES} bytes of text")));
        }
        if req.timeout_ms > MAX_TIMEOUT_MS {
            return Err(bad("timeout_ms", format!("at most {MAX_TIMEOUT_MS}")));
        }
        if !(0.0..=1.0).contains(&req.min_confidence) {
            return Err(bad("min_confidence", "between 0 and 1"));
        }
        let c = req.constraints.unwrap_or_default();
        if !c.node_id.is_empty() {
            fleet_proto::validate_node_id(&c.node_id).map_err(|e| bad("constraints.node_id", e))?;
        }
        let placement = Placement::try_from(c.placement).map_err(|_| bad("constraints.placement", "unknown value"))?;
        let timeout = if req.timeout_ms == 0 {
            self.inner.cfg.default_timeout
        } else {
            Duration::from_millis(u64::from(req.timeout_ms))
        };
        let now_ms = fleet_proto::now_unix_ms();
        let submitted = Instant::now();
        let job_id = uuid::Uuid::new_v4().to_string();
        let view = JobView {
            job_id: job_id.clone(),
            model: req.model,
            status: JobStatus::Pending as i32,
            submitted_unix_ms: now_ms,
            deadline_unix_ms: now_ms + i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX / 2),
            min_confidence: req.min_confidence,
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel();
        let live = Live {
            view,
            text: req.text,
            labels: c.required_labels.into_iter().collect(),
            placement,
            pin: c.node_id,
            tried: Vec::new(),
            current: None,
            submitted,
            deadline: submitted + timeout,
            waiters: if req.detach { Vec::new() } else { vec![tx] },
        };
        let mut st = self.state();
        if st.live.len() >= self.inner.cfg.max_in_flight {
            return Err(Status::resource_exhausted(format!(
                "{} jobs are in flight, the most this controller takes (jobs.max_in_flight); retry later",
                st.live.len()
            )));
        }
        self.inner.metrics.jobs_submitted.inc();
        st.live.insert(job_id.clone(), live);
        match self.advance(&mut st, &job_id, None) {
            Ok(()) => {
                let view = st.live.get(&job_id).map(|l| l.view.clone()).or_else(|| st.recent.get(&job_id).cloned());
                drop(st);
                let view = view.unwrap_or_default();
                Ok((view, (!req.detach).then_some(rx)))
            }
            Err(reason) => {
                drop(st);
                Err(Status::unavailable(reason))
            }
        }
    }

    /// Routes the job to its next site and sends it there. When no site is
    /// left the job ends FAILED; `Err` carries the reason when it never ran.
    fn advance(&self, st: &mut State, job_id: &str, joint_reason: Option<String>) -> Result<(), String> {
        loop {
            let Some(l) = st.live.get(job_id) else { return Ok(()) };
            let model = l.view.model.clone();
            let cloud = self.cloud_view(&model);
            let t = std::time::Instant::now();
            let decision = if let Some(reason) = &joint_reason {
                Ok(Decision { target: Target::Cloud, score: 0, reason: reason.clone() })
            } else {
                let spec =
                    JobSpec { model: &model, labels: &l.labels, placement: l.placement, node: &l.pin, tried: &l.tried };
                st.router.route(&spec, cloud)
            };
            let route_us = us(t.elapsed());
            let d = match decision {
                Ok(d) => d,
                Err(reason) => {
                    let never_ran = l.view.attempts.is_empty();
                    self.finish(st, job_id, JobStatus::Failed, &reason);
                    return if never_ran { Err(reason) } else { Ok(()) };
                }
            };
            let Some(l) = st.live.get_mut(job_id) else { return Ok(()) };
            let attempt = u32::try_from(l.view.attempts.len()).unwrap_or(u32::MAX - 1) + 1;
            let now = Instant::now();
            let mut a = JobAttempt {
                attempt,
                site: if d.target == Target::Cloud { Site::Cloud } else { Site::Edge } as i32,
                node_id: match &d.target {
                    Target::Edge(id) => id.to_string(),
                    Target::Cloud => String::new(),
                },
                reason: d.reason.clone(),
                status: JobStatus::Running as i32,
                dispatched_unix_ms: fleet_proto::now_unix_ms(),
                ..Default::default()
            };
            let left = l.deadline.saturating_duration_since(now);
            let sent = match &d.target {
                Target::Edge(id) => {
                    let job = Job {
                        job_id: job_id.to_owned(),
                        model: model.clone(),
                        input: Some(job::Input::Text(l.text.clone())),
                        deadline_unix_ms: l.view.deadline_unix_ms,
                        min_confidence: l.view.min_confidence,
                        attempt,
                        budget_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
                    };
                    let topic = node_topic(id, Channel::Jobs);
                    // QoS 0, as the node's answer: a job's delivery guarantee is end to end
                    // (an answer, or a re-route after jobs.attempt_timeout). QoS 1 acks make a
                    // broker without TCP_NODELAY (rumqttd; Mosquitto unless set_tcp_nodelay)
                    // hold its next small write for the peer's delayed ACK: 40 ms a job
                    // (docs/routing.md, "Latency").
                    let ok = self
                        .inner
                        .mqtt
                        .try_publish(topic, rumqttc::QoS::AtMostOnce, false, job.encode_to_vec())
                        .is_ok();
                    if ok {
                        st.router.dispatched(id);
                    }
                    ok
                }
                Target::Cloud => self.run_in_cloud(job_id, attempt, &model, &l.text, l.deadline),
            };
            if !sent {
                a.status = JobStatus::Failed as i32;
                a.error = match &d.target {
                    Target::Edge(_) => "the controller's MQTT queue is full".into(),
                    Target::Cloud => "the cloud pool filled up".into(),
                };
                if let Target::Edge(id) = &d.target {
                    l.tried.push(id.clone());
                }
                l.view.attempts.push(a);
                if joint_reason.is_some() {
                    // No cloud second opinion: the edge answer stands.
                    self.finish_with_best(st, job_id);
                    return Ok(());
                }
                continue;
            }
            l.view.status = JobStatus::Running as i32;
            l.view.attempts.push(a);
            l.current = Some(Current { attempt, target: d.target, sent: now, route_us });
            return Ok(());
        }
    }

    fn run_in_cloud(&self, job_id: &str, attempt: u32, model: &str, text: &str, deadline: Instant) -> bool {
        let Some(place) = self.inner.cloud.as_ref().and_then(Pool::reserve) else { return false };
        let (job_id, model, text) = (job_id.to_owned(), model.to_owned(), text.to_owned());
        let done = self.inner.cloud_done.clone();
        self.inner.tasks.spawn(async move {
            let result = place.run(model, text, deadline).await;
            let _ = done.send(CloudDone { job_id, attempt, result }).await;
        });
        true
    }

    /// A node's answer (from the MQTT reader).
    pub fn on_result(&self, node_id: &str, r: JobResult) {
        let mut st = self.state();
        let Some(l) = st.live.get(&r.job_id) else { return };
        let current = l.current.as_ref().filter(|c| c.attempt == r.attempt && c.target.is_node(node_id));
        let Some(c) = current else {
            // A late answer to an attempt already given up (or another replica's job).
            if l.view.attempts.iter().any(|a| a.attempt == r.attempt) {
                self.inner.metrics.jobs_late_results.inc();
            }
            return;
        };
        let elapsed = c.sent.elapsed();
        let route_us = c.route_us;
        let node_t = r.timings.unwrap_or_default();
        let transport = us(elapsed).saturating_sub(node_t.total_us);
        #[allow(clippy::cast_precision_loss)] // a round trip in µs fits an f64
        st.router.observe_rtt(node_id, transport as f64 / 1000.0);
        st.router.finished(node_id);
        let mut r = r;
        r.timings = Some(JobTimings { route_us, transport_us: transport, ..node_t });
        self.settle(&mut st, r, Site::Edge);
    }

    /// Records an attempt's answer (a node's, or the cloud pool's) on the
    /// job's current attempt, then decides what follows.
    fn settle(&self, st: &mut State, r: JobResult, site: Site) {
        let Some(l) = st.live.get_mut(&r.job_id) else { return };
        l.current = None;
        let status = JobStatus::try_from(r.status).unwrap_or(JobStatus::Failed);
        if let Some(a) = l.view.attempts.last_mut() {
            a.status = status as i32;
            a.error = r.error;
            a.timings = r.timings;
            a.label = r.label;
            a.confidence = r.confidence;
        }
        if status == JobStatus::Succeeded {
            l.view.embedding = r.embedding;
        }
        self.after_attempt(st, &r.job_id, status, site);
    }

    /// What follows an attempt's end: done, joint inference, or the next site.
    fn after_attempt(&self, st: &mut State, job_id: &str, status: JobStatus, site: Site) {
        let Some(l) = st.live.get_mut(job_id) else { return };
        match status {
            JobStatus::Succeeded => {
                let conf = l.view.attempts.last().map_or(1.0, |a| a.confidence);
                let min = l.view.min_confidence;
                let may_cloud = l.placement == Placement::Any && l.labels.is_empty() && l.pin.is_empty();
                let cloud = self.cloud_view(&l.view.model);
                if site == Site::Edge && min > 0.0 && conf < min && may_cloud && cloud.enabled && cloud.has_model {
                    let reason = format!("joint inference: the edge answer's confidence {conf:.3} is under {min:.3}");
                    self.inner.metrics.jobs_joint.inc();
                    let _ = self.advance(st, job_id, Some(reason));
                } else {
                    self.finish_with_best(st, job_id);
                }
            }
            JobStatus::Expired => self.finish(st, job_id, JobStatus::Expired, "the deadline passed on the node"),
            _ => {
                // Refused or failed: try the next site. A failed cloud re-run of joint inference keeps the edge answer.
                if site == Site::Cloud && l.view.attempts.iter().any(|a| a.status == JobStatus::Succeeded as i32) {
                    self.finish_with_best(st, job_id);
                    return;
                }
                if site == Site::Edge
                    && let Some(a) = l.view.attempts.last()
                {
                    l.tried.push(a.node_id.as_str().into());
                }
                self.inner.metrics.jobs_rerouted.inc();
                let _ = self.advance(st, job_id, None);
            }
        }
    }

    /// Ends the job with its last successful attempt's answer.
    fn finish_with_best(&self, st: &mut State, job_id: &str) {
        self.finish(st, job_id, JobStatus::Succeeded, "");
    }

    /// Ends a job: final fields from the last successful attempt (if any),
    /// waiters told, kept in memory and queued for the store.
    fn finish(&self, st: &mut State, job_id: &str, status: JobStatus, error: &str) {
        let Some(mut l) = st.live.remove(job_id) else { return };
        if let Some(c) = l.current.take()
            && let Target::Edge(id) = &c.target
        {
            st.router.finished(id);
        }
        let v = &mut l.view;
        let best = v.attempts.iter().rev().find(|a| a.status == JobStatus::Succeeded as i32).cloned();
        v.status = status as i32;
        v.error = error.to_owned();
        v.finished_unix_ms = fleet_proto::now_unix_ms();
        if let Some(a) = best.filter(|_| status == JobStatus::Succeeded) {
            v.site = a.site;
            v.node_id = a.node_id;
            v.label = a.label;
            v.confidence = a.confidence;
            v.reason = a.reason;
            v.timings = Some(JobTimings { end_to_end_us: us(l.submitted.elapsed()), ..a.timings.unwrap_or_default() });
        } else {
            v.embedding.clear();
            v.reason = v.attempts.last().map(|a| a.reason.clone()).unwrap_or_default();
            v.timings = Some(JobTimings { end_to_end_us: us(l.submitted.elapsed()), ..Default::default() });
        }
        let view = l.view;
        self.inner.metrics.job_finished(crate::store::jobs::status_word(view.status), view.site);
        for w in l.waiters {
            let _ = w.send(view.clone());
        }
        if self.inner.record.try_send(view.clone()).is_err() {
            self.inner.metrics.jobs_unrecorded.inc();
        }
        st.recent_order.push_back(job_id.to_owned());
        st.recent.insert(job_id.to_owned(), view);
        while st.recent_order.len() > self.inner.cfg.recent {
            if let Some(old) = st.recent_order.pop_front() {
                st.recent.remove(&old);
            }
        }
        self.inner.metrics.jobs_in_flight.set(i64::try_from(st.live.len()).unwrap_or(i64::MAX));
    }

    /// Gives up the current attempt of every job on `node_id` and re-routes them.
    fn node_lost(&self, st: &mut State, node_id: &str, why: &str) {
        let ids: Vec<String> = st
            .live
            .iter()
            .filter(|(_, l)| l.current.as_ref().is_some_and(|c| c.target.is_node(node_id)))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.abandon(st, &id, why);
        }
    }

    fn abandon(&self, st: &mut State, job_id: &str, why: &str) {
        let Some(l) = st.live.get_mut(job_id) else { return };
        let Some(c) = l.current.take() else { return };
        if let Target::Edge(id) = &c.target {
            l.tried.push(id.clone());
        }
        if let Some(a) = l.view.attempts.last_mut() {
            a.status = JobStatus::Abandoned as i32;
            a.error = why.to_owned();
        }
        if let Target::Edge(id) = &c.target {
            st.router.finished(id);
            tracing::info!(job_id, node_id = %id, why, "Job re-routed.");
        }
        self.inner.metrics.jobs_rerouted.inc();
        let _ = self.advance(st, job_id, None);
    }

    /// Follows the live view: every status into the router; offline nodes lose their jobs.
    async fn follow(self, registry: Registry, shutdown: CancellationToken) {
        let mut changes = registry.subscribe();
        loop {
            let n: Node = tokio::select! {
                () = shutdown.cancelled() => return,
                r = changes.recv() => match r {
                    Ok(n) => n,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let all = registry.list();
                        let mut st = self.state();
                        for n in &all {
                            if let Some(s) = &n.status {
                                st.router.observe(s);
                            }
                        }
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            let Some(s) = &n.status else { continue };
            let mut st = self.state();
            st.router.observe(s);
            if s.state == NodeState::Offline as i32 {
                self.node_lost(&mut st, &n.node_id, "the node went offline");
            }
        }
    }

    /// Expires jobs at their deadline and gives up on silent nodes.
    async fn sweep(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let mut st = self.state();
            let mut expired = Vec::new();
            let mut silent = Vec::new();
            for (id, l) in &st.live {
                if now >= l.deadline {
                    expired.push(id.clone());
                } else if let Some(c) = &l.current
                    && matches!(c.target, Target::Edge(_))
                    && now.duration_since(c.sent) >= self.inner.cfg.attempt_timeout
                {
                    silent.push(id.clone());
                }
            }
            for id in expired {
                if let Some(a) = st.live.get_mut(&id).and_then(|l| l.view.attempts.last_mut())
                    && a.status == JobStatus::Running as i32
                {
                    a.status = JobStatus::Expired as i32;
                }
                self.finish(&mut st, &id, JobStatus::Expired, "the deadline passed before an answer came");
            }
            let why = format!("no answer within {:?} (jobs.attempt_timeout)", self.inner.cfg.attempt_timeout);
            for id in silent {
                self.abandon(&mut st, &id, &why);
            }
        }
        // Stopping: callers still waiting get their job as it stands.
        let mut st = self.state();
        let ids: Vec<String> = st.live.keys().cloned().collect();
        for id in ids {
            self.finish(&mut st, &id, JobStatus::Failed, "the controller is shutting down");
        }
    }

    async fn cloud_answers(self, mut rx: mpsc::Receiver<CloudDone>, shutdown: CancellationToken) {
        loop {
            let done = tokio::select! {
                () = shutdown.cancelled() => return,
                d = rx.recv() => match d { Some(d) => d, None => return },
            };
            let mut st = self.state();
            let Some(l) = st.live.get(&done.job_id) else { continue };
            let Some(c) = l.current.as_ref().filter(|c| c.attempt == done.attempt && c.target == Target::Cloud) else {
                continue;
            };
            let mut r = JobResult { job_id: done.job_id, attempt: done.attempt, ..Default::default() };
            match done.result {
                Ok(ran) => {
                    r.status = JobStatus::Succeeded as i32;
                    r.timings = Some(JobTimings {
                        queued_us: us(ran.queued),
                        tokenize_us: us(ran.answer.times.tokenize),
                        inference_us: us(ran.answer.times.inference),
                        total_us: us(ran.total),
                        route_us: c.route_us,
                        ..Default::default()
                    });
                    r.confidence = ran.answer.confidence();
                    match ran.answer.output {
                        Output::Embedding(v) => r.embedding = v,
                        Output::Class(class) => r.label = class.label,
                    }
                }
                Err(RunError::Expired) => {
                    r.status = JobStatus::Expired as i32;
                    r.error = "the deadline passed in the cloud queue".into();
                }
                Err(e) => {
                    r.status = JobStatus::Failed as i32;
                    r.error = e.to_string();
                }
            }
            self.settle(&mut st, r, Site::Cloud);
        }
    }

    /// Writes finished jobs to the store in batches; deletes old records hourly.
    async fn recorder(self, mut rx: mpsc::Receiver<JobView>, shutdown: CancellationToken) {
        let mut prune = tokio::time::interval(Duration::from_secs(3600));
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    while let Ok(v) = rx.try_recv() {
                        batch.push(v);
                    }
                    if !batch.is_empty() && let Err(e) = self.inner.store.put_jobs(&batch).await {
                        tracing::warn!(error = %e, jobs = batch.len(), "Could not record the last jobs.");
                    }
                    return;
                }
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        return;
                    }
                    if let Err(e) = self.inner.store.put_jobs(&batch).await {
                        self.inner.metrics.jobs_unrecorded.inc_by(batch.len() as u64);
                        tracing::warn!(error = %e, jobs = batch.len(), "Could not record finished jobs.");
                    }
                    batch.clear();
                }
                _ = prune.tick() => {
                    let keep = i64::try_from(self.inner.cfg.retention.as_millis()).unwrap_or(i64::MAX / 2);
                    if let Err(e) = self.inner.store.delete_jobs_before(fleet_proto::now_unix_ms() - keep).await {
                        tracing::warn!(error = %e, "Could not delete old job records.");
                    }
                }
            }
        }
    }

    /// A job: in flight, recent, or recorded.
    ///
    /// # Errors
    /// Database errors.
    pub async fn get(&self, job_id: &str) -> Result<Option<JobView>, crate::ControllerError> {
        {
            let st = self.state();
            if let Some(v) = st.live.get(job_id).map(|l| &l.view).or_else(|| st.recent.get(job_id)) {
                return Ok(Some(v.clone()));
            }
        }
        self.inner.store.get_job(job_id).await
    }

    /// Jobs newest first: those in flight, then recorded ones (without embeddings).
    ///
    /// # Errors
    /// Database errors.
    pub async fn list(&self, node_id: &str, status: i32, limit: u32) -> Result<Vec<JobView>, crate::ControllerError> {
        let keep = |v: &JobView| (node_id.is_empty() || v.node_id == node_id) && (status == 0 || v.status == status);
        let mut out: Vec<JobView> = {
            let st = self.state();
            st.live.values().map(|l| l.view.clone()).chain(st.recent.values().cloned()).filter(|v| keep(v)).collect()
        };
        let stored = self
            .inner
            .store
            .list_jobs((!node_id.is_empty()).then_some(node_id), (status != 0).then_some(status), limit)
            .await?;
        let seen: std::collections::HashSet<String> = out.iter().map(|v| v.job_id.clone()).collect();
        out.extend(stored.into_iter().filter(|v| !seen.contains(&v.job_id)));
        out.sort_by(|a, b| b.submitted_unix_ms.cmp(&a.submitted_unix_ms).then_with(|| a.job_id.cmp(&b.job_id)));
        out.truncate(limit as usize);
        for v in &mut out {
            v.embedding.clear();
        }
        Ok(out)
    }
}
