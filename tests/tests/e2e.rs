//! End to end: controller + real agents + a real broker + a real database.

use std::time::Duration;

use fleet_controller::{Controller, ControllerConfig};
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{Ack, GetNodeRequest, NodeState, NodeStatus, QueryTelemetryRequest, Sample, TelemetryBatch};
use fleet_tests::*;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(15);

/// Queries one node's temperature raw and in hourly buckets (from the 1 h
/// rollups, which cover the raw points a job interval later).
async fn query_raw_and_bucketed(api: &fleet_net::client::FleetClient, node: &str) -> anyhow::Result<()> {
    let raw = api
        .clone()
        .query_telemetry(QueryTelemetryRequest {
            node_id: node.to_owned(),
            metric: "soc.temp_c".into(),
            start_unix_ms: 0,
            end_unix_ms: 0,
            bucket_s: 0,
            limit: 0,
        })
        .await?
        .into_inner();
    assert!(raw.points.len() >= 3, "raw temperature points: {}", raw.points.len());
    assert!(raw.points.iter().all(|p| p.count == 1 && p.avg > -50.0 && p.avg < 150.0));
    // Hourly buckets come from the 1 h rollups, a job interval behind the raw rows.
    let want = raw.points.len() as u64;
    let bucketed = wait_for(T, "the hourly rollup to cover the raw points", || {
        let mut api = api.clone();
        let node_id = node.to_owned();
        async move {
            let r = api
                .query_telemetry(QueryTelemetryRequest {
                    node_id,
                    metric: "soc.temp_c".into(),
                    start_unix_ms: 0,
                    end_unix_ms: 0,
                    bucket_s: 3600,
                    limit: 0,
                })
                .await
                .ok()?
                .into_inner();
            (r.points.iter().map(|p| p.count).sum::<u64>() >= want).then_some(r)
        }
    })
    .await?;
    assert!(bucketed.points.len() <= 2, "{bucketed:?}");
    Ok(())
}

/// Controller + 3 agents: all online, rows for each, a clean stop loses
/// nothing, a crash turns offline through the last will.
async fn three_agent_fleet(cfg: ControllerConfig, prefix: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    let mut agents: Vec<_> =
        (0..3).map(|i| AgentHandle::spawn(agent_config(&format!("{prefix}{i}"), &c.mqtt_url, dir.path()))).collect();
    let mut api = grpc(&c).await?;

    wait_for(T, "ListNodes to show 3 online nodes", || {
        let mut api = api.clone();
        async move {
            let nodes = list_nodes(&mut api).await.ok()?;
            let online = |n: &&fleet_proto::v1::Node| {
                n.node_id.starts_with(prefix) && n.status.as_ref().is_some_and(|s| s.state == NodeState::Online as i32)
            };
            (nodes.iter().filter(online).count() == 3).then_some(())
        }
    })
    .await?;
    for i in 0..3 {
        let node = format!("{prefix}{i}");
        let store = c.store.clone();
        wait_for(T, &format!("telemetry rows of {node} in the store"), || {
            let (store, node) = (store.clone(), node.clone());
            async move { (store.count_samples(Some(&node)).await.ok()? > 60).then_some(()) }
        })
        .await?;
    }

    query_raw_and_bucketed(&api, &format!("{prefix}2")).await?;

    // A clean stop: every sample taken is acknowledged and stored exactly once.
    let a0 = agents.remove(0);
    let report = a0.stop().await?;
    assert_eq!(report.batches_kept, 0, "{report:?}");
    assert_eq!(report.counters.samples_acked, report.counters.samples_taken, "{report:?}");
    assert_eq!(c.store.count_samples(Some(&format!("{prefix}0"))).await?, report.counters.samples_taken);
    wait_for(T, "node 0 to be offline after its clean stop", || {
        let mut api = api.clone();
        let node = format!("{prefix}0");
        async move { (state_of(&list_nodes(&mut api).await.ok()?, &node)? == NodeState::Offline).then_some(()) }
    })
    .await?;

    // A crash: the broker publishes the last will.
    agents.remove(0).crash();
    wait_for(T, "node 1 to turn offline through its last will", || {
        let mut api = api.clone();
        let node = format!("{prefix}1");
        async move { (state_of(&list_nodes(&mut api).await.ok()?, &node)? == NodeState::Offline).then_some(()) }
    })
    .await?;
    assert_eq!(state_of(&list_nodes(&mut api).await?, &format!("{prefix}2")), Some(NodeState::Online));

    let node = api.get_node(GetNodeRequest { node_id: format!("{prefix}2") }).await?.into_inner();
    assert!(node.samples_stored > 0);
    for a in agents {
        a.stop().await?;
    }
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_and_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    three_agent_fleet(controller_config(dir.path(), "", ""), "node-").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_and_postgres() -> anyhow::Result<()> {
    let broker = Mosquitto::start().await?;
    let db = TestDb::create().await?;
    let dir = tempfile::tempdir()?;
    three_agent_fleet(controller_config(dir.path(), &broker.url, &db.url), "node-").await?;
    db.cleanup().await
}

/// The same on the Mosquitto that scripts/test started (FLEET_TEST_MQTT_URL), which other
/// runs share: node ids are unique to this run and only they are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_mosquitto_from_scripts_test_and_postgres() -> anyhow::Result<()> {
    let own;
    let url = match std::env::var("FLEET_TEST_MQTT_URL") {
        Ok(url) => url,
        Err(_) => {
            eprintln!("FLEET_TEST_MQTT_URL is not set (scripts/test sets it): using a Mosquitto of this test's own");
            own = Mosquitto::start().await?;
            own.url.clone()
        }
    };
    let db = TestDb::create().await?;
    let dir = tempfile::tempdir()?;
    let prefix = format!("shared-{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    three_agent_fleet(controller_config(dir.path(), &url, &db.url), &prefix).await?;
    db.cleanup().await
}

async fn raw_client(
    url: &str,
    id: &str,
) -> anyhow::Result<(AsyncClient, tokio::sync::mpsc::Receiver<(String, Vec<u8>)>)> {
    let (host, port) = fleet_proto::parse_mqtt_url(url).map_err(anyhow::Error::msg)?;
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_max_packet_size(64 << 20, 64 << 20);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.try_send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok((client, rx))
}

fn batch(node: &str, boot: &str, first_seq: u64, n: usize) -> TelemetryBatch {
    TelemetryBatch {
        node_id: node.into(),
        boot_id: boot.into(),
        first_seq,
        samples: (0..n)
            .map(|i| Sample {
                metric: "cpu.usage_pct".into(),
                value: i as f64,
                time_unix_ms: fleet_proto::now_unix_ms() - 60_000 + i as i64,
            })
            .collect(),
        low_water_seq: 0,
    }
}

async fn redelivery_is_deduplicated(cfg: ControllerConfig) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    let (client, mut rx) = raw_client(&c.mqtt_url, "redeliver").await?;
    client.subscribe(node_topic("dup-node", Channel::Ack), QoS::AtLeastOnce).await?;
    let b = batch("dup-node", "boot-1", 0, 50).encode_to_vec();
    let topic = node_topic("dup-node", Channel::Telemetry);
    client.publish(&topic, QoS::AtLeastOnce, false, b.clone()).await?;
    let ack = wait_for(T, "the controller's ack of the batch", || {
        let got = rx.try_recv().ok();
        async move { got.and_then(|(_, p)| ack_of(&p)) }
    })
    .await?;
    assert_eq!(ack, Ack { boot_id: "boot-1".into(), up_to_seq: 49, committed: vec![] });
    client.publish(&topic, QoS::AtLeastOnce, false, b).await?;
    let m = c.metrics.clone();
    let processed = wait_for(T, "the second copy to be processed", || {
        let m = m.clone();
        async move { (m.rows_duplicate.get() == 50).then_some(()) }
    })
    .await;
    if let Err(e) = processed {
        anyhow::bail!("{e}; metrics:\n{}", c.metrics.encode());
    }
    assert_eq!(c.store.count_samples(Some("dup-node")).await?, 50);
    assert_eq!(c.metrics.rows_written.get(), 50);
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_batch_yields_one_set_of_rows_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    redelivery_is_deduplicated(controller_config(dir.path(), "", "")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_batch_yields_one_set_of_rows_postgres() -> anyhow::Result<()> {
    let broker = Mosquitto::start().await?;
    let db = TestDb::create().await?;
    let dir = tempfile::tempdir()?;
    redelivery_is_deduplicated(controller_config(dir.path(), &broker.url, &db.url)).await?;
    db.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_counted_and_the_controller_keeps_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = controller_config(dir.path(), "", "");
    cfg.mqtt.max_payload_bytes = 4096;
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    let (client, _rx) = raw_client(&c.mqtt_url, "vandal").await?;
    let topic = node_topic("victim", Channel::Telemetry);
    let status = NodeStatus { node_id: "victim".into(), boot_id: "b".into(), state: 1, ..Default::default() };
    let sends: Vec<(String, Vec<u8>)> = vec![
        (topic.clone(), vec![0xff; 64]),                                   // garbage
        (topic.clone(), vec![0u8; 8192]),                                  // oversized
        (topic.clone(), status.encode_to_vec()),                           // wrong message type
        (topic.clone(), batch("someone-else", "b", 0, 3).encode_to_vec()), // node id mismatch
        (node_topic("victim", Channel::Status), vec![0xfe; 10]),           // garbage status
    ];
    for (t, p) in sends {
        client.publish(t, QoS::AtLeastOnce, false, p).await?;
    }
    let m = c.metrics.clone();
    wait_for(T, "5 dropped messages in the metrics", || {
        let m = m.clone();
        async move { (metric_value(&m.encode(), "fleet_messages_dropped_total") >= 5.0).then_some(()) }
    })
    .await?;
    let text = http_get(c.http_addr, "/metrics").await?;
    for (reason, n) in [("decode", 2.0), ("oversized", 1.0), ("invalid", 1.0), ("node_mismatch", 1.0)] {
        let v = metric_value(&text, &format!("fleet_messages_dropped_total{{reason=\"{reason}\"}}"));
        assert_eq!(v, n, "reason {reason} in:\n{text}");
    }
    assert!(http_get(c.http_addr, "/healthz").await?.contains("200 OK"));
    // Still serving, and nothing was stored.
    let mut api = grpc(&c).await?;
    list_nodes(&mut api).await?;
    assert_eq!(c.store.count_samples(None).await?, 0);
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_arguments_health_and_not_found() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let c = Controller::start(controller_config(dir.path(), "", ""), stop.clone()).await?;
    let mut api = grpc(&c).await?;
    let e = api.get_node(GetNodeRequest { node_id: "bad/id".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("node_id"), "{}", e.message());
    let e = api.get_node(GetNodeRequest { node_id: "nobody".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = api
        .query_telemetry(QueryTelemetryRequest { node_id: "n".into(), metric: String::new(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("metric"), "{}", e.message());
    let e = api
        .query_telemetry(QueryTelemetryRequest {
            node_id: "n".into(),
            metric: "m".into(),
            start_unix_ms: 10,
            end_unix_ms: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("start_unix_ms"), "{}", e.message());

    let channel = fleet_tests::channel(&c).await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest { service: "fleet.v1.FleetService".into() })
        .await?
        .into_inner();
    assert_eq!(r.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    stop.cancel();
    c.wait().await;
    Ok(())
}

/// Reflection lists our service in both versions, so grpcurl (v1) and Python's
/// grpcio-reflection (v1alpha) work without the .proto files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_v1_and_v1alpha() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let c = Controller::start(controller_config(dir.path(), "", ""), stop.clone()).await?;
    let v1 = {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(fleet_tests::channel(&c).await?);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client.server_reflection_info(tokio_stream::iter(vec![req])).await?.into_inner();
        match answers.message().await?.and_then(|r| r.message_response) {
            Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            other => anyhow::bail!("reflection v1 did not list services: {other:?}"),
        }
    };
    let v1alpha = {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(fleet_tests::channel(&c).await?);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client.server_reflection_info(tokio_stream::iter(vec![req])).await?.into_inner();
        match answers.message().await?.and_then(|r| r.message_response) {
            Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            other => anyhow::bail!("reflection v1alpha did not list services: {other:?}"),
        }
    };
    for names in [&v1, &v1alpha] {
        assert!(names.iter().any(|n| n == "fleet.v1.FleetService"), "{names:?}");
        assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");
    }
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_names_the_port_and_the_flag() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut cfg = controller_config(dir.path(), "", "");
    cfg.grpc.listen = taken.local_addr()?;
    let Err(e) = Controller::start(cfg, CancellationToken::new()).await else {
        anyhow::bail!("controller started on a taken port");
    };
    let msg = e.to_string();
    assert!(msg.contains(&taken.local_addr()?.to_string()) && msg.contains("--grpc-listen"), "{msg}");

    let mut cfg = controller_config(dir.path(), "", "");
    cfg.mqtt.embedded_listen = taken.local_addr()?;
    let Err(e) = Controller::start(cfg, CancellationToken::new()).await else {
        anyhow::bail!("embedded broker started on a taken port");
    };
    assert!(e.to_string().contains("--mqtt-listen"), "{e}");
    Ok(())
}

/// An agent started before its broker exists connects when it appears, and
/// everything it sampled meanwhile arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_with_backoff_and_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let agent = AgentHandle::spawn(agent_config("late", &format!("mqtt://127.0.0.1:{port}"), dir.path()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cfg = controller_config(dir.path(), "", "");
    cfg.mqtt.embedded_listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    let store = c.store.clone();
    wait_for(T, "rows from the late agent", || {
        let store = store.clone();
        async move { (store.count_samples(Some("late")).await.ok()? > 0).then_some(()) }
    })
    .await?;
    let report = agent.stop().await?;
    assert_eq!(report.counters.samples_acked, report.counters.samples_taken, "{report:?}");
    assert_eq!(c.store.count_samples(Some("late")).await?, report.counters.samples_taken);
    stop.cancel();
    c.wait().await;
    Ok(())
}

/// Batches still unacknowledged at a clean shutdown are kept on disk and
/// delivered by the next start: every sample of both runs is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_kept_at_shutdown_arrive_after_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut cfg = agent_config("keeper", &format!("mqtt://127.0.0.1:{port}"), dir.path());
    cfg.telemetry.shutdown_grace = Duration::from_millis(100);
    let first = AgentHandle::spawn(cfg.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r1 = first.stop().await?;
    assert!(r1.batches_kept > 0, "{r1:?}");
    assert_eq!(r1.counters.samples_acked, 0);

    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.mqtt.embedded_listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stop = CancellationToken::new();
    let c = Controller::start(ccfg, stop.clone()).await?;
    cfg.telemetry.shutdown_grace = Duration::from_secs(5);
    let second = AgentHandle::spawn(cfg);
    let store = c.store.clone();
    let want = r1.counters.samples_taken + 30;
    wait_for(T, "the first run's kept samples and some of the second's in the store", || {
        let store = store.clone();
        async move { (store.count_samples(Some("keeper")).await.ok()? >= want).then_some(()) }
    })
    .await?;
    let r2 = second.stop().await?;
    assert_eq!(r2.batches_kept, 0, "{r2:?}");
    assert_eq!(c.store.count_samples(Some("keeper")).await?, r1.counters.samples_taken + r2.counters.samples_taken);
    stop.cancel();
    c.wait().await;
    Ok(())
}

/// Non-finite values and sample times far in the future are refused, each
/// counted; the rest of the batch is stored and acknowledged, and a
/// redelivery of the batch stores nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_rules_refuse_non_finite_values_and_future_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let c = Controller::start(controller_config(dir.path(), "", ""), stop.clone()).await?;
    let (client, mut rx) = raw_client(&c.mqtt_url, "rules").await?;
    client.subscribe(node_topic("rules-node", Channel::Ack), QoS::AtLeastOnce).await?;
    let now = fleet_proto::now_unix_ms();
    let mut b = batch("rules-node", "boot-r", 0, 4);
    for s in &mut b.samples {
        s.time_unix_ms = now - 7_200_000; // two hours ago: well within retention
    }
    b.samples[1].value = f64::NAN;
    b.samples[2].time_unix_ms = now + 86_400_000; // a day ahead
    for round in 0..2 {
        client
            .publish(node_topic("rules-node", Channel::Telemetry), QoS::AtLeastOnce, false, b.encode_to_vec())
            .await?;
        let ack = wait_for(T, "the ack of the whole batch", || {
            let got = rx.try_recv().ok();
            async move { got.and_then(|(_, p)| ack_of(&p)) }
        })
        .await?;
        assert_eq!(ack.up_to_seq, 3, "round {round}: the refused samples' seqs count as handled");
        assert_eq!(c.store.count_samples(Some("rules-node")).await?, 2, "round {round}");
    }
    let text = c.metrics.encode();
    assert_eq!(metric_value(&text, "fleet_messages_dropped_total{reason=\"non_finite_value\"}"), 2.0);
    assert_eq!(metric_value(&text, "fleet_messages_dropped_total{reason=\"future_time\"}"), 2.0);
    stop.cancel();
    c.wait().await;
    Ok(())
}

/// The ack inside the controller's signed message.
fn ack_of(body: &[u8]) -> Option<Ack> {
    let m = fleet_proto::v1::SignedMessage::decode(body).ok()?;
    (m.kind == fleet_proto::v1::MessageKind::Ack as i32).then_some(())?;
    Ack::decode(m.payload.as_slice()).ok()
}
