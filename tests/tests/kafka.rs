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

    let agents = kafka_agents("kafka", &brokers, dir.path());
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

/// A sample's key in the store: node, boot, seq.
type SampleKey = (String, String, u64);

/// Per partition of `fleet.telemetry`: the samples of the message at each
/// offset, read from the beginning by a reader of its own.
fn messages_by_offset(brokers: &str) -> anyhow::Result<Vec<Vec<Vec<SampleKey>>>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "test-offsets").create()?;
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let (_, high) = consumer.fetch_watermarks("fleet.telemetry", p, Duration::from_secs(5))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("fleet.telemetry", p, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        // Indexed by the message's own offset: a message of the partition read
        // before may still arrive after the new assignment, and is ignored.
        let mut msgs: Vec<Option<Vec<SampleKey>>> = vec![None; usize::try_from(high).unwrap_or(0)];
        let start = Instant::now();
        while msgs.iter().any(Option::is_none) && start.elapsed() < Duration::from_secs(30) {
            if let Some(m) = consumer.poll(Duration::from_millis(200)) {
                let m = m?;
                let Some(slot) =
                    usize::try_from(m.offset()).ok().filter(|_| m.partition() == p).and_then(|o| msgs.get_mut(o))
                else {
                    continue;
                };
                let raw = m.payload().unwrap_or_default();
                let b = TelemetryBatch::decode(raw).unwrap_or_default();
                *slot = Some(
                    (b.first_seq..b.first_seq + b.samples.len() as u64)
                        .map(|s| (b.node_id.clone(), b.boot_id.clone(), s))
                        .collect(),
                );
            }
        }
        let msgs: Vec<Vec<SampleKey>> = msgs.into_iter().map(Option::unwrap_or_default).collect();
        out.push(msgs);
    }
    Ok(out)
}

/// The group's committed offset per partition (0 when none yet).
fn committed(brokers: &str) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "fleet-controller").create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition("fleet.telemetry", p);
    }
    let c = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(c.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).collect())
}

/// Every sample of every message below the committed offsets is in the store.
async fn offsets_behind_rows(brokers: &str, pool: &sqlx::PgPool) -> anyhow::Result<usize> {
    let b = brokers.to_owned();
    let (offsets, msgs) =
        tokio::task::spawn_blocking(move || Ok::<_, anyhow::Error>((committed(&b)?, messages_by_offset(&b)?)))
            .await??;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT node_id, boot_id, seq FROM telemetry").fetch_all(pool).await?;
    let stored: std::collections::HashSet<SampleKey> =
        rows.into_iter().map(|(n, b, s)| (n, b, u64::try_from(s).unwrap_or(0))).collect();
    let mut covered = 0;
    for (p, c) in offsets.iter().enumerate() {
        let below = usize::try_from(*c).unwrap_or(0);
        anyhow::ensure!(
            below <= msgs[p].len(),
            "partition {p}: committed offset {c} past the {} messages read",
            msgs[p].len()
        );
        for (offset, samples) in msgs[p][..below].iter().enumerate() {
            let missing = samples.iter().find(|s| !stored.contains(*s));
            anyhow::ensure!(
                missing.is_none(),
                "partition {p}: offset {offset} is committed, but {missing:?} is not in the store"
            );
            covered += 1;
        }
    }
    Ok(covered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_database_holds_the_offsets_back_and_nothing_is_skipped() -> anyhow::Result<()> {
    let mock = cluster()?;
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let db = TestDb::create().await?;
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let mut ccfg = controller_config(dir.path(), "", &db.url);
    ccfg.kafka.brokers = brokers.clone();
    ccfg.kafka.bridge = false;
    ccfg.kafka.commit_every = 16;
    let stop = CancellationToken::new();
    let c = Controller::start(ccfg, stop.clone()).await?;
    let agents = kafka_agents("kfail", &brokers, dir.path());
    let store = c.store.clone();
    wait_for(Duration::from_secs(30), "rows before the failure", || {
        let store = store.clone();
        async move { (store.count_samples(None).await.ok()? > 100).then_some(()) }
    })
    .await?;
    // Every insert into telemetry fails from now on.
    sqlx::raw_sql(
        "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected'; END $$; \
         CREATE TRIGGER fail_insert BEFORE INSERT ON telemetry FOR EACH STATEMENT EXECUTE FUNCTION fail_insert();",
    )
    .execute(&pool)
    .await?;
    let errors_before = c.metrics.write_errors.get();
    // A round written just before the trigger may still commit its offsets.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stuck = committed(&brokers)?;
    let total = |b: String| {
        tokio::task::spawn_blocking(move || messages_by_offset(&b).map(|m| m.iter().map(Vec::len).sum::<usize>()))
    };
    let messages_then = total(brokers.clone()).await??;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        offsets_behind_rows(&brokers, &pool).await?;
    }
    assert!(c.metrics.write_errors.get() > errors_before, "the writes did fail");
    assert_eq!(committed(&brokers)?, stuck, "no offset moved while nothing could be written");
    let arrived = total(brokers.clone()).await??;
    assert!(arrived > messages_then, "messages kept arriving during the failure ({messages_then} -> {arrived})");
    sqlx::raw_sql("DROP TRIGGER fail_insert ON telemetry").execute(&pool).await?;
    let mut reports = Vec::new();
    for a in agents {
        reports.push(a.stop().await?);
    }
    for r in &reports {
        let (want, store, node) = (r.counters.samples_taken, c.store.clone(), r.node_id.clone());
        wait_for(Duration::from_secs(30), &format!("all {want} samples of {node} after recovery"), || {
            let (store, node) = (store.clone(), node.clone());
            async move { (store.count_samples(Some(&node)).await.ok()? == want).then_some(()) }
        })
        .await?;
    }
    wait_for(Duration::from_secs(20), "offsets committed up to the end", || {
        let b = brokers.clone();
        async move {
            let done: i64 = committed(&b).ok()?.iter().sum();
            let high: i64 = (0..PARTITIONS)
                .map(|p| {
                    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &b).create().ok()?;
                    c.fetch_watermarks("fleet.telemetry", p, Duration::from_secs(5)).ok().map(|w| w.1)
                })
                .sum::<Option<i64>>()?;
            (done == high).then_some(())
        }
    })
    .await?;
    let covered = offsets_behind_rows(&brokers, &pool).await?;
    println!("offsets held at {stuck:?} while inserts failed; after recovery all {covered} messages' rows stored");
    stop.cancel();
    c.wait().await;
    pool.close().await;
    db.cleanup().await
}

/// Two agents named `{prefix}-0` and `{prefix}-1` on the Kafka uplink to `brokers`.
fn kafka_agents(prefix: &str, brokers: &str, dir: &std::path::Path) -> Vec<AgentHandle> {
    (0..2)
        .map(|i| {
            let mut cfg = agent_config(&format!("{prefix}-{i}"), "mqtt://127.0.0.1:9", dir);
            cfg.uplink = UplinkKind::Kafka;
            cfg.kafka.brokers = brokers.to_owned();
            cfg.telemetry.shutdown_grace = Duration::from_secs(15);
            AgentHandle::spawn(cfg)
        })
        .collect()
}
