//! One trace per batch and per job across the processes (docs/tracing.md):
//! an enrolled agent and a controller, both as processes exporting to an
//! OTLP receiver in this test. A telemetry batch's trace runs from the
//! agent's `batch.publish` through the controller's `message.verify`,
//! `batch.ingest`, `db.write` to `ack.publish`; a job's from `SubmitJob`
//! through `job.route` and `job.dispatch` to the agent's `job.run` and back
//! to the controller's `job.result`. The parent links are checked, not only
//! the names.

use std::collections::HashMap;
use std::time::Duration;

use fleet_tests::cluster::{ControllerProc, ControllerSetup, agent_config, enroll, output, start_agent};
use fleet_tests::otlp::{Receiver, Span};
use fleet_tests::{free_port, wait_for};

const T: Duration = Duration::from_secs(30);

/// `child`'s parent is `parent` (same trace), each found by name and service.
fn parent_of<'a>(spans: &'a [Span], child: &Span) -> Option<&'a Span> {
    spans.iter().find(|s| s.trace_id == child.trace_id && s.span_id == child.parent_id)
}

/// The chain of spans named `names` (each the parent of the next), from the
/// last one back; `None` while some are still missing.
fn chain<'a>(spans: &'a [Span], names: &[(&str, &str)]) -> Option<Vec<&'a Span>> {
    let (last_service, last_name) = names.last()?;
    spans.iter().filter(|s| s.service == *last_service && s.name == *last_name).find_map(|leaf| {
        let mut found = vec![leaf];
        for (service, name) in names.iter().rev().skip(1) {
            let p = parent_of(spans, found.last()?)?;
            if p.service != *service || p.name != *name {
                return None;
            }
            found.push(p);
        }
        Some(found)
    })
}

fn show(spans: &[Span]) -> String {
    let mut by_trace: HashMap<&str, Vec<String>> = HashMap::new();
    for s in spans {
        by_trace.entry(&s.trace_id).or_default().push(format!("{}:{}", s.service, s.name));
    }
    by_trace.values().take(20).map(|v| v.join(" ")).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_and_a_job_are_each_one_trace_across_agent_and_controller() -> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let mut setup = ControllerSetup::embedded(dir.path(), port);
    setup.extra = format!("[otel]\nendpoint = \"{}\"\n", receiver.endpoint());
    let mut ctl = ControllerProc::start(dir.path(), &setup).await?;
    let conf =
        agent_config("tr", dir.path(), &dir.path().join("tr"), &format!("mqtt://127.0.0.1:{port}"), "1s", 1 << 20);
    enroll(&ctl, &conf)?;
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str(&format!("[otel]\nendpoint = \"{}\"\n", receiver.endpoint()));
    std::fs::write(&conf, text)?;
    let mut agent = start_agent("tr", dir.path(), &conf, None, "info")?;

    let batch = [
        ("fleet-agent", "batch.publish"),
        ("fleet-controller", "message.verify"),
        ("fleet-controller", "batch.ingest"),
        ("fleet-controller", "ack.publish"),
    ];
    let written = [("fleet-controller", "batch.ingest"), ("fleet-controller", "db.write")];
    let found = wait_for(T, "a batch's trace from the agent's publish to the ack", || async {
        let spans = receiver.spans();
        let c = chain(&spans, &batch)?;
        // The same batch's write is a child of the same ingest span.
        let ingest = c[1].span_id.clone();
        spans.iter().any(|s| s.name == "db.write" && s.parent_id == ingest).then_some(())?;
        chain(&spans, &written).map(|_| ())
    })
    .await;
    if let Err(e) = found {
        anyhow::bail!("{e}; traces received:\n{}", show(&receiver.spans()));
    }

    let mut submit = ctl.fleetctl()?;
    submit.args(["-o", "json", "jobs", "submit", "--model", "severity", "--text", "disk full on /var"]);
    let job: serde_json::Value = serde_json::from_str(&output(submit, "fleetctl jobs submit")?)?;
    assert_eq!(job["status"], "succeeded", "{job}");
    let run = [
        ("fleet-controller", "SubmitJob"),
        ("fleet-controller", "job"),
        ("fleet-controller", "job.dispatch"),
        ("fleet-agent", "job.run"),
        ("fleet-controller", "message.verify"),
        ("fleet-controller", "job.result"),
    ];
    let found = wait_for(T, "the job's trace from SubmitJob to its result", || async {
        let spans = receiver.spans();
        let c = chain(&spans, &run)?;
        // Routing is a child of the job too.
        let job_span = &c[4].span_id;
        spans.iter().any(|s| s.name == "job.route" && &s.parent_id == job_span).then_some(())
    })
    .await;
    if let Err(e) = found {
        anyhow::bail!("{e}; traces received:\n{}", show(&receiver.spans()));
    }
    let stopped = agent.term(T)?;
    assert!(stopped.success(), "the agent stopped with {stopped}:\n{}", agent.log_text());
    ctl.term()?;
    Ok(())
}
