//! Bootstrap-token expiry when the wall clock jumps across a controller
//! restart. The controller process is started again under libfaketime
//! (`faketime`, the wall clock only: the monotonic clock stays real), a day
//! back and a day forward; nothing here depends on how long the machine has
//! been up. A day back must not make an expired token valid again (time runs
//! on from the high-water mark the controller keeps in its store); a day
//! forward ends a token early, the safe direction.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::ensure;
use fleet_tests::cluster::{self, Broker, ControllerProc, ControllerSetup, output};
use fleet_tests::free_port;
use fleet_tests::need::{self, Need};
use fleet_tests::procs::bin;

const TEST: &str = "clock_jumps::token_expiry_holds_when_the_wall_clock_jumps_across_restarts";

/// The controller's environment for a wall clock `offset` away ("-1d"), the
/// monotonic clock left alone (tokio's timers run on it). Preloaded into the
/// controller itself: the `faketime` program forks, and a SIGKILL of it would
/// leave the controller running.
fn shifted<'a>(lib: &'a str, offset: &'a str) -> [(&'a str, &'a str); 3] {
    [("LD_PRELOAD", lib), ("FAKETIME", offset), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")]
}

fn token(ctl: &ControllerProc, ttl: &str) -> anyhow::Result<String> {
    let mut cmd = ctl.fleetctl()?;
    cmd.args(["tokens", "create", "--ttl", ttl]);
    Ok(output(cmd, "fleetctl tokens create")?.trim().to_owned())
}

/// `fleet-agent enroll` of a new node with `token`: Ok(()) or the refusal's text.
fn enroll(ctl: &ControllerProc, dir: &Path, node: &str, token: &str) -> anyhow::Result<Result<(), String>> {
    let cfg = cluster::agent_config(node, dir, &dir.join(node), "mqtt://127.0.0.1:1", "1s", 1 << 20);
    let out = Command::new(bin("fleet-agent")?)
        .arg("--config")
        .arg(&cfg)
        .args(["enroll", "--controller", &ctl.server(), "--ca"])
        .arg(ctl.data.join("tls/ca.pem"))
        .env("FLEET_BOOTSTRAP_TOKEN", token)
        .output()?;
    Ok(if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_holds_when_the_wall_clock_jumps_across_restarts() -> anyhow::Result<()> {
    let Some(lib) = fleet_tests::faketime::library() else {
        let why = "libfaketime is not installed (apt-get install faketime; scripts/test does)";
        return need::missing(Need::Root, TEST, why);
    };
    let lib = lib.to_string_lossy().into_owned();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let setup = ControllerSetup {
        database_url: None,
        broker: Broker::Embedded(free_port()),
        lab: false,
        data: d.join("controller"),
        extra: String::new(),
        timescaledb: false,
    };
    let mut ctl = ControllerProc::start(d, &setup).await?;
    let short = token(&ctl, "2s")?;
    let hour = token(&ctl, "1h")?;
    let hour_2 = token(&ctl, "1h")?;
    // Expired, and the controller has stored a high-water mark after that
    // (it does every 10 s: a cut gains at most that much).
    tokio::time::sleep(fleet_controller::clock::PERSIST_EVERY + Duration::from_secs(3)).await;

    // A day back: the 2 s token stays expired, the hour token still works.
    ctl.kill9();
    ctl.up_with_env(&shifted(&lib, "-1d")).await?;
    let refused = enroll(&ctl, d, "back-1", &short)?;
    ensure!(
        refused.as_ref().is_err_and(|e| e.contains("expired")),
        "with the wall clock a day back, an expired token was not refused as expired: {refused:?}"
    );
    ensure!(enroll(&ctl, d, "back-2", &hour)? == Ok(()), "an hour token made seconds ago must still enroll");

    // A day ahead: the other hour token has expired (early, the safe way).
    ctl.kill9();
    ctl.up_with_env(&shifted(&lib, "+1d")).await?;
    let refused = enroll(&ctl, d, "ahead-1", &hour_2)?;
    ensure!(
        refused.as_ref().is_err_and(|e| e.contains("expired")),
        "with the wall clock a day ahead, an hour token must have expired: {refused:?}"
    );
    let fresh = token(&ctl, "1h")?;

    // The real clock again: time does not go back below what was seen, and a
    // token made in the meantime works for its hour.
    ctl.kill9();
    ctl.up().await?;
    ensure!(enroll(&ctl, d, "now-1", &fresh)? == Ok(()), "a token made a moment ago must enroll");
    let again = token(&ctl, "1h")?;
    ensure!(enroll(&ctl, d, "now-2", &again)? == Ok(()), "a token made now must enroll");
    ctl.kill9();
    Ok(())
}
