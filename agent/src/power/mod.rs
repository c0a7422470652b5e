//! The power manager: turns battery, input power and temperature into a
//! profile (`performance`, `balanced`, `saver`, `critical`) with hysteresis,
//! and says what each profile means: CPU governor, telemetry interval, how
//! many inference jobs the node admits, the fan duty from a temperature
//! curve, and a clean shutdown (spool flushed, a configured command run once)
//! before the battery runs out. The policy is plain data (TOML), from the
//! agent's config or, later, from the desired state the controller pushes.

pub mod control;

use std::time::Duration;

use fleet_hardware::PowerReading;
use fleet_proto::v1::PowerProfile;
use serde::Deserialize;

use crate::AgentError;

/// What one profile sets.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSettings {
    /// CPU frequency governor ("" leaves it alone).
    pub governor: String,
    /// Telemetry sampling interval in this profile, if slower than the
    /// configured `telemetry.interval` (which it never speeds up).
    #[serde(default, with = "humantime_serde")]
    pub telemetry_interval: Option<Duration>,
    /// Inference jobs the node admits at once.
    pub max_jobs: u32,
}

/// `[power]`: thresholds, curves and commands. `Default` is documented in
/// `default-config.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerPolicy {
    /// On battery, below this state of charge: `saver`. Default 40 %.
    pub saver_below_pct: f64,
    /// On battery, below this: `critical`. Default 15 %.
    pub critical_below_pct: f64,
    /// On battery, below this: flush the spool and run `shutdown_command` once. Default 5 %.
    pub shutdown_below_pct: f64,
    /// A profile is left for a less restrictive one only this far past its threshold. Default 3 %.
    pub battery_hysteresis_pct: f64,
    /// From this SoC temperature on: at least `saver`. Default 75 °C.
    pub hot_c: f64,
    /// From this temperature on: `critical`. Default 85 °C.
    pub critical_c: f64,
    /// Temperature hysteresis. Default 3 °C.
    pub thermal_hysteresis_c: f64,
    /// Fan curve: (temperature °C, duty 0-1) points, temperatures increasing;
    /// linear between points, flat outside. Default 45:0, 55:0.3, 65:0.6, 75:1.
    pub fan_curve: Vec<(f64, f64)>,
    /// Command (argv) run once before the battery runs out; empty: none.
    pub shutdown_command: Vec<String>,
    pub performance: ProfileSettings,
    pub balanced: ProfileSettings,
    pub saver: ProfileSettings,
    pub critical: ProfileSettings,
}

impl Default for PowerPolicy {
    fn default() -> Self {
        let p = |governor: &str, secs: Option<u64>, max_jobs: u32| ProfileSettings {
            governor: governor.into(),
            telemetry_interval: secs.map(Duration::from_secs),
            max_jobs,
        };
        Self {
            saver_below_pct: 40.0,
            critical_below_pct: 15.0,
            shutdown_below_pct: 5.0,
            battery_hysteresis_pct: 3.0,
            hot_c: 75.0,
            critical_c: 85.0,
            thermal_hysteresis_c: 3.0,
            fan_curve: vec![(45.0, 0.0), (55.0, 0.3), (65.0, 0.6), (75.0, 1.0)],
            shutdown_command: Vec::new(),
            performance: p("performance", None, 4),
            balanced: p("ondemand", None, 2),
            saver: p("powersave", Some(5), 1),
            critical: p("powersave", Some(30), 0),
        }
    }
}

impl PowerPolicy {
    /// Parses and validates a policy document (the desired state carries one).
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn from_toml(text: &str) -> Result<Self, AgentError> {
        let p: PowerPolicy =
            toml::from_str(text).map_err(|e| AgentError::Invalid(e.to_string().trim_end().to_owned()))?;
        p.validate()?;
        Ok(p)
    }

    /// Checks thresholds and the fan curve.
    ///
    /// # Errors
    /// What is wrong, naming the key.
    pub fn validate(&self) -> Result<(), AgentError> {
        let pct = |k: &str, v: f64| {
            if (0.0..=100.0).contains(&v) {
                Ok(())
            } else {
                Err(AgentError::Invalid(format!("power.{k}: {v} is not a percentage")))
            }
        };
        pct("saver_below_pct", self.saver_below_pct)?;
        pct("critical_below_pct", self.critical_below_pct)?;
        pct("shutdown_below_pct", self.shutdown_below_pct)?;
        if self.shutdown_below_pct > self.critical_below_pct || self.critical_below_pct > self.saver_below_pct {
            return Err(AgentError::Invalid(
                "power: need shutdown_below_pct <= critical_below_pct <= saver_below_pct".into(),
            ));
        }
        if !self.hot_c.is_finite() || !self.critical_c.is_finite() || self.hot_c >= self.critical_c {
            return Err(AgentError::Invalid("power: need hot_c < critical_c".into()));
        }
        if !(0.0..=20.0).contains(&self.battery_hysteresis_pct) || !(0.0..=20.0).contains(&self.thermal_hysteresis_c) {
            return Err(AgentError::Invalid("power: hysteresis must be between 0 and 20".into()));
        }
        if self.fan_curve.is_empty() {
            return Err(AgentError::Invalid("power.fan_curve: give at least one (temperature, duty) point".into()));
        }
        for w in self.fan_curve.windows(2) {
            if w[1].0 <= w[0].0 {
                return Err(AgentError::Invalid(format!(
                    "power.fan_curve: temperatures must increase ({} then {})",
                    w[0].0, w[1].0
                )));
            }
        }
        if let Some((t, d)) = self.fan_curve.iter().find(|(t, d)| !t.is_finite() || !(0.0..=1.0).contains(d)) {
            return Err(AgentError::Invalid(format!("power.fan_curve: duty {d} at {t} °C is outside 0-1")));
        }
        for (name, s) in [
            ("performance", &self.performance),
            ("balanced", &self.balanced),
            ("saver", &self.saver),
            ("critical", &self.critical),
        ] {
            if s.telemetry_interval.is_some_and(|i| i < Duration::from_millis(100)) {
                return Err(AgentError::Invalid(format!("power.{name}.telemetry_interval: use at least 100ms")));
            }
        }
        Ok(())
    }

    /// The settings of a profile.
    #[must_use]
    pub fn settings(&self, p: Profile) -> &ProfileSettings {
        match p {
            Profile::Performance => &self.performance,
            Profile::Balanced => &self.balanced,
            Profile::Saver => &self.saver,
            Profile::Critical => &self.critical,
        }
    }

    /// Fan duty for a temperature, from the curve.
    #[must_use]
    pub fn fan_duty(&self, temp_c: f64) -> f64 {
        let c = &self.fan_curve;
        let Some(first) = c.first() else { return 1.0 };
        if temp_c <= first.0 {
            return first.1;
        }
        for w in c.windows(2) {
            let ((t0, d0), (t1, d1)) = (w[0], w[1]);
            if temp_c <= t1 {
                return d0 + (d1 - d0) * (temp_c - t0) / (t1 - t0);
            }
        }
        c.last().map_or(1.0, |l| l.1)
    }
}

/// Power profiles, least to most restrictive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Profile {
    Performance,
    Balanced,
    Saver,
    Critical,
}

impl Profile {
    /// The wire enum.
    #[must_use]
    pub fn to_proto(self) -> PowerProfile {
        match self {
            Profile::Performance => PowerProfile::Performance,
            Profile::Balanced => PowerProfile::Balanced,
            Profile::Saver => PowerProfile::Saver,
            Profile::Critical => PowerProfile::Critical,
        }
    }

    /// Lower-case name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Profile::Performance => "performance",
            Profile::Balanced => "balanced",
            Profile::Saver => "saver",
            Profile::Critical => "critical",
        }
    }
}

/// What the manager decided for one reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub profile: Profile,
    /// `Some(previous)` when the profile just changed.
    pub changed_from: Option<Profile>,
    /// Fan duty to set, when there is a temperature.
    pub fan_duty: Option<f64>,
    /// Flush the spool, then run the shutdown command (once per agent run).
    pub shutdown: bool,
    /// Why, for the event and the log.
    pub reason: String,
}

/// The manager's state between readings.
#[derive(Debug, Clone)]
pub struct PowerManager {
    policy: PowerPolicy,
    current: Profile,
    shutdown_done: bool,
    /// Last temperature read, and how many readings have missed it since: a
    /// sensor that fails once must not relax a thermal profile.
    last_temp: Option<f64>,
    temp_misses: u32,
}

/// Readings without a temperature after which the last one is forgotten.
const TEMP_MISSES_TOLERATED: u32 = 10;

impl PowerManager {
    /// Starts in `balanced` until the first reading says otherwise.
    #[must_use]
    pub fn new(policy: PowerPolicy) -> Self {
        Self { policy, current: Profile::Balanced, shutdown_done: false, last_temp: None, temp_misses: 0 }
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &PowerPolicy {
        &self.policy
    }

    /// Replaces the policy (already validated); the next reading applies it.
    pub fn set_policy(&mut self, policy: PowerPolicy) {
        self.policy = policy;
    }

    /// The profile in force.
    #[must_use]
    pub fn profile(&self) -> Profile {
        self.current
    }

    /// The profile readings call for, with thresholds moved by `slack`
    /// (0 to enter a profile; the hysteresis to leave one).
    fn classify(&self, power: &PowerReading, temp_c: Option<f64>, slack: f64) -> (Profile, String) {
        let p = &self.policy;
        let on_battery = power.on_battery == Some(true) || power.input_present == Some(false);
        let mut profile = match (on_battery, power.battery_soc_pct) {
            (true, Some(soc)) if soc < p.critical_below_pct + slack * p.battery_hysteresis_pct => {
                (Profile::Critical, format!("on battery at {soc:.1} %"))
            }
            (true, Some(soc)) if soc < p.saver_below_pct + slack * p.battery_hysteresis_pct => {
                (Profile::Saver, format!("on battery at {soc:.1} %"))
            }
            (true, Some(soc)) => (Profile::Balanced, format!("on battery at {soc:.1} %")),
            (true, None) => (Profile::Saver, "on battery, charge unknown".to_owned()),
            (false, _) if power.input_present == Some(true) => (Profile::Performance, "on external power".to_owned()),
            (false, _) => (Profile::Balanced, "power source unknown".to_owned()),
        };
        if let Some(t) = temp_c {
            let thermal = if t >= p.critical_c - slack * p.thermal_hysteresis_c {
                Some(Profile::Critical)
            } else if t >= p.hot_c - slack * p.thermal_hysteresis_c {
                Some(Profile::Saver)
            } else {
                None
            };
            if let Some(th) = thermal.filter(|th| *th > profile.0) {
                profile = (th, format!("SoC at {t:.1} °C"));
            }
        }
        profile
    }

    /// Decides for one reading.
    pub fn decide(&mut self, power: &PowerReading, temp_c: Option<f64>) -> Decision {
        let temp_c = match temp_c {
            Some(t) => {
                self.last_temp = Some(t);
                self.temp_misses = 0;
                Some(t)
            }
            None if self.temp_misses < TEMP_MISSES_TOLERATED => {
                self.temp_misses += 1;
                self.last_temp
            }
            None => None,
        };
        let (strict, why) = self.classify(power, temp_c, 0.0);
        let (next, reason) = if strict >= self.current {
            (strict, why)
        } else {
            // Leaving for a less restrictive profile: only past the hysteresis.
            let (relaxed, why) = self.classify(power, temp_c, 1.0);
            if relaxed < self.current { (relaxed, why) } else { (self.current, why) }
        };
        let changed_from = (next != self.current).then_some(self.current);
        self.current = next;
        let on_battery = power.on_battery == Some(true) || power.input_present == Some(false);
        let shutdown = !self.shutdown_done
            && on_battery
            && power.battery_soc_pct.is_some_and(|s| s < self.policy.shutdown_below_pct);
        if shutdown {
            self.shutdown_done = true;
        }
        Decision { profile: next, changed_from, fan_duty: temp_c.map(|t| self.policy.fan_duty(t)), shutdown, reason }
    }
}

#[cfg(test)]
mod tests;
