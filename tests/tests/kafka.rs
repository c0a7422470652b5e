//! Kafka in and out of the controller, against librdkafka's mock cluster:
//! agents on the Kafka uplink are ingested by the consumer group with offsets
//! committed after the rows, and MQTT telemetry is bridged to `fleet.telemetry`.

use std::time::{Duration, Instant};

use fleet_agent::uplink::UplinkKind;
use fleet_controller::Controller;
use fleet_proto::v1::{NodeState, TelemetryBatch};
use fleet_tests::*;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 3;

fn cluster() -> anyhow::Result<MockCluster<'static, rdkafka::producer::DefaultProducerContext>> {
    let c = MockCluster::new(3)?;
    for t in ["fleet.telemetry", "fleet.status", "fleet.events"] {
        c.create_topic(t, PARTITIONS, 3)?;
    }
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_agents_are_ingested_exactly_once_with_offsets_after_commit() -> anyhow::Result<()> {
    let mock = cluster()?;
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.kafka.brokers = brokers.clone();
    ccfg.kafka.bridge = false;
    let stop = CancellationToken::new();
    let c = Controller::start(ccfg, stop.clone()).await?;

    let mut agents = Vec::new();
    for i in 0..2 {
        let mut cfg = agent_config(&format!("kafka-{i}"), "mqtt://127.0.0.1:9", dir.path());
        cfg.uplink = UplinkKind::Kafka;
        cfg.kafka.brokers = brokers.clone();
        cfg.telemetry.shutdown_grace = Duration::from_secs(15);
        agents.push(AgentHandle::spawn(cfg));
    }
    let store = c.store.clone();
    wait_for(Duration::from_secs(30), "rows from both Kafka agents", || {
        let store = store.clone();
        async move {
            let a = store.count_samples(Some("kafka-0")).await.ok()?;
            let b = store.count_samples(Some("kafka-1")).await.ok()?;
            (a > 50 && b > 50).then_some(())
        }
    })
    .await?;
    let api = grpc(&c).await?;
    wait_for(Duration::from_secs(15), "their status from fleet.status in the live view", || {
        let mut api = api.clone();
        async move {
            let nodes = list_nodes(&mut api).await.ok()?;
            (state_of(&nodes, "kafka-0") == Some(NodeState::Online) && state_of(&nodes, "kafka-1").is_some())
                .then_some(())
        }
    })
    .await?;
    let mut reports = Vec::new();
    for a in agents {
        reports.push(a.stop().await?);
    }
    for r in &reports {
        assert_eq!(r.batches_kept, 0, "{r:?}");
        let want = r.counters.samples_taken;
        let store = c.store.clone();
        let node = r.node_id.clone();
        wait_for(Duration::from_secs(20), &format!("all {want} samples of {node}"), || {
            let (store, node) = (store.clone(), node.clone());
            async move { (store.count_samples(Some(&node)).await.ok()? == want).then_some(()) }
        })
        .await?;
    }
    stop.cancel();
    c.wait().await;

    // The group's committed offsets cover everything: a new member of the group reads nothing old.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "fleet-controller").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("fleet.telemetry", p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let (_, high) = (0..PARTITIONS).try_fold((0i64, 0i64), |acc, p| {
        consumer.fetch_watermarks("fleet.telemetry", p, Duration::from_secs(5)).map(|(l, h)| (acc.0 + l, acc.1 + h))
    })?;
    let done: i64 = committed.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum();
    assert_eq!(done, high, "every message's offset committed after its rows");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_telemetry_and_status_are_bridged_to_kafka() -> anyhow::Result<()> {
    let mock = cluster()?;
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.kafka.brokers = brokers.clone();
    let stop = CancellationToken::new();
    let c = Controller::start(ccfg, stop.clone()).await?;
    let agent = AgentHandle::spawn(agent_config("mqtt-0", &c.mqtt_url, dir.path()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = agent.stop().await?;
    assert_eq!(c.store.count_samples(Some("mqtt-0")).await?, report.counters.samples_taken, "written once, by MQTT");

    let b2 = brokers.clone();
    let (telemetry, status) = tokio::task::spawn_blocking(move || read_all(&b2)).await??;
    let mut seqs: Vec<u64> = telemetry
        .iter()
        .filter(|b| b.node_id == "mqtt-0" && b.boot_id == report.boot_id)
        .flat_map(|b| b.first_seq..b.first_seq + b.samples.len() as u64)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs, (0..report.counters.samples_taken).collect::<Vec<_>>(), "every batch bridged");
    assert!(status > 0, "status bridged to fleet.status");
    // The consumer skipped the bridged copies: nothing written twice.
    assert_eq!(c.metrics.rows_duplicate.get(), 0);
    stop.cancel();
    c.wait().await;
    Ok(())
}

/// Telemetry batches (all bridged) and the count of status messages.
fn read_all(brokers: &str) -> anyhow::Result<(Vec<TelemetryBatch>, usize)> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "test-reader").create()?;
    let mut tpl = TopicPartitionList::new();
    for t in ["fleet.telemetry", "fleet.status"] {
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(t, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let (mut batches, mut status) = (Vec::new(), 0);
    let mut quiet = Instant::now();
    let start = Instant::now();
    while quiet.elapsed() < Duration::from_secs(3) && start.elapsed() < Duration::from_secs(60) {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m?;
            quiet = Instant::now();
            let bridged = m.headers().is_some_and(|h| h.iter().any(|x| x.key == "fleet-bridged"));
            anyhow::ensure!(bridged, "bridged messages carry the fleet-bridged header");
            if m.topic() == "fleet.telemetry" {
                batches.push(TelemetryBatch::decode(m.payload().unwrap_or_default())?);
            } else {
                status += 1;
            }
        }
    }
    Ok((batches, status))
}
