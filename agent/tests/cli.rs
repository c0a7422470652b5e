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

/// SIGTERM with no broker in reach: the agent exits cleanly and its spool
/// holds every batch it could not deliver, for the next start.
#[test]
fn sigterm_without_broker_keeps_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = \"sig\"\ndata_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\n\
             [telemetry]\ninterval = \"100ms\"\nflush_interval = \"100ms\"\nshutdown_grace = \"200ms\"\n\
             [hardware]\nbackend = \"sim\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN).arg("--config").arg(&cfg).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "agent did not stop within 10 s of SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let mut spool =
        fleet_agent::spool::Spool::open(&dir.path().join("state").join("spool"), Default::default()).unwrap();
    let mut batches = 0;
    let mut next = 0;
    spool
        .for_each_pending(|b| {
            assert_eq!((b.node_id.as_str(), b.first_seq), ("sig", next), "contiguous from seq 0");
            next += b.samples.len() as u64;
            batches += 1;
        })
        .unwrap();
    assert!(batches >= 5, "kept {batches} batches");
}
