//! The `fleet-controller` and `fleetctl` binaries: config commands and errors.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-controller");
const CTL: &str = env!("CARGO_BIN_EXE_fleetctl");

#[test]
fn generate_config_prints_the_documented_default() {
    let out = Command::new(BIN).arg("generate-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg = fleet_controller::ControllerConfig::from_toml(&text, "generated").unwrap();
    assert_eq!(cfg, fleet_controller::ControllerConfig::default());
}

#[test]
fn bad_config_value_fails_at_start_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.toml");
    std::fs::write(&path, "[http]\nlisten = \"localhost\"\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()) && err.contains("listen"), "{err}");
}

#[test]
fn fleetctl_says_what_to_do_when_no_controller_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out =
        Command::new(CTL).args(["--server", &format!("http://127.0.0.1:{port}"), "nodes", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the controller") && err.contains("--server"), "{err}");
}
