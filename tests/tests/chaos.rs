//! The chaos suite: real agent and controller processes, real brokers
//! (Mosquitto, and the controller's embedded one), a real PostgreSQL. After
//! each scenario, per node, every seq the agent produced is in the database
//! exactly once (no gaps, no duplicates), except what the scenario itself
//! destroyed on disk (scenario 5, counted). Each prints its counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use fleet_agent::spool::{Spool, SpoolConfig};
use fleet_tests::procs::{AgentStopped, NetNs, Proc, RestartableMosquitto, agent_reports, bin, runs_in_db, seqs_in_db};
use fleet_tests::{TestDb, free_port, wait_for};

const AGENTS: usize = 2;

/// How the controller reaches its broker.
#[derive(Clone)]
enum Broker {
    /// The controller's own rumqttd on this port (restarts with it).
    Embedded(u16),
    External(String),
}

struct Controller {
    args: Vec<String>,
    grpc: u16,
    data: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Controller {
    /// `lab`: nodes that never enrolled are heard (scenario 5 starts its agent before any controller).
    async fn start(dir: &Path, db: &str, broker: &Broker, lab: bool) -> anyhow::Result<Self> {
        let grpc = free_port();
        let conf = dir.join("controller.toml");
        std::fs::write(&conf, format!("[security]\nrequire_enrollment = {}\n", !lab))?;
        let mut args = vec![
            "--config".into(),
            conf.display().to_string(),
            "--database-url".into(),
            db.into(),
            "--data-dir".into(),
            dir.join("controller").display().to_string(),
            "--grpc-listen".into(),
            format!("127.0.0.1:{grpc}"),
            "--http-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ];
        match broker {
            Broker::Embedded(port) => args.extend(["--mqtt-listen".into(), format!("127.0.0.1:{port}")]),
            Broker::External(url) => args.extend(["--mqtt-url".into(), url.clone()]),
        }
        let mut c = Self { args, grpc, data: dir.join("controller"), log: dir.join("controller.log"), proc: None };
        c.up().await?;
        Ok(c)
    }

    async fn up(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(bin("fleet-controller")?);
        cmd.args(&self.args).env("RUST_LOG", "info,rumqttd=off");
        self.proc = Some(Proc::spawn("fleet-controller", cmd, &self.log)?);
        let port = self.grpc;
        wait_for(Duration::from_secs(20), "the controller's gRPC port", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await
        .with_context(|| std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

fn agent_config(node: &str, dir: &Path, mqtt_url: &str, fsync_interval: &str, segment_bytes: u64) -> PathBuf {
    let path = dir.join(format!("{node}.toml"));
    let text = format!(
        "node_id = \"{node}\"\ndata_dir = \"{data}\"\n\
         [mqtt]\nurl = \"{mqtt_url}\"\nkeep_alive = \"2s\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n\
         [telemetry]\ninterval = \"100ms\"\nflush_interval = \"100ms\"\nack_timeout = \"2s\"\n\
         status_interval = \"2s\"\nshutdown_grace = \"20s\"\n\
         [hardware]\nbackend = \"sim\"\n\
         [spool]\nsegment_bytes = {segment_bytes}\nmax_bytes = 67108864\nfsync_interval = \"{fsync_interval}\"\n\
         replay_batches_per_s = 2000\n",
        data = dir.join(node).display(),
    );
    std::fs::write(&path, text).expect("write agent config");
    path
}

/// Enrolls a node with the real command lines: `fleetctl tokens create` with
/// the controller's admin token, then `fleet-agent enroll` with it.
fn enroll(ctl: &Controller, config: &Path) -> anyhow::Result<()> {
    let server = format!("https://127.0.0.1:{}", ctl.grpc);
    let ca = ctl.data.join("tls/ca.pem");
    let out = Command::new(bin("fleetctl")?)
        .args(["--server", &server, "--ca"])
        .arg(&ca)
        .arg("--token-file")
        .arg(ctl.data.join("admin.token"))
        .args(["tokens", "create", "--ttl", "10m"])
        .output()?;
    ensure!(out.status.success(), "fleetctl tokens create: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout)?.trim().to_owned();
    let out = Command::new(bin("fleet-agent")?)
        .arg("--config")
        .arg(config)
        .args(["enroll", "--controller", &server, "--ca"])
        .arg(&ca)
        .env("FLEET_BOOTSTRAP_TOKEN", &token)
        .output()?;
    ensure!(
        out.status.success(),
        "fleet-agent enroll: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn start_agent(node: &str, dir: &Path, config: &Path, ns: Option<&NetNs>) -> anyhow::Result<Proc> {
    let program = bin("fleet-agent")?;
    let mut cmd = match ns {
        Some(ns) => ns.command(&program),
        None => Command::new(&program),
    };
    cmd.arg("--config").arg(config).env("RUST_LOG", "warn");
    Proc::spawn(node, cmd, &dir.join(format!("{node}.log")))
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

/// Checks exactly-once per node and run; `expected` gives, for runs whose
/// samples were partly destroyed or never batched, the exact seqs that must be
/// there (`None`: 0..=max must all be there). Prints the counts.
async fn check(
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

/// Seqs on an agent's spool, per run, read from a copy (so the agent's own start does the repairs).
fn seqs_on_disk(spool_dir: &Path) -> anyhow::Result<BTreeMap<String, BTreeSet<u64>>> {
    let copy = tempfile::tempdir()?;
    let status = Command::new("cp").arg("-a").arg(spool_dir).arg(copy.path().join("spool")).status()?;
    ensure!(status.success(), "copying the spool");
    let mut s = Spool::open(&copy.path().join("spool"), SpoolConfig { max_bytes: 1 << 30, ..Default::default() })?;
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    s.for_each_pending(|b| {
        out.entry(b.boot_id.clone()).or_default().extend(b.first_seq..b.first_seq + b.samples.len() as u64);
    })?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_1_kill_the_controller_5_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let port = free_port();
    let mut ctl = Controller::start(dir.path(), &db.url, &Broker::Embedded(port), false).await?;
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
    check("chaos 1", &db.url, &finals, &BTreeMap::new()).await?;
    ctl.kill9();
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_2_restart_the_broker_3_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let mut broker = RestartableMosquitto::start(dir.path(), "127.0.0.1", free_port()).await?;
    let mut ctl = Controller::start(dir.path(), &db.url, &Broker::External(broker.url.clone()), false).await?;
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
    check("chaos 2", &db.url, &finals, &BTreeMap::new()).await?;
    ctl.kill9();
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_3_cut_the_network_for_60_s() -> anyhow::Result<()> {
    if let Some(why) = NetNs::unavailable() {
        println!("SKIPPED chaos 3: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let ns = NetNs::create(3)?;
    let broker = RestartableMosquitto::start(dir.path(), &ns.host_ip, free_port()).await?;
    let mut ctl = Controller::start(dir.path(), &db.url, &Broker::External(broker.url.clone()), false).await?;
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
    check("chaos 3", &db.url, &finals, &BTreeMap::new()).await?;
    ctl.kill9();
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_4_kill_the_agent_5_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let broker = RestartableMosquitto::start(dir.path(), "127.0.0.1", free_port()).await?;
    let mut ctl = Controller::start(dir.path(), &db.url, &Broker::External(broker.url.clone()), false).await?;
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
        for (boot, seqs) in seqs_on_disk(&dir.path().join(node).join("spool"))? {
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
    check("chaos 4", &db.url, &finals, &BTreeMap::new()).await?;
    let runs = runs_in_db(&db.url).await?;
    for (boot, max) in &fsynced {
        let got = runs.get(&(node.to_owned(), boot.clone())).with_context(|| format!("run {boot} missing"))?;
        ensure!(got.max_seq >= *max, "run {boot}: seq {max} was fsynced but the store ends at {}", got.max_seq);
    }
    ensure!(runs.len() == 6, "5 killed runs and a final one: {runs:?}");
    println!("chaos 4: every fsynced batch of {} killed runs arrived", fsynced.len());
    ctl.kill9();
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_5_power_cut_torn_tail_and_flipped_byte() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let node = "c5-0";
    let cfg = agent_config(node, dir.path(), &url, "0s", 4096);
    // No broker yet: everything stays in the spool.
    let mut a = start_agent(node, dir.path(), &cfg, None)?;
    sleep(3000).await;
    a.kill9();
    let spool = dir.path().join(node).join("spool");
    let before = seqs_on_disk(&spool)?;
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
    let after = seqs_on_disk(&spool)?;
    let count = |m: &BTreeMap<String, BTreeSet<u64>>| m.values().map(BTreeSet::len).sum::<usize>();
    let destroyed = count(&before) - count(&after);
    ensure!(destroyed > 0, "the damage should destroy something");
    println!(
        "chaos 5: {} samples on disk before the damage, {} readable after: {destroyed} destroyed by the scenario",
        count(&before),
        count(&after)
    );

    let mut ctl = Controller::start(dir.path(), &db.url, &Broker::Embedded(port), true).await?;
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
    check("chaos 5", &db.url, &finals, &expected).await?;
    let quarantined = std::fs::read_dir(spool.join("quarantine"))?.count();
    ensure!(quarantined == 1, "one segment quarantined, found {quarantined}");
    println!("chaos 5: run {killed_boot}: {} samples delivered, {destroyed} destroyed and counted", count(&after));
    ctl.kill9();
    db.cleanup().await
}

#[test]
fn reports_are_parsed() {
    let r = agent_reports("x\nfleet-agent stopped: node_id=a boot_id=b samples_taken=5 batches_kept=0\n");
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].node_id.as_str(), r[0].get("samples_taken")), ("a", 5));
}
