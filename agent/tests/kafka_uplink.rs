//! The Kafka uplink against librdkafka's mock cluster (a real Kafka-protocol
//! broker in-process): batches leave the spool only on their delivery
//! reports, an outage of every broker loses nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_agent::board::HardwareBackend;
use fleet_agent::config::AgentConfig;
use fleet_agent::uplink::UplinkKind;
use fleet_proto::v1::TelemetryBatch;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 3;

fn config(node: &str, brokers: &str, dir: &std::path::Path) -> AgentConfig {
    let mut cfg = AgentConfig { node_id: node.into(), data_dir: dir.join(node), ..Default::default() };
    cfg.uplink = UplinkKind::Kafka;
    cfg.kafka.brokers = brokers.into();
    cfg.kafka.message_timeout = Duration::from_secs(3);
    cfg.telemetry.interval = Duration::from_millis(100);
    cfg.telemetry.flush_interval = Duration::from_millis(100);
    cfg.telemetry.ack_timeout = Duration::from_secs(4);
    cfg.telemetry.shutdown_grace = Duration::from_secs(20);
    cfg.hardware.backend = HardwareBackend::Sim;
    cfg
}

/// Three mock brokers with the fleet's topics.
fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(3).expect("mock cluster");
    c.create_topic("fleet.telemetry", PARTITIONS, 3).expect("topic");
    c.create_topic("fleet.status", 1, 3).expect("topic");
    c
}

/// Every batch on the topic: (key, batch).
fn read_topic(brokers: &str, topic: &str) -> Vec<(String, TelemetryBatch)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut quiet_since = Instant::now();
    let start = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) && start.elapsed() < Duration::from_secs(60) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
                let b = TelemetryBatch::decode(m.payload().unwrap_or_default()).expect("a TelemetryBatch");
                out.push((key, b));
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    out
}

fn seqs(batches: &[(String, TelemetryBatch)], node: &str, boot: &str) -> (BTreeSet<u64>, usize) {
    let mut set = BTreeSet::new();
    let mut total = 0;
    for (key, b) in batches.iter().filter(|(_, b)| b.node_id == node && b.boot_id == boot) {
        assert_eq!(key, node, "key = node id");
        for s in b.first_seq..b.first_seq + b.samples.len() as u64 {
            set.insert(s);
            total += 1;
        }
    }
    let dups = total - set.len();
    (set, dups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_leave_the_spool_on_delivery_reports() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let agent = tokio::spawn(fleet_agent::run(config("k-1", &brokers, dir.path()), stop.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!(report.batches_kept, 0, "{report:?}");
    assert_eq!(report.counters.samples_acked, report.counters.samples_taken, "{report:?}");

    let brokers2 = brokers.clone();
    let all = tokio::task::spawn_blocking(move || read_topic(&brokers2, "fleet.telemetry")).await.unwrap();
    let (set, dups) = seqs(&all, "k-1", &report.boot_id);
    assert_eq!(set, (0..report.counters.samples_taken).collect(), "every seq on the topic");
    assert_eq!(dups, 0, "the idempotent producer wrote no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_down_then_up_loses_nothing() {
    let cluster = cluster();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let agent = tokio::spawn(fleet_agent::run(config("k-2", &brokers, dir.path()), stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in 1..=3 {
        cluster.broker_down(id).expect("down");
    }
    // Longer than message_timeout: deliveries fail and the spool must resend them.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for id in 1..=3 {
        cluster.broker_up(id).expect("up");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let report = agent.await.unwrap().unwrap();
    assert_eq!(report.batches_kept, 0, "{report:?}");
    assert_eq!(report.counters.samples_acked, report.counters.samples_taken, "{report:?}");
    let all = tokio::task::spawn_blocking(move || read_topic(&brokers, "fleet.telemetry")).await.unwrap();
    let (set, dups) = seqs(&all, "k-2", &report.boot_id);
    assert_eq!(set, (0..report.counters.samples_taken).collect(), "every seq reached the topic");
    println!("outage: {} samples, {dups} duplicate samples from resends (the database dedupes them)", set.len());
}
