//! The sysfs readers against fixture trees laid out as on a Pi 4, a Pi 5 and
//! a desktop without battery (tests/fixtures/README.md says where they come from).

use std::path::{Path, PathBuf};

use fleet_hardware::sysfs::SysfsBoard;
use fleet_hardware::{Board, PowerSource, ThermalSensor, ThrottleFlags};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A writable copy, for tests that drive the fan or the governor.
fn copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status =
        std::process::Command::new("cp").arg("-a").arg(fixture(name)).arg(dir.path().join("sys")).status().unwrap();
    assert!(status.success());
    dir
}

#[test]
fn pi4() {
    let mut b = SysfsBoard::new(fixture("pi4"));
    assert_eq!(b.soc_temperature_c().unwrap(), Some(48.686));
    assert_eq!(b.read_power().unwrap(), Default::default(), "no power_supply on a Pi 4");
    let f = b.throttle_flags().unwrap().unwrap();
    assert_eq!(f, ThrottleFlags { under_voltage_since_boot: true, throttled_since_boot: true, ..Default::default() });
    let g = b.cpu_governor().unwrap();
    assert_eq!(g.governor().unwrap().as_deref(), Some("ondemand"));
    assert!(g.available_governors().unwrap().contains(&"powersave".to_owned()));
    assert_eq!(b.fan().unwrap().duty(), Some(0.0), "gpio-fan off");
}

#[test]
fn pi5() {
    let mut b = SysfsBoard::new(fixture("pi5"));
    assert_eq!(b.soc_temperature_c().unwrap(), Some(52.35));
    assert_eq!(b.thermal_zones().unwrap(), [("cpu-thermal".to_owned(), 52.35)]);
    assert_eq!(b.throttle_flags().unwrap(), Some(ThrottleFlags::default()));
    assert_eq!(b.fan().unwrap().duty(), Some(0.25), "pwm-fan at state 1 of 4");
}

#[test]
fn desktop_without_battery() {
    let mut b = SysfsBoard::new(fixture("x86-no-battery"));
    assert_eq!(b.soc_temperature_c().unwrap(), Some(44.0), "x86_pkg_temp preferred over acpitz");
    assert_eq!(b.thermal_zones().unwrap(), [("acpitz".to_owned(), 27.8), ("x86_pkg_temp".to_owned(), 44.0)]);
    let p = b.read_power().unwrap();
    assert_eq!((p.input_present, p.battery_soc_pct, p.on_battery), (Some(true), None, None));
    assert_eq!(b.throttle_flags().unwrap(), None, "no Pi firmware");
    assert!(b.fan().is_none());
    assert_eq!(b.cpu_governor().unwrap().governor().unwrap().as_deref(), Some("powersave"));
}

#[test]
fn fan_and_governor_are_driven_through_sysfs() {
    let dir = copy("pi5");
    let root = dir.path().join("sys");
    let mut b = SysfsBoard::new(&root);
    b.fan().unwrap().set_duty(0.8).unwrap();
    assert_eq!(std::fs::read_to_string(root.join("class/thermal/cooling_device0/cur_state")).unwrap(), "3");
    b.cpu_governor().unwrap().set_governor("powersave").unwrap();
    let gov = std::fs::read_to_string(root.join("devices/system/cpu/cpufreq/policy0/scaling_governor")).unwrap();
    assert_eq!(gov.trim(), "powersave");
    let err = b.cpu_governor().unwrap().set_governor("turbo").unwrap_err().to_string();
    assert!(err.contains("turbo") && err.contains("available"), "{err}");
}

#[test]
fn permission_errors_name_the_file() {
    if std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0")) {
        // root reads everything: make the file a directory instead, which fails for anyone.
        let dir = copy("pi4");
        let root = dir.path().join("sys");
        let temp = root.join("class/thermal/thermal_zone0/temp");
        std::fs::remove_file(&temp).unwrap();
        std::fs::create_dir(&temp).unwrap();
        let err = SysfsBoard::new(&root).soc_temperature_c().unwrap_err().to_string();
        assert!(err.contains("thermal_zone0/temp"), "{err}");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = copy("pi4");
    let root = dir.path().join("sys");
    let temp = root.join("class/thermal/thermal_zone0/temp");
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o000)).unwrap();
    let err = SysfsBoard::new(&root).soc_temperature_c().unwrap_err().to_string();
    assert!(err.contains("permission denied") && err.contains("thermal_zone0/temp"), "{err}");
}
