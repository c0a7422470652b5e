//! Real processes for chaos scenarios: the workspace's binaries, Mosquitto
//! restartable on a fixed port, network namespaces, and the database check
//! that every seq arrived exactly once.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A binary of this workspace, next to the test executable's `deps/` folder
/// (cargo and nextest build them before running tests).
///
/// # Errors
/// When it was not built.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(Path::parent).context("test executable has no target dir")?;
    let p = dir.join(name);
    if !p.exists() {
        bail!("{} not built: run `cargo build --workspace --bins` (cargo nextest does it)", p.display());
    }
    Ok(p)
}

/// A child process with its output in a log file; killed on drop.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, appending its stdout and stderr to `log`.
    ///
    /// # Errors
    /// When it cannot start.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self { name: name.to_owned(), child: Some(child), log: log.to_owned() })
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no goodbye, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    ///
    /// # Errors
    /// When it does not exit in time (it is then killed).
    pub fn term(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(c) = self.child.take() else { bail!("{} is not running", self.name) };
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status()?;
        self.exit_within(c, timeout, " of SIGTERM")
    }

    /// Waits up to `timeout` for the process to exit by itself.
    ///
    /// # Errors
    /// When it does not (it is then killed).
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let Some(c) = self.child.take() else { bail!("{} is not running", self.name) };
        self.exit_within(c, timeout, "")
    }

    /// `c`'s exit status once it exits, killed after `timeout`.
    fn exit_within(&self, mut c: Child, timeout: Duration, after: &str) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = c.try_wait()? {
                return Ok(s);
            }
            if start.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                bail!("{} did not exit within {timeout:?}{after}; log:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log so far.
    #[must_use]
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// What a `fleet-agent` run printed when it stopped cleanly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStopped {
    pub node_id: String,
    pub boot_id: String,
    pub fields: BTreeMap<String, u64>,
}

impl AgentStopped {
    /// A counter of the report (0 if absent).
    #[must_use]
    pub fn get(&self, k: &str) -> u64 {
        self.fields.get(k).copied().unwrap_or(0)
    }
}

/// Every `fleet-agent stopped:` line in a log, in order.
#[must_use]
pub fn agent_reports(log: &str) -> Vec<AgentStopped> {
    log.lines()
        .filter_map(|l| l.strip_prefix("fleet-agent stopped: "))
        .map(|rest| {
            let mut r = AgentStopped::default();
            for kv in rest.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    match k {
                        "node_id" => r.node_id = v.to_owned(),
                        "boot_id" => r.boot_id = v.to_owned(),
                        _ => {
                            r.fields.insert(k.to_owned(), v.parse().unwrap_or(0));
                        }
                    }
                }
            }
            r
        })
        .collect()
}

/// Mosquitto on a fixed address, so it can be stopped and started again.
pub struct RestartableMosquitto {
    pub url: String,
    conf: PathBuf,
    proc: Option<Proc>,
    log: PathBuf,
}

impl RestartableMosquitto {
    /// Writes its config and starts it listening on `addr:port`.
    ///
    /// # Errors
    /// When mosquitto is missing or does not come up.
    pub async fn start(dir: &Path, addr: &str, port: u16) -> anyhow::Result<Self> {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} {addr}\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"),
        )?;
        let mut m = Self { url: format!("mqtt://{addr}:{port}"), conf, proc: None, log: dir.join("mosquitto.log") };
        m.up().await?;
        Ok(m)
    }

    /// (Re)starts the broker and waits until it accepts connections.
    ///
    /// # Errors
    /// When it does not come up within 10 s.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .context("mosquitto is not installed: run scripts/test")?;
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&self.conf);
        self.proc = Some(Proc::spawn("mosquitto", cmd, &self.log)?);
        let (host, port) = fleet_proto::parse_mqtt_url(&self.url).map_err(anyhow::Error::msg)?;
        crate::wait_for(Duration::from_secs(10), "mosquitto to listen", || {
            let host = host.clone();
            async move { tokio::net::TcpStream::connect((host.as_str(), port)).await.ok().map(|_| ()) }
        })
        .await
    }

    /// Kills the broker (SIGKILL): every connection drops, nothing is persisted.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// A network namespace joined to this one by a veth pair; removed on drop.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Deletes the network namespaces named `{prefix}...-{pid}` whose test process
/// is gone (a run killed before its clean-up), killing what still runs in them;
/// their veths go with them. Left behind, their addresses would take this run's
/// routes.
pub fn clear_stale_namespaces(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(prefix)) else { continue };
        let Some(pid) = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", p]).status();
            }
        }
        let _ = ip(&["netns", "del", name]);
    }
}

impl NetNs {
    /// Why namespaces cannot be used here, if they cannot.
    #[must_use]
    pub fn unavailable() -> Option<String> {
        let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0"));
        if !root {
            return Some("not root: network namespaces need CAP_NET_ADMIN".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Some("iproute2 (`ip`) is not installed".into());
        }
        None
    }

    /// Creates namespace `fl{tag}` with `10.231.{tag}.2/30` inside and `.1` outside.
    ///
    /// # Errors
    /// When any `ip` command fails.
    pub fn create(tag: u8) -> anyhow::Result<Self> {
        let name = format!("fleet-chaos-{tag}-{}", std::process::id());
        let host_if = format!("fch{tag}p{}", std::process::id() % 10_000);
        let ns_if = format!("fcn{tag}p{}", std::process::id() % 10_000);
        let ns = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: format!("10.231.{tag}.1"),
            ns_ip: format!("10.231.{tag}.2"),
        };
        clear_stale_namespaces("fleet-chaos-");
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{}/30", ns.host_ip), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{}/30", ns.ns_ip), "dev", &ns_if])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command that runs `program` inside the namespace.
    #[must_use]
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Takes the link down (`false`) or up (`true`) on the host side.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn set_link(&self, up: bool) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Per agent run in the database: rows, lowest and highest seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRows {
    pub rows: u64,
    /// Distinct seqs: equal to `rows` when nothing is stored twice.
    pub distinct_seqs: u64,
    pub min_seq: u64,
    pub max_seq: u64,
}

const RUNS_SQL: &str = "SELECT node_id, boot_id, count(*), count(DISTINCT seq), min(seq), max(seq) FROM telemetry \
                        GROUP BY node_id, boot_id";

/// Rows per (node, run) in a store: PostgreSQL, or SQLite for a `sqlite:` URL.
///
/// # Errors
/// Database errors.
pub async fn runs_in_db(database_url: &str) -> anyhow::Result<BTreeMap<(String, String), RunRows>> {
    let rows: Vec<(String, String, i64, i64, i64, i64)> = if database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(database_url).await?;
        let rows = sqlx::query_as(RUNS_SQL).fetch_all(&pool).await?;
        pool.close().await;
        rows
    } else {
        let pool = sqlx::PgPool::connect(database_url).await?;
        let rows = sqlx::query_as(RUNS_SQL).fetch_all(&pool).await?;
        pool.close().await;
        rows
    };
    Ok(rows
        .into_iter()
        .map(|(n, b, c, d, lo, hi)| {
            let u = |v: i64| u64::try_from(v).unwrap_or(0);
            ((n, b), RunRows { rows: u(c), distinct_seqs: u(d), min_seq: u(lo), max_seq: u(hi) })
        })
        .collect())
}

/// Seqs of one run present in the store (PostgreSQL, or SQLite for a `sqlite:` URL), in order.
///
/// # Errors
/// Database errors.
pub async fn seqs_in_db(database_url: &str, node: &str, boot: &str) -> anyhow::Result<Vec<u64>> {
    let v: Vec<i64> = if database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(database_url).await?;
        let v = sqlx::query_scalar("SELECT seq FROM telemetry WHERE node_id = ? AND boot_id = ? ORDER BY seq")
            .bind(node)
            .bind(boot)
            .fetch_all(&pool)
            .await?;
        pool.close().await;
        v
    } else {
        let pool = sqlx::PgPool::connect(database_url).await?;
        let v = sqlx::query_scalar("SELECT seq FROM telemetry WHERE node_id = $1 AND boot_id = $2 ORDER BY seq")
            .bind(node)
            .bind(boot)
            .fetch_all(&pool)
            .await?;
        pool.close().await;
        v
    };
    Ok(v.into_iter().map(|s| u64::try_from(s).unwrap_or(0)).collect())
}

/// Tansu, a Kafka-protocol broker (Rust, Apache-2.0), run as its own process
/// with in-memory storage. `scripts/test` installs it (`cargo install tansu`).
pub struct Tansu {
    program: PathBuf,
}

/// A running Tansu broker; killed on drop.
pub struct TansuBroker {
    pub bootstrap: String,
    _proc: Proc,
}

impl Tansu {
    /// The `tansu` program on PATH or in ~/.cargo/bin, for `test`. Missing:
    /// `None` (the skip said and counted), or an error when `FLEET_REQUIRE_TANSU=1`.
    ///
    /// # Errors
    /// When it is required and missing.
    pub fn find(test: &str) -> anyhow::Result<Option<Self>> {
        let mut dirs: Vec<PathBuf> =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        if let Some(home) = std::env::var_os("HOME") {
            dirs.push(Path::new(&home).join(".cargo/bin"));
        }
        if let Some(program) = dirs.into_iter().map(|d| d.join("tansu")).find(|p| p.is_file()) {
            return Ok(Some(Self { program }));
        }
        let why =
            "tansu is not installed (scripts/test installs it: cargo install tansu --features dynostore --locked)";
        crate::need::missing(crate::need::Need::Tansu, test, why)?;
        Ok(None)
    }

    /// Starts a broker on a free loopback port and creates `topics` (name, partitions).
    ///
    /// # Errors
    /// When it does not start or a topic cannot be made.
    pub async fn start(&self, dir: &Path, topics: &[(&str, u32)]) -> anyhow::Result<TansuBroker> {
        let port = crate::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(&self.program);
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn");
        let proc = Proc::spawn("tansu", cmd, &dir.join("tansu.log"))?;
        crate::wait_for(Duration::from_secs(30), "tansu listening", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await
        .with_context(|| proc.log_text())?;
        for (name, partitions) in topics {
            let out = Command::new(&self.program)
                .args(["topic", "create", name, "--partitions", &partitions.to_string(), "--broker", &url])
                .output()?;
            if !out.status.success() {
                bail!("tansu topic create {name}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(TansuBroker { bootstrap: format!("127.0.0.1:{port}"), _proc: proc })
    }
}
