//! `ingest-bench`: writes the same N generated samples (a) by raw `COPY`
//! through one connection and (b) through the full path, agent batches ->
//! MQTT broker (the embedded one) -> controller -> PostgreSQL, and prints
//! rows/s of each and their ratio (last line: `ingest_vs_copy_ratio=<x>`).
//!
//! `cargo run --release --bin ingest-bench [-- --database-url URL -n 1000000 --nodes 20 --batch 500]`
//! The default URL is the PostgreSQL that scripts/test starts; the bench
//! works in a database of its own (`fleet_bench_<pid>`), dropped at the end.

use std::time::{Duration, Instant};

use fleet_controller::{Controller, ControllerConfig};
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{Sample, TelemetryBatch};
use prost::Message;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const METRICS: [&str; 11] = fleet_proto::metrics::TICK;

fn samples(n: usize, base_ms: i64) -> Vec<Sample> {
    (0..n)
        .map(|i| Sample {
            metric: METRICS[i % METRICS.len()].into(),
            value: (i % 1000) as f64 * 0.1,
            time_unix_ms: base_ms + (i / METRICS.len()) as i64 * 1000,
        })
        .collect()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let admin = arg(&args, "--database-url").unwrap_or_else(|| "postgres://fleet:fleet@127.0.0.1:5432/postgres".into());
    let n: usize = arg(&args, "-n").map_or(Ok(1_000_000), |v| v.parse())?;
    let nodes: usize = arg(&args, "--nodes").map_or(Ok(20), |v| v.parse())?;
    let per_batch: usize = arg(&args, "--batch").map_or(Ok(500), |v| v.parse())?;
    let db = format!("fleet_bench_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|e| {
        anyhow::anyhow!("cannot reach {admin}: {e} (start it with scripts/test, or pass --database-url)")
    })?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await?;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let url = format!("{base}/{db}");
    let result = run(&url, n, nodes, per_batch).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))).execute(&mut conn).await?;
    result
}

async fn run(url: &str, n: usize, nodes: usize, per_batch: usize) -> anyhow::Result<()> {
    let base_ms = fleet_proto::now_unix_ms() - 3_600_000;
    let data = samples(n, base_ms);

    // The controller creates the schema; (a) copies into a twin of its raw table.
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut cfg = ControllerConfig { database_url: url.into(), data_dir: dir.path().into(), ..Default::default() };
    cfg.grpc.listen = "127.0.0.1:0".parse()?;
    cfg.http.listen = "127.0.0.1:0".parse()?;
    cfg.mqtt.embedded_listen = "127.0.0.1:0".parse()?;
    cfg.storage.job_interval = Duration::from_secs(3600);
    let c = Controller::start(cfg, stop.clone()).await?;

    let mut pg = sqlx::PgConnection::connect(url).await?;
    sqlx::query("CREATE TABLE copy_target (LIKE telemetry INCLUDING ALL)").execute(&mut pg).await?;
    let mut csv = Vec::with_capacity(n * 80);
    for (i, s) in data.iter().enumerate() {
        let node = i % nodes;
        use std::io::Write;
        writeln!(csv, "node-{node},boot,{i},{},{},{}", fmt_ts(s.time_unix_ms), s.metric, s.value)?;
    }
    let t = Instant::now();
    let mut copy =
        pg.copy_in_raw("COPY copy_target (node_id, boot_id, seq, ts, metric, value) FROM STDIN (FORMAT csv)").await?;
    for chunk in csv.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    let copied = copy.finish().await?;
    let copy_s = t.elapsed().as_secs_f64();
    let copy_rate = copied as f64 / copy_s;
    println!("(a) COPY: {copied} rows in {copy_s:.2} s = {copy_rate:.0} rows/s");

    // (b) The same samples as agent batches over MQTT, one connection per node.
    let (host, port) = fleet_proto::parse_mqtt_url(&c.mqtt_url).map_err(anyhow::Error::msg)?;
    let mut clients = Vec::new();
    for node in 0..nodes {
        let mut o = MqttOptions::new(format!("bench-{node}"), host.clone(), port);
        o.set_max_packet_size(16 << 20, 16 << 20);
        o.set_inflight(200);
        let (client, mut el) = AsyncClient::new(o, 1000);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        clients.push(client);
    }
    let per_node: Vec<Vec<Sample>> = (0..nodes)
        .map(|node| data.iter().enumerate().filter(|(i, _)| i % nodes == node).map(|(_, s)| s.clone()).collect())
        .collect();
    let t = Instant::now();
    let mut sends = Vec::new();
    for (node, (client, samples)) in clients.iter().zip(per_node).enumerate() {
        let client = client.clone();
        sends.push(tokio::spawn(async move {
            let id = format!("node-{node}");
            let topic = node_topic(&id, Channel::Telemetry);
            let mut seq = 0u64;
            for chunk in samples.chunks(per_batch) {
                let b = TelemetryBatch {
                    node_id: id.clone(),
                    boot_id: "boot".into(),
                    first_seq: seq,
                    samples: chunk.to_vec(),
                    low_water_seq: 0,
                };
                seq += chunk.len() as u64;
                client.publish(&topic, QoS::AtLeastOnce, false, b.encode_to_vec()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in sends {
        s.await??;
    }
    let want = n as u64;
    while c.store.count_samples(None).await? < want {
        if t.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("the full path wrote {} of {want} rows in 600 s", c.store.count_samples(None).await?);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let path_s = t.elapsed().as_secs_f64();
    let path_rate = n as f64 / path_s;
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM")).map(str::to_owned))
        .unwrap_or_default();
    println!(
        "(b) agent batches -> MQTT -> controller -> PostgreSQL: {n} rows in {path_s:.2} s = {path_rate:.0} rows/s"
    );
    println!("bench process (controller + publishers) peak RSS: {}", rss.trim_start_matches("VmHWM:").trim());
    stop.cancel();
    c.wait().await;
    println!("ingest_vs_copy_ratio={:.3}", path_rate / copy_rate);
    Ok(())
}

/// A timestamp PostgreSQL's CSV COPY reads: seconds since the epoch as `to_timestamp` would print.
fn fmt_ts(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}+00", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}
