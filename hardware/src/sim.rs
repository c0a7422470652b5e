//! A seeded, time-stepped model of a battery-backed node: a battery drained
//! by a load that grows with CPU use, a mains or solar input, and a thermal
//! mass heated by the load. The same seed and the same steps give the same
//! readings, so tests can script scenarios.

use std::time::Duration;

use crate::{Board, CpuGovernor, Fan, HardwareError, PowerReading, PowerSource, ThermalSensor, ThrottleFlags};

/// Where the sim's external power comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SimInput {
    /// A mains adapter, on or off.
    Mains { on: bool },
    /// A solar panel with `peak_w` at noon of a `day` that starts at t = 0.
    Solar { peak_w: f64, day: Duration },
}

/// Parameters of the simulated node.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// Battery capacity in watt-hours (a 2x18650 UPS HAT holds about 22 Wh).
    pub battery_wh: f64,
    /// Initial state of charge, 0-100 %.
    pub initial_soc_pct: f64,
    pub input: SimInput,
    /// Power drawn at idle and the extra at full CPU load, watts.
    pub idle_w: f64,
    pub full_load_extra_w: f64,
    /// Ambient temperature (°C) and the SoC's rise per watt at steady state.
    pub ambient_c: f64,
    pub c_per_w: f64,
    /// Thermal time constant.
    pub thermal_tau: Duration,
    /// Std-dev-like amplitude of the noise added to readings.
    pub noise: f64,
    /// Simulated seconds per real second the agent lets pass (1 = real time;
    /// 3600 drains a battery in seconds for a demo or a test).
    pub time_scale: f64,
    /// While this file exists the mains plug is pulled (a demo or a browser
    /// test drains one battery without restarting anything).
    pub unplug_file: Option<std::path::PathBuf>,
}

impl SimConfig {
    /// A plausible Pi 4 on a UPS HAT with mains on, varied by `seed`.
    #[must_use]
    pub fn pi_on_ups(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        Self {
            seed,
            battery_wh: 22.0,
            initial_soc_pct: 40.0 + 60.0 * rng.f64(),
            input: SimInput::Mains { on: true },
            idle_w: 2.7,
            full_load_extra_w: 3.7,
            ambient_c: 20.0 + 10.0 * rng.f64(),
            c_per_w: 5.0,
            thermal_tau: Duration::from_secs(120),
            noise: 0.2,
            time_scale: 1.0,
            unplug_file: None,
        }
    }
}

/// The simulated node. `advance` moves its clock; reads never do.
#[derive(Debug, Clone)]
pub struct SimBoard {
    cfg: SimConfig,
    rng: fastrand::Rng,
    t: Duration,
    soc_pct: f64,
    temp_c: f64,
    load: f64,
    fan: SimFan,
    governor: SimGovernor,
    /// Whether `unplug_file` existed at the last step.
    unplugged: bool,
}

/// The simulated fan: at full duty it halves the SoC's rise over ambient.
#[derive(Debug, Clone, Default)]
pub struct SimFan {
    duty: Option<f64>,
}

impl Fan for SimFan {
    fn set_duty(&mut self, duty: f64) -> Result<(), HardwareError> {
        self.duty = Some(duty.clamp(0.0, 1.0));
        Ok(())
    }

    fn duty(&self) -> Option<f64> {
        self.duty
    }
}

/// The simulated governor: `powersave` caps the load's extra power at 40 %,
/// `conservative` at 70 %.
#[derive(Debug, Clone)]
pub struct SimGovernor {
    current: String,
}

/// Governors the sim offers.
pub const SIM_GOVERNORS: [&str; 4] = ["performance", "ondemand", "conservative", "powersave"];

impl CpuGovernor for SimGovernor {
    fn governor(&mut self) -> Result<Option<String>, HardwareError> {
        Ok(Some(self.current.clone()))
    }

    fn available_governors(&mut self) -> Result<Vec<String>, HardwareError> {
        Ok(SIM_GOVERNORS.iter().map(|s| (*s).to_owned()).collect())
    }

    fn set_governor(&mut self, governor: &str) -> Result<(), HardwareError> {
        if !SIM_GOVERNORS.contains(&governor) {
            return Err(HardwareError::Unsupported(format!("CPU governor {governor:?} is not offered")));
        }
        self.current = governor.to_owned();
        Ok(())
    }
}

impl SimBoard {
    #[must_use]
    pub fn new(cfg: SimConfig) -> Self {
        let rng = fastrand::Rng::with_seed(cfg.seed);
        let temp_c = cfg.ambient_c + cfg.c_per_w * cfg.idle_w;
        let soc_pct = cfg.initial_soc_pct.clamp(0.0, 100.0);
        Self {
            cfg,
            rng,
            t: Duration::ZERO,
            soc_pct,
            temp_c,
            load: 0.0,
            fan: SimFan::default(),
            governor: SimGovernor { current: "ondemand".into() },
            unplugged: false,
        }
    }

    /// Changes the ambient temperature (a scripted heat wave).
    pub fn set_ambient(&mut self, ambient_c: f64) {
        self.cfg.ambient_c = ambient_c;
    }

    /// Switches the external input (e.g. a scripted mains cut).
    pub fn set_input(&mut self, input: SimInput) {
        self.cfg.input = input;
    }

    /// Watts the input delivers now.
    fn input_w(&self) -> f64 {
        match self.cfg.input {
            SimInput::Mains { on } => {
                if on && !self.unplugged {
                    15.0
                } else {
                    0.0
                }
            }
            SimInput::Solar { peak_w, day } => {
                let phase = (self.t.as_secs_f64() / day.as_secs_f64().max(1.0)).fract();
                (peak_w * (std::f64::consts::PI * (phase * 2.0 - 0.5)).sin()).max(0.0)
            }
        }
    }

    fn load_w(&self) -> f64 {
        let cap = match self.governor.current.as_str() {
            "powersave" => 0.4,
            "conservative" => 0.7,
            _ => 1.0,
        };
        self.cfg.idle_w + self.cfg.full_load_extra_w * self.load * cap
    }

    fn jitter(&mut self) -> f64 {
        (self.rng.f64() * 2.0 - 1.0) * self.cfg.noise
    }

    /// Simulated time since start.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.t
    }
}

impl ThermalSensor for SimBoard {
    fn soc_temperature_c(&mut self) -> Result<Option<f64>, HardwareError> {
        let j = self.jitter();
        Ok(Some(self.temp_c + j))
    }
}

impl PowerSource for SimBoard {
    fn read_power(&mut self) -> Result<PowerReading, HardwareError> {
        let input_w = self.input_w();
        let load_w = self.load_w();
        let j = self.jitter();
        let present = input_w > 0.5;
        let input_voltage_v = if present { Some(5.1 + j * 0.05) } else { Some(0.0) };
        let delivered = input_w.min(load_w + 10.0);
        Ok(PowerReading {
            input_present: Some(present),
            on_battery: Some(input_w < load_w),
            battery_soc_pct: Some((self.soc_pct + j * 0.1).clamp(0.0, 100.0)),
            charging: Some(input_w > load_w && self.soc_pct < 100.0),
            input_voltage_v,
            input_current_a: input_voltage_v.map(|v| if v > 0.0 { delivered / v } else { 0.0 }),
            input_power_w: Some(delivered),
        })
    }
}

impl Board for SimBoard {
    fn throttle_flags(&mut self) -> Result<Option<ThrottleFlags>, HardwareError> {
        // As the Pi firmware: soft limit from 80 °C, throttling from 85 °C.
        let t = self.temp_c;
        Ok(Some(ThrottleFlags { soft_temp_limit: t >= 80.0, throttled: t >= 85.0, ..Default::default() }))
    }

    fn fan(&mut self) -> Option<&mut dyn Fan> {
        Some(&mut self.fan)
    }

    fn cpu_governor(&mut self) -> Option<&mut dyn CpuGovernor> {
        Some(&mut self.governor)
    }

    fn advance(&mut self, dt: Duration, cpu_load: f64) {
        self.load = cpu_load.clamp(0.0, 1.0);
        if let Some(f) = &self.cfg.unplug_file {
            self.unplugged = f.exists();
        }
        let dt = dt.mul_f64(self.cfg.time_scale.max(0.0));
        let dt_s = dt.as_secs_f64();
        let net_w = self.input_w().min(self.load_w() + 10.0) - self.load_w();
        let d_soc = net_w * dt_s / 3600.0 / self.cfg.battery_wh * 100.0;
        self.soc_pct = (self.soc_pct + d_soc).clamp(0.0, 100.0);
        let cooling = 1.0 - 0.5 * self.fan.duty.unwrap_or(0.0);
        let target = self.cfg.ambient_c + self.cfg.c_per_w * self.load_w() * cooling;
        let k = 1.0 - (-dt_s / self.cfg.thermal_tau.as_secs_f64().max(1e-3)).exp();
        self.temp_c += (target - self.temp_c) * k;
        self.t += dt;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seed: u64) -> Vec<(Option<f64>, PowerReading)> {
        let mut b = SimBoard::new(SimConfig::pi_on_ups(seed));
        (0..50)
            .map(|i| {
                b.advance(Duration::from_secs(10), f64::from(i % 10) / 10.0);
                (b.soc_temperature_c().unwrap(), b.read_power().unwrap())
            })
            .collect()
    }

    #[test]
    fn same_seed_same_readings() {
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn an_unplug_file_pulls_the_mains_plug_while_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SimConfig::pi_on_ups(1);
        cfg.unplug_file = Some(dir.path().join("unplugged"));
        let mut b = SimBoard::new(cfg);
        b.advance(Duration::from_secs(1), 0.1);
        assert_eq!(b.read_power().unwrap().input_present, Some(true));
        std::fs::write(dir.path().join("unplugged"), "").unwrap();
        b.advance(Duration::from_secs(1), 0.1);
        assert_eq!(b.read_power().unwrap().input_present, Some(false));
        std::fs::remove_file(dir.path().join("unplugged")).unwrap();
        b.advance(Duration::from_secs(1), 0.1);
        assert_eq!(b.read_power().unwrap().input_present, Some(true));
    }

    #[test]
    fn battery_drains_without_input_and_charges_with_it() {
        let mut cfg = SimConfig::pi_on_ups(1);
        cfg.initial_soc_pct = 50.0;
        cfg.noise = 0.0;
        cfg.input = SimInput::Mains { on: false };
        let mut b = SimBoard::new(cfg);
        b.advance(Duration::from_secs(3600), 1.0);
        let off = b.read_power().unwrap();
        // 6.4 W for an hour from 22 Wh is about 29 %.
        assert!((off.battery_soc_pct.unwrap() - (50.0 - 6.4 / 22.0 * 100.0)).abs() < 0.5, "{off:?}");
        assert_eq!(off.on_battery, Some(true));
        b.set_input(SimInput::Mains { on: true });
        b.advance(Duration::from_secs(600), 0.0);
        let on = b.read_power().unwrap();
        assert!(on.battery_soc_pct > off.battery_soc_pct);
        assert_eq!(on.charging, Some(true));
    }

    #[test]
    fn load_heats_the_soc() {
        let mut cfg = SimConfig::pi_on_ups(2);
        cfg.noise = 0.0;
        let mut b = SimBoard::new(cfg);
        let cold = b.soc_temperature_c().unwrap().unwrap();
        b.advance(Duration::from_secs(1200), 1.0);
        let hot = b.soc_temperature_c().unwrap().unwrap();
        assert!(hot > cold + 10.0, "{cold} -> {hot}");
    }

    #[test]
    fn fan_cools_and_powersave_draws_less() {
        let mut cfg = SimConfig::pi_on_ups(4);
        cfg.noise = 0.0;
        cfg.input = SimInput::Mains { on: false };
        let run = |fan: f64, gov: &str| {
            let mut b = SimBoard::new(cfg.clone());
            b.fan().unwrap().set_duty(fan).unwrap();
            b.cpu_governor().unwrap().set_governor(gov).unwrap();
            b.advance(Duration::from_secs(1800), 1.0);
            (b.soc_temperature_c().unwrap().unwrap(), b.read_power().unwrap().battery_soc_pct.unwrap())
        };
        let (hot, soc_perf) = run(0.0, "performance");
        let (cool, _) = run(1.0, "performance");
        let (_, soc_save) = run(0.0, "powersave");
        assert!(cool < hot - 5.0, "{cool} vs {hot}");
        assert!(soc_save > soc_perf + 1.0, "{soc_save} vs {soc_perf}");
        let mut b = SimBoard::new(cfg);
        assert!(b.cpu_governor().unwrap().set_governor("turbo").is_err());
    }

    #[test]
    fn time_scale_speeds_the_clock() {
        let mut cfg = SimConfig::pi_on_ups(5);
        cfg.time_scale = 3600.0;
        let mut b = SimBoard::new(cfg);
        b.advance(Duration::from_secs(1), 0.0);
        assert_eq!(b.elapsed(), Duration::from_secs(3600));
    }

    #[test]
    fn solar_delivers_only_by_day() {
        let mut cfg = SimConfig::pi_on_ups(3);
        cfg.input = SimInput::Solar { peak_w: 10.0, day: Duration::from_secs(86_400) };
        let mut b = SimBoard::new(cfg);
        b.advance(Duration::from_secs(43_200), 0.0); // noon-ish
        let noon = b.read_power().unwrap().input_power_w.unwrap();
        b.advance(Duration::from_secs(43_200), 0.0); // midnight-ish
        let night = b.read_power().unwrap().input_power_w.unwrap();
        assert!(noon > 5.0 && night == 0.0, "noon {noon} night {night}");
    }
}
