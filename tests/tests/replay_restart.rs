//! After the controller restarts, nothing a node sent before is taken again
//! (docs/security.md, "Signed envelope"): an enrolled node A, logged in with
//! its own credentials, captures node B's genuine signed messages off the
//! embedded broker: B's last will when B is killed, then, from B's next boot,
//! its telemetry, status, reported state, a job result and an event (a power
//! policy that makes B's simulated board hot changes its profile). The controller
//! stops cleanly and starts again while B keeps running; A replays every
//! captured message. The controller refuses each as a replay (the messages of
//! B's running boot only because its replay marks outlived the restart), and
//! B's old will does not mark the running B offline.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use fleet_proto::signing::WILL_SEQ;
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::SignedMessage;
use fleet_tests::cluster::{ControllerProc, ControllerSetup, agent_config, enroll, output, start_agent};
use fleet_tests::{free_port, http_get, metric_value, wait_for};
use prost::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const T: Duration = Duration::from_secs(30);
const CHANNELS: [Channel; 5] =
    [Channel::Telemetry, Channel::Status, Channel::Reported, Channel::Events, Channel::Results];

fn fleetctl(ctl: &ControllerProc, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = ctl.fleetctl()?;
    cmd.args(args);
    output(cmd, &format!("fleetctl {}", args.join(" ")))
}

fn node(ctl: &ControllerProc, id: &str) -> Option<serde_json::Value> {
    let nodes: Vec<serde_json::Value> =
        serde_json::from_str(&fleetctl(ctl, &["nodes", "list", "-o", "json"]).ok()?).ok()?;
    nodes.into_iter().find(|n| n["node_id"] == id)
}

async fn metric(ctl: &ControllerProc, name: &str) -> f64 {
    let addr = format!("127.0.0.1:{}", ctl.http).parse().expect("address");
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    metric_value(&text, name)
}

async fn replays_refused(ctl: &ControllerProc) -> f64 {
    metric(ctl, "fleet_messages_dropped_total{reason=\"replay\"}").await
}

/// The controller's message counters, for a failure's message.
async fn message_counters(ctl: &ControllerProc) -> String {
    let addr = format!("127.0.0.1:{}", ctl.http).parse().expect("address");
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    text.lines().filter(|l| l.starts_with("fleet_messages_")).collect::<Vec<_>>().join("\n")
}

/// Waits until the controller has taken B's event and job result (the only
/// ones in the test) and stored telemetry B sent after the captured messages:
/// a message it never took would be new to it after the restart, not a replay.
async fn taken_by_controller(ctl: &ControllerProc, events_before: f64) -> anyhow::Result<()> {
    for (channel, want) in [("events", events_before + 1.0), ("results", 1.0)] {
        let name = format!("fleet_messages_received_total{{channel=\"{channel}\"}}");
        let taken = wait_for(T, &format!("the controller took B's {channel}"), || async {
            (metric(ctl, &name).await >= want).then_some(())
        })
        .await;
        if let Err(e) = taken {
            anyhow::bail!("{e}; the controller's message counters:\n{}", message_counters(ctl).await);
        }
    }
    let seen = node(ctl, "rb").and_then(|v| v["samples_stored"].as_u64()).unwrap_or(0);
    wait_for(T, "B's later telemetry stored", || async {
        node(ctl, "rb").and_then(|v| v["samples_stored"].as_u64()).filter(|s| *s > seen + 10).map(|_| ())
    })
    .await
}

/// Adds the first message of each kind the intruder receives to `captured`
/// until it holds every one of `wanted`.
async fn capture(
    rx: &mut tokio::sync::mpsc::Receiver<(String, Vec<u8>)>,
    captured: &mut BTreeMap<String, (String, Vec<u8>)>,
    wanted: &[&str],
) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !wanted.iter().all(|w| captured.contains_key(*w)) {
        anyhow::ensure!(start.elapsed() < T, "captured only {:?}", captured.keys().collect::<Vec<_>>());
        let Ok(Some((topic, body))) = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await else { continue };
        let channel = CHANNELS.into_iter().find(|c| topic == node_topic("rb", *c)).context("topic")?;
        if !body.is_empty() {
            captured.entry(label(channel, &body)).or_insert((topic, body));
        }
    }
    Ok(())
}

/// What a node's message is, by its channel (the will apart).
fn label(channel: Channel, body: &[u8]) -> String {
    let will = SignedMessage::decode(body).is_ok_and(|m| m.msg_seq == WILL_SEQ);
    if will { "will".into() } else { format!("{channel:?}").to_lowercase() }
}

/// A's own login (its credentials from its enrollment): what it receives,
/// and how many times the broker accepted the login.
type Intruder = (AsyncClient, tokio::sync::mpsc::Receiver<(String, Vec<u8>)>, tokio::sync::watch::Receiver<u32>);

fn login_as_a(data_dir: &std::path::Path, port: u16) -> anyhow::Result<Intruder> {
    let e = fleet_agent::enroll::load(data_dir)?.context("A is not enrolled")?;
    let mut opts = MqttOptions::new("intruder-ra", "127.0.0.1", port);
    opts.set_credentials(e.broker_username, e.broker_password);
    let (intruder, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(1024);
    let (logins_tx, logins) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.try_send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => logins_tx.send_modify(|n| *n += 1),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok((intruder, rx, logins))
}

/// Publishes every captured message again once the intruder is logged in
/// after the restart (more than `logged_in` logins); the replays refused in all.
async fn replay(
    ctl: &ControllerProc,
    intruder: &AsyncClient,
    mut logins: tokio::sync::watch::Receiver<u32>,
    logged_in: u32,
    captured: &BTreeMap<String, (String, Vec<u8>)>,
) -> anyhow::Result<f64> {
    tokio::time::timeout(T, logins.wait_for(|n| *n > logged_in))
        .await
        .context("the intruder's login is not accepted again after the restart")??;
    let before = replays_refused(ctl).await;
    for (topic, body) in captured.values() {
        intruder.publish(topic.clone(), QoS::AtLeastOnce, false, body.clone()).await?;
    }
    let want = before + captured.len() as f64;
    let refused = wait_for(T, "every captured message refused as a replay", || async {
        let now = replays_refused(ctl).await;
        (now >= want).then_some(now)
    })
    .await
    .with_context(|| {
        let log = std::fs::read_to_string(&ctl.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let kinds: Vec<&String> = captured.keys().collect();
        format!(
            "replays of {kinds:?} refused: before {before}, want {want}; the controller's last lines:\n{}",
            tail.join("\n")
        )
    });
    if refused.is_err() {
        eprintln!("the controller's message counters:\n{}", message_counters(ctl).await);
    }
    refused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_controller_restart_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    let setup = ControllerSetup::embedded(dir.path(), port);
    let mut ctl = ControllerProc::start(dir.path(), &setup).await?;
    let mut confs = BTreeMap::new();
    let mut agents = BTreeMap::new();
    for n in ["ra", "rb"] {
        let conf = agent_config(n, dir.path(), &dir.path().join(n), &url, "1s", 1 << 20);
        enroll(&ctl, &conf)?;
        agents.insert(n, start_agent(n, dir.path(), &conf, None, "info")?);
        confs.insert(n, conf);
    }
    let (intruder, mut rx, logins) = login_as_a(&dir.path().join("ra"), port)?;
    for c in CHANNELS {
        intruder.subscribe(node_topic("rb", c), QoS::AtLeastOnce).await?;
    }
    wait_for(T, "B heard", || async {
        node(&ctl, "rb").and_then(|v| v["samples_stored"].as_u64()).filter(|s| *s > 0).map(|_| ())
    })
    .await?;
    // B's will (boot 1), then B again (boot 2).
    agents.get_mut("rb").context("B")?.kill9();
    let mut captured: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
    capture(&mut rx, &mut captured, &["will"]).await?;
    captured.retain(|k, _| k == "will");
    agents.insert("rb", start_agent("rb", dir.path(), &confs["rb"], None, "info")?);
    wait_for(T, "B online again", || async { node(&ctl, "rb").filter(|v| v["state"] == "online").map(|_| ()) }).await?;
    while rx.try_recv().is_ok() {}
    // One message of each kind from boot 2 (the first seen); the job before
    // the hot policy (the router keeps work off a node saving power).
    fleetctl(&ctl, &["jobs", "submit", "--model", "severity", "--node", "rb", "--text", "fan failure"])?;
    let events_before = metric(&ctl, "fleet_messages_received_total{channel=\"events\"}").await;
    let policy = dir.path().join("hot.toml");
    std::fs::write(&policy, "hot_c = 1.0\ncritical_c = 200.0\n")?;
    let policy = policy.to_str().context("path")?;
    fleetctl(&ctl, &["desired", "set", "rb", "--telemetry-interval", "2s", "--power-policy", policy])?;
    capture(&mut rx, &mut captured, &["telemetry", "status", "reported", "results", "events", "will"]).await?;
    taken_by_controller(&ctl, events_before).await?;
    let logged_in = *logins.borrow();
    ctl.term()?;
    ctl.up().await?;
    let stored = node(&ctl, "rb").and_then(|v| v["samples_stored"].as_u64()).unwrap_or(0);
    wait_for(T, "B heard after the restart", || async {
        node(&ctl, "rb").and_then(|v| v["samples_stored"].as_u64()).filter(|s| *s > stored).map(|_| ())
    })
    .await?;

    let refused = replay(&ctl, &intruder, logins, logged_in, &captured).await?;
    println!(
        "replayed after a clean restart, all refused: {:?} (replay drops now {refused})",
        captured.keys().collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let state = node(&ctl, "rb").map(|v| v["state"].clone());
    assert_eq!(state, Some(serde_json::json!("online")), "B's old will did not mark the new boot offline");
    ctl.term()?;
    Ok(())
}
