//! The node's inference jobs: models listed at start off the event loop and
//! each loaded the first time a job needs it (a node that never runs one never
//! holds it in memory), jobs run
//! on a bounded pool of blocking threads (fleet-inference's `Pool`), admitted
//! only while the power profile allows (`max_jobs` running plus waiting) and
//! only before their deadline, measured on the node's own monotonic clock
//! from the budget the controller gave (a Pi without RTC may be hours off).
//! Every job gets a `JobResult`: refused, expired, failed or succeeded, with
//! its timings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_inference::{Output, Place, Pool, RunError, Runtime};
use fleet_proto::v1::{Job, JobResult, JobStatus, JobTimings, job};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use serde::Deserialize;

use crate::AgentError;

/// `[inference]`: the jobs the controller sends this node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// Take jobs at all. Default true.
    pub enabled: bool,
    /// Model directory (a folder per model with its model.toml); empty: only
    /// the built-in classifier. Default "".
    pub model_dir: PathBuf,
    /// Inference threads. Default 1.
    pub workers: usize,
    /// Jobs waiting for a thread at most (the power profile's `max_jobs`
    /// caps running plus waiting too). Default 4.
    pub queue: usize,
    /// Simulated hardware only: each job holds its thread this many times as
    /// long as it takes here, to behave like a Pi. Default 1.
    pub sim_slowdown: f64,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self { enabled: true, model_dir: PathBuf::new(), workers: 1, queue: 4, sim_slowdown: 1.0 }
    }
}

impl InferenceConfig {
    /// Checks the values the types cannot.
    ///
    /// # Errors
    /// A sentence naming the key.
    pub fn validate(&self) -> Result<(), AgentError> {
        if self.workers == 0 {
            return Err(AgentError::Invalid("key `inference.workers`: use at least 1".into()));
        }
        if !(self.sim_slowdown >= 1.0 && self.sim_slowdown <= 1000.0) {
            return Err(AgentError::Invalid("key `inference.sim_slowdown`: a factor from 1 to 1000".into()));
        }
        Ok(())
    }
}

/// The models of `dirs` (a later one's model replacing an earlier one's of
/// the same name), listed, not loaded; the ones refused are logged.
#[must_use]
pub fn open_models(dirs: &[PathBuf]) -> Runtime {
    let refs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
    let (rt, errors) = Runtime::open_dirs(&refs, &[]);
    for e in errors {
        tracing::error!(error = %e, "A model was not loaded; jobs for it go to other nodes.");
    }
    rt
}

/// A run's result, the span it ran in (its result is sent within it), and its model.
pub type Finished = (JobResult, tracing::Span, String);

/// What the agent holds of its inference jobs.
pub struct Jobs {
    node_id: String,
    enabled: bool,
    workers: usize,
    queue: usize,
    slowdown: f64,
    /// The model directory being read on a blocking thread; taken when done.
    loading: Option<JoinHandle<Runtime>>,
    /// None until the models are loaded (or when jobs are disabled).
    pool: Option<Pool>,
    /// Results of finished runs, for the event loop to publish. Bounded by
    /// the pool's places (each run sends one), so a send never waits long.
    results_tx: mpsc::Sender<Finished>,
    /// The runs in progress, so shutdown can wait for them (bounded).
    tasks: TaskTracker,
    /// Refusing everything from now on (shutting down).
    stopped: bool,
    pub refused: u64,
    pub ran: u64,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs one job in its place of the pool and fills in its result.
async fn run(
    place: Place,
    model: String,
    text: String,
    received: Instant,
    deadline: Instant,
    mut r: JobResult,
) -> JobResult {
    let ran = place.run(model, text, deadline).await;
    let total = received.elapsed();
    match ran {
        Ok(ran) => {
            r.timings = Some(JobTimings {
                queued_us: us(ran.queued),
                tokenize_us: us(ran.answer.times.tokenize),
                inference_us: us(ran.answer.times.inference),
                total_us: us(total),
                ..Default::default()
            });
            r.confidence = ran.answer.confidence();
            match ran.answer.output {
                Output::Embedding(v) => r.embedding = v,
                Output::Class(c) => r.label = c.label,
            }
            r.status = if Instant::now() > deadline { JobStatus::Expired } else { JobStatus::Succeeded } as i32;
        }
        Err(RunError::Expired) => {
            r.status = JobStatus::Expired as i32;
            r.error = "the deadline passed while the job waited for a worker".into();
        }
        Err(e) => {
            r.status = JobStatus::Failed as i32;
            r.error = e.to_string();
        }
    }
    r
}

impl Jobs {
    /// Starts loading the models (when enabled). The receiver gets every result to publish.
    /// `dirs` are the model directories, a later one's model replacing an earlier one's of the same name.
    #[must_use]
    pub fn start(
        cfg: &InferenceConfig,
        dirs: Vec<PathBuf>,
        node_id: &str,
        sim_hardware: bool,
    ) -> (Self, mpsc::Receiver<Finished>) {
        let loading = cfg.enabled.then(|| tokio::task::spawn_blocking(move || open_models(&dirs)));
        let (results_tx, results) = mpsc::channel(cfg.workers + cfg.queue + 1);
        let jobs = Self {
            node_id: node_id.to_owned(),
            enabled: cfg.enabled,
            workers: cfg.workers,
            queue: cfg.queue,
            slowdown: if sim_hardware { cfg.sim_slowdown } else { 1.0 },
            loading,
            pool: None,
            results_tx,
            tasks: TaskTracker::new(),
            stopped: false,
            refused: 0,
            ran: 0,
        };
        (jobs, results)
    }

    /// Resolves when the models are loaded (never, if they are not loading).
    pub async fn loaded(&mut self) {
        let Some(h) = self.loading.as_mut() else { return std::future::pending().await };
        let r = h.await;
        self.loading = None;
        match r {
            Ok(rt) => {
                tracing::info!(models = ?rt.names(), "Inference models available (each loaded by its first job).");
                self.pool = Some(Pool::new(Arc::new(rt), self.workers, self.queue).with_slowdown(self.slowdown));
            }
            Err(e) => tracing::error!(error = %e, "Loading the inference models failed; this node takes no jobs."),
        }
    }

    /// Runs jobs on `rt` from now on (a model version changed); runs in
    /// progress finish on the models they started with.
    pub fn replace_runtime(&mut self, rt: Runtime) {
        match &self.pool {
            Some(p) => self.pool = Some(p.with_runtime(Arc::new(rt))),
            // Still loading at start: the new models win over what loads.
            None if self.enabled => {
                self.loading = None;
                let pool = Pool::new(Arc::new(rt), self.workers, self.queue).with_slowdown(self.slowdown);
                self.pool = Some(pool);
            }
            None => {}
        }
        if let Some(p) = &self.pool {
            tracing::info!(models = ?p.runtime().names(), "Inference models now offered.");
        }
    }

    /// True while models are being loaded.
    #[must_use]
    pub fn is_loading(&self) -> bool {
        self.loading.is_some()
    }

    /// Models this node offers (none once stopped), narrowed to `wanted` when it is not empty.
    #[must_use]
    pub fn models(&self, wanted: &[String]) -> Vec<String> {
        if self.stopped {
            return Vec::new();
        }
        let Some(p) = &self.pool else { return Vec::new() };
        p.runtime().names().into_iter().filter(|m| wanted.is_empty() || wanted.contains(m)).collect()
    }

    /// Jobs running or waiting.
    #[must_use]
    pub fn active(&self) -> u32 {
        self.pool.as_ref().map_or(0, |p| u32::try_from(p.active()).unwrap_or(u32::MAX))
    }

    /// Takes a job: starts it within `span`, or answers at once why not (the returned result).
    pub fn take(
        &mut self,
        job: Job,
        span: tracing::Span,
        max_jobs: u32,
        profile: &str,
        wanted: &[String],
    ) -> Option<JobResult> {
        let received = Instant::now();
        let mut r = JobResult {
            job_id: job.job_id.clone(),
            node_id: self.node_id.clone(),
            attempt: job.attempt,
            status: JobStatus::Refused as i32,
            ..Default::default()
        };
        let text = match job.input {
            Some(job::Input::Text(t)) => t,
            _ => {
                r.status = JobStatus::Failed as i32;
                r.error = "this node takes text input only".into();
                return Some(r);
            }
        };
        let refuse = |mut r: JobResult, why: String| {
            r.error = why;
            Some(r)
        };
        let Some(pool) = self.pool.as_ref().filter(|_| self.enabled && !self.stopped) else {
            self.refused += 1;
            let why = if self.stopped { "the agent is shutting down" } else { "the node's models are not loaded" };
            return refuse(r, why.into());
        };
        if !pool.runtime().has(&job.model) || (!wanted.is_empty() && !wanted.contains(&job.model)) {
            self.refused += 1;
            return refuse(r, format!("model {:?} is not on this node", job.model));
        }
        if self.active() >= max_jobs {
            self.refused += 1;
            return refuse(r, format!("power profile {profile} admits {max_jobs} jobs at once"));
        }
        if job.budget_ms == 0 {
            r.status = JobStatus::Expired as i32;
            r.error = "the job arrived after its deadline".into();
            return Some(r);
        }
        let Some(place) = pool.reserve() else {
            self.refused += 1;
            return refuse(r, "the node's job queue is full".into());
        };
        let deadline = received + Duration::from_millis(u64::from(job.budget_ms));
        let tx = self.results_tx.clone();
        self.ran += 1;
        let run_span = span.clone();
        self.tasks.spawn(tracing::Instrument::instrument(
            async move {
                let r = run(place, job.model.clone(), text, received, deadline, r).await;
                let _ = tx.send((r, span, job.model)).await;
            },
            run_span,
        ));
        None
    }

    /// Refuses new jobs from now on (shutdown: "stop taking jobs" comes first).
    pub fn stop(&mut self) {
        self.stopped = true;
        self.tasks.close();
    }

    /// Waits up to `grace` for the runs in progress.
    pub async fn drain(&self, grace: Duration) {
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(model: &str, budget_ms: u32) -> Job {
        Job {
            job_id: "j".into(),
            model: model.into(),
            input: Some(job::Input::Text("disk full, data lost".into())),
            attempt: 2,
            budget_ms,
            ..Default::default()
        }
    }

    async fn started(queue: usize) -> (Jobs, mpsc::Receiver<Finished>) {
        let cfg = InferenceConfig { workers: 1, queue, ..Default::default() };
        let (mut jobs, rx) = Jobs::start(&cfg, Vec::new(), "n1", false);
        assert!(jobs.models(&[]).is_empty(), "nothing offered before the models are loaded");
        jobs.loaded().await;
        (jobs, rx)
    }

    #[tokio::test]
    async fn runs_and_answers_with_timings() {
        let (mut jobs, mut rx) = started(1).await;
        assert_eq!(jobs.models(&[]), ["severity"]);
        assert!(jobs.take(job("severity", 5000), tracing::Span::none(), 4, "performance", &[]).is_none());
        let (r, _span, model) = rx.recv().await.unwrap();
        assert_eq!(model, "severity");
        assert_eq!((r.status, r.attempt, r.label.as_str(), r.node_id.as_str()), (3, 2, "critical", "n1"));
        let t = r.timings.unwrap();
        assert!(t.total_us >= t.inference_us && r.confidence > 0.5);
    }

    #[tokio::test]
    async fn refuses_what_it_should_not_run() {
        let (mut jobs, _rx) = started(0).await;
        let why = |r: Option<JobResult>| r.map(|r| (r.status, r.error)).unwrap();
        let (s, e) = why(jobs.take(job("minilm", 5000), tracing::Span::none(), 4, "performance", &[]));
        assert_eq!(s, JobStatus::Refused as i32);
        assert!(e.contains("not on this node"), "{e}");
        let (s, e) = why(jobs.take(job("severity", 5000), tracing::Span::none(), 0, "critical", &[]));
        assert_eq!(s, JobStatus::Refused as i32);
        assert!(e.contains("power profile critical admits 0"), "{e}");
        let (s, _) = why(jobs.take(job("severity", 0), tracing::Span::none(), 4, "performance", &[]));
        assert_eq!(s, JobStatus::Expired as i32);
        // The desired state narrows the models offered and taken.
        let wanted = vec!["minilm".to_owned()];
        assert!(jobs.models(&wanted).is_empty());
        assert!(jobs.take(job("severity", 5000), tracing::Span::none(), 4, "performance", &wanted).is_some());
        // One worker, no queue: the second job at once is refused.
        assert!(jobs.take(job("severity", 5000), tracing::Span::none(), 4, "performance", &[]).is_none());
        let (s, e) = why(jobs.take(job("severity", 5000), tracing::Span::none(), 4, "performance", &[]));
        assert_eq!(s, JobStatus::Refused as i32);
        assert!(e.contains("admits") || e.contains("queue is full"), "{e}");
        jobs.stop();
        let (_, e) = why(jobs.take(job("severity", 5000), tracing::Span::none(), 4, "performance", &[]));
        assert!(e.contains("shutting down"), "{e}");
        assert!(jobs.models(&[]).is_empty());
    }
}
