//! `ingest-bench`: writes the same N generated samples
//! (a) by raw `COPY ... FROM STDIN (FORMAT binary)` through one connection,
//! (b) through the full path as a fleet runs it: enrolled nodes, every batch
//!     signed, broker logins checked -> MQTT (the embedded broker) ->
//!     controller (signature verified) -> PostgreSQL,
//! (c) agent batches -> Kafka (librdkafka's mock cluster, or `--kafka` for a
//!     real broker such as Tansu) -> controller's consumer group -> PostgreSQL,
//! (d) agent batches -> MQTT -> controller -> SQLite,
//! (e) as (a) and (b), into a TimescaleDB hypertable (COPY into a twin
//!     hypertable, then the full path into the controller's),
//! (t) (b) twice in one run, with tracing off and then on (every batch's
//!     spans exported to an OTLP receiver in this process; docs/tracing.md):
//!     `tracing_on_vs_off_ratio=`; only when asked (`--only t`),
//! and prints rows/s of each, the controller's peak RSS on each path (it runs
//! as a child process of the bench), `timescaledb_ingest_vs_copy_ratio=` and
//! as its last line `ingest_vs_copy_ratio=<(b)/(a)>`.
//!
//! The controller runs on its production defaults (enrollment required, TLS,
//! API tokens); the bench enrolls its nodes through the real `Enroll` first.
//!
//! `cargo run --release -p fleet-tests --bin ingest-bench [-- --database-url URL -n 1000000 --nodes 20 --batch 500
//!  --kafka HOST:PORT --mqtt-url mqtt://HOST:PORT --only a,b,c,d,e]`
//! The default URL is the PostgreSQL that scripts/test starts; each path works
//! in a database of its own (`fleet_bench_<pid>_<path>`), dropped at the end.

mod child;
mod nodes;
mod publish;

use std::path::Path;
use std::time::Instant;

use fleet_proto::v1::{Sample, TelemetryBatch};
use sqlx::Connection;

use child::{ChildController, controller_child};
use publish::Sealed;

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

/// What to run, from the command line.
struct Bench {
    n: usize,
    nodes: usize,
    only: String,
    kafka: Option<String>,
    mqtt: Option<String>,
    batches: Vec<Vec<TelemetryBatch>>,
}

impl Bench {
    /// Enrolls the nodes with `c` and seals their batches for it.
    async fn sealed(&self, c: &ChildController) -> anyhow::Result<Vec<(nodes::Login, Sealed)>> {
        let api = nodes::Api::of(&c.grpc_url, &c.data)?;
        let enrolled = nodes::enroll(&api, self.nodes, &c.dir.path().join("nodes")).await?;
        Ok(enrolled.iter().zip(&self.batches).map(|(node, b)| (node.login.clone(), node.seal(b))).collect())
    }

    /// (b) and (d): over MQTT into the controller at `url` ("" = SQLite).
    async fn over_mqtt(&self, c: &ChildController, what: &str) -> anyhow::Result<f64> {
        let sealed = self.sealed(c).await?;
        let n = self.n;
        let (rate, rss) = c.measure(n as u64, || publish::mqtt(c.mqtt_url.clone(), sealed)).await?;
        println!(
            "{what}: {n} rows, {rate:.0} rows/s; controller peak RSS {rss} kB ({} enrolled nodes, every batch \
             signed, broker logins checked)",
            self.nodes
        );
        Ok(rate)
    }

    /// (t): the full path to PostgreSQL with tracing off, then on, each into
    /// a database of its own; prints both rates, the spans the receiver got
    /// and `tracing_on_vs_off_ratio=`.
    async fn tracing_cost(&self, new_db: &mut impl AsyncFnMut(&str) -> anyhow::Result<String>) -> anyhow::Result<()> {
        let receiver = fleet_tests::otlp::Receiver::start().await?;
        let mut rates = Vec::new();
        for (tag, otel) in [("trace_off", None), ("trace_on", Some(receiver.endpoint()))] {
            let url = new_db(tag).await?;
            let c = ChildController::start(&url, None, self.mqtt.as_deref(), "postgres", otel.as_deref()).await?;
            let what = format!("(t) agent batches -> MQTT -> controller -> PostgreSQL, tracing {}", &tag[6..]);
            rates.push(self.over_mqtt(&c, &what).await?);
            c.stop()?;
        }
        println!("spans received with tracing on: {}", receiver.spans().len());
        println!("tracing_on_vs_off_ratio={:.3}", rates[1] / rates[0]);
        Ok(())
    }

    /// (c): through Kafka (a given cluster, else librdkafka's mock) into the controller.
    async fn over_kafka(&self, url: &str) -> anyhow::Result<()> {
        let mock;
        let brokers = match &self.kafka {
            Some(b) => {
                publish::create_topics(b).await?;
                b.clone()
            }
            None => {
                mock = rdkafka::mocking::MockCluster::new(1)?;
                mock.create_topic(fleet_proto::topics::KAFKA_TELEMETRY, 8, 1)?;
                mock.create_topic(fleet_proto::topics::KAFKA_STATUS, 1, 1)?;
                mock.bootstrap_servers()
            }
        };
        let c = ChildController::start(url, Some(&brokers), self.mqtt.as_deref(), "postgres", None).await?;
        let sealed: Vec<Sealed> = self.sealed(&c).await?.into_iter().map(|(_, s)| s).collect();
        let n = self.n;
        let (rate, rss) = c.measure(n as u64, || publish::kafka(brokers.clone(), sealed)).await?;
        let via = if self.kafka.is_some() { brokers.as_str() } else { "librdkafka mock cluster" };
        println!(
            "(c) agent batches -> Kafka ({via}) -> controller -> PostgreSQL: {n} rows, {rate:.0} rows/s; \
             controller peak RSS {rss} kB ({} enrolled nodes, every batch signed)",
            self.nodes
        );
        c.stop()
    }
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
    let data = samples(n, nodes);
    let bench = Bench {
        n,
        nodes,
        only: arg(&args, "--only").unwrap_or_else(|| "a,b,c,d,e".into()),
        kafka: arg(&args, "--kafka"),
        // An external broker (e.g. the Mosquitto scripts/test starts on 18830)
        // instead of the embedded one: the controller's RSS is then its own,
        // but that Mosquitto checks no logins.
        mqtt: arg(&args, "--mqtt-url"),
        batches: batches(&data, nodes, per_batch),
    };
    let mut conn = sqlx::PgConnection::connect(&admin).await.map_err(|e| {
        anyhow::anyhow!("cannot reach {admin}: {e} (start it with scripts/test, or pass --database-url)")
    })?;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b).to_owned();
    let mut dbs = Vec::new();
    let result = async {
        let mut new_db = async |tag: &str| -> anyhow::Result<String> {
            let db = format!("fleet_bench_{}_{tag}", std::process::id());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}"))).execute(&mut conn).await?;
            dbs.push(db.clone());
            Ok(format!("{base}/{db}"))
        };
        let (mut copy_rate, mut path_rate) = (None, None);
        let only = bench.only.clone();
        if only.contains('a') || only.contains('b') {
            let url = new_db("mqtt").await?;
            let c = ChildController::start(&url, None, bench.mqtt.as_deref(), "postgres", None).await?;
            if only.contains('a') {
                copy_rate = Some(copy(&url, &data, nodes, false).await?);
            }
            if only.contains('b') {
                path_rate = Some(bench.over_mqtt(&c, "(b) agent batches -> MQTT -> controller -> PostgreSQL").await?);
            }
            c.stop()?;
        }
        if only.contains('c') {
            bench.over_kafka(&new_db("kafka").await?).await?;
        }
        if only.contains('d') {
            let c = ChildController::start("", None, bench.mqtt.as_deref(), "postgres", None).await?;
            bench.over_mqtt(&c, "(d) agent batches -> MQTT -> controller -> SQLite").await?;
            c.stop()?;
        }
        if only.contains('e') {
            let url = new_db("tsdb").await?;
            let c = ChildController::start(&url, None, bench.mqtt.as_deref(), "timescaledb", None).await?;
            let copied = copy(&url, &data, nodes, true).await?;
            let path = bench.over_mqtt(&c, "(e) agent batches -> MQTT -> controller -> TimescaleDB").await?;
            println!("timescaledb_ingest_vs_copy_ratio={:.3}", path / copied);
            c.stop()?;
        }
        if only.contains('t') {
            bench.tracing_cost(&mut new_db).await?;
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

/// (a): raw binary COPY into a twin of the raw table, one connection (a
/// hypertable with the same chunks on TimescaleDB).
async fn copy(url: &str, data: &[Sample], nodes: usize, hypertable: bool) -> anyhow::Result<f64> {
    let mut pg = sqlx::PgConnection::connect(url).await?;
    sqlx::query("CREATE TABLE copy_target (LIKE telemetry INCLUDING ALL)").execute(&mut pg).await?;
    if hypertable {
        sqlx::query("SELECT create_hypertable('copy_target', 'ts', chunk_time_interval => INTERVAL '1 day')")
            .execute(&mut pg)
            .await?;
    }
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
    let into = if hypertable { "(e) COPY into a TimescaleDB hypertable" } else { "(a) COPY" };
    println!("{into} (FORMAT binary), one connection: {copied} rows in {s:.2} s = {rate:.0} rows/s");
    Ok(rate)
}
