//! The agent's side of rollouts (docs/rollouts.md): a desired state taken,
//! its model versions handed to the `Updater`, the health window judged
//! each second, the state reverted by the node itself when unhealthy, and
//! job failures of a new model version counted against it.

use std::time::Duration;

use fleet_proto::v1::{EventSeverity, JobResult, JobStatus, NodeState};

use super::Agent;
use crate::desired::Accepted;
use crate::health::Verdict;
use crate::models::update::Done;
use crate::power::Profile;

impl Agent {
    /// Puts an accepted desired state in force: power policy, telemetry
    /// interval, labels, model versions.
    pub(super) fn take_accepted(&mut self, a: Accepted) {
        self.power.set_policy(a.policy);
        self.base_interval = a.telemetry_interval.unwrap_or(self.cfg.telemetry.interval);
        if !a.labels.is_empty() {
            self.labels = a.labels;
        } else if a.version == 0 {
            // Back to the config's (a revert to no desired state).
            self.labels.clone_from(&self.cfg.labels);
        }
        self.updater.want(&a.model_versions, a.health_window.unwrap_or(self.cfg.health.window));
    }

    /// Publishes a job's result; a failure counts against a model version in its health window.
    pub fn job_done(&mut self, r: &JobResult, span: &tracing::Span, model: &str) {
        span.in_scope(|| self.out.result(r));
        if r.status == JobStatus::Failed as i32 {
            self.updater.job_failed(model, &r.error);
        }
    }

    /// A model update finished: the new models offered, and said.
    pub fn update_done(&mut self, done: Done) {
        if let Some(rt) = self.updater.finished(done) {
            self.jobs.replace_runtime(rt);
        }
        self.report();
        self.publish_status(NodeState::Online);
    }

    /// Whether the once-a-second update step has anything to do (a node
    /// with no update under way keeps that code out of its working set).
    #[must_use]
    pub fn updating(&self) -> bool {
        self.window.is_some() || !self.updater.is_idle()
    }

    /// Once a second: model updates go on, the health window is judged.
    /// Returns a new sampling interval when a revert changed it.
    pub fn update_tick(&mut self) -> Option<Duration> {
        let p = self.sampler.power;
        let on_battery = p.on_battery == Some(true) || p.input_present == Some(false);
        let mut changed = self.updater.step(on_battery && self.power.profile() >= Profile::Saver);
        let verdict = self.window.as_ref().map(|w| w.check(self.updater.settled()));
        let mut every = None;
        match verdict {
            None | Some(Verdict::Wait) => {}
            Some(Verdict::Confirmed) => {
                if let Some(w) = self.window.take() {
                    tracing::info!(version = w.version, "Desired state confirmed after its health window.");
                    self.desired.confirm(w.version);
                }
                changed = true;
            }
            Some(Verdict::ModelsFailed) => {
                self.window = None;
                changed = true;
            }
            Some(Verdict::Revert(reason)) => {
                if let Some(w) = self.window.take() {
                    let back = self.desired.revert(w.version, &reason, w.previous, &self.node.id);
                    let message = format!("desired state {} reverted: {reason}", w.version);
                    self.event("desired.reverted", EventSeverity::Warning, message, []);
                    self.take_accepted(back);
                    every = self.power.retime(self.base_interval);
                }
                changed = true;
            }
        }
        if changed {
            self.report();
            self.publish_status(NodeState::Online);
        }
        every
    }
}
