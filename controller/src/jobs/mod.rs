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

pub mod cloud;
mod dispatch;
mod settle;
mod tasks;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_inference::{Pool, Ran, RunError};
use fleet_proto::v1::{JobResult, JobStatus, JobTimings, JobView, Node, Placement, Site, SubmitJobRequest};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::ControllerError;
use crate::link::Link;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router::{CloudView, Router, RouterConfig, Target};
use crate::store::Store;
use crate::usage::Usage;

/// Longest model name accepted.
const MAX_MODEL_LEN: usize = 128;
/// Largest input accepted (the inference crate's own limit).
const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest timeout a caller may give.
const MAX_TIMEOUT_MS: u32 = 600_000;
/// How often deadlines and silent nodes are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// `[jobs]`: inference jobs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Time a job gets when the caller sets none. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// An edge node that has not answered within this long loses the job to
    /// the next best site (as when it goes offline). Default 5 s.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Jobs in flight at most; more are refused with RESOURCE_EXHAUSTED. Default 10000.
    pub max_in_flight: usize,
    /// Finished jobs kept in memory (with embeddings) for GetJob. Default 10000.
    pub recent: usize,
    /// Finished jobs waiting to be recorded in the store; more are not
    /// recorded and are counted. Default 4096.
    pub record_queue: usize,
    /// How long job records are kept. Default 30 days.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(5),
            max_in_flight: 10_000,
            recent: 10_000,
            record_queue: 4096,
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl JobsConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), ControllerError> {
        if self.max_in_flight == 0 {
            return Err(ControllerError::Invalid("key `jobs.max_in_flight` must be at least 1".into()));
        }
        if self.attempt_timeout.is_zero() || self.default_timeout.is_zero() {
            return Err(ControllerError::Invalid(
                "keys `jobs.attempt_timeout` and `jobs.default_timeout` must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

/// The job manager's loops, run together by [`JobTasks::run`].
pub struct JobTasks {
    manager: JobManager,
    registry: Registry,
    /// The live view's changes since the router was seeded.
    changes: tokio::sync::broadcast::Receiver<Node>,
    cloud_rx: mpsc::Receiver<CloudDone>,
    record_rx: mpsc::Receiver<JobView>,
}

impl JobTasks {
    /// Runs the loops until `shutdown`; jobs still in flight then end FAILED.
    pub async fn run(self, shutdown: CancellationToken) {
        let m = self.manager;
        tokio::join!(
            m.clone().follow(self.registry, self.changes, shutdown.clone()),
            m.clone().sweep(shutdown.clone()),
            m.clone().cloud_answers(self.cloud_rx, shutdown.clone()),
            m.recorder(self.record_rx, shutdown),
        );
    }
}

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
    /// Sends jobs to the nodes.
    link: Link,
    /// Finished jobs for the store; full means the job is not recorded (counted).
    record: mpsc::Sender<JobView>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Charged with each attempt's inference time, to the token that submitted the job.
    usage: Usage,
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
    /// Only nodes running this version of the model (empty: any).
    version: String,
    tried: Vec<Arc<str>>,
    current: Option<Current>,
    submitted: Instant,
    deadline: Instant,
    /// Callers waiting for the end (SubmitJob without detach).
    waiters: Vec<oneshot::Sender<JobView>>,
    /// The job's span, open until it ends; routing, dispatch and results are its children.
    span: tracing::Span,
}

impl Live {
    /// The API token that submitted the job (charged for its inference).
    fn token(&self) -> &str {
        &self.view.submitted_by
    }
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
    /// The manager, and its tasks to run: the router following the live
    /// view, the deadline sweeper, cloud answers, and the recorder. Cloud
    /// runs are tracked on `tasks`.
    #[must_use]
    pub fn new(
        cfg: JobsConfig,
        router: RouterConfig,
        cloud: Option<Pool>,
        (link, registry, store, metrics, usage): (Link, Registry, Store, Arc<Metrics>, Usage),
        tasks: &TaskTracker,
    ) -> (Self, JobTasks) {
        let (cloud_done, cloud_rx) = mpsc::channel(1024);
        let (record, record_rx) = mpsc::channel(cfg.record_queue.max(1));
        let mut router = Router::new(router);
        let changes = registry.subscribe();
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
                link,
                record,
                store,
                metrics,
                usage,
                tasks: tasks.clone(),
            }),
        };
        let run = JobTasks { manager: m.clone(), registry, changes, cloud_rx, record_rx };
        (m, run)
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

    /// Validates, routes and dispatches a job of the API token `token` (its
    /// inference time is charged to it). Returns its view now and, unless
    /// detached, a receiver of its final view.
    ///
    /// # Errors
    /// INVALID_ARGUMENT for a bad request, RESOURCE_EXHAUSTED when too many
    /// jobs are in flight, UNAVAILABLE with the router's reason when no site can run it.
    pub fn submit(
        &self,
        req: SubmitJobRequest,
        token: &str,
    ) -> Result<(JobView, Option<oneshot::Receiver<JobView>>), Status> {
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
        if !c.model_version.is_empty() {
            fleet_inference::registry::check_version(&c.model_version)
                .map_err(|e| bad("constraints.model_version", e))?;
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
            submitted_by: token.to_owned(),
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel();
        let live = Live {
            view,
            text: req.text,
            labels: c.required_labels.into_iter().collect(),
            placement,
            pin: c.node_id,
            version: c.model_version,
            tried: Vec::new(),
            current: None,
            submitted,
            deadline: submitted + timeout,
            waiters: if req.detach { Vec::new() } else { vec![tx] },
            span: tracing::debug_span!("job", job.id = %job_id),
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
            Err(no) => {
                drop(st);
                Err(Status::unavailable(no.0))
            }
        }
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
