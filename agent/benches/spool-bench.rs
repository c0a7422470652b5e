//! `spool-bench`: append throughput at each fsync policy, replay throughput,
//! and the RSS of a process holding a 1 GB backlog versus an empty spool.
//!
//! `cargo run --release --bin spool-bench [-- --backlog-mb 1024 --dir DIR]`
//! Last line: `spool_append_per_s=<x> replay_per_s=<y> rss_backlog_delta_kb=<z>`
//! (append at the default group commit: 1 s / 1 MiB).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fleet_agent::spool::{Spool, SpoolConfig};
use fleet_proto::v1::{Ack, Sample, TelemetryBatch};

/// A batch like the agent's: one tick of 11 metrics.
fn batch(seq: u64) -> TelemetryBatch {
    let names = fleet_proto::metrics::TICK;
    TelemetryBatch {
        node_id: "bench-node-0001".into(),
        boot_id: "0b7e1d3c-55aa-4f7e-9c1d-2a3b4c5d6e7f".into(),
        first_seq: seq * names.len() as u64,
        samples: names
            .iter()
            .enumerate()
            .map(|(i, m)| Sample {
                metric: (*m).into(),
                value: 1000.0 * (seq as f64).sin() + i as f64,
                time_unix_ms: 1_795_000_000_000 + seq as i64 * 1000,
            })
            .collect(),
        low_water_seq: 0,
    }
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn append_run(dir: &Path, cfg: SpoolConfig, n: u64) -> f64 {
    let _ = std::fs::remove_dir_all(dir);
    let mut s = Spool::open(dir, cfg).expect("open spool");
    let batches: Vec<TelemetryBatch> = (0..1024).map(batch).collect();
    let start = Instant::now();
    for i in 0..n {
        let mut b = batches[(i % 1024) as usize].clone();
        b.first_seq = i * 11;
        s.append(&b).expect("append");
        if i % 1024 == 0 {
            s.maybe_sync(Instant::now()).expect("sync");
        }
    }
    s.sync().expect("sync");
    let per_s = n as f64 / start.elapsed().as_secs_f64();
    s.close().expect("close");
    per_s
}

/// Opens `dir` and replays all of it, acking as it goes; prints batches and peak RSS.
fn replay_child(dir: &Path) {
    let base = rss_kb("VmHWM");
    let cfg = SpoolConfig { max_bytes: 64 << 30, ..Default::default() };
    let start = Instant::now();
    let mut s = Spool::open(dir, cfg).expect("open spool");
    let opened = start.elapsed();
    s.on_connect();
    let start = Instant::now();
    let mut n = 0u64;
    let boot_id = batch(0).boot_id;
    loop {
        // The agent's pace: replay_batches_per_s / 10 a tick, here without the pause.
        let out = s.replay(Instant::now(), 50).expect("replay");
        if out.is_empty() {
            break;
        }
        n += out.len() as u64;
        // The backlog holds seqs 0, 11, 22, ... in order: ack everything sent so far.
        s.ack(&Ack { boot_id: boot_id.clone(), up_to_seq: n * 11 - 1, committed: vec![] }).expect("ack");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "child batches={n} open_s={:.3} replay_per_s={:.0} peak_rss_kb={} base_rss_kb={base}",
        opened.as_secs_f64(),
        n as f64 / secs.max(1e-9),
        rss_kb("VmHWM")
    );
}

/// Runs the real agent for a few seconds over `data_dir` (its spool holds the
/// backlog or nothing), with no broker in reach; prints its peak RSS.
fn agent_child(data_dir: &Path) {
    let mut cfg = fleet_agent::AgentConfig { node_id: "bench-node-0001".into(), ..Default::default() };
    cfg.data_dir = data_dir.to_owned();
    cfg.mqtt.url = "mqtt://127.0.0.1:9".into();
    cfg.hardware.backend = fleet_agent::board::HardwareBackend::Sim;
    cfg.spool.max_bytes = 64 << 30;
    cfg.telemetry.shutdown_grace = Duration::from_millis(100);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let report = rt.block_on(async {
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            s.cancel();
        });
        fleet_agent::run(cfg, stop).await.expect("agent run")
    });
    println!("child batches_kept={} peak_rss_kb={}", report.batches_kept, rss_kb("VmHWM"));
}

fn parse_child(out: &str, key: &str) -> f64 {
    out.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

fn child(dir: &Path, mode: &str) -> String {
    let exe = std::env::current_exe().expect("current exe");
    let out = Command::new(exe).arg(mode).arg(dir).output().expect("run child");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child-replay") => return replay_child(Path::new(&args[2])),
        Some("--child-agent") => return agent_child(Path::new(&args[2])),
        _ => {}
    }
    let mut backlog_mb: u64 = 1024;
    let mut base: Option<PathBuf> = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backlog-mb" => backlog_mb = it.next().and_then(|v| v.parse().ok()).unwrap_or(backlog_mb),
            "--dir" => base = it.next().map(PathBuf::from),
            other => {
                eprintln!("spool-bench: unknown argument {other:?} (use --backlog-mb N, --dir DIR)");
                std::process::exit(2);
            }
        }
    }
    let tmp = tempfile::tempdir_in(base.as_deref().unwrap_or(Path::new("."))).expect("temp dir");
    let record = fleet_agent::spool::record::encode(&batch(0)).map_or(0, |r| r.len() as u64) + 8;
    println!("batch: 11 samples, {record} bytes on disk");

    let policies = [
        ("fsync every batch", SpoolConfig { fsync_interval: Duration::ZERO, ..Default::default() }, 20_000u64),
        ("group commit 1s / 1 MiB (default)", SpoolConfig::default(), 2_000_000),
        (
            "group commit 100 ms / 64 KiB",
            SpoolConfig { fsync_interval: Duration::from_millis(100), fsync_bytes: 64 << 10, ..Default::default() },
            1_000_000,
        ),
    ];
    let mut default_rate = 0.0;
    for (name, cfg, n) in policies {
        let cfg = SpoolConfig { max_bytes: 64 << 30, ..cfg };
        let rate = append_run(&tmp.path().join("append"), cfg.clone(), n);
        println!("append [{name}]: {n} batches, {rate:.0} batches/s, {:.1} MB/s", rate * record as f64 / 1e6);
        if cfg.fsync_interval == Duration::from_secs(1) {
            default_rate = rate;
        }
    }

    // A backlog of about `backlog_mb` in an agent's data dir, and an empty one.
    let with_dir = tmp.path().join("agent-backlog");
    let n = backlog_mb * (1 << 20) / record;
    append_run(&with_dir.join("spool"), SpoolConfig { max_bytes: 64 << 30, ..Default::default() }, n);
    let without_dir = tmp.path().join("agent-empty");
    append_run(&without_dir.join("spool"), SpoolConfig::default(), 0);

    // The real agent over each (start-up scan, sampling, spooling; no broker).
    let a_with = child(&with_dir, "--child-agent");
    let a_without = child(&without_dir, "--child-agent");
    println!("agent, {backlog_mb} MB backlog: {}", a_with.trim());
    println!("agent, no backlog:    {}", a_without.trim());
    let agent_delta = parse_child(&a_with, "peak_rss_kb") - parse_child(&a_without, "peak_rss_kb");

    // The spool alone replaying all of it, acknowledging as it goes.
    let r_with = child(&with_dir.join("spool"), "--child-replay");
    let r_without = child(&without_dir.join("spool"), "--child-replay");
    println!("replay, {backlog_mb} MB backlog: {}", r_with.trim());
    println!("replay, no backlog:    {}", r_without.trim());
    let replay = parse_child(&r_with, "replay_per_s");
    let replay_delta = parse_child(&r_with, "peak_rss_kb") - parse_child(&r_without, "peak_rss_kb");
    println!("peak RSS deltas: agent {agent_delta:.0} kB, replay {replay_delta:.0} kB");
    let delta = agent_delta.max(replay_delta);
    println!("spool_append_per_s={default_rate:.0} replay_per_s={replay:.0} rss_backlog_delta_kb={delta:.0}");
}
