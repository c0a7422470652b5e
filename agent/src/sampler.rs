//! Samplers: sysinfo (cpu, memory, disk, network) and the board (SoC
//! temperature, power). One `sample()` call reads everything once.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleet_hardware::Board;
use fleet_proto::v1::{NodeVitals, Sample};
use sysinfo::{Disks, Networks, System};

/// Metric names the agent produces (the wire contract's, in fleet-proto).
pub use fleet_proto::metrics as metric;

/// One tick's samples, all stamped with the tick's time.
struct Readings {
    samples: Vec<Sample>,
    time_unix_ms: i64,
}

impl Readings {
    /// Keeps a finite reading (NaN and infinities are left out).
    fn push(&mut self, metric: &str, value: f64) {
        if value.is_finite() {
            self.samples.push(Sample { metric: metric.to_owned(), value, time_unix_ms: self.time_unix_ms });
        }
    }
}

/// Reads the machine and the board.
pub struct Sampler {
    // sysinfo handles keep the previous counters, so usage and rates are deltas.
    system: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    disk_path: PathBuf,
    board: Box<dyn Board>,
    last: Instant,
    /// Latest readings, for the node status.
    pub vitals: NodeVitals,
    /// Latest power reading and SoC temperature, for the power manager.
    pub power: fleet_hardware::PowerReading,
    pub temp_c: Option<f64>,
    /// Hardware read errors so far (each logged once per kind).
    pub hardware_errors: u64,
    warned_hardware: bool,
}

impl Sampler {
    /// A sampler over this machine and `board`; `disk_path` picks the filesystem.
    #[must_use]
    pub fn new(board: Box<dyn Board>, disk_path: PathBuf) -> Self {
        let mut system = System::new().ok();
        if let Some(s) = system.as_mut() {
            s.refresh_cpu_usage();
        }
        Self {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
            networks: Networks::new_with_refreshed_list().ok(),
            disk_path,
            board,
            last: Instant::now(),
            vitals: NodeVitals::default(),
            power: Default::default(),
            temp_c: None,
            hardware_errors: 0,
            warned_hardware: false,
        }
    }

    /// Takes one reading of every metric, stamped `time_unix_ms`.
    pub fn sample(&mut self, time_unix_ms: i64) -> Vec<Sample> {
        let now = Instant::now();
        let dt = now.duration_since(self.last).max(Duration::from_millis(1));
        self.last = now;
        let mut out = Readings { samples: Vec::with_capacity(12), time_unix_ms };
        let (cpu, mem_pct) = self.system(&mut out, dt);
        self.board.advance(dt, cpu / 100.0);
        let (temp, power) = self.board_readings(&mut out);
        self.power = power;
        self.temp_c = temp;
        self.vitals = NodeVitals {
            cpu_usage_pct: Some(cpu),
            mem_used_pct: Some(mem_pct),
            soc_temp_c: temp,
            battery_soc_pct: power.battery_soc_pct,
            on_battery: power.on_battery,
            input_power_w: power.input_power_w,
        };
        out.samples
    }

    /// CPU, memory, load, disk and network; returns (cpu %, memory %).
    fn system(&mut self, out: &mut Readings, dt: Duration) -> (f64, f64) {
        let (mut cpu, mut mem_pct) = (0.0, 0.0);
        if let Some(system) = self.system.as_mut() {
            system.refresh_cpu_usage();
            system.refresh_memory();
            cpu = f64::from(system.global_cpu_usage());
            out.push(metric::CPU_USAGE_PCT, cpu);
            let total = system.total_memory();
            let used = system.used_memory();
            if total > 0 {
                mem_pct = used as f64 * 100.0 / total as f64;
                out.push(metric::MEM_USED_PCT, mem_pct);
                out.push(metric::MEM_USED_BYTES, used as f64);
            }
        }
        if let Ok(load) = System::load_average() {
            out.push(metric::CPU_LOAD1, load.one);
        }
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(false);
            // The filesystem mounted deepest above disk_path holds it.
            let disk = disks
                .iter()
                .filter(|d| self.disk_path.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len());
            if let Some(d) = disk.filter(|d| d.total_space() > 0) {
                let used = d.total_space().saturating_sub(d.available_space());
                out.push(metric::DISK_USED_PCT, used as f64 * 100.0 / d.total_space() as f64);
            }
        }
        if let Some(nets) = self.networks.as_mut() {
            nets.refresh(true);
            let (rx, tx) = nets
                .iter()
                .filter(|(name, _)| name.as_os_str() != "lo")
                .fold((0u64, 0u64), |(r, t), (_, n)| (r + n.received(), t + n.transmitted()));
            out.push(metric::NET_RX_BYTES_PER_S, rx as f64 / dt.as_secs_f64());
            out.push(metric::NET_TX_BYTES_PER_S, tx as f64 / dt.as_secs_f64());
        }
        (cpu, mem_pct)
    }

    /// Temperatures, power, throttling and the fan; returns (SoC °C, power).
    fn board_readings(&mut self, out: &mut Readings) -> (Option<f64>, fleet_hardware::PowerReading) {
        let temp = self.board.soc_temperature_c().unwrap_or_else(|e| {
            self.hardware_error(&e);
            None
        });
        if let Some(t) = temp {
            out.push(metric::SOC_TEMP_C, t);
        }
        match self.board.thermal_zones() {
            // Zones beside the SoC's (enclosure, PMIC, NVMe...) as thermal.<type>_c.
            Ok(zones) if zones.len() > 1 => {
                for (kind, c) in zones {
                    let name: String = kind
                        .chars()
                        .map(|ch| if ch.is_ascii_alphanumeric() { ch.to_ascii_lowercase() } else { '_' })
                        .collect();
                    out.push(&format!("thermal.{name}_c"), c);
                }
            }
            Ok(_) => {}
            Err(e) => self.hardware_error(&e),
        }
        let power = self.board.read_power().unwrap_or_else(|e| {
            self.hardware_error(&e);
            Default::default()
        });
        if let Some(soc) = power.battery_soc_pct {
            out.push(metric::BATTERY_SOC_PCT, soc);
        }
        if let Some(b) = power.on_battery {
            out.push(metric::ON_BATTERY, if b { 1.0 } else { 0.0 });
        }
        if let Some(w) = power.input_power_w {
            out.push(metric::INPUT_POWER_W, w);
        }
        match self.board.throttle_flags() {
            Ok(Some(f)) => out.push(metric::THROTTLE_BITS, f64::from(f.bits())),
            Ok(None) => {}
            Err(e) => self.hardware_error(&e),
        }
        if let Some(d) = self.board.fan().and_then(|f| f.duty()) {
            out.push(metric::FAN_DUTY, d);
        }
        (temp, power)
    }

    /// The board, for the power manager's actions (fan, governor).
    pub fn board_mut(&mut self) -> &mut dyn Board {
        self.board.as_mut()
    }

    fn hardware_error(&mut self, e: &fleet_hardware::HardwareError) {
        self.hardware_errors += 1;
        if !self.warned_hardware {
            self.warned_hardware = true;
            tracing::warn!(error = %e, "Hardware reading failed; the metric is left out (logged once).");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_hardware::sim::{SimBoard, SimConfig};

    #[test]
    fn sample_has_system_and_board_metrics() {
        let mut s = Sampler::new(Box::new(SimBoard::new(SimConfig::pi_on_ups(1))), "/".into());
        let samples = s.sample(1234);
        let names: Vec<&str> = samples.iter().map(|s| s.metric.as_str()).collect();
        for m in [metric::CPU_USAGE_PCT, metric::MEM_USED_PCT, metric::SOC_TEMP_C, metric::BATTERY_SOC_PCT] {
            assert!(names.contains(&m), "{m} missing from {names:?}");
        }
        assert!(samples.iter().all(|s| s.time_unix_ms == 1234 && s.value.is_finite()));
        assert!(s.vitals.battery_soc_pct.is_some());
    }
}
