//! Only what a node signed is believed (docs/security.md, "Signed envelope"):
//! enrolled agents sign every message; forged, unsigned, replayed and
//! unknown-node messages are dropped and counted, through the embedded broker
//! (which cannot restrict topics) and through Kafka (where any producer can
//! write any key); a revoked node's rows stop while the others go on.

use std::time::Duration;

use fleet_agent::uplink::UplinkKind;
use fleet_controller::Controller;
use fleet_proto::signing::sign;
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{
    JobConstraints, JobStatus, MessageKind, Placement, QueryTelemetryRequest, RevokeNodeRequest, Sample,
    SubmitJobRequest, TelemetryBatch,
};
use fleet_tests::*;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

fn forged_batch(node: &str) -> TelemetryBatch {
    TelemetryBatch {
        node_id: node.into(),
        boot_id: "forged-boot".into(),
        first_seq: 0,
        samples: vec![Sample {
            metric: "forged.metric".into(),
            value: 666.0,
            time_unix_ms: fleet_proto::now_unix_ms(),
        }],
        low_water_seq: 0,
    }
}

async fn dropped(c: &Controller, reason: &str) -> anyhow::Result<f64> {
    let text = http_get(c.http_addr, "/metrics").await?;
    Ok(metric_value(&text, &format!("fleet_messages_dropped_total{{reason=\"{reason}\"}}")))
}

async fn wait_dropped(c: &Controller, reason: &str, at_least: f64) -> anyhow::Result<()> {
    wait_for(T, &format!("fleet_messages_dropped_total{{reason={reason}}} >= {at_least}"), || async move {
        (dropped(c, reason).await.ok()? >= at_least).then_some(())
    })
    .await
}

async fn forged_points(c: &Controller, node: &str) -> anyhow::Result<usize> {
    let mut api = grpc(c).await?;
    let r = api
        .query_telemetry(QueryTelemetryRequest {
            node_id: node.into(),
            metric: "forged.metric".into(),
            start_unix_ms: 0,
            end_unix_ms: 0,
            bucket_s: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    Ok(r.points.len())
}

/// Whether the broker accepts this login.
async fn mqtt_connects(opts: MqttOptions) -> bool {
    let (_client, mut ev) = AsyncClient::new(opts, 8);
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ev.poll()).await,
        Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) if a.code == rumqttc::ConnectReturnCode::Success
    )
}

fn signing_key(dir: &std::path::Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    Ok(fleet_agent::identity::Identity::load(dir)?.signing_key().clone())
}

/// Revoking A: within 5 s its rows stop, B's go on, no job goes to A any more.
async fn revoke_stops_rows_and_jobs(c: &Controller) -> anyhow::Result<()> {
    let mut admin = grpc(c).await?;
    let pinned = || SubmitJobRequest {
        model: "severity".into(),
        text: "disk full".into(),
        constraints: Some(JobConstraints {
            node_id: "sig-a".into(),
            placement: Placement::EdgeOnly as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    wait_for(T, "a job pinned to A runs on A", || {
        let mut admin = admin.clone();
        async move {
            let v = admin.submit_job(pinned()).await.ok()?.into_inner();
            (v.status == JobStatus::Succeeded as i32 && v.node_id == "sig-a").then_some(())
        }
    })
    .await?;
    admin.revoke_node(RevokeNodeRequest { node_id: "sig-a".into() }).await?;
    let e = admin.submit_job(pinned()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (a0, b0) = (c.store.count_samples(Some("sig-a")).await?, c.store.count_samples(Some("sig-b")).await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a1, b1) = (c.store.count_samples(Some("sig-a")).await?, c.store.count_samples(Some("sig-b")).await?);
    assert_eq!(a0, a1, "rows of the revoked node kept arriving");
    assert!(b1 > b0, "the other node's rows stopped: {b0} -> {b1}");
    assert!(dropped(c, "revoked").await? >= 1.0);

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_replayed_and_revoked_are_dropped_on_the_embedded_broker() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.security.require_enrollment = true;
    let c = Controller::start(ccfg, stop.clone()).await?;
    let (a_cfg, b_cfg) =
        (agent_config("sig-a", &c.mqtt_url, dir.path()), agent_config("sig-b", &c.mqtt_url, dir.path()));
    enroll_agent(&c, &a_cfg).await?;
    enroll_agent(&c, &b_cfg).await?;
    let a_key = signing_key(&a_cfg.data_dir)?;
    let a_cfg_dir = a_cfg.data_dir.clone();
    let a = AgentHandle::spawn(a_cfg);
    let b = AgentHandle::spawn(b_cfg);
    for node in ["sig-a", "sig-b"] {
        let store = c.store.clone();
        wait_for(T, &format!("signed rows of {node}"), || {
            let store = store.clone();
            async move { (store.count_samples(Some(node)).await.ok()? > 20).then_some(()) }
        })
        .await?;
    }

    // The embedded broker lets in only enrolled nodes and the controller.
    let (host, port) = fleet_proto::parse_mqtt_url(&c.mqtt_url).map_err(anyhow::Error::msg)?;
    for (user, pass) in [(None, ""), (Some("sig-b"), "fbp_wrong"), (Some("ghost"), "x")] {
        let mut o = MqttOptions::new("stranger", host.clone(), port);
        if let Some(u) = user {
            o.set_credentials(u, pass);
        }
        assert!(!mqtt_connects(o).await, "{user:?} got in");
    }
    // But once in, an enrolled node (here a compromised A, with its own
    // credentials) can publish anywhere and read everything: rumqttd cannot
    // restrict topics. The signatures are the wall.
    let a_login = fleet_agent::enroll::load(&a_cfg_dir)?.expect("A is enrolled");
    let mut opts = MqttOptions::new("intruder", host, port);
    opts.set_credentials(a_login.broker_username, a_login.broker_password);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (intruder, mut ev) = AsyncClient::new(opts, 64);
    intruder.subscribe(node_topic("sig-a", Channel::Telemetry), QoS::AtLeastOnce).await?;
    // A real signed batch of A, as it went by.
    let captured = tokio::time::timeout(T, async {
        loop {
            if let Ok(Event::Incoming(Packet::Publish(p))) = ev.poll().await {
                return p.payload.to_vec();
            }
        }
    })
    .await?;
    let pump = tokio::spawn(async move { while ev.poll().await.is_ok() {} });

    // Replayed as it was: refused (its (boot_no, msg_seq) was seen).
    intruder.publish(node_topic("sig-a", Channel::Telemetry), QoS::AtLeastOnce, false, captured).await?;
    wait_dropped(&c, "replay", 1.0).await?;
    // Forged for B: right topic, signed with A's key: refused.
    let forged = sign(&a_key, "sig-b", MessageKind::Telemetry, 1, 1, forged_batch("sig-b").encode_to_vec());
    intruder.publish(node_topic("sig-b", Channel::Telemetry), QoS::AtLeastOnce, false, forged.encode_to_vec()).await?;
    wait_dropped(&c, "bad_signature", 1.0).await?;
    // B's message unsigned: refused.
    let plain = forged_batch("sig-b").encode_to_vec();
    intruder.publish(node_topic("sig-b", Channel::Telemetry), QoS::AtLeastOnce, false, plain).await?;
    wait_dropped(&c, "unsigned", 1.0).await?;
    // A node nobody enrolled: not heard.
    let ghost = forged_batch("ghost").encode_to_vec();
    intruder.publish(node_topic("ghost", Channel::Telemetry), QoS::AtLeastOnce, false, ghost).await?;
    wait_dropped(&c, "unknown_node", 1.0).await?;
    // A's own envelope on B's topic: refused (the envelope names A).
    let moved = sign(&a_key, "sig-a", MessageKind::Telemetry, 1, 999_999, forged_batch("sig-a").encode_to_vec());
    intruder.publish(node_topic("sig-b", Channel::Telemetry), QoS::AtLeastOnce, false, moved.encode_to_vec()).await?;
    wait_dropped(&c, "node_mismatch", 1.0).await?;
    assert_eq!(forged_points(&c, "sig-b").await?, 0, "a forged row was stored");
    assert_eq!(forged_points(&c, "ghost").await?, 0);

    revoke_stops_rows_and_jobs(&c).await?;

    pump.abort();
    a.crash();
    b.stop().await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_kafka_records_are_dropped_and_signed_ones_ingested() -> anyhow::Result<()> {
    let mock = rdkafka::mocking::MockCluster::new(1)?;
    for t in ["fleet.telemetry", "fleet.status", "fleet.events"] {
        mock.create_topic(t, 1, 1)?;
    }
    let brokers = mock.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.security.require_enrollment = true;
    ccfg.kafka.brokers = brokers.clone();
    ccfg.kafka.bridge = false;
    let stop = CancellationToken::new();
    let c = Controller::start(ccfg, stop.clone()).await?;
    let mut cfg = agent_config("sig-k", "mqtt://127.0.0.1:9", dir.path());
    cfg.uplink = UplinkKind::Kafka;
    cfg.kafka.brokers = brokers.clone();
    enroll_agent(&c, &cfg).await?;
    let key = signing_key(&cfg.data_dir)?;
    let agent = AgentHandle::spawn(cfg);
    let store = c.store.clone();
    wait_for(T, "signed rows of sig-k through Kafka", || {
        let store = store.clone();
        async move { (store.count_samples(Some("sig-k")).await.ok()? > 20).then_some(()) }
    })
    .await?;

    // Kafka cannot tell who wrote a key: a forged record for sig-k (another key) is dropped.
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let forged = sign(&other, "sig-k", MessageKind::Telemetry, 99, 1, forged_batch("sig-k").encode_to_vec());
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create()?;
    let value = forged.encode_to_vec();
    producer
        .send(
            rdkafka::producer::FutureRecord::to("fleet.telemetry").key("sig-k").payload(&value),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    wait_dropped(&c, "bad_signature", 1.0).await?;
    // Its own key, but an old boot's seq replayed after a newer one: dropped.
    let stale =
        sign(&key, "sig-k", MessageKind::Telemetry, 0, 1, forged_batch("sig-k").encode_to_vec()).encode_to_vec();
    producer
        .send(
            rdkafka::producer::FutureRecord::to("fleet.telemetry").key("sig-k").payload(&stale),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| e)?;
    wait_dropped(&c, "replay", 1.0).await?;
    assert_eq!(forged_points(&c, "sig-k").await?, 0, "a forged row was stored");
    agent.stop().await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_message_rate_is_slowed_not_lost() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.security.require_enrollment = true;
    ccfg.security.node_rate_per_s = 3;
    let c = Controller::start(ccfg, stop.clone()).await?;
    // About 11 messages a second (10 batches and a status): over 3/s.
    let mut cfg = agent_config("sig-fast", &c.mqtt_url, dir.path());
    cfg.telemetry.interval = Duration::from_millis(100);
    cfg.telemetry.flush_interval = Duration::from_millis(100);
    cfg.telemetry.shutdown_grace = Duration::from_secs(30);
    enroll_agent(&c, &cfg).await?;
    let agent = AgentHandle::spawn(cfg);
    wait_dropped(&c, "rate_limited", 5.0).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Everything still arrives: refused batches are not acked, so they are sent again.
    let report = agent.stop().await?;
    assert_eq!(report.batches_kept, 0, "{report:?}");
    let store = c.store.clone();
    let taken = report.counters.samples_taken;
    wait_for(T, "every sample of the rate-limited node", || {
        let store = store.clone();
        async move { (store.count_samples(Some("sig-fast")).await.ok()? == taken).then_some(()) }
    })
    .await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}
