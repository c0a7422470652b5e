//! The agent's Prometheus endpoint (docs/metrics.md), on a running agent
//! against a real controller: its counters move as it samples and is
//! acknowledged, its vitals show, and an agent without `[metrics] listen`
//! opens no port.

use std::time::Duration;

use fleet_tests::*;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_its_counters_and_vitals_for_prometheus() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let c = fleet_controller::Controller::start(controller_config(dir.path(), "", ""), stop.clone()).await?;
    let mut cfg = agent_config("m1", &c.mqtt_url, dir.path());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    cfg.metrics.listen = addr.to_string();
    let agent = AgentHandle::spawn(cfg);
    let text = wait_for(T, "samples acknowledged, as the agent's metrics say", || async {
        let text = http_get(addr, "/metrics").await.ok()?;
        (metric_value(&text, "fleet_agent_samples_acked_total") > 0.0).then_some(text)
    })
    .await?;
    assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("application/openmetrics-text"), "{text}");
    for name in [
        "fleet_agent_samples_taken_total",
        "fleet_agent_batches_published_total",
        "fleet_agent_spool_bytes",
        "fleet_agent_uplink_connected 1",
        "fleet_agent_power_profile",
        "fleet_agent_battery_soc_percent",
        "fleet_agent_soc_temperature_celsius",
        "fleet_agent_last_ack_timestamp_seconds",
        "fleet_agent_build{",
        "# EOF",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let before = metric_value(&text, "fleet_agent_samples_taken_total");
    wait_for(T, "the samples counter to move", || async {
        let t = http_get(addr, "/metrics").await.ok()?;
        (metric_value(&t, "fleet_agent_samples_taken_total") > before).then_some(())
    })
    .await?;
    agent.stop().await?;
    // Stopped with the agent (its listener task may answer one last request while it ends).
    wait_for(T, "the endpoint to close with the agent", || async {
        match http_get(addr, "/metrics").await {
            Err(_) => Some(()),
            Ok(t) => (!t.contains("fleet_agent")).then_some(()),
        }
    })
    .await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_is_refused_with_the_key_to_change() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut cfg = agent_config("m2", "mqtt://127.0.0.1:1", dir.path());
    cfg.metrics.listen = taken.local_addr()?.to_string();
    let e = fleet_agent::run(cfg, CancellationToken::new()).await.expect_err("the port is taken");
    assert!(e.to_string().contains("metrics.listen"), "{e}");
    Ok(())
}
