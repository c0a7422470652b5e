//! A fleet of real processes: `fleet-controller` started from its command line
//! (and killed, and started again on the same ports), nodes enrolled with the
//! real `fleetctl` and `fleet-agent enroll`, and `fleet-agent` processes.
//! The chaos and power-cut suites use it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};

use crate::procs::{AgentStopped, NetNs, Proc, bin, runs_in_db, seqs_in_db};
use crate::{free_port, wait_for};

/// How the controller reaches its broker.
#[derive(Debug, Clone)]
pub enum Broker {
    /// The controller's own rumqttd on this port (dies and restarts with it).
    Embedded(u16),
    External(String),
}

/// A `fleet-controller` process with fixed ports and data directory.
pub struct ControllerProc {
    args: Vec<String>,
    pub grpc: u16,
    pub http: u16,
    /// Its `--data-dir` (TLS CA, admin token, SQLite store unless a database URL is given).
    pub data: PathBuf,
    pub log: PathBuf,
    proc: Option<Proc>,
}

/// What a controller is started with.
#[derive(Debug, Clone)]
pub struct ControllerSetup<'a> {
    /// PostgreSQL URL; `None`: the default SQLite store in the data directory.
    pub database_url: Option<&'a str>,
    pub broker: Broker,
    /// Nodes that never enrolled are heard (`security.require_enrollment = false`).
    pub lab: bool,
    /// Its data directory.
    pub data: PathBuf,
    /// More of its config file (TOML after the `[security]` section's key).
    pub extra: String,
    /// On PostgreSQL: the TimescaleDB schema (`storage.postgres_schema`),
    /// else plain PostgreSQL even where the cluster has TimescaleDB.
    pub timescaledb: bool,
}

impl ControllerSetup<'_> {
    /// Enrollment required, SQLite in `dir/controller`, its own broker on `mqtt_port`.
    #[must_use]
    pub fn embedded(dir: &Path, mqtt_port: u16) -> Self {
        Self {
            database_url: None,
            broker: Broker::Embedded(mqtt_port),
            lab: false,
            data: dir.join("controller"),
            extra: String::new(),
            timescaledb: false,
        }
    }
}

impl ControllerProc {
    /// Starts a controller; its config file and log go into `dir`.
    ///
    /// # Errors
    /// When it does not answer on its gRPC port within 20 s.
    pub async fn start(dir: &Path, setup: &ControllerSetup<'_>) -> anyhow::Result<Self> {
        let conf = dir.join("controller.toml");
        // Plain PostgreSQL unless the test asks for TimescaleDB (the cluster has it preloaded).
        let schema = if setup.timescaledb { "timescaledb" } else { "postgres" };
        let storage = format!("[storage]\npostgres_schema = \"{schema}\"\n");
        // Plain HTTP: the tests read /metrics with `http_get` (tests/tests/dashboard.rs covers TLS).
        let storage = format!("{storage}[http]\ntls = \"off\"\n");
        let text = format!("{storage}[security]\nrequire_enrollment = {}\n{}", !setup.lab, setup.extra);
        std::fs::write(&conf, text)?;
        // A port picked free may be taken by another test before the controller
        // binds it: then new ones (its API and metrics ports only; the broker's is the caller's).
        let mut attempt = 0;
        loop {
            let (grpc, http) = (free_port(), free_port());
            let mut args = vec![
                "--config".into(),
                conf.display().to_string(),
                "--data-dir".into(),
                setup.data.display().to_string(),
                "--grpc-listen".into(),
                format!("127.0.0.1:{grpc}"),
                "--http-listen".into(),
                format!("127.0.0.1:{http}"),
            ];
            if let Some(url) = setup.database_url {
                args.extend(["--database-url".into(), url.to_owned()]);
            }
            match &setup.broker {
                Broker::Embedded(port) => args.extend(["--mqtt-listen".into(), format!("127.0.0.1:{port}")]),
                Broker::External(url) => args.extend(["--mqtt-url".into(), url.clone()]),
            }
            let log = dir.join(format!("controller-{attempt}.log"));
            let mut c = Self { args, grpc, http, data: setup.data.clone(), log, proc: None };
            match c.up().await {
                Ok(()) => return Ok(c),
                Err(e) if attempt < 3 && port_taken(&c.log, grpc, http) => {
                    attempt += 1;
                    c.kill9();
                    eprintln!("controller ports {grpc}/{http} were taken meanwhile; trying others ({e:#})");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts the process again (after `kill9`).
    ///
    /// # Errors
    /// When it does not answer on its gRPC port within 20 s.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        self.up_with_env(&[]).await
    }

    /// Starts the process again with more environment (e.g. libfaketime's).
    ///
    /// # Errors
    /// When it does not answer on its gRPC port within 20 s.
    pub async fn up_with_env(&mut self, env: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin("fleet-controller")?);
        cmd.envs(env.iter().copied());
        cmd.args(&self.args).env("RUST_LOG", "info,rumqttd=off").env("NO_COLOR", "1");
        self.proc = Some(Proc::spawn("fleet-controller", cmd, &self.log)?);
        let port = self.grpc;
        wait_for(Duration::from_secs(20), "the controller's gRPC port", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await
        .with_context(|| std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// SIGTERM, waiting up to 30 s for a clean stop.
    ///
    /// # Errors
    /// When it does not stop in time, or stops with an error.
    pub fn term(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            let status = p.term(Duration::from_secs(30))?;
            anyhow::ensure!(status.success(), "the controller stopped with {status}:\n{}", p.log_text());
        }
        Ok(())
    }

    /// Whether the process still runs (it may have exited by itself).
    pub fn running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(Proc::running)
    }

    /// Its gRPC URL.
    #[must_use]
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc)
    }

    /// `fleetctl` against it, trusting `ca` and with the admin token in `token_file`.
    ///
    /// # Errors
    /// When fleetctl was not built.
    pub fn fleetctl_with(&self, ca: &Path, token_file: &Path) -> anyhow::Result<Command> {
        let mut cmd = Command::new(bin("fleetctl")?);
        cmd.args(["--server", &self.server(), "--ca"]).arg(ca).arg("--token-file").arg(token_file);
        Ok(cmd)
    }

    /// `fleetctl` with the CA and admin token of its data directory.
    ///
    /// # Errors
    /// When fleetctl was not built.
    pub fn fleetctl(&self) -> anyhow::Result<Command> {
        self.fleetctl_with(&self.data.join("tls/ca.pem"), &self.data.join("admin.token"))
    }
}

/// The controller's log says one of its own ports was in use.
fn port_taken(log: &Path, grpc: u16, http: u16) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.contains("Address already in use")
        && (text.contains(&format!(":{grpc}")) || text.contains(&format!(":{http}")))
}

/// Runs a command and returns its stdout, or an error with its output.
///
/// # Errors
/// When it fails to start or exits non-zero.
pub fn output(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} exited with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// Which agent binary runs a node: this workspace's, or another build run
/// through a prefix (the Pi's aarch64 build under `qemu-aarch64-static`).
#[derive(Debug, Clone, Default)]
pub enum AgentBin {
    #[default]
    Native,
    /// `runner agent ...` with `env`.
    Emulated { runner: PathBuf, agent: PathBuf, env: Vec<(String, String)> },
}

impl AgentBin {
    /// The command that runs the agent (in `ns` if given); arguments follow.
    ///
    /// # Errors
    /// When this workspace's agent was not built.
    pub fn command(&self, ns: Option<&NetNs>) -> anyhow::Result<Command> {
        let program = match self {
            AgentBin::Native => bin("fleet-agent")?,
            AgentBin::Emulated { runner, .. } => runner.clone(),
        };
        let mut cmd = match ns {
            Some(ns) => ns.command(&program),
            None => Command::new(&program),
        };
        if let AgentBin::Emulated { agent, env, .. } = self {
            cmd.arg(agent).envs(env.iter().map(|(k, v)| (k, v)));
        }
        Ok(cmd)
    }
}

/// Enrolls a node with the real command lines: `fleetctl tokens create` with
/// the controller's admin token, then `fleet-agent enroll` with it.
///
/// # Errors
/// When either command fails.
pub fn enroll(ctl: &ControllerProc, config: &Path) -> anyhow::Result<()> {
    enroll_with(ctl, config, &AgentBin::Native)
}

/// [`enroll`] with the agent binary `agent`.
///
/// # Errors
/// When either command fails.
pub fn enroll_with(ctl: &ControllerProc, config: &Path, agent: &AgentBin) -> anyhow::Result<()> {
    let mut create = ctl.fleetctl()?;
    create.args(["tokens", "create", "--ttl", "10m"]);
    let token = output(create, "fleetctl tokens create")?.trim().to_owned();
    let mut cmd = agent.command(None)?;
    cmd.arg("--config")
        .arg(config)
        .args(["enroll", "--controller", &ctl.server(), "--ca"])
        .arg(ctl.data.join("tls/ca.pem"))
        .env("FLEET_BOOTSTRAP_TOKEN", &token);
    output(cmd, "fleet-agent enroll").map(|_| ())
}

/// An agent's config file, written to `dir/{node}.toml`, with its data in
/// `data_dir`: simulated hardware, 10 samples/s cut every 100 ms, quick
/// reconnects, and the spool's group commit as given.
///
/// # Panics
/// When the file cannot be written.
#[must_use]
pub fn agent_config(
    node: &str,
    dir: &Path,
    data_dir: &Path,
    mqtt_url: &str,
    fsync_interval: &str,
    segment_bytes: u64,
) -> PathBuf {
    let path = dir.join(format!("{node}.toml"));
    let text = format!(
        "node_id = \"{node}\"\ndata_dir = \"{data}\"\n\
         [mqtt]\nurl = \"{mqtt_url}\"\nkeep_alive = \"2s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
         [telemetry]\ninterval = \"100ms\"\nflush_interval = \"100ms\"\nack_timeout = \"2s\"\n\
         status_interval = \"2s\"\nshutdown_grace = \"20s\"\n\
         [hardware]\nbackend = \"sim\"\n\
         [spool]\nsegment_bytes = {segment_bytes}\nmax_bytes = 67108864\nfsync_interval = \"{fsync_interval}\"\n\
         replay_batches_per_s = 2000\n",
        data = data_dir.display(),
    );
    std::fs::write(&path, text).expect("write agent config");
    path
}

/// Starts `fleet-agent --config config` (in `ns` if given), logging to `dir/{node}.log`
/// with `log_filter` as `RUST_LOG`.
///
/// # Errors
/// When it cannot start.
pub fn start_agent(
    node: &str,
    dir: &Path,
    config: &Path,
    ns: Option<&NetNs>,
    log_filter: &str,
) -> anyhow::Result<Proc> {
    start_agent_with(&AgentBin::Native, node, dir, config, ns, log_filter)
}

/// [`start_agent`] with the agent binary `agent`.
///
/// # Errors
/// When it cannot start.
pub fn start_agent_with(
    agent: &AgentBin,
    node: &str,
    dir: &Path,
    config: &Path,
    ns: Option<&NetNs>,
    log_filter: &str,
) -> anyhow::Result<Proc> {
    let mut cmd = agent.command(ns)?;
    cmd.arg("--config").arg(config).env("RUST_LOG", log_filter).env("NO_COLOR", "1");
    Proc::spawn(node, cmd, &dir.join(format!("{node}.log")))
}

/// Checks exactly-once per node and run in the store at `db`, after the agents
/// stopped cleanly with the reports `finals`; `expected` gives, for runs whose
/// samples were partly destroyed or never batched, the exact seqs that must be
/// there (`None`: 0..=max must all be there). Prints the counts.
///
/// # Errors
/// What is missing, duplicated or left behind.
pub async fn check_exactly_once(
    scenario: &str,
    db: &str,
    finals: &[AgentStopped],
    expected: &BTreeMap<String, BTreeSet<u64>>,
) -> anyhow::Result<()> {
    let runs = runs_in_db(db).await?;
    for r in finals {
        ensure!(r.get("batches_kept") == 0, "{scenario}: {} left batches unacknowledged: {r:?}", r.node_id);
        ensure!(r.get("batches_dropped") == 0, "{scenario}: {} dropped batches: {r:?}", r.node_id);
        let key = (r.node_id.clone(), r.boot_id.clone());
        let got = runs.get(&key).with_context(|| format!("{scenario}: no rows for {key:?}"))?;
        let taken = r.get("samples_taken");
        ensure!(
            got.rows == taken && got.distinct_seqs == taken && got.min_seq == 0 && got.max_seq + 1 == taken,
            "{scenario}: {} final run produced {taken} samples, store has {got:?}",
            r.node_id
        );
    }
    for ((node, boot), got) in &runs {
        if let Some(want) = expected.get(boot) {
            println!(
                "{scenario}: node {node} run {boot}: {} samples stored, exactly the {} that survived on disk",
                got.rows,
                want.len()
            );
            let have: BTreeSet<u64> = seqs_in_db(db, node, boot).await?.into_iter().collect();
            let missing: Vec<_> = want.difference(&have).take(10).collect();
            let extra: Vec<_> = have.difference(want).take(10).collect();
            ensure!(
                missing.is_empty() && extra.is_empty(),
                "{scenario}: run {boot} of {node}: missing {missing:?}, unexpected {extra:?}"
            );
            continue;
        } else {
            ensure!(
                got.min_seq == 0 && got.rows == got.max_seq + 1 && got.rows == got.distinct_seqs,
                "{scenario}: run {boot} of {node} has gaps or duplicates: {got:?}"
            );
        }
        println!(
            "{scenario}: node {node} run {boot}: {} samples stored, seqs 0..={} without gap",
            got.rows, got.max_seq
        );
    }
    let total: u64 = runs.values().map(|r| r.rows).sum();
    println!("{scenario}: {} runs, {total} samples, every one exactly once", runs.len());
    Ok(())
}
