//! The hardware seam of a Spark Fleet node: small traits for what the agent
//! reads and drives on a board (SoC temperature, power source and battery,
//! firmware throttling flags, fan, CPU governor, status LED), with a `sysfs`
//! implementation for any Linux, an `rpi` one (feature `rpi`: INA219 power
//! monitor over I2C, PWM fan, GPIO LED through rppal), and a seeded,
//! deterministic `sim` for tests and the local demo. Knows nothing of tokio,
//! MQTT or protobuf.
#![forbid(unsafe_code)]

pub mod drivers;
pub mod ina219;
#[cfg(feature = "rpi")]
pub mod rpi;
pub mod sim;
pub mod sysfs;

use std::path::PathBuf;
use std::time::Duration;

/// Errors reading hardware. A missing file is not an error (it means "not
/// available" and reads as `None`); these are the ones an operator must fix.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error("permission denied reading {path}: run the agent as a user that may read it")]
    PermissionDenied { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected content {value:?} in {path}")]
    Parse { path: PathBuf, value: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("device error: {0}")]
    Device(String),
}

/// One reading of a node's power supply. `None` means the board cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PowerReading {
    /// External input (mains, USB, solar) is delivering power.
    pub input_present: Option<bool>,
    /// The node runs from its battery right now.
    pub on_battery: Option<bool>,
    /// Battery state of charge, 0-100 %.
    pub battery_soc_pct: Option<f64>,
    /// The battery is charging.
    pub charging: Option<bool>,
    /// Input voltage in volts.
    pub input_voltage_v: Option<f64>,
    /// Input current in amperes.
    pub input_current_a: Option<f64>,
    /// Input power in watts.
    pub input_power_w: Option<f64>,
}

/// A temperature sensor for the SoC.
pub trait ThermalSensor {
    /// SoC temperature in °C, `None` where the board has no sensor.
    ///
    /// # Errors
    /// When the sensor exists but cannot be read or parsed.
    fn soc_temperature_c(&mut self) -> Result<Option<f64>, HardwareError>;

    /// Every thermal zone the board reports: (type, °C). Empty where there is
    /// only the SoC sensor.
    ///
    /// # Errors
    /// When a zone exists but cannot be read or parsed.
    fn thermal_zones(&mut self) -> Result<Vec<(String, f64)>, HardwareError> {
        Ok(Vec::new())
    }
}

/// The node's power supply: input and battery.
pub trait PowerSource {
    /// Reads input and battery; fields the board cannot tell are `None`.
    ///
    /// # Errors
    /// When a supply exists but cannot be read or parsed.
    fn read_power(&mut self) -> Result<PowerReading, HardwareError>;
}

/// Firmware throttling flags (the Pi firmware's `get_throttled` bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleFlags {
    pub under_voltage: bool,
    pub freq_capped: bool,
    pub throttled: bool,
    pub soft_temp_limit: bool,
    pub under_voltage_since_boot: bool,
    pub freq_capped_since_boot: bool,
    pub throttled_since_boot: bool,
    pub soft_temp_limit_since_boot: bool,
}

impl ThrottleFlags {
    /// Decodes the firmware's bit field: bits 0-3 now, bits 16-19 since boot.
    #[must_use]
    pub fn from_bits(bits: u32) -> Self {
        let b = |n: u32| bits & (1 << n) != 0;
        Self {
            under_voltage: b(0),
            freq_capped: b(1),
            throttled: b(2),
            soft_temp_limit: b(3),
            under_voltage_since_boot: b(16),
            freq_capped_since_boot: b(17),
            throttled_since_boot: b(18),
            soft_temp_limit_since_boot: b(19),
        }
    }

    /// The bit field again.
    #[must_use]
    pub fn bits(&self) -> u32 {
        let f = [
            (self.under_voltage, 0),
            (self.freq_capped, 1),
            (self.throttled, 2),
            (self.soft_temp_limit, 3),
            (self.under_voltage_since_boot, 16),
            (self.freq_capped_since_boot, 17),
            (self.throttled_since_boot, 18),
            (self.soft_temp_limit_since_boot, 19),
        ];
        f.iter().filter(|(on, _)| *on).fold(0, |acc, (_, n)| acc | (1 << n))
    }
}

/// A fan whose speed can be set.
pub trait Fan {
    /// Sets the duty cycle, 0.0 (off) to 1.0 (full).
    ///
    /// # Errors
    /// When the fan cannot be driven.
    fn set_duty(&mut self, duty: f64) -> Result<(), HardwareError>;
    /// The duty cycle last set, if known.
    fn duty(&self) -> Option<f64>;
}

/// The CPU frequency governor.
pub trait CpuGovernor {
    /// The governor in use, `None` where cpufreq is not available.
    ///
    /// # Errors
    /// When it exists but cannot be read.
    fn governor(&mut self) -> Result<Option<String>, HardwareError>;
    /// Governors the kernel offers.
    ///
    /// # Errors
    /// When they cannot be read.
    fn available_governors(&mut self) -> Result<Vec<String>, HardwareError>;
    /// Switches every CPU to `governor`.
    ///
    /// # Errors
    /// An unknown governor, or no permission.
    fn set_governor(&mut self, governor: &str) -> Result<(), HardwareError>;
}

/// A status LED.
pub trait StatusLed {
    /// Turns it on or off.
    ///
    /// # Errors
    /// When the pin cannot be driven.
    fn set_led(&mut self, on: bool) -> Result<(), HardwareError>;
}

/// Everything the agent reads and drives on one board. Capabilities a board
/// lacks answer `None`.
pub trait Board: ThermalSensor + PowerSource + Send {
    /// Moves a simulated board's clock on by `dt` under `cpu_load` (0-1).
    /// Real boards ignore it: their clock is the world's.
    fn advance(&mut self, dt: Duration, cpu_load: f64) {
        let _ = (dt, cpu_load);
    }

    /// Firmware throttling flags, where the board reports them.
    ///
    /// # Errors
    /// When they exist but cannot be read.
    fn throttle_flags(&mut self) -> Result<Option<ThrottleFlags>, HardwareError> {
        Ok(None)
    }

    /// The fan, if the board has one the agent may drive.
    fn fan(&mut self) -> Option<&mut dyn Fan> {
        None
    }

    /// The CPU governor, if cpufreq is available.
    fn cpu_governor(&mut self) -> Option<&mut dyn CpuGovernor> {
        None
    }

    /// The status LED, if any.
    fn status_led(&mut self) -> Option<&mut dyn StatusLed> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_bits_round_trip() {
        // 0x50005: under-voltage now, throttled now, and both since boot.
        let f = ThrottleFlags::from_bits(0x50005);
        assert!(f.under_voltage && f.throttled && !f.freq_capped && !f.soft_temp_limit);
        assert!(f.under_voltage_since_boot && f.throttled_since_boot && !f.freq_capped_since_boot);
        assert_eq!(f.bits(), 0x50005);
        assert_eq!(ThrottleFlags::from_bits(0), ThrottleFlags::default());
    }
}
