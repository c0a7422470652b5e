//! Names of the metrics agents produce (documented in docs/wire.md): the
//! agent samples them, the controller and tools read them back.

pub const CPU_USAGE_PCT: &str = "cpu.usage_pct";
pub const CPU_LOAD1: &str = "cpu.load1";
pub const MEM_USED_PCT: &str = "mem.used_pct";
pub const MEM_USED_BYTES: &str = "mem.used_bytes";
pub const DISK_USED_PCT: &str = "disk.used_pct";
pub const NET_RX_BYTES_PER_S: &str = "net.rx_bytes_per_s";
pub const NET_TX_BYTES_PER_S: &str = "net.tx_bytes_per_s";
pub const SOC_TEMP_C: &str = "soc.temp_c";
pub const BATTERY_SOC_PCT: &str = "power.battery_soc_pct";
pub const ON_BATTERY: &str = "power.on_battery";
pub const INPUT_POWER_W: &str = "power.input_w";
pub const THROTTLE_BITS: &str = "soc.throttle_bits";
pub const FAN_DUTY: &str = "fan.duty";
pub const POWER_PROFILE: &str = "power.profile";

/// The eleven system and power metrics of one tick on a battery-backed board
/// (what the benchmarks use as a realistic batch).
pub const TICK: [&str; 11] = [
    CPU_USAGE_PCT,
    CPU_LOAD1,
    MEM_USED_PCT,
    MEM_USED_BYTES,
    DISK_USED_PCT,
    NET_RX_BYTES_PER_S,
    NET_TX_BYTES_PER_S,
    SOC_TEMP_C,
    BATTERY_SOC_PCT,
    ON_BATTERY,
    INPUT_POWER_W,
];
