//! The job manager's tasks: following the live view, the deadline sweeper,
//! the cloud tier's answers and the recorder.

use std::time::Duration;

use fleet_inference::{Output, RunError};
use fleet_proto::v1::{JobResult, JobStatus, JobTimings, JobView, Node, NodeState, Site};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CloudDone, JobManager, SWEEP_EVERY, us};
use crate::registry::Registry;
use crate::router::Target;

impl JobManager {
    /// Follows the live view (`changes` taken when the router was seeded, so
    /// nothing in between is missed): every status into the router; offline
    /// nodes lose their jobs.
    pub(super) async fn follow(
        self,
        registry: Registry,
        mut changes: tokio::sync::broadcast::Receiver<Node>,
        shutdown: CancellationToken,
    ) {
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
            // A change read late (the node is back already) loses nothing.
            let still_offline =
                || registry.get(&n.node_id).and_then(|c| c.status).is_none_or(|c| c.state == NodeState::Offline as i32);
            if s.state == NodeState::Offline as i32 && still_offline() {
                self.node_lost(&mut st, &n.node_id, "the node went offline");
            }
        }
    }

    /// Expires jobs at their deadline and gives up on silent nodes.
    pub(super) async fn sweep(self, shutdown: CancellationToken) {
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

    pub(super) async fn cloud_answers(self, mut rx: mpsc::Receiver<CloudDone>, shutdown: CancellationToken) {
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
    pub(super) async fn recorder(self, mut rx: mpsc::Receiver<JobView>, shutdown: CancellationToken) {
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
}
