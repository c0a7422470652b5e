//! The power manager at work on the board: each reading becomes a decision
//! (`PowerManager`), and the decision an action here: the fan follows its
//! curve, the CPU governor follows the profile, and the telemetry interval
//! the profile asks for. What reaches beyond the board (the spool flush and
//! the shutdown command before the battery dies, the profile's event and
//! status) is the caller's, from the returned [`Step`].

use std::time::Duration;

use fleet_hardware::Board;

use super::{PowerManager, PowerPolicy, Profile};

/// A profile change, for the event and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub from: Profile,
    pub to: Profile,
    pub reason: String,
}

/// What one reading asks of the agent beyond the board.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Step {
    /// The battery is nearly empty: flush the spool, then run the shutdown command (once a run).
    pub shutdown: Option<String>,
    /// The profile changed.
    pub changed: Option<Change>,
}

/// The power manager and the state of what it acts on.
pub struct PowerControl {
    manager: PowerManager,
    /// The telemetry interval in force (the profile's, never under the base).
    interval: Duration,
    throttle_bits: u32,
    fan_duty: Option<f64>,
}

impl PowerControl {
    /// Control under `policy`, sampling every `interval` until a profile says otherwise.
    #[must_use]
    pub fn new(policy: PowerPolicy, interval: Duration) -> Self {
        Self { manager: PowerManager::new(policy), interval, throttle_bits: 0, fan_duty: None }
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &PowerPolicy {
        self.manager.policy()
    }

    /// Replaces the policy (validated); the next reading applies it.
    pub fn set_policy(&mut self, policy: PowerPolicy) {
        self.manager.set_policy(policy);
    }

    /// The profile in force.
    #[must_use]
    pub fn profile(&self) -> Profile {
        self.manager.profile()
    }

    /// Inference jobs the profile admits at once.
    #[must_use]
    pub fn max_jobs(&self) -> u32 {
        self.policy().settings(self.profile()).max_jobs
    }

    /// The telemetry interval in force.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The firmware's throttling flags at the last reading.
    #[must_use]
    pub fn throttle_bits(&self) -> u32 {
        self.throttle_bits
    }

    /// The fan's duty at the last reading, if the board has a fan.
    #[must_use]
    pub fn fan_duty(&self) -> Option<f64> {
        self.fan_duty
    }

    /// Decides on the latest readings and acts on the board.
    pub fn step(&mut self, power: &fleet_hardware::PowerReading, temp_c: Option<f64>, board: &mut dyn Board) -> Step {
        let d = self.manager.decide(power, temp_c);
        if let Some(duty) = d.fan_duty
            && let Some(fan) = board.fan()
            && fan.duty().is_none_or(|cur| (cur - duty).abs() > 0.01)
            && let Err(e) = fan.set_duty(duty)
        {
            tracing::warn!(error = %e, "Cannot set the fan duty.");
        }
        self.fan_duty = board.fan().and_then(|f| f.duty());
        self.throttle_bits = board.throttle_flags().ok().flatten().map_or(0, |f| f.bits());
        let shutdown = d.shutdown.then(|| d.reason.clone());
        let Some(from) = d.changed_from else { return Step { shutdown, changed: None } };
        let governor = &self.policy().settings(d.profile).governor;
        if !governor.is_empty()
            && let Some(g) = board.cpu_governor()
            && g.governor().ok().flatten().as_deref() != Some(governor.as_str())
            && let Err(e) = g.set_governor(governor)
        {
            tracing::warn!(error = %e, %governor, "Cannot set the CPU governor.");
        }
        tracing::info!(from = from.name(), to = d.profile.name(), reason = %d.reason, "Power profile changed.");
        Step { shutdown, changed: Some(Change { from, to: d.profile, reason: d.reason }) }
    }

    /// Sets the telemetry interval for `base` (the config's, or the desired
    /// state's): the profile's when slower, never faster than `base`.
    /// Returns the new interval when it changed.
    pub fn retime(&mut self, base: Duration) -> Option<Duration> {
        let every = self.policy().settings(self.profile()).telemetry_interval.map_or(base, |p| p.max(base));
        (every != self.interval).then(|| {
            self.interval = every;
            every
        })
    }
}

/// Runs the policy's shutdown command, once, in the background (the agent
/// keeps sampling until the power goes).
pub fn run_shutdown_command(argv: &[String]) {
    let Some((program, args)) = argv.split_first() else {
        tracing::warn!("No power.shutdown_command configured; the node will run until the battery is empty.");
        return;
    };
    match std::process::Command::new(program).args(args).spawn() {
        Ok(mut child) => {
            // Reaped in the background so the agent keeps sampling until the power goes.
            std::thread::spawn(move || child.wait());
        }
        Err(e) => tracing::error!(error = %e, command = %program, "Cannot run the shutdown command."),
    }
}
