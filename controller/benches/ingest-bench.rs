//! `ingest-bench`: writes the same N generated samples
//! (a) by raw `COPY ... FROM STDIN (FORMAT binary)` through one connection,
//! (b) through the full path: agent batches -> MQTT (the embedded broker) ->
//!     controller -> PostgreSQL,
//! (c) agent batches -> Kafka (librdkafka's mock cluster, or `--kafka` for a
//!     real broker such as Tansu) -> controller's consumer group -> PostgreSQL,
//! (d) agent batches -> MQTT -> controller -> SQLite,
//! and prints rows/s of each, the controller's peak RSS on each path (it runs
//! as a child process of the bench), and as its last line
//! `ingest_vs_copy_ratio=<(b)/(a)>`.
//!
//! `cargo run --release --bin ingest-bench [-- --database-url URL -n 1000000 --nodes 20 --batch 500
//!  --kafka HOST:PORT --mqtt-url mqtt://HOST:PORT --only a,b,c,d]`
//! The default URL is the PostgreSQL that scripts/test starts; each path works
//! in a database of its own (`fleet_bench_<pid>_<path>`), dropped at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use fleet_controller::{Controller, ControllerConfig};
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{Sample, TelemetryBatch};
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const METRICS: [&str; 11] = fleet_proto::metrics::TICK;
/// Seconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_S: i64 = 946_684_800;

/// `n` samples; sample `i` belongs to node `i % nodes`, and each node takes
/// one tick of every metric a second, ending about now.
fn samples(n: usize, nodes: usize) -> Vec<Sample> {
    let per_tick = METRICS.len() * nodes;
    let ticks = i64::try_from(n.div_ceil(per_tick)).unwrap_or(i64::MAX);
    let base_ms = fleet_proto::now_unix_ms() - ticks * 1000 - 60_000;
    (0..n)
        .map(|i| Sample {
            metric: METRICS[(i / nodes) % METRICS.len()].into(),
            value: (i % 1000) as f64 * 0.1,
            time_unix_ms: base_ms + (i / per_tick) as i64 * 1000,
        })
        .collect()
}

/// The samples of each node, cut into agent batches.
fn batches(data: &[Sample], nodes: usize, per_batch: usize) -> Vec<Vec<TelemetryBatch>> {
    (0..nodes)
        .map(|node| {
            let mine: Vec<Sample> =
                data.iter().enumerate().filter(|(i, _)| i % nodes == node).map(|(_, s)| s.clone()).collect();
            let mut seq = 0;
            mine.chunks(per_batch)
                .map(|c| {
                    let b = TelemetryBatch {
                        node_id: format!("node-{node}"),
                        boot_id: "boot".into(),
                        first_seq: seq,
                        samples: c.to_vec(),
                        low_water_seq: 0,
                    };
                    seq += c.len() as u64;
                    b
                })
                .collect()
        })
        .collect()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(config) = arg(&args, "--controller-child") {
        return controller_child(Path::new(&config)).await;
    }
    let admin = arg(&args, "--database-url").unwrap_or_else(|| "postgres://fleet:fleet@127.0.0.1:5432/postgres".into());
    let n: usize = arg(&args, "-n").map_or(Ok(1_000_000), |v| v.parse())?;
    let nodes: usize = arg(&args, "--nodes").map_or(Ok(20), |v| v.parse())?;
    let per_batch: usize = arg(&args, "--batch").map_or(Ok(500), |v| v.parse())?;
    let only = arg(&args, "--only").unwrap_or_else(|| "a,b,c,d".into());
    let kafka = arg(&args, "--kafka");
    // An external broker (e.g. the Mosquitto scripts/test starts on 18830)
    // instead of the embedded one: the controller's RSS is then its own.
    let mqtt = arg(&args, "--mqtt-url");
    let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|e| {
        anyhow::anyhow!("cannot reach {admin}: {e} (start it with scripts/test, or pass --database-url)")
    })?;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
    let mut dbs = Vec::new();
    let result = async {
        let data = samples(n, nodes);
        let all = batches(&data, nodes, per_batch);
        let mut new_db = async |tag: &str| -> anyhow::Result<String> {
            let db = format!("fleet_bench_{}_{tag}", std::process::id());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await?;
            dbs.push(db.clone());
            Ok(format!("{base}/{db}"))
        };
        let mut copy_rate = None;
        let mut path_rate = None;
        if only.contains('a') || only.contains('b') {
            let url = new_db("mqtt").await?;
            let c = ChildController::start(&url, None, mqtt.as_deref()).await?;
            if only.contains('a') {
                copy_rate = Some(copy(&url, &data, nodes).await?);
            }
            if only.contains('b') {
                let (rate, rss) = c.measure(n as u64, || publish_mqtt(c.mqtt_url.clone(), all.clone())).await?;
                println!(
                    "(b) agent batches -> MQTT -> controller -> PostgreSQL: {n} rows, {rate:.0} rows/s; \
                     controller peak RSS {rss} kB"
                );
                path_rate = Some(rate);
            }
            c.stop()?;
        }
        if only.contains('c') {
            let url = new_db("kafka").await?;
            path_kafka(&url, kafka.as_deref(), mqtt.as_deref(), n, &all).await?;
        }
        if only.contains('d') {
            let c = ChildController::start("", None, mqtt.as_deref()).await?;
            let (rate, rss) = c.measure(n as u64, || publish_mqtt(c.mqtt_url.clone(), all.clone())).await?;
            println!(
                "(d) agent batches -> MQTT -> controller -> SQLite: {n} rows, {rate:.0} rows/s; \
                 controller peak RSS {rss} kB"
            );
            c.stop()?;
        }
        if let (Some(c), Some(p)) = (copy_rate, path_rate) {
            println!("ingest_vs_copy_ratio={:.3}", p / c);
        }
        anyhow::Ok(())
    }
    .await;
    for db in dbs {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")))
            .execute(&mut conn)
            .await?;
    }
    result
}

/// (c): the batches through Kafka (a given cluster, else librdkafka's mock) into the controller.
async fn path_kafka(
    url: &str,
    kafka: Option<&str>,
    mqtt: Option<&str>,
    n: usize,
    all: &[Vec<TelemetryBatch>],
) -> anyhow::Result<()> {
    let mock;
    let brokers = match kafka {
        Some(b) => {
            create_topics(b).await?;
            b.to_owned()
        }
        None => {
            mock = rdkafka::mocking::MockCluster::new(1)?;
            mock.create_topic(fleet_proto::topics::KAFKA_TELEMETRY, 8, 1)?;
            mock.create_topic(fleet_proto::topics::KAFKA_STATUS, 1, 1)?;
            mock.bootstrap_servers()
        }
    };
    let c = ChildController::start(url, Some(&brokers), mqtt).await?;
    let (rate, rss) = c.measure(n as u64, || publish_kafka(brokers.clone(), all.to_vec())).await?;
    let via = if kafka.is_some() { brokers.as_str() } else { "librdkafka mock cluster" };
    println!(
        "(c) agent batches -> Kafka ({via}) -> controller -> PostgreSQL: {n} rows, {rate:.0} rows/s; \
         controller peak RSS {rss} kB"
    );
    c.stop()
}

/// (a): raw binary COPY into a twin of the raw table, one connection.
async fn copy(url: &str, data: &[Sample], nodes: usize) -> anyhow::Result<f64> {
    let mut pg = sqlx::PgConnection::connect(url).await?;
    sqlx::query("CREATE TABLE copy_target (LIKE telemetry INCLUDING ALL)").execute(&mut pg).await?;
    let mut buf = Vec::with_capacity(data.len() * 90);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes()); // flags
    buf.extend_from_slice(&0i32.to_be_bytes()); // header extension
    let field = |buf: &mut Vec<u8>, bytes: &[u8]| {
        buf.extend_from_slice(&i32::try_from(bytes.len()).unwrap_or(i32::MAX).to_be_bytes());
        buf.extend_from_slice(bytes);
    };
    let mut seqs = vec![0i64; nodes];
    for (i, s) in data.iter().enumerate() {
        let node = i % nodes;
        buf.extend_from_slice(&6i16.to_be_bytes());
        field(&mut buf, format!("node-{node}").as_bytes());
        field(&mut buf, b"boot");
        field(&mut buf, &seqs[node].to_be_bytes());
        seqs[node] += 1;
        field(&mut buf, &((s.time_unix_ms - PG_EPOCH_S * 1000) * 1000).to_be_bytes());
        field(&mut buf, s.metric.as_bytes());
        field(&mut buf, &s.value.to_be_bytes());
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    let t = Instant::now();
    let mut copy = pg
        .copy_in_raw("COPY copy_target (node_id, boot_id, seq, ts, metric, value) FROM STDIN (FORMAT binary)")
        .await?;
    for chunk in buf.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    let copied = copy.finish().await?;
    let s = t.elapsed().as_secs_f64();
    let rate = copied as f64 / s;
    println!("(a) COPY (FORMAT binary), one connection: {copied} rows in {s:.2} s = {rate:.0} rows/s");
    Ok(rate)
}

/// One MQTT connection per node, QoS 1, as agents publish.
async fn publish_mqtt(mqtt_url: String, all: Vec<Vec<TelemetryBatch>>) -> anyhow::Result<()> {
    let (host, port) = fleet_proto::parse_mqtt_url(&mqtt_url).map_err(anyhow::Error::msg)?;
    let mut sends = Vec::new();
    for (node, batches) in all.into_iter().enumerate() {
        let mut o = MqttOptions::new(format!("bench-{node}"), host.clone(), port);
        o.set_max_packet_size(16 << 20, 16 << 20);
        o.set_inflight(200);
        let (client, mut el) = AsyncClient::new(o, 1000);
        tokio::spawn(async move { while el.poll().await.is_ok() {} });
        sends.push(tokio::spawn(async move {
            for b in batches {
                client
                    .publish(node_topic(&b.node_id, Channel::Telemetry), QoS::AtLeastOnce, false, b.encode_to_vec())
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in sends {
        s.await??;
    }
    Ok(())
}

async fn create_topics(brokers: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let topics = [
        NewTopic::new(fleet_proto::topics::KAFKA_TELEMETRY, 8, TopicReplication::Fixed(1)),
        NewTopic::new(fleet_proto::topics::KAFKA_STATUS, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// An idempotent producer, key = node id, as the agent's Kafka uplink.
async fn publish_kafka(brokers: String, all: Vec<Vec<TelemetryBatch>>) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()?;
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut rounds: Vec<std::vec::IntoIter<TelemetryBatch>> = all.into_iter().map(Vec::into_iter).collect();
    loop {
        let mut sent = false;
        for it in &mut rounds {
            if let Some(b) = it.next() {
                sent = true;
                let producer = producer.clone();
                pending.push(async move {
                    let payload = b.encode_to_vec();
                    let rec = FutureRecord::to(fleet_proto::topics::KAFKA_TELEMETRY).key(&b.node_id).payload(&payload);
                    producer.send(rec, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
                });
            }
        }
        while pending.len() > 1000 {
            use futures::StreamExt;
            if let Some(r) = pending.next().await {
                r?;
            }
        }
        if !sent {
            break;
        }
    }
    use futures::StreamExt;
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

/// The controller under test, in a process of its own so its RSS is its own.
struct ChildController {
    child: Child,
    mqtt_url: String,
    http: String,
    _dir: tempfile::TempDir,
}

impl ChildController {
    async fn start(database_url: &str, kafka: Option<&str>, mqtt: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let broker = match mqtt {
            Some(url) => format!("url = \"{url}\""),
            None => format!("embedded_listen = \"127.0.0.1:{}\"", free_port()?),
        };
        let mut cfg = format!(
            "database_url = \"{database_url}\"\ndata_dir = \"{}\"\n[mqtt]\n{broker}\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[storage]\njob_interval = \"1h\"\n",
            dir.path().join("data").display(),
        );
        if let Some(b) = kafka {
            cfg.push_str(&format!("[kafka]\nbrokers = \"{b}\"\nbridge = false\n"));
        }
        let path = dir.path().join("controller.toml");
        std::fs::write(&path, cfg)?;
        let mut child = Command::new(std::env::current_exe()?)
            .arg("--controller-child")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
        let mut parts = line.split_whitespace().skip(1);
        let (Some(mqtt_url), Some(http)) = (parts.next(), parts.next()) else {
            anyhow::bail!("the controller child did not start: {line:?}");
        };
        Ok(Self { mqtt_url: mqtt_url.to_owned(), http: http.to_owned(), child, _dir: dir })
    }

    /// Runs `publish`, waits until `n` rows are written; returns rows/s from
    /// the first publish to the last row, and the controller's peak RSS (kB).
    async fn measure<F, Fut>(&self, n: u64, publish: F) -> anyhow::Result<(f64, u64)>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (pid, p2, s2) = (self.child.id(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !s2.is_cancelled() {
                p2.fetch_max(status_kb(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let t = Instant::now();
        let sender = tokio::spawn(publish());
        let (mut last, mut moved) = (0, Instant::now());
        loop {
            let written = match rows_written(&self.http).await {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("metrics: {e}");
                    0
                }
            };
            if written >= n {
                break;
            }
            if written > last {
                (last, moved) = (written, Instant::now());
            }
            anyhow::ensure!(
                moved.elapsed() < Duration::from_secs(30),
                "rows written stopped at {written} of {n}: the broker dropped messages (the bench's \
                 publishers do not resend like agents do; on Mosquitto set max_queued_messages 0)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = t.elapsed().as_secs_f64();
        sender.await??;
        stop.cancel();
        let rss = peak.load(Ordering::Relaxed).max(status_kb(self.child.id(), "VmHWM:"));
        Ok((n as f64 / s, rss))
    }

    fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        self.child.wait()?;
        Ok(())
    }
}

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `fleet_rows_written_total` from the controller's /metrics.
async fn rows_written(http: &str) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let v = out
        .lines()
        .find(|l| l.starts_with("fleet_rows_written_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(v as u64)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Child mode: runs a controller from `config` until stdin closes.
async fn controller_child(config: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?;
    let cfg = ControllerConfig::from_toml(&text, &config.display().to_string())?;
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    println!("ready {} {}", c.mqtt_url, c.http_addr);
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}
