//! Both daemons speak systemd's service protocol as their `Type=notify`
//! units expect (agent/debian, controller/debian): the real binaries, each
//! given a notify socket and a watchdog as systemd gives them, send READY=1
//! once started, WATCHDOG=1 at half the watchdog's timeout while they run,
//! and STOPPING=1 on SIGTERM before a clean exit.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_tests::cluster::{ControllerProc, ControllerSetup, agent_config};
use fleet_tests::free_port;
use fleet_tests::procs::{Proc, bin};

/// Two seconds: pings every second.
const WATCHDOG_USEC: &str = "2000000";

/// A notify socket like systemd's, for one service.
struct NotifySocket {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    got: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path, name: &str) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.notify"));
        let sock = UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Self { sock, path, got: Vec::new() })
    }

    fn env(&self) -> [(&str, String); 2] {
        [("NOTIFY_SOCKET", self.path.display().to_string()), ("WATCHDOG_USEC", WATCHDOG_USEC.to_owned())]
    }

    /// Reads until a message with `line` arrives, or fails after `timeout` saying what came.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == line);
                self.got.push(msg);
                if hit {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("no {line} within {timeout:?}; got {:?}", self.got)
    }

    fn count(&self, line: &str) -> usize {
        self.got.iter().filter(|m| m.lines().any(|l| l == line)).count()
    }
}

/// READY, then pings for a while, and no ping before READY.
fn ready_then_pings(n: &mut NotifySocket, who: &str) -> anyhow::Result<()> {
    n.wait_for("READY=1", Duration::from_secs(30))?;
    assert_eq!(n.count("WATCHDOG=1"), 0, "{who} pinged before it was ready: {:?}", n.got);
    assert!(n.got.last().is_some_and(|m| m.contains("STATUS=")), "{who}'s READY has no STATUS: {:?}", n.got);
    for _ in 0..3 {
        n.wait_for("WATCHDOG=1", Duration::from_secs(5))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_daemons_notify_systemd_ready_ping_its_watchdog_and_stop_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mqtt_port = free_port();
    let mut setup = ControllerSetup::embedded(dir.path(), mqtt_port);
    setup.lab = true;
    let mut controller = ControllerProc::start(dir.path(), &setup).await?;
    // Started again, now as systemd would: with a notify socket and a watchdog.
    controller.kill9();
    let mut c_notify = NotifySocket::bind(dir.path(), "controller")?;
    let env = c_notify.env();
    controller.up_with_env(&env.each_ref().map(|(k, v)| (*k, v.as_str()))).await?;
    ready_then_pings(&mut c_notify, "the controller")?;

    let config = agent_config(
        "sd1",
        dir.path(),
        &dir.path().join("sd1"),
        &format!("mqtt://127.0.0.1:{mqtt_port}"),
        "1s",
        1 << 20,
    );
    let mut a_notify = NotifySocket::bind(dir.path(), "agent")?;
    let mut cmd = Command::new(bin("fleet-agent")?);
    cmd.arg("--config").arg(&config).env("NO_COLOR", "1").envs(a_notify.env());
    let mut agent = Proc::spawn("fleet-agent", cmd, &dir.path().join("agent.log"))?;
    ready_then_pings(&mut a_notify, "the agent")?;

    // SIGTERM: STOPPING=1 and a clean exit (the agent waits for its last acks).
    let status = agent.term(Duration::from_secs(30))?;
    a_notify.wait_for("STOPPING=1", Duration::from_secs(1))?;
    assert!(status.success(), "the agent stopped with {status}:\n{}", agent.log_text());
    controller.term()?;
    c_notify.wait_for("STOPPING=1", Duration::from_secs(1))?;
    Ok(())
}
