//! The restore drill (docs/operations.md, "Backups"), on SQLite, PostgreSQL
//! and TimescaleDB: two enrolled agents stream telemetry; while they do,
//! `fleet-controller backup` copies the store and security files; the
//! controller is then lost (SIGKILL), `fleet-controller restore` fills a new
//! store and data directory, and a controller started on them finds every row
//! committed before the backup, takes the old CA, admin token and an API token
//! made before the backup, and hears the agents again (their node identities
//! and broker logins came back): they carry on and leave nothing unacknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_tests::cluster::{self, Broker, ControllerProc, ControllerSetup, enroll, output};
use fleet_tests::procs::{Proc, RunRows, agent_reports, bin, runs_in_db};
use fleet_tests::{TestDb, free_port, wait_for};

const NODES: [&str; 2] = ["bk-a", "bk-b"];
const T: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Sqlite,
    Postgres,
    Timescale,
}

/// Where the store is: SQLite in `data`, or a PostgreSQL database.
struct Store {
    data: PathBuf,
    db: Option<TestDb>,
}

impl Store {
    fn url(&self) -> String {
        match &self.db {
            Some(db) => db.url.clone(),
            None => format!("sqlite://{}?mode=ro", self.data.join("fleet.db").display()),
        }
    }

    /// `fleet-controller` with this store's flags.
    fn controller_cmd(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(bin("fleet-controller")?);
        cmd.arg("--data-dir").arg(&self.data);
        if let Some(db) = &self.db {
            cmd.args(["--database-url", &db.url]);
        }
        Ok(cmd)
    }

    fn setup(&self, timescaledb: bool, mqtt: u16) -> ControllerSetup<'_> {
        ControllerSetup {
            database_url: self.db.as_ref().map(|d| d.url.as_str()),
            broker: Broker::Embedded(mqtt),
            lab: false,
            data: self.data.clone(),
            extra: String::new(),
            timescaledb,
        }
    }
}

/// A store for `backend` with its data directory `data` (`None`: TimescaleDB
/// is missing, the skip said and counted).
async fn store(backend: Backend, data: PathBuf, test: &str, schema: bool) -> anyhow::Result<Option<Store>> {
    if backend == Backend::Sqlite {
        return Ok(Some(Store { data, db: None }));
    }
    let db = TestDb::create().await?;
    if backend == Backend::Timescale && schema {
        let Some(s) = fleet_tests::timescale_store(&db, test).await? else {
            db.cleanup().await?;
            return Ok(None);
        };
        drop(s);
    }
    Ok(Some(Store { data, db: Some(db) }))
}

/// Rows of each run stored now, once every node has some.
async fn stored(url: &str) -> anyhow::Result<BTreeMap<(String, String), RunRows>> {
    wait_for(T, "rows of every node", || async {
        let runs = runs_in_db(url).await.ok()?;
        (runs.len() >= NODES.len()).then_some(runs)
    })
    .await
}

/// `fleetctl ARGS` against `ctl` with the CA and token files of `saved`.
fn fleetctl_saved(ctl: &ControllerProc, saved: &Path, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = ctl.fleetctl_with(&saved.join("tls/ca.pem"), &saved.join(token))?;
    cmd.args(args);
    output(cmd, &format!("fleetctl {} with the saved {token}", args.join(" ")))
}

/// The first controller on `old` with two enrolled agents streaming, and the
/// operator's own copies of the CA, the admin token and an API token (in
/// `d/saved`).
async fn start_fleet(
    d: &Path,
    old: &Store,
    timescale: bool,
    mqtt: u16,
) -> anyhow::Result<(ControllerProc, Vec<Proc>, PathBuf)> {
    std::fs::create_dir_all(d.join("before"))?;
    let ctl = ControllerProc::start(&d.join("before"), &old.setup(timescale, mqtt)).await?;
    let url = format!("mqtt://127.0.0.1:{mqtt}");
    let mut agents: Vec<Proc> = Vec::new();
    for node in NODES {
        let cfg = cluster::agent_config(node, d, &d.join(node), &url, "100ms", 16384);
        enroll(&ctl, &cfg)?;
        agents.push(cluster::start_agent(node, d, &cfg, None, "warn")?);
    }
    let saved = d.join("saved");
    std::fs::create_dir_all(saved.join("tls"))?;
    std::fs::copy(old.data.join("tls/ca.pem"), saved.join("tls/ca.pem"))?;
    std::fs::copy(old.data.join("admin.token"), saved.join("admin.token"))?;
    let mut create = ctl.fleetctl()?;
    create.args(["api-tokens", "create", "drill-operator", "--role", "operator"]);
    std::fs::write(saved.join("operator.token"), output(create, "fleetctl api-tokens create")?.trim())?;
    std::fs::set_permissions(saved.join("operator.token"), std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok((ctl, agents, saved))
}

async fn drill(backend: Backend, test: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let timescale = backend == Backend::Timescale;
    let Some(old) = store(backend, d.join("controller"), test, true).await? else { return Ok(()) };
    let Some(new) = store(backend, d.join("restored"), test, false).await? else { return Ok(()) };
    let mqtt = free_port();
    let (mut ctl, mut agents, saved) = start_fleet(d, &old, timescale, mqtt).await?;
    // Under load: rows committed before the backup starts must all come back.
    let before = stored(&old.url()).await?;
    let backup = d.join("backup");
    let mut cmd = old.controller_cmd()?;
    cmd.arg("backup").arg("--to").arg(&backup);
    println!("{}", output(cmd, "fleet-controller backup")?.trim());
    let mut again = old.controller_cmd()?;
    again.arg("backup").arg("--to").arg(&backup);
    ensure!(again.output()?.status.code() == Some(2), "a second backup into the same directory is refused");
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl.kill9();

    let mut cmd = new.controller_cmd()?;
    cmd.arg("restore").arg("--from").arg(&backup);
    println!("{}", output(cmd, "fleet-controller restore")?.trim());
    let mut twice = new.controller_cmd()?;
    twice.arg("restore").arg("--from").arg(&backup);
    let refused = twice.output()?;
    ensure!(refused.status.code() == Some(2), "a restore over a restored store is refused");
    println!("a second restore: {}", String::from_utf8_lossy(&refused.stderr).trim());

    std::fs::create_dir_all(d.join("after"))?;
    let ctl = ControllerProc::start(&d.join("after"), &new.setup(timescale, mqtt)).await?;
    let restored = runs_in_db(&new.url()).await?;
    for (run, rows) in &before {
        let got = restored.get(run).with_context(|| format!("run {run:?} missing after the restore"))?;
        ensure!(
            got.min_seq == 0 && got.max_seq >= rows.max_seq && got.rows == got.distinct_seqs,
            "run {run:?}: {rows:?} committed before the backup, {got:?} restored"
        );
    }
    // The old CA checks the restored TLS; both tokens are taken.
    for token in ["admin.token", "operator.token"] {
        fleetctl_saved(&ctl, &saved, token, &["nodes", "list"])?;
    }
    // The agents carry on: new rows of each run arrive at the restored controller.
    let in_backup = restored.clone();
    wait_for(T, "the agents heard by the restored controller", || async {
        let now = runs_in_db(&new.url()).await.ok()?;
        in_backup.iter().all(|(run, r)| now.get(run).is_some_and(|n| n.max_seq > r.max_seq + 20)).then_some(())
    })
    .await?;
    for a in &mut agents {
        let status = a.term(Duration::from_secs(60))?;
        ensure!(status.success(), "{} exited with {status}", a.name);
        let last = agent_reports(&a.log_text()).pop().with_context(|| format!("{} printed no report", a.name))?;
        ensure!(last.get("batches_kept") == 0, "{} left batches unacknowledged: {last:?}", a.name);
    }
    let lost: u64 = runs_in_db(&new.url()).await?.values().map(|r| (r.max_seq + 1).saturating_sub(r.rows)).sum();
    println!(
        "{backend:?}: {} runs restored with every row committed before the backup; {lost} samples acknowledged \
         between the backup and the loss are not in the restored store (the recovery point)",
        before.len()
    );
    drop(ctl);
    for s in [old, new] {
        if let Some(db) = s.db {
            db.cleanup().await?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drill_on_sqlite() -> anyhow::Result<()> {
    drill(Backend::Sqlite, "backup::restore_drill_on_sqlite").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drill_on_postgres() -> anyhow::Result<()> {
    drill(Backend::Postgres, "backup::restore_drill_on_postgres").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_drill_on_timescaledb() -> anyhow::Result<()> {
    drill(Backend::Timescale, "backup::restore_drill_on_timescaledb").await
}
