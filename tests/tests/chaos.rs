//! The chaos suite: real agent and controller processes, real brokers
//! (Mosquitto, and the controller's embedded one), a real PostgreSQL. After
//! each scenario, per node, every seq the agent produced is in the database
//! exactly once (no gaps, no duplicates), except what the scenario itself
//! destroyed on disk (scenario 5, counted). Each prints its counts.
//! Scenarios 1-4 run on plain PostgreSQL and again on TimescaleDB (its
//! hypertable under the same redeliveries).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_tests::cluster::{self, Broker, ControllerProc, ControllerSetup, check_exactly_once, enroll};
use fleet_tests::procs::{AgentStopped, NetNs, Proc, RestartableMosquitto, agent_reports, runs_in_db};
use fleet_tests::spool_files::readable_seqs;
use fleet_tests::{TestDb, free_port};

const AGENTS: usize = 2;

/// A controller on `db`, its data in `dir/controller`.
async fn controller(dir: &Path, db: &Db, broker: Broker, lab: bool) -> anyhow::Result<ControllerProc> {
    let setup = ControllerSetup {
        database_url: Some(&db.0.url),
        broker,
        lab,
        data: dir.join("controller"),
        extra: String::new(),
        timescaledb: db.1,
    };
    ControllerProc::start(dir, &setup).await
}

/// A test database and whether the controller keeps TimescaleDB's schema in it.
struct Db(TestDb, bool);

/// A new test database; on TimescaleDB its schema made first (`None`: no
/// TimescaleDB here, the skip said and counted).
async fn database(timescale: bool, test: &str) -> anyhow::Result<Option<Db>> {
    let db = TestDb::create().await?;
    if timescale {
        let Some(store) = fleet_tests::timescale_store(&db, test).await? else {
            db.cleanup().await?;
            return Ok(None);
        };
        drop(store);
    }
    Ok(Some(Db(db, timescale)))
}

/// The test's name, with the backend it runs on.
fn name(scenario: &str, timescale: bool) -> String {
    format!("chaos::{scenario}{}", if timescale { "_on_timescaledb" } else { "" })
}

fn agent_config(node: &str, dir: &Path, mqtt_url: &str, fsync_interval: &str, segment_bytes: u64) -> PathBuf {
    cluster::agent_config(node, dir, &dir.join(node), mqtt_url, fsync_interval, segment_bytes)
}

fn start_agent(node: &str, dir: &Path, config: &Path, ns: Option<&NetNs>) -> anyhow::Result<Proc> {
    cluster::start_agent(node, dir, config, ns, "warn")
}

fn sleep(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}

/// Stops agents cleanly and returns their final reports.
fn stop_agents(agents: &mut [Proc]) -> anyhow::Result<Vec<AgentStopped>> {
    let mut out = Vec::new();
    for a in agents.iter_mut() {
        let status = a.term(Duration::from_secs(60))?;
        ensure!(status.success(), "{} exited with {status}; log:\n{}", a.name, a.log_text());
        let last = agent_reports(&a.log_text()).pop().with_context(|| format!("{} printed no report", a.name))?;
        out.push(last);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_1_kill_the_controller_5_times() -> anyhow::Result<()> {
    chaos_1(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_1_kill_the_controller_5_times_on_timescaledb() -> anyhow::Result<()> {
    chaos_1(true).await
}

async fn chaos_1(timescale: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(db) = database(timescale, &name("chaos_1_kill_the_controller_5_times", timescale)).await? else {
        return Ok(());
    };
    let port = free_port();
    let mut ctl = controller(dir.path(), &db, Broker::Embedded(port), false).await?;
    let url = format!("mqtt://127.0.0.1:{port}");
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let node = format!("c1-{i}");
        let cfg = agent_config(&node, dir.path(), &url, "100ms", 16384);
        enroll(&ctl, &cfg)?;
        agents.push(start_agent(&node, dir.path(), &cfg, None)?);
    }
    for round in 0..5 {
        sleep(1500).await;
        ctl.kill9();
        println!("chaos 1: killed the controller (and its embedded broker), round {}", round + 1);
        sleep(500).await;
        ctl.up().await?;
    }
    sleep(3000).await;
    let finals = stop_agents(&mut agents)?;
    check_exactly_once("chaos 1", &db.0.url, &finals, &BTreeMap::new()).await?;
    ctl.kill9();
    db.0.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_2_restart_the_broker_3_times() -> anyhow::Result<()> {
    chaos_2(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_2_restart_the_broker_3_times_on_timescaledb() -> anyhow::Result<()> {
    chaos_2(true).await
}

async fn chaos_2(timescale: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(db) = database(timescale, &name("chaos_2_restart_the_broker_3_times", timescale)).await? else {
        return Ok(());
    };
    let mut broker = RestartableMosquitto::start(dir.path(), "127.0.0.1", free_port()).await?;
    let mut ctl = controller(dir.path(), &db, Broker::External(broker.url.clone()), false).await?;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let node = format!("c2-{i}");
        let cfg = agent_config(&node, dir.path(), &broker.url, "100ms", 16384);
        enroll(&ctl, &cfg)?;
        agents.push(start_agent(&node, dir.path(), &cfg, None)?);
    }
    for round in 0..3 {
        sleep(2000).await;
        broker.kill9();
        println!("chaos 2: killed Mosquitto, round {}", round + 1);
        sleep(1000).await;
        broker.up().await?;
    }
    sleep(3000).await;
    let finals = stop_agents(&mut agents)?;
    check_exactly_once("chaos 2", &db.0.url, &finals, &BTreeMap::new()).await?;
    ctl.kill9();
    db.0.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_3_cut_the_network_for_60_s() -> anyhow::Result<()> {
    chaos_3(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_3_cut_the_network_for_60_s_on_timescaledb() -> anyhow::Result<()> {
    chaos_3(true).await
}

async fn chaos_3(timescale: bool) -> anyhow::Result<()> {
    let test = name("chaos_3_cut_the_network_for_60_s", timescale);
    if let Some(why) = NetNs::unavailable() {
        return fleet_tests::need::missing(fleet_tests::need::Need::Root, &test, &why);
    }
    let dir = tempfile::tempdir()?;
    let Some(db) = database(timescale, &test).await? else {
        return Ok(());
    };
    let ns = NetNs::create(3)?;
    let broker = RestartableMosquitto::start(dir.path(), &ns.host_ip, free_port()).await?;
    let mut ctl = controller(dir.path(), &db, Broker::External(broker.url.clone()), false).await?;
    let node = "c3-0";
    let cfg = agent_config(node, dir.path(), &broker.url, "100ms", 16384);
    // Enrolled from the host (the files land in its data_dir); it runs in the namespace.
    enroll(&ctl, &cfg)?;
    let mut agents = vec![start_agent(node, dir.path(), &cfg, Some(&ns))?];
    sleep(3000).await;
    ns.set_link(false)?;
    println!("chaos 3: link of {} down for 60 s", ns.name);
    sleep(60_000).await;
    ns.set_link(true)?;
    println!("chaos 3: link up again");
    sleep(5000).await;
    let finals = stop_agents(&mut agents)?;
    ensure!(finals[0].get("samples_taken") > 60 * 10 * 5, "the agent kept sampling during the cut: {finals:?}");
    check_exactly_once("chaos 3", &db.0.url, &finals, &BTreeMap::new()).await?;
    ctl.kill9();
    db.0.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_4_kill_the_agent_5_times() -> anyhow::Result<()> {
    chaos_4(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_4_kill_the_agent_5_times_on_timescaledb() -> anyhow::Result<()> {
    chaos_4(true).await
}

async fn chaos_4(timescale: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(db) = database(timescale, &name("chaos_4_kill_the_agent_5_times", timescale)).await? else {
        return Ok(());
    };
    let broker = RestartableMosquitto::start(dir.path(), "127.0.0.1", free_port()).await?;
    let mut ctl = controller(dir.path(), &db, Broker::External(broker.url.clone()), false).await?;
    let node = "c4-0";
    // fsync every batch: everything the agent appended is durable when it dies.
    let cfg = agent_config(node, dir.path(), &broker.url, "0s", 16384);
    enroll(&ctl, &cfg)?;
    let mut fsynced: BTreeMap<String, u64> = BTreeMap::new();
    for round in 0..5 {
        let mut a = start_agent(node, dir.path(), &cfg, None)?;
        sleep(1500).await;
        a.kill9();
        // What the spool holds now must all arrive; record the highest seq per run.
        for (boot, seqs) in readable_seqs(&dir.path().join(node).join("spool"))? {
            if let Some(&max) = seqs.last() {
                let e = fsynced.entry(boot).or_default();
                *e = (*e).max(max);
            }
        }
        println!("chaos 4: killed the agent, round {}", round + 1);
    }
    let mut agents = vec![start_agent(node, dir.path(), &cfg, None)?];
    sleep(3000).await;
    let finals = stop_agents(&mut agents)?;
    check_exactly_once("chaos 4", &db.0.url, &finals, &BTreeMap::new()).await?;
    let runs = runs_in_db(&db.0.url).await?;
    for (boot, max) in &fsynced {
        let got = runs.get(&(node.to_owned(), boot.clone())).with_context(|| format!("run {boot} missing"))?;
        ensure!(got.max_seq >= *max, "run {boot}: seq {max} was fsynced but the store ends at {}", got.max_seq);
    }
    ensure!(runs.len() == 6, "5 killed runs and a final one: {runs:?}");
    println!("chaos 4: every fsynced batch of {} killed runs arrived", fsynced.len());
    ctl.kill9();
    db.0.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_5_power_cut_torn_tail_and_flipped_byte() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = Db(TestDb::create().await?, false);
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let node = "c5-0";
    let cfg = agent_config(node, dir.path(), &url, "0s", 4096);
    // No broker yet: everything stays in the spool.
    let mut a = start_agent(node, dir.path(), &cfg, None)?;
    sleep(3000).await;
    a.kill9();
    let spool = dir.path().join(node).join("spool");
    let before = readable_seqs(&spool)?;
    let mut segs: Vec<PathBuf> = std::fs::read_dir(spool.join("segments"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    segs.sort();
    ensure!(segs.len() >= 4, "want several segments, have {}", segs.len());
    // Power cut: the last segment ends mid-record.
    let last = segs.last().context("no segment")?;
    let len = std::fs::metadata(last)?.len();
    std::fs::OpenOptions::new().write(true).open(last)?.set_len(len - 5)?;
    // Bit rot: one byte flipped in a middle segment.
    let victim = &segs[segs.len() / 2];
    let mut bytes = std::fs::read(victim)?;
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(victim, bytes)?;
    let after = readable_seqs(&spool)?;
    let count = |m: &BTreeMap<String, BTreeSet<u64>>| m.values().map(BTreeSet::len).sum::<usize>();
    let destroyed = count(&before) - count(&after);
    ensure!(destroyed > 0, "the damage should destroy something");
    println!(
        "chaos 5: {} samples on disk before the damage, {} readable after: {destroyed} destroyed by the scenario",
        count(&before),
        count(&after)
    );

    let mut ctl = controller(dir.path(), &db, Broker::Embedded(port), true).await?;
    let mut agents = vec![start_agent(node, dir.path(), &cfg, None)?];
    sleep(4000).await;
    let finals = stop_agents(&mut agents)?;
    ensure!(
        finals[0].get("spool_quarantined_segments") == 1 && finals[0].get("spool_torn_tails") == 1,
        "the agent counts what it repaired: {finals:?}"
    );
    let log = agents[0].log_text();
    ensure!(
        log.contains("quarantined") && log.contains("torn"),
        "the agent logs the quarantine and the torn tail:\n{log}"
    );
    let killed_boot = after.keys().next().context("no run on disk")?.clone();
    // The killed run: exactly what survived on disk, nothing else.
    let expected: BTreeMap<String, BTreeSet<u64>> = after.clone();
    check_exactly_once("chaos 5", &db.0.url, &finals, &expected).await?;
    let quarantined = std::fs::read_dir(spool.join("quarantine"))?.count();
    ensure!(quarantined == 1, "one segment quarantined, found {quarantined}");
    println!("chaos 5: run {killed_boot}: {} samples delivered, {destroyed} destroyed and counted", count(&after));
    ctl.kill9();
    db.0.cleanup().await
}

#[test]
fn reports_are_parsed() {
    let r = agent_reports("x\nfleet-agent stopped: node_id=a boot_id=b samples_taken=5 batches_kept=0\n");
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].node_id.as_str(), r[0].get("samples_taken")), ("a", 5));
}
