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

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default().trim().to_owned()
}

/// A policy pushed through the gRPC API takes effect on a running agent within
/// 1 s; a bad one is refused and reported with its reason while the previous
/// one stays in force; after a restart with the controller down, the agent runs
/// from the policy it stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_power_policy_applies_live_is_refused_when_bad_and_survives_offline_restart() -> anyhow::Result<()> {
    use fleet_proto::v1::{DesiredState, GetDesiredStateRequest, SetDesiredStateRequest};
    let dir = tempfile::tempdir()?;
    let sys = dir.path().join("sys");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hardware/tests/fixtures/pi5");
    assert!(std::process::Command::new("cp").arg("-a").arg(&fixture).arg(&sys).status()?.success());
    let governor = sys.join("devices/system/cpu/cpufreq/policy0/scaling_governor");

    let stop = CancellationToken::new();
    let c = Controller::start(controller_config(dir.path(), "", ""), stop.clone()).await?;
    let mut cfg = agent_config("pi5", &c.mqtt_url, dir.path());
    cfg.hardware.backend = fleet_agent::board::HardwareBackend::Sysfs;
    cfg.hardware.sys_root = sys.clone();
    cfg.telemetry.interval = Duration::from_millis(100);
    cfg.power.saver.telemetry_interval = None;
    let agent = AgentHandle::spawn(cfg.clone());
    let mut api = grpc(&c).await?;
    wait_for(Duration::from_secs(10), "the agent online, governor ondemand (balanced)", || {
        let mut api = api.clone();
        let g = read(&governor);
        async move { (state_of(&list_nodes(&mut api).await.ok()?, "pi5").is_some() && g == "ondemand").then_some(()) }
    })
    .await?;

    // 52.35 °C with hot_c = 50: saver, governor powersave, within 1 s.
    let policy = "hot_c = 50.0\ncritical_c = 90.0\n";
    let set = |toml: &str| SetDesiredStateRequest {
        desired: Some(DesiredState { node_id: "pi5".into(), power_policy_toml: toml.into(), ..Default::default() }),
        expected_version: 0,
    };
    let v1 = api.set_desired_state(set(policy)).await?.into_inner();
    assert_eq!(v1.version, 1);
    wait_for(Duration::from_secs(1), "the new policy in effect within 1 s (governor powersave)", || {
        let g = read(&governor);
        async move { (g == "powersave").then_some(()) }
    })
    .await?;
    wait_for(Duration::from_secs(5), "the agent to report version 1", || {
        let mut api = api.clone();
        async move {
            let v = api.get_desired_state(GetDesiredStateRequest { node_id: "pi5".into() }).await.ok()?.into_inner();
            (v.reported?.applied_version == 1).then_some(())
        }
    })
    .await?;

    // A bad curve: refused with the reason, version 1 stays.
    let v2 = api.set_desired_state(set("fan_curve = [[70.0, 0.2], [60.0, 0.9]]\n")).await?.into_inner();
    assert_eq!(v2.version, 2);
    let reported = wait_for(Duration::from_secs(5), "the agent to report the refusal", || {
        let mut api = api.clone();
        async move {
            let v = api.get_desired_state(GetDesiredStateRequest { node_id: "pi5".into() }).await.ok()?.into_inner();
            v.reported.filter(|r| r.rejected_version == 2)
        }
    })
    .await?;
    assert_eq!(reported.applied_version, 1);
    assert!(reported.rejected_reason.contains("fan_curve"), "{reported:?}");
    assert_eq!(read(&governor), "powersave");
    // Not TOML at all: the API refuses it before storing anything.
    let e = api.set_desired_state(set("hot_c = = 3")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("desired.power_policy_toml"), "{}", e.message());

    // Controller down, agent restarted: it runs from the stored policy.
    agent.stop().await?;
    stop.cancel();
    c.wait().await;
    std::fs::write(&governor, "ondemand\n")?;
    // (The embedded broker lives on in this test process: point the agent at nothing at all.)
    cfg.mqtt.url = format!("mqtt://127.0.0.1:{}", free_port());
    let agent = AgentHandle::spawn(cfg);
    wait_for(Duration::from_secs(5), "the stored policy applied offline (governor powersave)", || {
        let g = read(&governor);
        async move { (g == "powersave").then_some(()) }
    })
    .await?;
    agent.stop().await?;
    Ok(())
}
