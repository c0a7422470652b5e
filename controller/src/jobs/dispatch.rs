//! Sending a job to its next site: the router's choice, then the node's
//! `jobs` topic or a place in the cloud tier's pool.

use fleet_inference::Pool;
use fleet_proto::v1::{Job, JobAttempt, JobStatus, Site, job};
use tokio::time::Instant;

use super::{CloudDone, Current, JobManager, State, us};
use crate::router::{Decision, JobSpec, NoSite, Target};

impl JobManager {
    /// Routes the job to its next site and sends it there. When no site is
    /// left the job ends FAILED; `Err` carries the reason when it never ran.
    pub(super) fn advance(&self, st: &mut State, job_id: &str, joint_reason: Option<String>) -> Result<(), NoSite> {
        loop {
            let Some(l) = st.live.get(job_id) else { return Ok(()) };
            let t = std::time::Instant::now();
            let decision = match &joint_reason {
                Some(reason) => Ok(Decision { target: Target::Cloud, score: 0, reason: reason.clone() }),
                None => {
                    let cloud = self.cloud_view(&l.view.model);
                    let (labels, placement, node, tried) = (&l.labels, l.placement, &l.pin, &l.tried);
                    let _in = tracing::debug_span!(parent: &l.span, "job.route").entered();
                    let spec = JobSpec { model: &l.view.model, labels, placement, node, version: &l.version, tried };
                    st.router.route(&spec, cloud)
                }
            };
            let route_us = us(t.elapsed());
            let d = match decision {
                Ok(d) => d,
                Err(no) => {
                    let never_ran = l.view.attempts.is_empty();
                    self.finish(st, job_id, JobStatus::Failed, &no.0);
                    return if never_ran { Err(no) } else { Ok(()) };
                }
            };
            if self.attempt(st, job_id, d, route_us) {
                return Ok(());
            }
            if joint_reason.is_some() {
                // No cloud second opinion: the edge answer stands.
                self.finish_with_best(st, job_id);
                return Ok(());
            }
        }
    }

    /// Sends the job's next attempt to the site `d` chose; false (the
    /// attempt recorded as failed) when it could not be sent.
    fn attempt(&self, st: &mut State, job_id: &str, d: Decision, route_us: u64) -> bool {
        let Some(l) = st.live.get_mut(job_id) else { return true };
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
        let sent = match &d.target {
            Target::Edge(id) => {
                let job = Job {
                    job_id: job_id.to_owned(),
                    model: l.view.model.clone(),
                    input: Some(job::Input::Text(l.text.clone())),
                    deadline_unix_ms: l.view.deadline_unix_ms,
                    min_confidence: l.view.min_confidence,
                    attempt,
                    budget_ms: u32::try_from(l.deadline.saturating_duration_since(now).as_millis()).unwrap_or(u32::MAX),
                };
                // The job goes out in this span's context (the node's run is its child).
                let span = tracing::debug_span!(parent: &l.span, "job.dispatch", node.id = %id, job.attempt = attempt);
                let ok = span.in_scope(|| self.inner.link.job(id, &job).is_ok());
                if ok {
                    st.router.dispatched(id);
                }
                ok
            }
            Target::Cloud => self.run_in_cloud(job_id, attempt, &l.view.model, &l.text, l.deadline),
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
            return false;
        }
        l.view.status = JobStatus::Running as i32;
        l.view.attempts.push(a);
        l.current = Some(Current { attempt, target: d.target, sent: now, route_us });
        true
    }

    pub(super) fn run_in_cloud(&self, job_id: &str, attempt: u32, model: &str, text: &str, deadline: Instant) -> bool {
        let Some(place) = self.inner.cloud.as_ref().and_then(Pool::reserve) else { return false };
        let (job_id, model, text) = (job_id.to_owned(), model.to_owned(), text.to_owned());
        let done = self.inner.cloud_done.clone();
        self.inner.tasks.spawn(async move {
            let result = place.run(model, text, deadline).await;
            let _ = done.send(CloudDone { job_id, attempt, result }).await;
        });
        true
    }
}
