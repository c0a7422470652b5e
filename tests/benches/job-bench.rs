//! End-to-end job overhead: SubmitJob -> result for a tiny job (the built-in
//! `severity` classifier) routed to an in-process agent over the embedded
//! broker, minus the inference itself (the node's tokenize + inference time).
//!
//! `cargo run --release -p fleet-tests --bin job-bench [-- --jobs 2000]`
//!
//! Controller with SQLite and its cloud tier off (every job goes to the
//! agent), one agent on simulated hardware, one gRPC client submitting jobs
//! one after another. Prints as its last line
//! `job_overhead_p50_ms=<x> p99_ms=<y>`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fleet_controller::Controller;
use fleet_proto::v1::{JobStatus, SubmitJobRequest};
use fleet_tests::{AgentHandle, agent_config, controller_config, grpc, list_nodes, wait_for};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Opts {
    /// Jobs timed (after 200 untimed warm-up jobs).
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// An external broker (e.g. Mosquitto) instead of the embedded one.
    #[arg(long, default_value = "")]
    mqtt_url: String,
}

fn pct(v: &[f64], p: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
    v[i]
}

/// mimalloc: model inference allocates and frees megabytes per layer; glibc
/// hands such blocks back to the kernel and faults them in again.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let o = Opts::parse();
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut ccfg = controller_config(dir.path(), &o.mqtt_url, "");
    ccfg.cloud.enabled = false;
    // Jobs back to back from one token: measure the path, not the per-token limit.
    ccfg.security.api_rate_per_s = 1_000_000;
    let c = Controller::start(ccfg, stop.clone()).await?;
    let mut acfg = agent_config("bench-pi", &c.mqtt_url, dir.path());
    acfg.telemetry.interval = Duration::from_secs(1);
    let agent = AgentHandle::spawn(acfg);
    let mut client = grpc(&c).await?;
    wait_for(Duration::from_secs(30), "the agent online with its models", || {
        let mut client = client.clone();
        async move {
            let nodes = list_nodes(&mut client).await.ok()?;
            nodes
                .iter()
                .any(|n| n.status.as_ref().is_some_and(|s| s.models.iter().any(|m| m == "severity")))
                .then_some(())
        }
    })
    .await?;

    let texts = ["disk full, telemetry dropped", "fan at thirty percent", "battery below forty percent"];
    let (mut client_ms, mut ctrl_ms, mut infer_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut node_ms, mut transport_ms) = (Vec::new(), Vec::new());
    for i in 0..(o.jobs + 200) {
        let req = SubmitJobRequest {
            model: "severity".into(),
            text: texts[i % texts.len()].into(),
            timeout_ms: 5000,
            ..Default::default()
        };
        let t = Instant::now();
        let v = client.submit_job(req).await.context("SubmitJob")?.into_inner();
        let wall = t.elapsed();
        anyhow::ensure!(v.status == JobStatus::Succeeded as i32 && v.node_id == "bench-pi", "job failed: {v:?}");
        if i < 200 {
            continue;
        }
        let tm = v.timings.unwrap_or_default();
        #[allow(clippy::cast_precision_loss)]
        let infer = (tm.tokenize_us + tm.inference_us) as f64 / 1000.0;
        client_ms.push(wall.as_secs_f64() * 1000.0 - infer);
        #[allow(clippy::cast_precision_loss)]
        ctrl_ms.push(tm.end_to_end_us as f64 / 1000.0 - infer);
        infer_ms.push(infer);
        #[allow(clippy::cast_precision_loss)]
        node_ms.push(tm.total_us as f64 / 1000.0);
        #[allow(clippy::cast_precision_loss)]
        transport_ms.push(tm.transport_us as f64 / 1000.0);
    }
    for v in [&mut client_ms, &mut ctrl_ms, &mut infer_ms, &mut node_ms, &mut transport_ms] {
        v.sort_by(f64::total_cmp);
    }
    let broker = if o.mqtt_url.is_empty() { "embedded rumqttd".to_owned() } else { o.mqtt_url.clone() };
    println!("jobs={} model=severity node=bench-pi ({broker}, SQLite, cloud tier off)", client_ms.len());
    println!("inference itself: p50 {:.3} ms, p99 {:.3} ms", pct(&infer_ms, 0.5), pct(&infer_ms, 0.99));
    println!(
        "on the node (receipt to answer): p50 {:.3} ms; broker and network (dispatch to answer minus the node): p50 {:.3} ms",
        pct(&node_ms, 0.5),
        pct(&transport_ms, 0.5)
    );
    println!(
        "controller-side overhead (submit -> result at the controller): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        pct(&ctrl_ms, 0.5),
        pct(&ctrl_ms, 0.9),
        pct(&ctrl_ms, 0.99)
    );
    println!(
        "client-side overhead (gRPC call to answer): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
        pct(&client_ms, 0.5),
        pct(&client_ms, 0.9),
        pct(&client_ms, 0.99)
    );
    agent.stop().await?;
    stop.cancel();
    c.wait().await;
    println!("job_overhead_p50_ms={:.3} p99_ms={:.3}", pct(&client_ms, 0.5), pct(&client_ms, 0.99));
    Ok(())
}
