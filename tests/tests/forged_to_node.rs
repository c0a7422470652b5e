//! Messages to a node that the controller did not sign for it are refused by
//! that node (docs/security.md, "Both directions"). Two enrolled agents, A and
//! B, as processes; A's broker login (its own credentials from its
//! enrollment) publishes onto B's topics a desired state, a job and a key
//! rotation signed with A's own key, the same unsigned, and B's genuine old
//! desired state captured off the broker. B refuses every one and counts it;
//! the controller's own desired state and job still work. On the embedded
//! broker, which cannot keep a node to its own topics, and on Mosquitto
//! without ACLs.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use fleet_proto::signing::sign_for_node;
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{DesiredState, Job, KeyRotation, MessageKind};
use fleet_tests::cluster::Broker;
use fleet_tests::enrolled::{EnrolledFleet, T};
use fleet_tests::{Mosquitto, free_port, wait_for};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// A's own broker login, from its enrollment, and what it receives.
async fn login_as(data_dir: &Path, url: &str) -> anyhow::Result<(AsyncClient, tokio::sync::mpsc::Receiver<Vec<u8>>)> {
    let e = fleet_agent::enroll::load(data_dir)?.context("A is not enrolled")?;
    let (host, port) = fleet_proto::parse_mqtt_url(url).map_err(anyhow::Error::msg)?;
    let mut opts = MqttOptions::new("intruder-fa", host, port);
    opts.set_credentials(e.broker_username, e.broker_password);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.try_send(p.payload.to_vec());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok((client, rx))
}

async fn forged_and_replayed_messages_are_refused_by_the_target_node(broker: Broker, url: &str) -> anyhow::Result<()> {
    let f = EnrolledFleet::start(broker, &["fa", "fb"]).await?;
    let fleet = &f;
    f.wait_heard(&["fa", "fb"]).await?;
    // B's genuine desired state, version 1, captured off the broker by A.
    f.set_desired("fb", "2s", 1).await?;
    let (intruder, mut got) = login_as(&f.data_dir("fa"), url).await?;
    intruder.subscribe(node_topic("fb", Channel::Desired), QoS::AtLeastOnce).await?;
    let old = wait_for(T, "B's retained desired state", || {
        let m = got.try_recv().ok();
        async move { m }
    })
    .await?;
    f.set_desired("fb", "3s", 2).await?;
    let before = f.refused("fb");

    let a_key = fleet_agent::identity::Identity::load(&f.data_dir("fa"))?.signing_key().clone();
    let now = u64::try_from(fleet_proto::now_unix_ms())?;
    let forged_desired = DesiredState { node_id: "fb".into(), version: 99, ..Default::default() }.encode_to_vec();
    let job = Job {
        job_id: "forged-job".into(),
        model: "severity".into(),
        deadline_unix_ms: fleet_proto::now_unix_ms() + 60_000,
        ..Default::default()
    }
    .encode_to_vec();
    let rotation = KeyRotation { generation: 7, accepted_public_key: String::new() }.encode_to_vec();
    let sealed = |kind, payload: &Vec<u8>| sign_for_node(&a_key, 1, "fb", kind, now, payload.clone()).encode_to_vec();
    let sends = [
        (Channel::Desired, sealed(MessageKind::Desired, &forged_desired), "desired state signed by A"),
        (Channel::Desired, forged_desired.clone(), "unsigned desired state"),
        (Channel::Jobs, sealed(MessageKind::Job, &job), "job signed by A"),
        (Channel::Jobs, job.clone(), "unsigned job"),
        (Channel::Key, sealed(MessageKind::KeyRotation, &rotation), "key rotation signed by A"),
        (Channel::Desired, old, "B's genuine old desired state, replayed"),
    ];
    for (channel, body, _) in &sends {
        intruder.publish(node_topic("fb", *channel), QoS::AtLeastOnce, false, body.clone()).await?;
    }
    let want = before + sends.len() as u64;
    wait_for(T, "B counted every forged and replayed message", || async move {
        (fleet.refused("fb") >= want).then_some(())
    })
    .await
    .with_context(|| format!("B refused {} (before: {before}, want {want})", f.refused("fb")))?;
    println!("{url}: B refused all {} messages: {:?}", sends.len(), sends.iter().map(|s| s.2).collect::<Vec<_>>());
    assert_eq!(f.applied("fb"), 2, "B's desired state is still the controller's version 2");
    let reasons = &f.node("fb").context("B listed")?["counters"]["controller_messages_refused_by_reason"];
    let n = |r: &str| reasons[r].as_u64().unwrap_or(0);
    assert!(n("bad_signature") >= 3 && n("replay") >= 1, "refusals by reason: {reasons}");
    assert_eq!(f.refused("fa"), 0, "A itself refused nothing");
    // The controller's own messages still work: a new desired state, a job.
    f.set_desired("fb", "4s", 3).await?;
    let answer = f.fleetctl(&["jobs", "submit", "--model", "severity", "--node", "fb", "--text", "disk full"])?;
    assert!(answer.contains("fb"), "the job ran on B: {answer}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_desired_state_job_and_key_rotation_are_refused_by_the_target_node_on_the_embedded_broker()
-> anyhow::Result<()> {
    let port = free_port();
    forged_and_replayed_messages_are_refused_by_the_target_node(
        Broker::Embedded(port),
        &format!("mqtt://127.0.0.1:{port}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_desired_state_job_and_key_rotation_are_refused_by_the_target_node_on_mosquitto_without_acls()
-> anyhow::Result<()> {
    let m = Mosquitto::start().await?;
    forged_and_replayed_messages_are_refused_by_the_target_node(Broker::External(m.url.clone()), &m.url).await
}
