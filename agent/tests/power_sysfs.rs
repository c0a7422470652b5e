//! A thermal ramp on a Pi 5 sysfs tree (a writable copy of the fixture): the
//! agent raises the fan through the cooling device and switches the CPU
//! governor, then goes back when the SoC cools past the hysteresis.

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_agent::board::HardwareBackend;
use fleet_agent::config::AgentConfig;
use tokio_util::sync::CancellationToken;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default().trim().to_owned()
}

/// Replaces a file atomically, as sysfs values change for readers.
fn put(p: &Path, v: &str) {
    let tmp = p.with_extension("tmp");
    std::fs::write(&tmp, v).unwrap();
    std::fs::rename(&tmp, p).unwrap();
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thermal_ramp_drives_fan_and_governor_through_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware/tests/fixtures/pi5");
    assert!(std::process::Command::new("cp").arg("-a").arg(&fixture).arg(&sys).status().unwrap().success());
    let temp = sys.join("class/thermal/thermal_zone0/temp");
    let fan = sys.join("class/thermal/cooling_device0/cur_state");
    let governor = sys.join("devices/system/cpu/cpufreq/policy0/scaling_governor");

    let mut cfg = AgentConfig { node_id: "pi5".into(), data_dir: dir.path().join("state"), ..Default::default() };
    cfg.mqtt.url = "mqtt://127.0.0.1:9".into();
    cfg.hardware.backend = HardwareBackend::Sysfs;
    cfg.hardware.sys_root = sys.clone();
    cfg.telemetry.interval = Duration::from_millis(50);
    cfg.telemetry.shutdown_grace = Duration::from_millis(50);
    cfg.power.saver.telemetry_interval = None;
    let stop = CancellationToken::new();
    let agent = tokio::spawn(fleet_agent::run(cfg, stop.clone()));

    // 52.35 °C: balanced (no power supply known), fan at 0.22 of 4 states -> 1.
    wait_until("fan at state 1", || read(&fan) == "1").await;
    put(&temp, "78000\n");
    wait_until("fan full and governor powersave at 78 °C", || read(&fan) == "4" && read(&governor) == "powersave")
        .await;
    // 73 °C is within the 3 °C hysteresis of 75: still saver.
    put(&temp, "73000\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(read(&governor), "powersave");
    put(&temp, "60000\n");
    wait_until("governor back to ondemand and fan at 0.45 -> state 2", || {
        read(&governor) == "ondemand" && read(&fan) == "2"
    })
    .await;
    stop.cancel();
    agent.await.unwrap().unwrap();
}
