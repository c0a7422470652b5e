//! Two controller replicas against one PostgreSQL: 20 agents send at least
//! 50,000 samples while one replica is killed (SIGKILL) mid-run; every sample
//! is in the database exactly once, and every live replica holds every
//! node's status (before the kill and at the end). Run over MQTT (Mosquitto,
//! shared subscription) and over Kafka (Tansu, a Kafka-protocol broker run as
//! its own process, consumer group; a replacement replica joins after the
//! kill, as an orchestrator would start one, and is never restarted). The agents are not enrolled (the replicas
//! run with `require_enrollment = false`): this suite is about shared
//! ingest; signed messages under restarts are chaos 1-4's and `signed.rs`'s.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use fleet_agent::uplink::UplinkKind;
use fleet_tests::procs::{Proc, bin, runs_in_db};
use fleet_tests::{AgentHandle, Mosquitto, TestDb, agent_config, free_port, http_get, metric_value, wait_for};

const AGENTS: usize = 20;
const SAMPLES: u64 = 50_000;

/// Ingest path of a run.
#[derive(Clone, Copy, Debug)]
enum Path2 {
    Mqtt,
    Kafka,
}

/// A replica's config file, its metrics address and its gRPC port.
fn controller_toml(
    dir: &Path,
    name: &str,
    db: &str,
    mqtt_url: &str,
    kafka: Option<&str>,
) -> (PathBuf, SocketAddr, u16) {
    let kafka = match kafka {
        Some(b) => format!("[kafka]\nbrokers = \"{b}\"\nbridge = false\n"),
        None => String::new(),
    };
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let grpc = free_port();
    let text = format!(
        "database_url = \"{db}\"\ndata_dir = \"{data}\"\n\
         [mqtt]\nurl = \"{mqtt_url}\"\nshared_group = \"fleet-ingest\"\n\
         [grpc]\nlisten = \"127.0.0.1:{grpc}\"\n[http]\nlisten = \"{http}\"\ntls = \"off\"\n\
         [storage]\njob_interval = \"500ms\"\npostgres_schema = \"postgres\"\n\
         [security]\nrequire_enrollment = false\n{kafka}",
        data = dir.join(name).display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write controller config");
    (path, http, grpc)
}

fn start_controller(dir: &Path, name: &str, config: &Path) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin("fleet-controller")?);
    cmd.arg("--config").arg(config).env("RUST_LOG", "info,rumqttd=off,librdkafka=warn");
    Proc::spawn(name, cmd, &dir.join(format!("{name}.log")))
}

/// Rows in the store so far.
async fn rows(pool: &sqlx::PgPool) -> u64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM telemetry")
        .fetch_one(pool)
        .await
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// Both replicas up (each logs its MQTT connection); on Kafka, each holds
/// some of the group's partitions before agents start.
async fn replicas_ready(replicas: &[Proc], path: Path2) -> anyhow::Result<()> {
    for r in replicas {
        wait_for(Duration::from_secs(30), "a replica connected", || async {
            r.log_text().contains("Controller connected to the MQTT broker.").then_some(())
        })
        .await
        .with_context(|| r.log_text())?;
        if let Path2::Kafka = path {
            wait_for(Duration::from_secs(60), "a replica holding Kafka partitions", || async {
                let log = r.log_text();
                let last = log.lines().rev().find(|l| l.contains("Kafka partitions assigned"))?;
                last.contains("fleet.telemetry/").then_some(())
            })
            .await
            .with_context(|| r.log_text())?;
        }
    }
    Ok(())
}

fn start_agents(path: Path2, kafka: Option<&str>, broker: &str, dir: &std::path::Path) -> Vec<AgentHandle> {
    (0..AGENTS)
        .map(|i| {
            let mut cfg = agent_config(&format!("pi-{i:02}"), broker, dir);
            cfg.telemetry.interval = Duration::from_millis(25);
            cfg.telemetry.flush_interval = Duration::from_millis(100);
            cfg.telemetry.shutdown_grace = Duration::from_secs(30);
            if let (Path2::Kafka, Some(b)) = (path, kafka) {
                cfg.uplink = UplinkKind::Kafka;
                cfg.kafka.brokers = b.to_owned();
            }
            AgentHandle::spawn(cfg)
        })
        .collect()
}

/// Waits until every produced sample is stored (a killed consumer's
/// partitions move on after the group's session timeout; nothing here
/// restarts a replica).
async fn all_produced_stored(pool: &sqlx::PgPool, produced: u64, path: Path2, survivor: &Proc) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(120), "every produced sample stored", || async {
        (rows(pool).await >= produced).then_some(())
    })
    .await
    .with_context(|| format!("{path:?}: not all {produced} samples stored; a survivor's log:\n{}", survivor.log_text()))
}

/// Each live replica's live view holds every node's status from its last run
/// (status is not shared out like telemetry: every replica hears all of it).
fn each_replica_has_every_status(
    dir: &Path,
    live: &[(&Proc, u16)],
    runs: &[(String, Option<String>)],
    path: Path2,
) -> anyhow::Result<()> {
    // Any replica's first admin token works for all: they share the database.
    let token = ["replica-a", "replica-b"]
        .iter()
        .map(|n| dir.join(n).join("admin.token"))
        .find(|p| p.exists())
        .context("no replica wrote an admin token")?;
    for (replica, grpc) in live {
        let out = Command::new(bin("fleetctl")?)
            .args(["--server", &format!("https://127.0.0.1:{grpc}"), "--ca"])
            .arg(dir.join(&replica.name).join("tls/ca.pem"))
            .arg("--token-file")
            .arg(&token)
            .args(["nodes", "list", "-o", "json"])
            .output()?;
        ensure!(
            out.status.success(),
            "{path:?}: fleetctl against {}: {}",
            replica.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
        for (node, boot) in runs {
            let seen = nodes.iter().any(|n| {
                let b = n["boot_id"].as_str().unwrap_or_default();
                n["node_id"] == node.as_str() && boot.as_ref().map_or(!b.is_empty(), |want| b == want)
            });
            ensure!(seen, "{path:?}: {} has no status of {node} (run {boot:?})", replica.name);
        }
    }
    println!("{path:?}: each of {} live replicas holds the status of all {} nodes", live.len(), runs.len());
    Ok(())
}

/// Every agent's run is in the store exactly once: every seq from 0, no duplicate.
async fn each_run_exactly_once(db_url: &str, reports: &[fleet_agent::AgentReport], path: Path2) -> anyhow::Result<u64> {
    let runs = runs_in_db(db_url).await?;
    let mut total = 0;
    for r in reports {
        ensure!(r.batches_kept == 0, "{path:?}: {} left batches unacknowledged", r.node_id);
        let key = (r.node_id.clone(), r.boot_id.clone());
        let got = runs.get(&key).with_context(|| format!("{path:?}: no rows for {key:?}"))?;
        let taken = r.counters.samples_taken;
        ensure!(
            got.rows == taken && got.distinct_seqs == taken && got.min_seq == 0 && got.max_seq + 1 == taken,
            "{path:?}: {} produced {taken} samples, the store has {got:?}",
            r.node_id
        );
        total += taken;
    }
    ensure!(runs.len() == AGENTS, "{path:?}: rows of {} runs, expected {AGENTS}", runs.len());
    ensure!(total >= SAMPLES);
    Ok(total)
}

async fn run(path: Path2, kafka: Option<&str>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let mosquitto = Mosquitto::start().await?;
    let (mut replicas, mut metrics, mut grpcs) = (Vec::new(), Vec::new(), Vec::new());
    for name in ["replica-a", "replica-b"] {
        let (cfg, http, grpc) = controller_toml(dir.path(), name, &db.url, &mosquitto.url, kafka);
        replicas.push(start_controller(dir.path(), name, &cfg)?);
        metrics.push(http);
        grpcs.push(grpc);
    }
    let pool = sqlx::PgPool::connect(&db.url).await?;
    replicas_ready(&replicas, path).await?;
    let agents = start_agents(path, kafka, &mosquitto.url, dir.path());

    // Kill replica A once a fifth of the samples are stored.
    let started = Instant::now();
    wait_for(Duration::from_secs(120), "a fifth of the samples stored", || async {
        (rows(&pool).await >= SAMPLES / 5).then_some(())
    })
    .await?;
    // Both replicas took a share of the work.
    for (r, http) in replicas.iter().zip(&metrics) {
        let text = http_get(*http, "/metrics").await?;
        let written = metric_value(&text, "fleet_rows_written_total");
        ensure!(written > 0.0, "{path:?}: {} wrote nothing before the kill; log:\n{}", r.name, r.log_text());
        println!("{path:?}: {} had written {written} rows before replica A was killed", r.name);
    }
    // Before the kill: both replicas hear every node's status.
    let nodes: Vec<_> = (0..AGENTS).map(|i| (format!("pi-{i:02}"), None)).collect();
    let both: Vec<(&Proc, u16)> = replicas.iter().zip(grpcs.iter().copied()).collect();
    wait_for(Duration::from_secs(30), "every status on both replicas", || async {
        each_replica_has_every_status(dir.path(), &both, &nodes, path).ok()
    })
    .await
    .or_else(|_| each_replica_has_every_status(dir.path(), &both, &nodes, path))?;
    let mut killed = replicas.remove(0);
    killed.kill9();
    grpcs.remove(0);
    let at_kill = rows(&pool).await;
    // Kafka: Tansu 0.6 expires a dead member only when another member joins
    // or heartbeats, and the rebalance that follows still hands the survivor
    // only its own partitions; the dead member's are reassigned at the next
    // join. So, as an orchestrator would, a replacement replica comes up, after
    // the dead one's session (10 s) has run out. It resumes the dead one's
    // partitions from their last committed offsets: what A consumed but had
    // not committed to the database is read again (and deduplicated).
    if let Path2::Kafka = path {
        tokio::time::sleep(Duration::from_secs(13)).await;
        // Its own data directory and ports: the dead one's are not reused.
        let (cfg, _, grpc) = controller_toml(dir.path(), "replica-a2", &db.url, &mosquitto.url, kafka);
        replicas.push(start_controller(dir.path(), "replica-a2", &cfg)?);
        grpcs.push(grpc);
    }
    wait_for(Duration::from_secs(180), "every sample stored", || async {
        (rows(&pool).await >= SAMPLES).then_some(())
    })
    .await
    .with_context(|| replicas[0].log_text())?;
    let mut reports = Vec::new();
    for a in agents {
        reports.push(a.stop().await?);
    }
    let produced: u64 = reports.iter().map(|r| r.counters.samples_taken).sum();
    all_produced_stored(&pool, produced, path, &replicas[0]).await?;
    let total = each_run_exactly_once(&db.url, &reports, path).await?;
    let live: Vec<(&Proc, u16)> = replicas.iter().zip(grpcs.iter().copied()).collect();
    let runs: Vec<_> = reports.iter().map(|r| (r.node_id.clone(), Some(r.boot_id.clone()))).collect();
    each_replica_has_every_status(dir.path(), &live, &runs, path)?;
    println!(
        "replicas over {path:?}: {AGENTS} agents, {total} samples, each stored exactly once; replica A killed at \
         {at_kill} rows, {:.1} s in",
        started.elapsed().as_secs_f64()
    );
    drop(replicas);
    drop(killed);
    pool.close().await;
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_over_mqtt_shared_subscription() -> anyhow::Result<()> {
    run(Path2::Mqtt, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_over_kafka_consumer_group() -> anyhow::Result<()> {
    let Some(tansu) = fleet_tests::procs::Tansu::find("replicas::two_replicas_over_kafka_consumer_group")? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let broker = tansu.start(dir.path(), &[("fleet.telemetry", 4), ("fleet.status", 1)]).await?;
    run(Path2::Kafka, Some(&broker.bootstrap)).await
}
