//! Readers for Linux sysfs: `/sys/class/thermal` and `/sys/class/power_supply`.
//! Roots are parameters so tests can point them at fixture trees.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::{Board, CpuGovernor, Fan, HardwareError, PowerReading, PowerSource, ThermalSensor, ThrottleFlags};

/// Thermal zone types that denote the SoC/CPU, best first.
const SOC_ZONE_TYPES: [&str; 5] = ["cpu-thermal", "cpu_thermal", "soc-thermal", "soc_thermal", "x86_pkg_temp"];

/// Reads a small sysfs file; `Ok(None)` when it does not exist.
fn read_attr(path: &Path) -> Result<Option<String>, HardwareError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        // Some drivers answer ENODATA/EINVAL for attributes they expose but cannot fill.
        Err(e) if matches!(e.raw_os_error(), Some(61 | 22 | 19)) => Ok(None),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Err(HardwareError::PermissionDenied { path: path.to_owned() })
        }
        Err(source) => Err(HardwareError::Io { path: path.to_owned(), source }),
    }
}

fn read_num(path: &Path) -> Result<Option<f64>, HardwareError> {
    match read_attr(path)? {
        None => Ok(None),
        Some(v) => v.parse::<f64>().map(Some).map_err(|_| HardwareError::Parse { path: path.to_owned(), value: v }),
    }
}

fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// SoC temperature from `/sys/class/thermal/thermal_zone*/temp` (m°C).
#[derive(Debug, Clone)]
pub struct SysfsThermal {
    root: PathBuf,
}

impl SysfsThermal {
    /// Reads zones under `root` (normally `/sys/class/thermal`).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The zone to read: the first whose type names the SoC, else the first zone.
    fn zone(&self) -> Result<Option<PathBuf>, HardwareError> {
        let zones: Vec<PathBuf> = sorted_entries(&self.root)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone")))
            .collect();
        for wanted in SOC_ZONE_TYPES {
            for z in &zones {
                if read_attr(&z.join("type"))?.as_deref() == Some(wanted) {
                    return Ok(Some(z.clone()));
                }
            }
        }
        Ok(zones.into_iter().next())
    }
}

impl ThermalSensor for SysfsThermal {
    fn soc_temperature_c(&mut self) -> Result<Option<f64>, HardwareError> {
        match self.zone()? {
            None => Ok(None),
            Some(z) => Ok(read_num(&z.join("temp"))?.map(|m| m / 1000.0)),
        }
    }

    fn thermal_zones(&mut self) -> Result<Vec<(String, f64)>, HardwareError> {
        let mut out = Vec::new();
        for z in sorted_entries(&self.root) {
            if !z.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone")) {
                continue;
            }
            if let (Some(t), Some(m)) = (read_attr(&z.join("type"))?, read_num(&z.join("temp"))?) {
                out.push((t, m / 1000.0));
            }
        }
        Ok(out)
    }
}

/// Input and battery from `/sys/class/power_supply/*` (µV, µA, µW, %).
#[derive(Debug, Clone)]
pub struct SysfsPower {
    root: PathBuf,
}

impl SysfsPower {
    /// Reads supplies under `root` (normally `/sys/class/power_supply`).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
}

impl PowerSource for SysfsPower {
    fn read_power(&mut self) -> Result<PowerReading, HardwareError> {
        let mut r = PowerReading::default();
        for supply in sorted_entries(&self.root) {
            let Some(kind) = read_attr(&supply.join("type"))? else {
                continue;
            };
            match kind.as_str() {
                "Battery" | "UPS" => {
                    if read_num(&supply.join("present"))? == Some(0.0) {
                        continue;
                    }
                    if r.battery_soc_pct.is_none() {
                        r.battery_soc_pct = read_num(&supply.join("capacity"))?;
                    }
                    if let Some(status) = read_attr(&supply.join("status"))? {
                        let charging = status == "Charging";
                        r.charging = Some(r.charging.unwrap_or(false) || charging);
                        r.on_battery = Some(r.on_battery.unwrap_or(false) || status == "Discharging");
                    }
                }
                "Mains" | "USB" | "USB_C" | "USB_PD" | "Wireless" => {
                    let online = read_num(&supply.join("online"))?.map(|v| v > 0.0);
                    if let Some(o) = online {
                        r.input_present = Some(r.input_present.unwrap_or(false) || o);
                    }
                    if online == Some(false) {
                        continue;
                    }
                    let v = read_num(&supply.join("voltage_now"))?.map(|uv| uv / 1e6);
                    let i = read_num(&supply.join("current_now"))?.map(|ua| ua / 1e6);
                    let p = read_num(&supply.join("power_now"))?.map(|uw| uw / 1e6);
                    r.input_voltage_v = r.input_voltage_v.or(v);
                    r.input_current_a = r.input_current_a.or(i);
                    r.input_power_w = r.input_power_w.or(p).or(match (v, i) {
                        (Some(v), Some(i)) => Some(v * i),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        if r.on_battery.is_none() && r.battery_soc_pct.is_some() {
            r.on_battery = r.input_present.map(|p| !p);
        }
        Ok(r)
    }
}

fn write_attr(path: &Path, value: &str) -> Result<(), HardwareError> {
    std::fs::write(path, value).map_err(|e| match e.kind() {
        ErrorKind::PermissionDenied => HardwareError::PermissionDenied { path: path.to_owned() },
        _ => HardwareError::Io { path: path.to_owned(), source: e },
    })
}

/// The cpufreq governor of every policy under `/sys/devices/system/cpu/cpufreq`.
#[derive(Debug, Clone)]
pub struct SysfsGovernor {
    root: PathBuf,
}

impl SysfsGovernor {
    /// Reads and writes policies under `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn policies(&self) -> Vec<PathBuf> {
        sorted_entries(&self.root)
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("policy")))
            .collect()
    }
}

impl CpuGovernor for SysfsGovernor {
    fn governor(&mut self) -> Result<Option<String>, HardwareError> {
        match self.policies().first() {
            Some(p) => read_attr(&p.join("scaling_governor")),
            None => Ok(None),
        }
    }

    fn available_governors(&mut self) -> Result<Vec<String>, HardwareError> {
        match self.policies().first() {
            Some(p) => Ok(read_attr(&p.join("scaling_available_governors"))?
                .map(|s| s.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()),
            None => Ok(Vec::new()),
        }
    }

    fn set_governor(&mut self, governor: &str) -> Result<(), HardwareError> {
        let available = self.available_governors()?;
        if !available.iter().any(|g| g == governor) {
            return Err(HardwareError::Unsupported(format!(
                "CPU governor {governor:?} is not offered by this kernel (available: {})",
                available.join(", ")
            )));
        }
        for p in self.policies() {
            write_attr(&p.join("scaling_governor"), governor)?;
        }
        Ok(())
    }
}

/// A fan exposed as a thermal cooling device (Pi 5 `pwm-fan`, Pi 4 `gpio-fan`).
#[derive(Debug, Clone)]
pub struct SysfsFan {
    dir: PathBuf,
    max_state: u32,
    duty: Option<f64>,
}

impl SysfsFan {
    /// The first cooling device under `thermal_root` whose type names a fan.
    ///
    /// # Errors
    /// When a fan exists but its `max_state` cannot be read.
    pub fn find(thermal_root: &Path) -> Result<Option<Self>, HardwareError> {
        for dev in sorted_entries(thermal_root) {
            let is_cooling = dev.file_name().is_some_and(|n| n.to_string_lossy().starts_with("cooling_device"));
            if !is_cooling || !read_attr(&dev.join("type"))?.is_some_and(|t| t.contains("fan")) {
                continue;
            }
            let max = read_num(&dev.join("max_state"))?.unwrap_or(1.0);
            let cur = read_num(&dev.join("cur_state"))?;
            let max_state = max.max(1.0) as u32;
            let duty = cur.map(|c| c / f64::from(max_state));
            return Ok(Some(Self { dir: dev, max_state, duty }));
        }
        Ok(None)
    }
}

impl Fan for SysfsFan {
    fn set_duty(&mut self, duty: f64) -> Result<(), HardwareError> {
        let duty = duty.clamp(0.0, 1.0);
        let state = (duty * f64::from(self.max_state)).round() as u32;
        write_attr(&self.dir.join("cur_state"), &state.to_string())?;
        self.duty = Some(f64::from(state) / f64::from(self.max_state));
        Ok(())
    }

    fn duty(&self) -> Option<f64> {
        self.duty
    }
}

/// A real Linux board read through sysfs.
#[derive(Debug, Clone)]
pub struct SysfsBoard {
    thermal: SysfsThermal,
    power: SysfsPower,
    governor: SysfsGovernor,
    fan: Option<SysfsFan>,
    throttled: PathBuf,
    has_governor: bool,
}

impl SysfsBoard {
    /// Reads under `sys_root` (normally `/sys`): `class/thermal`,
    /// `class/power_supply`, `devices/system/cpu/cpufreq` and the Pi
    /// firmware's `devices/platform/soc/soc:firmware/get_throttled`.
    #[must_use]
    pub fn new(sys_root: impl AsRef<Path>) -> Self {
        let root = sys_root.as_ref();
        let governor = SysfsGovernor::new(root.join("devices/system/cpu/cpufreq"));
        let has_governor = !governor.policies().is_empty();
        Self {
            thermal: SysfsThermal::new(root.join("class/thermal")),
            power: SysfsPower::new(root.join("class/power_supply")),
            governor,
            fan: SysfsFan::find(&root.join("class/thermal")).ok().flatten(),
            throttled: root.join("devices/platform/soc/soc:firmware/get_throttled"),
            has_governor,
        }
    }
}

impl ThermalSensor for SysfsBoard {
    fn soc_temperature_c(&mut self) -> Result<Option<f64>, HardwareError> {
        self.thermal.soc_temperature_c()
    }

    fn thermal_zones(&mut self) -> Result<Vec<(String, f64)>, HardwareError> {
        self.thermal.thermal_zones()
    }
}

impl PowerSource for SysfsBoard {
    fn read_power(&mut self) -> Result<PowerReading, HardwareError> {
        self.power.read_power()
    }
}

impl Board for SysfsBoard {
    fn throttle_flags(&mut self) -> Result<Option<ThrottleFlags>, HardwareError> {
        match read_attr(&self.throttled)? {
            None => Ok(None),
            Some(v) => {
                let hex = v.trim_start_matches("throttled=").trim_start_matches("0x");
                u32::from_str_radix(hex, 16)
                    .map(|b| Some(ThrottleFlags::from_bits(b)))
                    .map_err(|_| HardwareError::Parse { path: self.throttled.clone(), value: v })
            }
        }
    }

    fn fan(&mut self) -> Option<&mut dyn Fan> {
        self.fan.as_mut().map(|f| f as &mut dyn Fan)
    }

    fn cpu_governor(&mut self) -> Option<&mut dyn CpuGovernor> {
        if self.has_governor { Some(&mut self.governor) } else { None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    #[test]
    fn pi_like_tree_reads_cpu_zone_and_usb_input() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(r, "class/thermal/thermal_zone0/temp", "48312\n");
        write(r, "class/power_supply/rpi-usb/type", "USB\n");
        write(r, "class/power_supply/rpi-usb/online", "1\n");
        write(r, "class/power_supply/rpi-usb/voltage_now", "5100000\n");
        write(r, "class/power_supply/rpi-usb/current_now", "600000\n");
        let mut b = SysfsBoard::new(r);
        assert_eq!(b.soc_temperature_c().unwrap(), Some(48.312));
        let p = b.read_power().unwrap();
        assert_eq!(p.input_present, Some(true));
        assert_eq!(p.battery_soc_pct, None);
        assert!((p.input_power_w.unwrap() - 3.06).abs() < 1e-9);
    }

    #[test]
    fn soc_zone_preferred_over_zone0() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "class/thermal/thermal_zone0/type", "acpitz\n");
        write(r, "class/thermal/thermal_zone0/temp", "27800\n");
        write(r, "class/thermal/thermal_zone1/type", "x86_pkg_temp\n");
        write(r, "class/thermal/thermal_zone1/temp", "61000\n");
        assert_eq!(SysfsBoard::new(r).soc_temperature_c().unwrap(), Some(61.0));
    }

    #[test]
    fn laptop_like_battery_discharging() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "class/power_supply/AC/type", "Mains\n");
        write(r, "class/power_supply/AC/online", "0\n");
        write(r, "class/power_supply/BAT0/type", "Battery\n");
        write(r, "class/power_supply/BAT0/present", "1\n");
        write(r, "class/power_supply/BAT0/capacity", "77\n");
        write(r, "class/power_supply/BAT0/status", "Discharging\n");
        let p = SysfsBoard::new(r).read_power().unwrap();
        assert_eq!(p.battery_soc_pct, Some(77.0));
        assert_eq!(p.on_battery, Some(true));
        assert_eq!(p.charging, Some(false));
        assert_eq!(p.input_present, Some(false));
    }

    #[test]
    fn empty_tree_means_not_available() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SysfsBoard::new(dir.path().join("nothing-here"));
        assert_eq!(b.soc_temperature_c().unwrap(), None);
        assert_eq!(b.read_power().unwrap(), PowerReading::default());
    }

    #[test]
    fn garbage_value_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(r, "class/thermal/thermal_zone0/temp", "hot\n");
        let err = SysfsBoard::new(r).soc_temperature_c().unwrap_err();
        assert!(err.to_string().contains("thermal_zone0/temp"), "{err}");
    }
}
