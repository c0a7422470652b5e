//! How an attempt ends and what follows: done, a joint-inference re-run on
//! the cloud tier, or the next site; and the end of a job.

use fleet_proto::v1::{JobResult, JobStatus, JobTimings, Placement, Site};

use super::{JobManager, State, us};
use crate::router::Target;
use crate::store::jobs::{site_word, status_word};

impl JobManager {
    /// Records an attempt's answer (a node's, or the cloud pool's) on the
    /// job's current attempt, then decides what follows.
    pub(super) fn settle(&self, st: &mut State, r: JobResult, site: Site) {
        let Some(l) = st.live.get_mut(&r.job_id) else { return };
        l.current = None;
        if let Some(t) = &r.timings {
            let ran_us = t.tokenize_us.saturating_add(t.inference_us);
            self.inner.usage.charge_inference(l.token(), site, ran_us);
        }
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
    pub(super) fn after_attempt(&self, st: &mut State, job_id: &str, status: JobStatus, site: Site) {
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
    pub(super) fn finish_with_best(&self, st: &mut State, job_id: &str) {
        self.finish(st, job_id, JobStatus::Succeeded, "");
    }

    /// Ends a job: final fields from the last successful attempt (if any),
    /// waiters told, kept in memory and queued for the store.
    pub(super) fn finish(&self, st: &mut State, job_id: &str, status: JobStatus, error: &str) {
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
        self.inner.metrics.job_finished(status_word(view.status), site_word(view.site));
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
    pub(super) fn node_lost(&self, st: &mut State, node_id: &str, why: &str) {
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

    pub(super) fn abandon(&self, st: &mut State, job_id: &str, why: &str) {
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
}
