//! Power cuts on a node. The agent's whole data directory (spool, cursor,
//! identity and keys, boot counter, desired state) lives on LazyFS; the agent
//! runs against a real controller (its embedded broker, enrollment required)
//! and is cut 20 times at random moments: SIGKILL, every write it had not
//! fsynced dropped, the file system mounted afresh, the agent started again.
//!
//! What the agent had made durable is read from its own log
//! (`fleet_agent::spool::durability`: one line per append, one per fsync
//! saying every append up to a number is on disk); what arrived is read from the
//! controller's store. Asserted per cut run: every sample of a batch the agent
//! had fsynced is stored, exactly once; nothing is stored that the agent never
//! appended; what was lost is within the group-commit window (less than
//! `spool.fsync_bytes` of records, plus the one append under way), and with
//! `fsync_interval = "0s"` nothing but that one append. After every cut the
//! agent starts (its spool opens; torn tails are truncated and counted), keeps
//! its identity (same node, its signed telemetry accepted), and at the end the
//! last clean run delivers everything and the desired state set before the cuts
//! is still applied.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_tests::cluster::{self, Broker, ControllerProc, ControllerSetup, enroll, output};
use fleet_tests::free_port;
use fleet_tests::lazyfs::LazyFs;
use fleet_tests::procs::{agent_reports, runs_in_db, seqs_in_db};

const CUTS: u32 = 20;
const FSYNC_BYTES: u64 = 2048;
const NODE: &str = "pc-0";
const LOG_FILTER: &str = "warn,fleet_agent::agent=info,fleet_agent::spool::durability=debug";

/// One process lifetime of the agent, from its log.
#[derive(Debug, Default)]
struct Run {
    boot_id: String,
    /// (append number, first seq, samples, bytes), in order.
    appended: Vec<(u64, u64, u64, u64)>,
    /// Every append up to this number was fsynced.
    synced_through: u64,
}

impl Run {
    fn seqs(&self, keep: impl Fn(u64) -> bool) -> BTreeSet<u64> {
        self.appended.iter().filter(|a| keep(a.0)).flat_map(|&(_, first, n, _)| first..first + n).collect()
    }
}

fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The runs of the agent's log, split at each "Agent started." line.
fn runs_of(log: &str) -> anyhow::Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    for line in log.lines() {
        if line.contains("Agent started.") {
            let node = text_field(line, "node_id").context("start line without node_id")?;
            ensure!(node == NODE, "the agent started as {node}, not {NODE}: it lost its identity");
            let boot_id = text_field(line, "boot_id").context("start line without boot_id")?.to_owned();
            runs.push(Run { boot_id, ..Run::default() });
        } else if line.contains("spool appended") {
            let run = runs.last_mut().context("an append before the agent started")?;
            let get = |k| field(line, k).with_context(|| format!("`{k}` missing in {line}"));
            run.appended.push((get("batch")?, get("first_seq")?, get("samples")?, get("bytes")?));
        } else if line.contains("spool synced") {
            let run = runs.last_mut().context("an fsync before the agent started")?;
            run.synced_through = field(line, "through_batch").context("`through_batch` missing")?;
        }
    }
    Ok(runs)
}

fn seed() -> u64 {
    std::env::var("FLEET_POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    })
}

struct Fleet {
    dir: tempfile::TempDir,
    fs: LazyFs,
    ctl: ControllerProc,
    config: std::path::PathBuf,
}

impl Fleet {
    async fn start(lazyfs: &Path, fsync_interval: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let fs = LazyFs::mount(lazyfs, &dir.path().join("lazyfs")).await?;
        let port = free_port();
        let setup = ControllerSetup {
            database_url: None,
            broker: Broker::Embedded(port),
            lab: false,
            data: dir.path().join("controller"),
            extra: String::new(),
            timescaledb: false,
        };
        let ctl = ControllerProc::start(dir.path(), &setup).await?;
        let url = format!("mqtt://127.0.0.1:{port}");
        let config = cluster::agent_config(NODE, dir.path(), &fs.mnt.join(NODE), &url, fsync_interval, 4096);
        let mut text = std::fs::read_to_string(&config)?;
        text.push_str(&format!("fsync_bytes = {FSYNC_BYTES}\n"));
        std::fs::write(&config, text)?;
        Ok(Self { dir, fs, ctl, config })
    }

    fn db(&self) -> String {
        format!("sqlite://{}?mode=ro", self.ctl.data.join("fleet.db").display())
    }

    fn fleetctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = self.ctl.fleetctl()?;
        cmd.args(args);
        output(cmd, &format!("fleetctl {}", args.join(" ")))
    }
}

async fn power_cuts(test: &str, fsync_interval: &str) -> anyhow::Result<()> {
    let Some(lazyfs) = LazyFs::find(test)? else { return Ok(()) };
    let seed = seed();
    println!("{test}: seed {seed} (FLEET_POWERCUT_SEED={seed} repeats the moments)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut f = Fleet::start(&lazyfs, fsync_interval).await?;
    enroll(&f.ctl, &f.config)?;
    // Power goes right after enrolling: the identity must already be on disk.
    f.fs.power_cut().await?;
    f.fleetctl(&["desired", "set", NODE, "--label", "site=powercut"])?;
    let mut online = true;
    for cut in 1..=CUTS {
        // A third of the runs have no controller (nor broker) to talk to: their
        // batches only live in the spool, so a cut loses the unsynced ones.
        let want_online = rng.u8(0..3) != 0;
        if want_online != online {
            if want_online {
                f.ctl.up().await?
            } else {
                f.ctl.kill9()
            }
            online = want_online;
        }
        let mut agent = cluster::start_agent(NODE, f.dir.path(), &f.config, None, LOG_FILTER)?;
        let up = rng.u64(150..2500);
        tokio::time::sleep(Duration::from_millis(up)).await;
        ensure!(agent.running(), "cut {cut}: the agent exited by itself; its log:\n{}", agent.log_text());
        agent.kill9();
        f.fs.power_cut().await?;
        println!("{test}: power cut {cut} after {up} ms{}", if online { "" } else { ", controller down" });
    }
    if !online {
        f.ctl.up().await?;
    }
    let mut last = cluster::start_agent(NODE, f.dir.path(), &f.config, None, LOG_FILTER)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = last.term(Duration::from_secs(60))?;
    let log = last.log_text();
    ensure!(status.success(), "the last run exited with {status}:\n{log}");
    let report = agent_reports(&log).pop().context("the last run printed no report")?;
    ensure!(report.get("batches_kept") == 0, "the last run left batches unacknowledged: {report:?}");

    let runs = runs_of(&log)?;
    ensure!(runs.len() as u32 >= CUTS, "{} runs started for {CUTS} cuts:\n{log}", runs.len());
    let torn = log.lines().filter(|l| l.contains("torn")).count();
    println!("{test}: {} runs; {torn} starts found a torn tail and truncated it", runs.len());
    check_runs(test, &f, &runs, fsync_interval == "0s").await?;
    let last_run = runs.last().context("no run")?;
    let stored = runs_in_db(&f.db()).await?;
    let got = stored.get(&(NODE.to_owned(), last_run.boot_id.clone())).context("the last run stored nothing")?;
    let taken = report.get("samples_taken");
    ensure!(
        got.rows == taken && got.min_seq == 0 && got.max_seq + 1 == taken,
        "the last run took {taken} samples; the store has {got:?}"
    );
    let desired = f.fleetctl(&["desired", "get", NODE, "-o", "json"])?;
    ensure!(desired.contains("powercut"), "the desired state set before the cuts is gone: {desired}");
    f.ctl.kill9();
    Ok(())
}

/// The per-run assertions (see the file's head).
async fn check_runs(test: &str, f: &Fleet, runs: &[Run], every_batch: bool) -> anyhow::Result<()> {
    let (mut durable_total, mut lost_total, mut worst) = (0usize, 0usize, 0u64);
    for run in &runs[..runs.len() - 1] {
        let stored: BTreeSet<u64> = seqs_in_db(&f.db(), NODE, &run.boot_id).await?.into_iter().collect();
        let durable = run.seqs(|b| b <= run.synced_through);
        let appended = run.seqs(|_| true);
        let missing: Vec<_> = durable.difference(&stored).take(10).collect();
        ensure!(missing.is_empty(), "run {}: fsynced seqs missing from the store: {missing:?}", run.boot_id);
        let invented: Vec<_> = stored.difference(&appended).take(10).collect();
        ensure!(invented.is_empty(), "run {}: stored seqs the agent never appended: {invented:?}", run.boot_id);
        let lost: BTreeMap<u64, u64> = run
            .appended
            .iter()
            .filter(|a| (a.1..a.1 + a.2).any(|s| !stored.contains(&s)))
            .map(|a| (a.0, a.3))
            .collect();
        // The append under way when the power went (its fsync never finished).
        let in_flight = run.appended.last().map_or(0, |a| a.0);
        let lost_bytes: u64 = lost.iter().filter(|(b, _)| **b != in_flight).map(|(_, bytes)| bytes).sum();
        if every_batch {
            ensure!(
                lost_bytes == 0,
                "run {}: fsync every batch, yet completed appends were lost: {lost:?}",
                run.boot_id
            );
        } else {
            ensure!(
                lost_bytes < FSYNC_BYTES,
                "run {}: {lost_bytes} bytes of completed appends lost, over spool.fsync_bytes = {FSYNC_BYTES}: {lost:?}",
                run.boot_id
            );
        }
        durable_total += durable.len();
        lost_total += appended.difference(&stored).count();
        worst = worst.max(lost.len() as u64);
    }
    println!(
        "{test}: {durable_total} fsynced samples of {} cut runs all stored once; {lost_total} unsynced samples \
         lost (at most {worst} batches in one cut)",
        runs.len() - 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_loses_at_most_its_window() -> anyhow::Result<()> {
    power_cuts("powercut_agent::group_commit_loses_at_most_its_window", "1s").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_every_batch_loses_nothing_it_appended() -> anyhow::Result<()> {
    power_cuts("powercut_agent::fsync_every_batch_loses_nothing_it_appended", "0s").await
}
