//! The health window after a new desired state (docs/rollouts.md), as
//! greenboot watches a device after an update: for `[health] window` the
//! node must hear the controller (an acknowledgement it signed) and its
//! power manager must run; its new model versions must pass their own
//! checks. Then the node confirms the version; when it does not hear the
//! controller or its power manager stops, it goes back to the state before.

use std::time::Duration;

use fleet_proto::v1::DesiredState;
use serde::Deserialize;
use tokio::time::Instant;

/// `[health]`: how a node judges a change the controller sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// How long a new desired state is watched before it is confirmed or
    /// reverted (a desired state may ask for another). Default 1 min.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self { window: Duration::from_secs(60) }
    }
}

/// A desired state being watched.
#[derive(Debug)]
pub struct Window {
    pub version: u64,
    length: Duration,
    until: Instant,
    heard: bool,
    power_ran: bool,
    /// The state it replaced (None: the config's).
    pub previous: Option<DesiredState>,
}

/// What the window says now.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Still watching.
    Wait,
    /// Healthy for the whole window.
    Confirmed,
    /// A model version failed (the node reverted it already): not confirmed.
    ModelsFailed,
    /// Unhealthy: go back to the previous state, for this reason.
    Revert(String),
}

impl Window {
    /// Starts watching `version`, which replaced `previous`.
    #[must_use]
    pub fn start(version: u64, length: Duration, previous: Option<DesiredState>) -> Self {
        Self { version, length, until: Instant::now() + length, heard: false, power_ran: false, previous }
    }

    /// The controller acknowledged something the node sent after the change
    /// (also said of a state taken from disk at start, which the controller
    /// need not answer for).
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// The power manager decided on a reading after the change.
    pub fn power_ran(&mut self) {
        self.power_ran = true;
    }

    /// Judges the window; `models` is the model updates' state (see
    /// `Updater::settled`: None while they are at work).
    #[must_use]
    pub fn check(&self, models: Option<bool>) -> Verdict {
        if Instant::now() < self.until {
            return Verdict::Wait;
        }
        let secs = self.length.as_secs_f64();
        if !self.heard {
            return Verdict::Revert(format!(
                "the node did not hear the controller within the {secs:.0} s health window"
            ));
        }
        if !self.power_ran {
            return Verdict::Revert(format!("the power manager did not run within the {secs:.0} s health window"));
        }
        match models {
            None => Verdict::Wait,
            Some(true) => Verdict::Confirmed,
            Some(false) => Verdict::ModelsFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn confirms_a_healthy_change_and_reverts_a_silent_one() {
        let mut w = Window::start(4, Duration::from_millis(300), None);
        w.heard();
        w.power_ran();
        assert_eq!(w.check(Some(true)), Verdict::Wait, "not before the window ends");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(w.check(None), Verdict::Wait, "models still at work");
        assert_eq!(w.check(Some(true)), Verdict::Confirmed);
        assert_eq!(w.check(Some(false)), Verdict::ModelsFailed);

        let mut silent = Window::start(5, Duration::from_millis(300), None);
        silent.power_ran();
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(silent.check(Some(true)), Verdict::Revert(r) if r.contains("did not hear the controller")));
        let mut stuck = Window::start(6, Duration::from_millis(300), None);
        stuck.heard();
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(stuck.check(Some(true)), Verdict::Revert(r) if r.contains("power manager")));
    }
}
