//! The Pi's own agent: the aarch64 build of scripts/build-pi, run under
//! `qemu-aarch64-static` against this machine's x86_64 controller, enrolls
//! with the real command line, streams signed telemetry, runs a job on the
//! built-in model, applies a desired state, and stops cleanly on SIGTERM.

use std::path::PathBuf;

use anyhow::{Context, ensure};
use fleet_tests::cluster::{AgentBin, Broker};
use fleet_tests::enrolled::{EnrolledFleet, T};
use fleet_tests::free_port;
use fleet_tests::need::{Need, missing};

const TEST: &str = "the_pi_agent_under_emulation_enrolls_streams_runs_a_job_and_stops_cleanly";
/// Where Debian's aarch64 cross libc lives (the emulated loader's root).
const SYSROOT: &str = "/usr/aarch64-linux-gnu";

/// The emulated agent, or `None` (the skip said and counted) where it is missing and not required.
fn pi_agent() -> anyhow::Result<Option<AgentBin>> {
    let dir = std::env::var_os("FLEET_PI_BIN_DIR").map(PathBuf::from);
    let agent = dir.map(|d| d.join("fleet-agent")).filter(|p| p.is_file());
    let runner =
        ["/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-aarch64"].map(PathBuf::from).into_iter().find(|p| p.is_file());
    match (agent, runner) {
        (Some(agent), Some(runner)) if std::path::Path::new(SYSROOT).is_dir() => {
            let env = vec![("QEMU_LD_PREFIX".to_owned(), SYSROOT.to_owned())];
            Ok(Some(AgentBin::Emulated { runner, agent, env }))
        }
        _ => {
            let why = "needs FLEET_PI_BIN_DIR with scripts/build-pi's fleet-agent, qemu-user-static and \
                       Debian's aarch64 libc (libc6-arm64-cross)";
            missing(Need::Pi, TEST, why)?;
            Ok(None)
        }
    }
}

/// `true` when `path` is an ELF for AArch64 (e_machine 183).
fn is_aarch64(path: &std::path::Path) -> anyhow::Result<bool> {
    let head = std::fs::read(path)?.into_iter().take(20).collect::<Vec<u8>>();
    Ok(head.starts_with(b"\x7fELF") && head.get(18..20) == Some(&[183, 0][..]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pi_agent_under_emulation_enrolls_streams_runs_a_job_and_stops_cleanly() -> anyhow::Result<()> {
    let Some(bin) = pi_agent()? else { return Ok(()) };
    let AgentBin::Emulated { agent, .. } = &bin else { unreachable!("pi_agent gives an emulated agent") };
    ensure!(is_aarch64(agent)?, "{} is not an aarch64 binary", agent.display());

    let mut f = EnrolledFleet::start_with(Broker::Embedded(free_port()), &["pi1"], bin).await?;
    f.wait_heard(&["pi1"]).await.with_context(|| f.ctl.log.display().to_string())?;
    let node = f.node("pi1").context("pi1 listed")?;
    ensure!(node["state"] == "online", "pi1: {node}");

    let job = f.fleetctl(&[
        "jobs",
        "submit",
        "--model",
        "severity",
        "--node",
        "pi1",
        "--text",
        "disk failure on /dev/sda",
        "-o",
        "json",
    ])?;
    let job: serde_json::Value = serde_json::from_str(&job).context("jobs submit -o json")?;
    ensure!(
        job["node_id"] == "pi1" && job["status"] == "succeeded" && job["site"] == "edge node pi1",
        "the job: {job}"
    );

    f.set_desired("pi1", "3s", 1).await?;

    let (.., proc) = f.agents.iter_mut().find(|(n, ..)| n == "pi1").context("pi1")?;
    let mut agent = proc.take().context("pi1 running")?;
    let status = agent.term(T)?;
    let log = agent.log_text();
    ensure!(status.success() && log.contains("Agent stopped."), "the emulated agent stopped with {status}:\n{log}");
    Ok(())
}
