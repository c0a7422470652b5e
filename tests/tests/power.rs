//! The power manager on a running agent with a simulated battery: draining
//! walks balanced -> saver -> critical and runs the shutdown command once
//! after flushing the spool; profile changes arrive as events and in the status.

use std::time::Duration;

use fleet_controller::Controller;
use fleet_proto::topics::{Channel, node_topic};
use fleet_proto::v1::{Event, NodeStatus, PowerProfile};
use fleet_tests::*;
use prost::Message;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_battery_changes_profiles_and_shuts_down_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let c = Controller::start(controller_config(dir.path(), "", ""), stop.clone()).await?;

    // Watch the node's events and status like an operator would.
    let (host, port) = fleet_proto::parse_mqtt_url(&c.mqtt_url).map_err(anyhow::Error::msg)?;
    let (client, mut el) = AsyncClient::new(MqttOptions::new("watcher", host, port), 64);
    client.subscribe(node_topic("batt", Channel::Events), QoS::AtLeastOnce).await?;
    client.subscribe(node_topic("batt", Channel::Status), QoS::AtLeastOnce).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let MqttEvent::Incoming(Packet::Publish(p)) = ev {
                let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let marker = dir.path().join("shutdown-ran");
    let mut cfg = agent_config("batt", &c.mqtt_url, dir.path());
    cfg.hardware.sim_mains = false;
    cfg.hardware.sim_initial_soc_pct = 80.0;
    cfg.hardware.sim_time_scale = 4000.0;
    cfg.telemetry.interval = Duration::from_millis(100);
    cfg.telemetry.flush_interval = Duration::from_millis(100);
    cfg.power.saver.telemetry_interval = Some(Duration::from_millis(150));
    cfg.power.critical.telemetry_interval = Some(Duration::from_millis(200));
    cfg.power.shutdown_command = vec!["sh".into(), "-c".into(), format!("echo ran >> {}", marker.display())];
    let agent = AgentHandle::spawn(cfg);

    let mut changes = Vec::new();
    let mut shutdown_events = 0;
    let mut saw_critical_status = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline && !(shutdown_events > 0 && marker.exists() && saw_critical_status) {
        let Ok(Some((topic, payload))) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await else {
            continue;
        };
        if topic.ends_with("/events") {
            let ev = Event::decode(payload.as_slice())?;
            match ev.kind.as_str() {
                "power.profile_changed" => changes.push((ev.attributes["from"].clone(), ev.attributes["to"].clone())),
                "power.shutdown" => shutdown_events += 1,
                _ => {}
            }
        } else if let Ok(s) = NodeStatus::decode(payload.as_slice()) {
            saw_critical_status |= s.power_profile == PowerProfile::Critical as i32 && s.max_jobs == 0;
        }
    }
    let report = agent.stop().await?;
    let want: Vec<(String, String)> =
        [("balanced", "saver"), ("saver", "critical")].iter().map(|(a, b)| ((*a).into(), (*b).into())).collect();
    assert_eq!(changes, want, "profile changes as events");
    assert_eq!(shutdown_events, 1, "one shutdown event");
    assert!(saw_critical_status, "the status says critical, no jobs admitted");
    let ran = std::fs::read_to_string(&marker)?;
    assert_eq!(ran.lines().count(), 1, "the shutdown command ran exactly once");
    assert_eq!(report.batches_kept, 0, "the spool drained: {report:?}");
    stop.cancel();
    c.wait().await;
    Ok(())
}
