//! Broker access as the second wall (docs/security.md, "Broker access"): on
//! Mosquitto with the dynamic-security plugin, driven by the controller, each
//! enrolled node logs in with its own password and may publish and subscribe
//! only under its own topics; a revoked node is disconnected and locked out.

use std::time::Duration;

use fleet_controller::Controller;
use fleet_proto::signing::sign;
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{MessageKind, RevokeNodeRequest, Sample, TelemetryBatch};
use fleet_tests::*;
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

fn options(id: &str, port: u16, user: &str, pass: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_credentials(user, pass);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// Connects; `None` when the broker refuses the login.
async fn connect(opts: MqttOptions) -> Option<(AsyncClient, rumqttc::EventLoop)> {
    let (client, mut ev) = AsyncClient::new(opts, 64);
    match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(a)))) if a.code == rumqttc::ConnectReturnCode::Success => {
            Some((client, ev))
        }
        _ => None,
    }
}

/// Polls until a SubAck; its first return code.
async fn suback(ev: &mut rumqttc::EventLoop) -> anyhow::Result<SubscribeReasonCode> {
    tokio::time::timeout(T, async {
        loop {
            if let Event::Incoming(Packet::SubAck(s)) = ev.poll().await? {
                return Ok(s.return_codes[0]);
            }
        }
    })
    .await?
}

fn batch(node: &str, marker: f64) -> TelemetryBatch {
    TelemetryBatch {
        node_id: node.into(),
        boot_id: "acl-test".into(),
        first_seq: 0,
        samples: vec![Sample { metric: "acl.marker".into(), value: marker, time_unix_ms: fleet_proto::now_unix_ms() }],
        low_water_seq: 0,
    }
}

/// Subscribes to every node's telemetry with the admin's rights and passes on
/// (topic, value) of each `acl.marker` batch that reaches subscribers.
async fn watch_markers(
    port: u16,
    user: &str,
    password: &str,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, tokio::sync::mpsc::Receiver<(String, f64)>)> {
    let (watch, mut wev) = connect(options("watch", port, user, password)).await.expect("admin");
    watch.subscribe("fleet/v1/nodes/+/telemetry", QoS::AtLeastOnce).await?;
    suback(&mut wev).await?;
    let (seen_tx, seen) = tokio::sync::mpsc::channel::<(String, f64)>(1024);
    let watcher = tokio::spawn(async move {
        let _keep = watch;
        while let Ok(e) = wev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e
                && let Ok(m) = fleet_proto::v1::SignedMessage::decode(p.payload.as_ref())
                && let Ok(b) = TelemetryBatch::decode(m.payload.as_slice())
                && let Some(s) = b.samples.first().filter(|s| s.metric == "acl.marker")
            {
                let _ = seen_tx.send((p.topic.clone(), s.value)).await;
            }
        }
    });
    Ok((watcher, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_dynsec_keeps_each_node_to_its_own_topics() -> anyhow::Result<()> {
    let mq = DynsecMosquitto::start().await?;
    let port = mq.broker.port;
    let dir = tempfile::tempdir()?;
    let mut ccfg = controller_config(dir.path(), &mq.broker.url, "");
    ccfg.security.require_enrollment = true;
    ccfg.mqtt.username.clone_from(&mq.admin_user);
    ccfg.mqtt.password.clone_from(&mq.admin_password);
    ccfg.mqtt.dynsec = true;
    let stop = CancellationToken::new();
    let c = Controller::start(ccfg, stop.clone()).await?;

    let (a_cfg, b_cfg) =
        (agent_config("acl-a", &mq.broker.url, dir.path()), agent_config("acl-b", &mq.broker.url, dir.path()));
    let a_login = enroll_agent(&c, &a_cfg).await?;
    enroll_agent(&c, &b_cfg).await?;
    let a_key = fleet_agent::identity::Identity::load(&a_cfg.data_dir)?.signing_key().clone();
    let a = AgentHandle::spawn(a_cfg);
    let b = AgentHandle::spawn(b_cfg);
    for node in ["acl-a", "acl-b"] {
        let store = c.store.clone();
        wait_for(T, &format!("rows of {node} through Mosquitto"), || {
            let store = store.clone();
            async move { (store.count_samples(Some(node)).await.ok()? > 10).then_some(()) }
        })
        .await?;
    }

    // No login, a wrong password: refused.
    assert!(connect(MqttOptions::new("anon", "127.0.0.1", port)).await.is_none(), "anonymous got in");
    assert!(connect(options("x", port, "acl-b", "fbp_wrong")).await.is_none(), "a wrong password got in");

    // A's credentials: its own topics yes, B's no.
    let (intruder, mut ev) =
        connect(options("acl-a-2", port, "acl-a", &a_login.broker_password)).await.expect("A's login works");
    intruder.subscribe(node_topic("acl-b", Channel::Telemetry), QoS::AtLeastOnce).await?;
    assert_eq!(suback(&mut ev).await?, SubscribeReasonCode::Failure, "A may not read B's topics");
    intruder.subscribe(node_topic("acl-a", Channel::Ack), QoS::AtLeastOnce).await?;
    assert!(matches!(suback(&mut ev).await?, SubscribeReasonCode::Success(_)));
    let pump = tokio::spawn(async move { while ev.poll().await.is_ok() {} });

    // A watcher with the admin's rights sees what reaches the broker's subscribers.
    let (watcher, mut seen) = watch_markers(port, &mq.admin_user, &mq.admin_password).await?;
    // A forges a batch for B on B's topic: Mosquitto does not pass it on.
    let forged = sign(&a_key, "acl-b", MessageKind::Telemetry, 1, 1, batch("acl-b", 1.0).encode_to_vec());
    intruder.publish(node_topic("acl-b", Channel::Telemetry), QoS::AtLeastOnce, false, forged.encode_to_vec()).await?;
    // Then a canary on its own topic, which does pass: after it, the forgery would have been seen.
    let canary = sign(&a_key, "acl-a", MessageKind::Telemetry, 1, 1, batch("acl-a", 2.0).encode_to_vec());
    intruder.publish(node_topic("acl-a", Channel::Telemetry), QoS::AtLeastOnce, false, canary.encode_to_vec()).await?;
    let first = tokio::time::timeout(T, seen.recv()).await?.expect("watcher running");
    assert_eq!(first, (node_topic("acl-a", Channel::Telemetry), 2.0), "B's topic carried A's forgery");
    let text = http_get(c.http_addr, "/metrics").await?;
    assert_eq!(metric_value(&text, "fleet_messages_dropped_total{reason=\"bad_signature\"}"), 0.0, "{text}");

    // Revoke A: Mosquitto drops its client; its rows stop; its login no longer works. B goes on.
    let mut admin = grpc(&c).await?;
    admin.revoke_node(RevokeNodeRequest { node_id: "acl-a".into() }).await?;
    wait_for(T, "A's login refused after the revoke", || {
        let pass = a_login.broker_password.clone();
        async move { connect(options("acl-a-3", port, "acl-a", &pass)).await.is_none().then_some(()) }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a0, b0) = (c.store.count_samples(Some("acl-a")).await?, c.store.count_samples(Some("acl-b")).await?);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a1, b1) = (c.store.count_samples(Some("acl-a")).await?, c.store.count_samples(Some("acl-b")).await?);
    assert_eq!(a0, a1, "rows of the revoked node kept arriving");
    assert!(b1 > b0, "the other node's rows stopped");

    pump.abort();
    watcher.abort();
    a.crash();
    b.stop().await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}
