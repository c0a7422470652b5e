use super::*;

fn battery(soc: f64) -> PowerReading {
    PowerReading {
        on_battery: Some(true),
        input_present: Some(false),
        battery_soc_pct: Some(soc),
        ..Default::default()
    }
}

fn mains(soc: f64) -> PowerReading {
    PowerReading {
        on_battery: Some(false),
        input_present: Some(true),
        battery_soc_pct: Some(soc),
        ..Default::default()
    }
}

#[test]
fn draining_battery_walks_down_the_profiles_and_shuts_down_once() {
    let mut m = PowerManager::new(PowerPolicy::default());
    let mut seen = vec![];
    let mut shutdowns = 0;
    let mut soc = 80.0;
    while soc > 2.0 {
        let d = m.decide(&battery(soc), Some(50.0));
        if d.changed_from.is_some() || seen.is_empty() {
            seen.push(d.profile);
        }
        shutdowns += usize::from(d.shutdown);
        soc -= 0.5;
    }
    assert_eq!(seen, [Profile::Balanced, Profile::Saver, Profile::Critical]);
    assert_eq!(shutdowns, 1);
}

#[test]
fn noise_around_a_threshold_does_not_flap() {
    let mut m = PowerManager::new(PowerPolicy::default());
    m.decide(&battery(45.0), None);
    let mut changes = 0;
    // ±2 % of noise around the 40 % threshold, slowly draining.
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..400 {
        let soc = 40.5 - f64::from(i) * 0.002 + (rng.f64() * 4.0 - 2.0);
        changes += usize::from(m.decide(&battery(soc), None).changed_from.is_some());
    }
    assert_eq!(changes, 1, "one switch to saver, no flapping");
    assert_eq!(m.profile(), Profile::Saver);
}

#[test]
fn mains_restored_goes_back_up_and_hysteresis_applies_on_battery() {
    let mut m = PowerManager::new(PowerPolicy::default());
    m.decide(&battery(10.0), None);
    assert_eq!(m.profile(), Profile::Critical);
    assert_eq!(m.decide(&battery(16.0), None).profile, Profile::Critical, "within hysteresis");
    assert_eq!(m.decide(&battery(18.5), None).profile, Profile::Saver, "past 15 + 3");
    let d = m.decide(&mains(18.5), None);
    assert_eq!((d.profile, d.changed_from), (Profile::Performance, Some(Profile::Saver)));
}

#[test]
fn heat_overrides_power_with_its_own_hysteresis_and_drives_the_fan() {
    let mut m = PowerManager::new(PowerPolicy::default());
    assert_eq!(m.decide(&mains(100.0), Some(50.0)).profile, Profile::Performance);
    let d = m.decide(&mains(100.0), Some(76.0));
    assert_eq!(d.profile, Profile::Saver);
    assert_eq!(d.fan_duty, Some(1.0));
    assert_eq!(m.decide(&mains(100.0), Some(86.0)).profile, Profile::Critical);
    assert_eq!(m.decide(&mains(100.0), Some(83.0)).profile, Profile::Critical, "85 - 3 not reached");
    assert_eq!(m.decide(&mains(100.0), Some(80.0)).profile, Profile::Saver);
    assert_eq!(m.decide(&mains(100.0), Some(73.0)).profile, Profile::Saver);
    assert_eq!(m.decide(&mains(100.0), Some(71.0)).profile, Profile::Performance);
    let p = PowerPolicy::default();
    assert_eq!(p.fan_duty(30.0), 0.0);
    assert!((p.fan_duty(60.0) - 0.45).abs() < 1e-9);
    assert_eq!(p.fan_duty(90.0), 1.0);
}

#[test]
fn policy_documents_are_validated() {
    assert!(PowerPolicy::from_toml("saver_below_pct = 50\n").is_ok());
    let e = PowerPolicy::from_toml("fan_curve = [[60, 0.5], [50, 0.9]]\n").unwrap_err().to_string();
    assert!(e.contains("fan_curve") && e.contains("increase"), "{e}");
    let e = PowerPolicy::from_toml("fan_curve = [[60, 1.5]]\n").unwrap_err().to_string();
    assert!(e.contains("outside 0-1"), "{e}");
    let e = PowerPolicy::from_toml("turbo = true\n").unwrap_err().to_string();
    assert!(e.contains("turbo"), "{e}");
    let e = PowerPolicy::from_toml("critical_below_pct = 60\n").unwrap_err().to_string();
    assert!(e.contains("critical_below_pct"), "{e}");
}

#[test]
fn a_missed_temperature_reading_does_not_relax_a_thermal_profile() {
    let mut m = PowerManager::new(PowerPolicy::default());
    assert_eq!(m.decide(&mains(100.0), Some(80.0)).profile, Profile::Saver);
    assert_eq!(m.decide(&mains(100.0), None).profile, Profile::Saver, "one failed read");
    for _ in 0..20 {
        m.decide(&mains(100.0), None);
    }
    assert_eq!(m.profile(), Profile::Performance, "a sensor gone for good is forgotten");
}

/// The same walk on the seeded `sim` board: under load the battery drains
/// 80 % -> 4 % through balanced, saver, critical and one shutdown, the sim's
/// own reading noise causes no flapping, and mains coming back goes up again.
#[test]
fn sim_battery_drain_and_mains_restored() {
    use fleet_hardware::sim::{SimBoard, SimConfig, SimInput};
    use fleet_hardware::{Board, PowerSource, ThermalSensor};
    use std::time::Duration;

    let mut cfg = SimConfig::pi_on_ups(42);
    cfg.initial_soc_pct = 80.0;
    cfg.input = SimInput::Mains { on: false };
    cfg.noise = 10.0; // ±1 % of charge on every reading
    let mut board = SimBoard::new(cfg);
    let mut m = PowerManager::new(PowerPolicy::default());
    let (mut changes, mut shutdowns) = (vec![], 0);
    for _ in 0..20_000 {
        board.advance(Duration::from_secs(5), 0.9);
        let p = board.read_power().unwrap();
        let d = m.decide(&p, board.soc_temperature_c().unwrap());
        if let Some(from) = d.changed_from {
            changes.push((from, d.profile));
        }
        shutdowns += usize::from(d.shutdown);
        if p.battery_soc_pct.unwrap() < 4.0 {
            break;
        }
    }
    assert_eq!(
        changes,
        [(Profile::Balanced, Profile::Saver), (Profile::Saver, Profile::Critical)],
        "one step per threshold, no flapping"
    );
    assert_eq!(shutdowns, 1);
    board.set_input(SimInput::Mains { on: true });
    board.advance(Duration::from_secs(5), 0.9);
    let d = m.decide(&board.read_power().unwrap(), board.soc_temperature_c().unwrap());
    assert_eq!((d.changed_from, d.profile), (Some(Profile::Critical), Profile::Performance));
}
