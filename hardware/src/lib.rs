//! The hardware seam of a Spark Fleet node: small traits for what the agent
//! reads off a board (SoC temperature, power source and battery), with a
//! `sysfs` implementation for any Linux and a seeded, deterministic `sim`
//! implementation for tests and the local demo. Knows nothing of tokio, MQTT
//! or protobuf.
#![forbid(unsafe_code)]

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
}

/// The node's power supply: input and battery.
pub trait PowerSource {
    /// Reads input and battery; fields the board cannot tell are `None`.
    ///
    /// # Errors
    /// When a supply exists but cannot be read or parsed.
    fn read_power(&mut self) -> Result<PowerReading, HardwareError>;
}

/// Everything the agent samples from one board.
pub trait Board: ThermalSensor + PowerSource + Send {
    /// Moves a simulated board's clock on by `dt` under `cpu_load` (0-1).
    /// Real boards ignore it: their clock is the world's.
    fn advance(&mut self, dt: Duration, cpu_load: f64) {
        let _ = (dt, cpu_load);
    }
}
