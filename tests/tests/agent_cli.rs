//! The agent as a person at the Pi meets it: an agent that is not enrolled,
//! against a controller that requires enrollment (the default), says so at
//! start and when the broker refuses it (once a minute at most), with the
//! command that fixes it; `fleet-agent status` shows enrollment, broker
//! connection, last ack and spool backlog, and exits 3 when no agent runs.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_tests::cluster::{self, ControllerProc, ControllerSetup, enroll};
use fleet_tests::procs::bin;
use fleet_tests::{free_port, wait_for};

async fn controller(dir: &Path) -> anyhow::Result<(ControllerProc, String)> {
    let port = free_port();
    let setup = ControllerSetup::embedded(dir, port);
    Ok((ControllerProc::start(dir, &setup).await?, format!("mqtt://127.0.0.1:{port}")))
}

/// `fleet-agent --config config status`: its stdout and exit code.
fn status(config: &Path) -> anyhow::Result<(String, i32)> {
    let out = Command::new(bin("fleet-agent")?).arg("--config").arg(config).arg("status").output()?;
    Ok((String::from_utf8(out.stdout)?, out.status.code().unwrap_or(-1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unenrolled_agent_says_why_and_what_fixes_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut ctl, url) = controller(dir.path()).await?;
    let d = dir.path();
    let cfg = cluster::agent_config("lost-pi", d, &d.join("lost-pi"), &url, "1s", 1 << 20);
    let mut agent = cluster::start_agent("lost-pi", d, &cfg, None, "info")?;
    let log = wait_for(Duration::from_secs(20), "the agent's warnings", || {
        let text = agent.log_text();
        async move { (text.contains("not enrolled") && text.contains("refused this node's login")).then_some(text) }
    })
    .await
    .with_context(|| agent.log_text())?;
    ensure!(log.contains("fleet-agent enroll --controller"), "the warning names the command that fixes it:\n{log}");
    let text = wait_for(Duration::from_secs(10), "`fleet-agent status` showing the refusal", || {
        let s = status(&cfg);
        async move { s.ok().filter(|(t, code)| *code == 0 && t.contains("REFUSED")).map(|(t, _)| t) }
    })
    .await?;
    for want in ["NOT enrolled", "fleetctl tokens create", "running as lost-pi", "REFUSED", "last ack    never"] {
        ensure!(text.contains(want), "`{want}` missing in:\n{text}");
    }
    // It keeps retrying, but says it once a minute at most.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let refused = agent.log_text().matches("refused this node's login").count();
    ensure!(refused == 1, "the refusal was said {refused} times in a few seconds:\n{}", agent.log_text());
    agent.term(Duration::from_secs(30))?;
    let (text, code) = status(&cfg)?;
    ensure!(code == 3 && text.contains("not running"), "without an agent: exit 3, `not running`: {code}\n{text}");
    ctl.kill9();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_an_enrolled_agent_shows_the_link_and_the_last_ack() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut ctl, url) = controller(dir.path()).await?;
    let d = dir.path();
    let cfg = cluster::agent_config("good-pi", d, &d.join("good-pi"), &url, "1s", 1 << 20);
    enroll(&ctl, &cfg)?;
    let mut agent = cluster::start_agent("good-pi", d, &cfg, None, "info")?;
    let text = wait_for(Duration::from_secs(20), "an ack in `fleet-agent status`", || {
        let s = status(&cfg);
        async move { s.ok().filter(|(t, code)| *code == 0 && !t.contains("last ack    never")).map(|(t, _)| t) }
    })
    .await?;
    for want in ["enrolled as good-pi", "(connected)", "batches unacknowledged", "ago)"] {
        ensure!(text.contains(want), "`{want}` missing in:\n{text}");
    }
    ensure!(!agent.log_text().contains("not enrolled"), "an enrolled agent does not nag:\n{}", agent.log_text());
    agent.term(Duration::from_secs(30))?;
    ctl.kill9();
    Ok(())
}
