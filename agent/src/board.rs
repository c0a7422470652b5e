//! The board the agent reads: the `[hardware]` settings and the
//! implementation they pick (this machine's sysfs, or a simulated Pi).

use std::path::PathBuf;

use fleet_hardware::Board;
use fleet_hardware::sim::{SimBoard, SimConfig};
use fleet_hardware::sysfs::SysfsBoard;
use serde::Deserialize;

/// Which board implementation the agent reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HardwareBackend {
    /// This machine's sysfs.
    Sysfs,
    /// A simulated battery-backed Pi.
    Sim,
}

/// `[hardware]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HardwareConfig {
    /// Default "sysfs".
    pub backend: HardwareBackend,
    /// Default "/sys".
    pub sys_root: PathBuf,
    /// Default 0.
    pub sim_seed: u64,
    /// Default "/".
    pub disk_path: PathBuf,
    /// Simulated seconds per real second (backend = "sim"). Default 1.
    pub sim_time_scale: f64,
    /// Whether the simulated board starts on mains. Default true.
    pub sim_mains: bool,
    /// Initial state of charge of the simulated battery; negative: from the seed. Default -1.
    pub sim_initial_soc_pct: f64,
    /// While this file exists the simulated mains plug is pulled. Default: none.
    pub sim_unplug_file: Option<PathBuf>,
}

impl Default for HardwareConfig {
    fn default() -> Self {
        Self {
            backend: HardwareBackend::Sysfs,
            sys_root: PathBuf::from("/sys"),
            sim_seed: 0,
            disk_path: PathBuf::from("/"),
            sim_time_scale: 1.0,
            sim_mains: true,
            sim_initial_soc_pct: -1.0,
            sim_unplug_file: None,
        }
    }
}

/// The board `cfg` names.
#[must_use]
pub fn board(cfg: &HardwareConfig) -> Box<dyn Board> {
    match cfg.backend {
        HardwareBackend::Sysfs => Box::new(SysfsBoard::new(&cfg.sys_root)),
        HardwareBackend::Sim => {
            let mut sim = SimConfig::pi_on_ups(cfg.sim_seed);
            sim.time_scale = cfg.sim_time_scale;
            sim.input = fleet_hardware::sim::SimInput::Mains { on: cfg.sim_mains };
            sim.unplug_file.clone_from(&cfg.sim_unplug_file);
            if cfg.sim_initial_soc_pct >= 0.0 {
                sim.initial_soc_pct = cfg.sim_initial_soc_pct;
            }
            Box::new(SimBoard::new(sim))
        }
    }
}
