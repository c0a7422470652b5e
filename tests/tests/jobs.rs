//! Inference jobs end to end: a controller with its cloud tier, three
//! in-process agents on simulated hardware, the real all-MiniLM-L6-v2 model
//! and the built-in classifier, over the embedded broker.
//!
//! Jobs land on the best node (not the one saving power, not the hot one);
//! a job whose node is killed mid-run still finishes before its deadline
//! elsewhere; an edge answer under the confidence threshold is re-run on the
//! cloud tier and both answers are reported; with no site able the caller gets
//! UNAVAILABLE with the reason.

use std::collections::HashMap;
use std::time::Duration;

use fleet_controller::Controller;
use fleet_proto::v1::{
    GetJobRequest, JobConstraints, JobStatus, JobView, ListJobsRequest, Placement, Site, SubmitJobRequest,
};
use fleet_tests::*;
use tokio_util::sync::CancellationToken;

type Client = fleet_net::client::FleetClient;

fn job(model: &str, text: &str) -> SubmitJobRequest {
    SubmitJobRequest { model: model.into(), text: text.into(), timeout_ms: 15_000, ..Default::default() }
}

/// Waits until every node in `ids` is online and offers `minilm`.
async fn ready(client: &mut Client, ids: &[&str]) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(60), "every agent online with its models loaded", || {
        let mut client = client.clone();
        async move {
            let nodes = list_nodes(&mut client).await.ok()?;
            let ok = ids.iter().all(|id| {
                nodes.iter().any(|n| {
                    n.node_id == *id
                        && n.status.as_ref().is_some_and(|s| s.state == 1 && s.models.iter().any(|m| m == "minilm"))
                })
            });
            ok.then_some(())
        }
    })
    .await
}

async fn get(client: &mut Client, id: &str) -> anyhow::Result<JobView> {
    Ok(client.get_job(GetJobRequest { job_id: id.into() }).await?.into_inner())
}

/// One node on a draining battery (saver), one hot (its limit is 30 °C: the
/// simulated SoC runs warmer), one well; returns once the controller sees them so.
async fn three_nodes(
    c: &Controller,
    dir: &std::path::Path,
    models: &std::path::Path,
) -> anyhow::Result<(Vec<AgentHandle>, Client)> {
    let mut saver = agent_config("saver-pi", &c.mqtt_url, dir);
    saver.hardware.sim_mains = false;
    saver.hardware.sim_initial_soc_pct = 30.0;
    let mut hot = agent_config("hot-pi", &c.mqtt_url, dir);
    hot.power.hot_c = 30.0;
    hot.power.critical_c = 95.0;
    let good = agent_config("good-pi", &c.mqtt_url, dir);
    let mut agents = Vec::new();
    for mut cfg in [saver, hot, good] {
        cfg.inference.model_dir = models.to_owned();
        cfg.labels.insert("site".into(), format!("site-{}", cfg.node_id));
        agents.push(AgentHandle::spawn(cfg));
    }
    let mut client = grpc(c).await?;
    ready(&mut client, &["saver-pi", "hot-pi", "good-pi"]).await?;
    // Their first statuses may precede the first power decision: wait until
    // the controller sees the saver saving and the hot node's temperature.
    wait_for(Duration::from_secs(30), "saver-pi in saver, hot-pi reporting its heat", || {
        let mut client = client.clone();
        async move {
            let nodes = list_nodes(&mut client).await.ok()?;
            let status = |id: &str| nodes.iter().find(|n| n.node_id == id).and_then(|n| n.status.clone());
            let saver = status("saver-pi")?.power_profile == fleet_proto::v1::PowerProfile::Saver as i32;
            let hot = status("hot-pi")?.vitals.and_then(|v| v.soc_temp_c).is_some_and(|t| t > 30.0);
            let good = status("good-pi")?.vitals.is_some_and(|v| v.soc_temp_c.is_some());
            (saver && hot && good).then_some(())
        }
    })
    .await?;

    Ok((agents, client))
}

/// Every job is listed newest first and recorded in the store once, the
/// refused submission (UNAVAILABLE) too.
async fn every_job_recorded_once(c: &Controller, client: &Client) -> anyhow::Result<()> {
    let listed = wait_for(Duration::from_secs(10), "jobs recorded", || {
        let mut client = client.clone();
        async move {
            let jobs = client.list_jobs(ListJobsRequest::default()).await.ok()?.into_inner().jobs;
            (jobs.len() == 5).then_some(jobs)
        }
    })
    .await?;
    assert!(listed.windows(2).all(|w| w[0].submitted_unix_ms >= w[1].submitted_unix_ms));
    // ListJobs also reads the in-memory recent jobs: the recorder writes its
    // batch to the table a moment later.
    let fleet_controller::store::Store::Sqlite(pool) = &c.store else { unreachable!("SQLite here") };
    let count = || async { sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs").fetch_one(pool).await.ok() };
    let rows = wait_for(Duration::from_secs(10), "5 job rows", || async { count().await.filter(|n| *n >= 5) }).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        (rows, count().await),
        (5, Some(5)),
        "the refused submission (UNAVAILABLE) is recorded too, every job once"
    );
    assert_eq!(listed.iter().filter(|j| j.status == JobStatus::Failed as i32).count(), 1);
    let metrics = http_get(c.http_addr, "/metrics").await?;
    assert_eq!(metric_value(&metrics, "fleet_jobs_joint_total"), 1.0);

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_go_to_the_best_node_and_unsure_answers_to_the_cloud() -> anyhow::Result<()> {
    let Some(models) = model_dir("jobs::jobs_go_to_the_best_node_and_unsure_answers_to_the_cloud")? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.cloud.model_dir.clone_from(&models);
    let c = Controller::start(ccfg, stop.clone()).await?;

    let (agents, mut client) = three_nodes(&c, dir.path(), &models).await?;

    for (model, text) in [("minilm", "The fan is spinning faster than usual."), ("severity", "disk full, data lost")] {
        let v = client.submit_job(job(model, text)).await?.into_inner();
        assert_eq!(v.status, JobStatus::Succeeded as i32, "{v:?}");
        assert_eq!((v.site, v.node_id.as_str()), (Site::Edge as i32, "good-pi"), "{v:?}");
        assert!(v.reason.starts_with("edge node good-pi scores"), "{}", v.reason);
        let t = v.timings.unwrap_or_default();
        assert!(t.inference_us > 0 && t.total_us >= t.inference_us && t.end_to_end_us >= t.total_us, "{t:?}");
        if model == "minilm" {
            assert_eq!(v.embedding.len(), 384);
            let norm: f32 = v.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-3);
        } else {
            assert_eq!(v.label, "critical");
        }
    }

    // Data that must stay at the saver's site: no node there may run it, and
    // the cloud is not allowed, so the caller hears why.
    let mut pinned = job("severity", "x");
    pinned.constraints = Some(JobConstraints {
        required_labels: [("site".to_owned(), "site-saver-pi".to_owned())].into(),
        ..Default::default()
    });
    let err = client.submit_job(pinned).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("saving power (saver-pi)"), "{}", err.message());
    assert!(err.message().contains("cloud tier not allowed"), "{}", err.message());

    // Joint inference: an unsure edge answer goes to the cloud, both are kept.
    let mut unsure = job("severity", "zyx qwv plorb");
    unsure.min_confidence = 0.9;
    let v = client.submit_job(unsure).await?.into_inner();
    assert_eq!(v.status, JobStatus::Succeeded as i32, "{v:?}");
    assert_eq!(v.attempts.len(), 2, "{v:?}");
    let (edge, cloud) = (&v.attempts[0], &v.attempts[1]);
    assert_eq!((edge.site, edge.node_id.as_str(), edge.status), (Site::Edge as i32, "good-pi", 3));
    assert!(edge.confidence < 0.9);
    assert_eq!((cloud.site, cloud.status), (Site::Cloud as i32, JobStatus::Succeeded as i32));
    assert!(cloud.reason.starts_with("joint inference"), "{}", cloud.reason);
    assert_eq!(v.site, Site::Cloud as i32);
    // Cloud only, with the real model.
    let mut in_cloud = job("minilm", "hello");
    in_cloud.constraints = Some(JobConstraints { placement: Placement::CloudOnly as i32, ..Default::default() });
    let v = client.submit_job(in_cloud).await?.into_inner();
    assert_eq!((v.status, v.site, v.embedding.len()), (JobStatus::Succeeded as i32, Site::Cloud as i32, 384));

    every_job_recorded_once(&c, &client).await?;

    for a in agents {
        a.stop().await?;
    }
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_whose_node_dies_finishes_elsewhere_before_its_deadline() -> anyhow::Result<()> {
    let Some(models) = model_dir("jobs::a_job_whose_node_dies_finishes_elsewhere_before_its_deadline")? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.cloud.enabled = false; // the job must finish on another edge node
    // Re-routing must come from the node going offline, not from its silence.
    ccfg.jobs.attempt_timeout = Duration::from_secs(15);
    let c = Controller::start(ccfg, stop.clone()).await?;
    let mut agents: HashMap<String, AgentHandle> = HashMap::new();
    for id in ["pi-a", "pi-b", "pi-c"] {
        let mut cfg = agent_config(id, &c.mqtt_url, dir.path());
        cfg.inference.model_dir.clone_from(&models);
        // Like a Pi: each job holds its worker for a good while, so the kill lands mid-run.
        cfg.inference.sim_slowdown = 30.0;
        agents.insert(id.into(), AgentHandle::spawn(cfg));
    }
    let mut client = grpc(&c).await?;
    ready(&mut client, &["pi-a", "pi-b", "pi-c"]).await?;

    // A first run pays for warming up; do it on every node so the timing below is steady.
    for id in ["pi-a", "pi-b", "pi-c"] {
        let mut warm = job("minilm", "warm up");
        warm.timeout_ms = 60_000;
        warm.constraints = Some(JobConstraints { node_id: id.into(), ..Default::default() });
        let w = client.submit_job(warm).await?.into_inner();
        assert_eq!(w.status, JobStatus::Succeeded as i32, "{w:?}");
        println!("warm-up on {id}: {:?}", w.timings);
    }
    let mut req = job("minilm", "The battery of the north field node is low.");
    req.timeout_ms = 20_000;
    req.detach = true;
    let submitted = tokio::time::Instant::now();
    let v = client.submit_job(req).await?.into_inner();
    let first = v.attempts.first().map(|a| a.node_id.clone()).unwrap_or_default();
    assert!(agents.contains_key(&first), "dispatched to an agent: {v:?}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(&mut client, &v.job_id).await?.status, JobStatus::Running as i32, "still running when killed");
    agents.remove(&first).expect("chosen agent").crash();

    let done = wait_for(Duration::from_secs(25), "the job to finish", || {
        let mut client = client.clone();
        let id = v.job_id.clone();
        async move {
            let j = get(&mut client, &id).await.ok()?;
            (j.status != JobStatus::Running as i32 && j.status != JobStatus::Pending as i32).then_some(j)
        }
    })
    .await?;
    assert_eq!(done.status, JobStatus::Succeeded as i32, "{done:?}");
    assert_ne!(done.node_id, first);
    assert!(done.finished_unix_ms <= done.deadline_unix_ms, "finished before the deadline");
    assert!(submitted.elapsed() < Duration::from_secs(20));
    assert_eq!(done.attempts[0].status, JobStatus::Abandoned as i32, "{done:?}");
    assert!(done.attempts[0].error.contains("offline"), "{:?}", done.attempts[0]);
    assert_eq!(done.embedding.len(), 384);

    for (_, a) in agents {
        a.stop().await?;
    }
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_and_no_cloud_is_unavailable_with_the_reason() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut ccfg = controller_config(dir.path(), "", "");
    ccfg.cloud.enabled = false;
    let c = Controller::start(ccfg, stop.clone()).await?;
    let mut client = grpc(&c).await?;
    let err = client.submit_job(job("severity", "disk full")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("no node is known") && err.message().contains("cloud tier disabled"), "{err}");
    let bad = client.submit_job(job("", "x")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    stop.cancel();
    c.wait().await;
    Ok(())
}
