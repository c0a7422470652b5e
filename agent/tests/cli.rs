//! The `fleet-agent` binary: its config commands and errors.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");

#[test]
fn generate_config_prints_the_documented_default() {
    let out = Command::new(BIN).arg("generate-config").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let cfg = fleet_agent::AgentConfig::from_toml(&text, "generated").unwrap();
    assert_eq!(cfg, fleet_agent::AgentConfig::default());
    assert!(text.contains("# "), "the default config is documented");
}

#[test]
fn bad_config_file_fails_at_start_with_file_key_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, "[telemetry]\ninterval = \"1s\"\nbatch_size = 3\n").unwrap();
    let out = Command::new(BIN).arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()) && err.contains("batch_size"), "{err}");

    let out = Command::new(BIN).arg("--config").arg(dir.path().join("missing.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}
