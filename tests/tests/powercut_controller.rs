//! Power cuts on the controller. Its data directory (the SQLite store, the TLS
//! CA, the admin token, the WireGuard key) lives on LazyFS; two agents run
//! outside it and are never cut. The controller (with its embedded broker and
//! its WireGuard interface) is cut 20 times at random moments: SIGKILL, every
//! write it had not fsynced dropped, the file system mounted afresh, the
//! controller started again, by itself, with nothing repaired by hand.
//!
//! After every cut the fleet goes on: both nodes are still enrolled and their
//! signed telemetry is accepted again; `fleetctl` works with the CA and the
//! API tokens saved before the first cut; the overlay has the same key and every
//! node the same address. At the end the agents stop cleanly: every sample each
//! of them took is in the store exactly once. An agent deletes what the
//! controller acknowledged, so a row acknowledged and then lost would be a gap.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_tests::cluster::{self, Broker, ControllerProc, ControllerSetup, check_exactly_once, enroll, output};
use fleet_tests::lazyfs::LazyFs;
use fleet_tests::need::{self, Need};
use fleet_tests::procs::{Proc, agent_reports};
use fleet_tests::{free_port, wait_for};

const TEST: &str = "powercut_controller::the_fleet_goes_on_after_20_power_cuts_of_the_controller";
const CUTS: u32 = 20;
const NODES: [&str; 2] = ["pcc-0", "pcc-1"];

/// What must not change across a cut, read before the first one.
#[derive(Debug, PartialEq, Eq)]
struct Kept {
    wg_public_key: String,
    /// node -> (overlay address, signing key)
    identities: BTreeMap<String, (i64, String)>,
}

struct Fleet {
    dir: tempfile::TempDir,
    fs: LazyFs,
    ctl: ControllerProc,
    iface: String,
    agents: Vec<Proc>,
    /// Copies, outside LazyFS, of the CA, the admin token and an operator token.
    saved: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // wireguard-go daemonizes: stop it and its interface.
        let _ = Command::new("pkill").args(["-f", &format!("wireguard-go {}", self.iface)]).status();
        let _ = Command::new("ip").args(["link", "del", &self.iface]).output();
    }
}

impl Fleet {
    async fn start(lazyfs: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let fs = LazyFs::mount(lazyfs, &dir.path().join("lazyfs")).await?;
        let iface = format!("fpc{}", std::process::id() % 100_000);
        let wg_port = free_port();
        let mqtt = free_port();
        let setup = ControllerSetup {
            database_url: None,
            broker: Broker::Embedded(mqtt),
            lab: false,
            data: fs.mnt.join("controller"),
            extra: format!(
                "overlay_cidr = \"10.213.{}.0/24\"\n[wireguard]\nenabled = true\ninterface = \"{iface}\"\n\
                 listen_port = {wg_port}\nendpoint = \"127.0.0.1:{wg_port}\"\n",
                std::process::id() % 200
            ),
            timescaledb: false,
        };
        let ctl = ControllerProc::start(dir.path(), &setup).await?;
        let saved = dir.path().join("saved");
        std::fs::create_dir_all(&saved)?;
        let mut f = Self { dir, fs, ctl, iface, agents: Vec::new(), saved };
        f.enroll_and_start(mqtt)?;
        Ok(f)
    }

    fn enroll_and_start(&mut self, mqtt: u16) -> anyhow::Result<()> {
        let url = format!("mqtt://127.0.0.1:{mqtt}");
        for node in NODES {
            let d = self.dir.path();
            let cfg = cluster::agent_config(node, d, &d.join(node), &url, "100ms", 16384);
            enroll(&self.ctl, &cfg)?;
            self.agents.push(cluster::start_agent(node, d, &cfg, None, "warn,fleet_agent::agent=info")?);
        }
        std::fs::copy(self.ctl.data.join("tls/ca.pem"), self.saved.join("ca.pem"))?;
        std::fs::copy(self.ctl.data.join("admin.token"), self.saved.join("admin.token"))?;
        let mut create = self.ctl.fleetctl()?;
        create.args(["api-tokens", "create", "powercut-operator", "--role", "operator"]);
        let token = output(create, "fleetctl api-tokens create")?;
        let path = self.saved.join("operator.token");
        std::fs::write(&path, token.trim())?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        Ok(())
    }

    /// `fleetctl` with a token saved before the cuts.
    fn fleetctl(&self, token: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.ctl.fleetctl_with(&self.saved.join("ca.pem"), &self.saved.join(token))?;
        cmd.args(args);
        output(cmd, &format!("fleetctl ({token}) {}", args.join(" ")))
    }

    fn db(&self) -> String {
        format!("sqlite://{}?mode=ro", self.ctl.data.join("fleet.db").display())
    }

    async fn kept(&self) -> anyhow::Result<Kept> {
        let out = Command::new("wg").args(["show", &self.iface, "public-key"]).output()?;
        ensure!(out.status.success(), "wg show {}: {}", self.iface, String::from_utf8_lossy(&out.stderr));
        let pool = sqlx::SqlitePool::connect(&self.db()).await?;
        let rows: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT node_id, overlay_address, signing_key FROM node_identities ORDER BY node_id")
                .fetch_all(&pool)
                .await?;
        pool.close().await;
        Ok(Kept {
            wg_public_key: String::from_utf8(out.stdout)?.trim().to_owned(),
            identities: rows.into_iter().map(|(n, a, k)| (n, (a, k))).collect(),
        })
    }

    /// Samples stored per node, as fleetctl (saved CA, operator token) lists them.
    fn stored(&self) -> Option<BTreeMap<String, u64>> {
        let json = self.fleetctl("operator.token", &["nodes", "list", "-o", "json"]).ok()?;
        let nodes: Vec<serde_json::Value> = serde_json::from_str(&json).ok()?;
        let count = |n: &str| nodes.iter().find(|v| v["node_id"] == n).and_then(|v| v["samples_stored"].as_u64());
        Some(NODES.iter().map(|&n| (n.to_owned(), count(n).unwrap_or(0))).collect())
    }

    /// Every node enrolled and heard again after this start (more samples
    /// stored than at the first answer), through fleetctl with the saved CA
    /// and both saved tokens.
    async fn goes_on(&self, cut: u32) -> anyhow::Result<()> {
        let first = wait_for(Duration::from_secs(60), "fleetctl answers", || async move { self.stored() }).await?;
        let first = &first;
        let what = format!("cut {cut}: both nodes' signed telemetry accepted again");
        wait_for(Duration::from_secs(60), &what, || async move {
            let now = self.stored()?;
            now.iter().all(|(n, s)| *s > first.get(n).copied().unwrap_or(0)).then_some(())
        })
        .await
        .with_context(|| {
            let nodes = self.fleetctl("operator.token", &["nodes", "list", "-o", "json"]);
            let logs: Vec<String> = self.agents.iter().map(Proc::log_text).collect();
            format!("fleetctl nodes list: {nodes:?}\nagents' logs: {logs:#?}")
        })?;
        self.fleetctl("admin.token", &["tokens", "list"]).with_context(|| format!("cut {cut}: the admin token"))?;
        // What an operator or a new node takes from the data directory is what it was.
        for file in ["tls/ca.pem", "admin.token"] {
            let name = Path::new(file).file_name().context("file name")?;
            let (now, saved) = (std::fs::read(self.ctl.data.join(file))?, std::fs::read(self.saved.join(name))?);
            ensure!(now == saved, "cut {cut}: {file} changed ({} bytes, was {})", now.len(), saved.len());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_goes_on_after_20_power_cuts_of_the_controller() -> anyhow::Result<()> {
    let Some(lazyfs) = LazyFs::find(TEST)? else { return Ok(()) };
    for tool in ["wireguard-go", "wg"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success())
        {
            return need::missing(Need::Root, TEST, &format!("{tool} is not installed (scripts/test installs it)"));
        }
    }
    let seed =
        std::env::var("FLEET_POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    println!("{TEST}: seed {seed} (FLEET_POWERCUT_SEED={seed} repeats the moments)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut f = Fleet::start(&lazyfs).await?;
    f.goes_on(0).await?;
    let before = f.kept().await?;
    for cut in 1..=CUTS {
        let up = rng.u64(100..3000);
        tokio::time::sleep(Duration::from_millis(up)).await;
        ensure!(
            f.ctl.running(),
            "cut {cut}: the controller exited by itself:\n{}",
            std::fs::read_to_string(&f.ctl.log)?
        );
        f.ctl.kill9();
        f.fs.power_cut().await?;
        println!("{TEST}: power cut {cut} after {up} ms");
        f.ctl.up().await.with_context(|| format!("cut {cut}: the controller does not start again"))?;
        f.goes_on(cut).await?;
        let now = f.kept().await?;
        ensure!(now == before, "cut {cut}: the overlay or the identities changed:\nbefore {before:?}\nafter  {now:?}");
    }
    let mut finals = Vec::new();
    for a in &mut f.agents {
        let status = a.term(Duration::from_secs(60))?;
        ensure!(status.success(), "{} exited with {status}:\n{}", a.name, a.log_text());
        finals.push(agent_reports(&a.log_text()).pop().with_context(|| format!("{} printed no report", a.name))?);
    }
    check_exactly_once("controller power cuts", &f.db(), &finals, &BTreeMap::new()).await?;
    f.ctl.kill9();
    Ok(())
}
