//! Model versions reach real agents through the desired state
//! (docs/rollouts.md): a real controller (TLS, enrollment on) and its
//! broker, in-process agents on simulated hardware. A good version is
//! downloaded, activated, self-tested, confirmed after its health window and
//! serves jobs; a version that fails its self-test and one whose file was
//! damaged on the controller are reverted by the node, which reports FAILED
//! with the reason and keeps serving jobs on the version before; a version
//! over the disk budget is refused before a byte of it is sent; a restart
//! neither loses the version in force nor fetches a failed one again.

use std::path::Path;
use std::time::Duration;

use fleet_agent::AgentConfig;
use fleet_agent::models::ModelStore;
use fleet_proto::v1::{
    DesiredState, GetDesiredStateRequest, JobConstraints, JobStatus, ModelChunk, ModelReport, ModelUpdateState,
    ReportedState, SetDesiredStateRequest, SubmitJobRequest,
};
use fleet_tests::{AgentHandle, agent_config, controller_config, enroll_agent, grpc, wait_for};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

const TEXT: &str = "disk full, data lost";

fn hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// The built-in classifier's files as model `sev`, with a self-test that
/// expects `label` for [`TEXT`] (the model answers "critical").
fn version(v: &str, label: &str) -> anyhow::Result<Vec<ModelChunk>> {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../inference/models/severity");
    let weights = std::fs::read(models.join("model.safetensors"))?;
    let labels = std::fs::read(models.join("labels.txt"))?;
    let manifest = format!(
        "name = \"sev\"\nkind = \"text-classifier\"\nversion = \"{v}\"\n\
         [[files]]\npath = \"model.safetensors\"\nsha256 = \"{}\"\nsize = {}\n\
         [[files]]\npath = \"labels.txt\"\nsha256 = \"{}\"\nsize = {}\n\
         [self_test]\ntolerance = 0.0\n[[self_test.cases]]\ntext = \"{TEXT}\"\nlabel = \"{label}\"\n",
        hex(&weights),
        weights.len(),
        hex(&labels),
        labels.len()
    );
    let chunk = |path: &str, data: Vec<u8>| ModelChunk { path: path.into(), offset: 0, data };
    Ok(vec![
        chunk("model.toml", manifest.into_bytes()),
        chunk("model.safetensors", weights),
        chunk("labels.txt", labels),
    ])
}

struct Fleet {
    c: fleet_controller::Controller,
    dir: tempfile::TempDir,
}

impl Fleet {
    fn node_config(&self, id: &str) -> AgentConfig {
        let mut cfg = agent_config(id, &self.c.mqtt_url, self.dir.path());
        cfg.health.window = Duration::from_secs(2);
        cfg.inference.model_dir = self.dir.path().join("no-models");
        cfg
    }

    async fn set(&self, node: &str, versions: &[(&str, &str)]) -> anyhow::Result<u64> {
        let desired = DesiredState {
            node_id: node.into(),
            model_versions: versions.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
            ..Default::default()
        };
        let req = SetDesiredStateRequest { desired: Some(desired), expected_version: 0 };
        Ok(grpc(&self.c).await?.set_desired_state(req).await?.into_inner().version)
    }

    async fn reported(&self, node: &str) -> anyhow::Result<ReportedState> {
        let req = GetDesiredStateRequest { node_id: node.into() };
        Ok(grpc(&self.c).await?.get_desired_state(req).await?.into_inner().reported.unwrap_or_default())
    }

    /// Waits until `node` reports `sev` in `state` for desired `version`.
    async fn wait_sev(&self, node: &str, version: u64, state: ModelUpdateState) -> anyhow::Result<ModelReport> {
        let what = format!("{node} reports sev {state:?} for desired version {version}");
        wait_for(Duration::from_secs(60), &what, || async {
            let r = self.reported(node).await.ok()?;
            let m = r.models.iter().find(|m| m.name == "sev")?.clone();
            (r.applied_version >= version && m.state == state as i32).then_some(m)
        })
        .await
    }

    async fn job(&self) -> anyhow::Result<fleet_proto::v1::JobView> {
        self.job_of("").await
    }

    /// A job that asks for `version` of sev (any when empty).
    async fn job_of(&self, version: &str) -> anyhow::Result<fleet_proto::v1::JobView> {
        let constraints = JobConstraints { model_version: version.into(), ..Default::default() };
        let req = SubmitJobRequest {
            model: "sev".into(),
            text: TEXT.into(),
            timeout_ms: 20_000,
            constraints: Some(constraints),
            ..Default::default()
        };
        Ok(grpc(&self.c).await?.submit_job(req).await?.into_inner())
    }
}

/// up-1 started again: version 1 still in force, version 2 not fetched again.
async fn restarted(f: &Fleet) -> anyhow::Result<AgentHandle> {
    let served = f.c.metrics.model_bytes_served.get();
    let agent = AgentHandle::spawn(f.node_config("up-1"));
    let m = wait_for(Duration::from_secs(30), "up-1 reports again after its restart", || async {
        let r = f.reported("up-1").await.ok()?;
        r.models.into_iter().find(|m| m.name == "sev" && m.reason.contains("failed here before"))
    })
    .await?;
    assert_eq!((m.version.as_str(), m.state), ("1", ModelUpdateState::ModelUpdateFailed as i32));
    let j = f.job().await?;
    assert_eq!((j.status, j.node_id.as_str()), (JobStatus::Succeeded as i32, "up-1"), "{j:?}");
    assert_eq!(f.c.metrics.model_bytes_served.get(), served, "nothing downloaded again");
    Ok(agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_taken_checked_and_reverted_by_the_nodes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = controller_config(&dir.path().join("controller"), "", "");
    cfg.security.require_enrollment = true;
    let models_dir = cfg.data_dir.join("models");
    let shutdown = CancellationToken::new();
    let c = fleet_controller::Controller::start(cfg, shutdown.clone()).await?;
    let f = Fleet { c, dir };
    let mut admin = grpc(&f.c).await?;
    admin.push_model(tokio_stream::iter(version("1", "critical")?)).await?;
    admin.push_model(tokio_stream::iter(version("2", "info")?)).await?;
    admin.push_model(tokio_stream::iter(version("3", "critical")?)).await?;
    // A disk fault on the controller after the push: the node's sha256 check catches it.
    let damaged = models_dir.join("sev/3/model.safetensors");
    let mut bytes = std::fs::read(&damaged)?;
    bytes[100] ^= 0xff;
    std::fs::write(&damaged, bytes)?;

    let mut agents = Vec::new();
    for id in ["up-1", "up-2", "up-3"] {
        let mut cfg = f.node_config(id);
        if id == "up-3" {
            cfg.models.disk_budget = 1000;
        }
        enroll_agent(&f.c, &cfg).await?;
        agents.push(AgentHandle::spawn(cfg));
    }
    let unknown = f.set("up-1", &[("sev", "9")]).await.unwrap_err().to_string();
    assert!(unknown.contains("push it first"), "{unknown}");

    // A good version: downloaded, self-tested, confirmed, and it serves jobs.
    let v1 = f.set("up-1", &[("sev", "1")]).await?;
    let m = f.wait_sev("up-1", v1, ModelUpdateState::ModelUpdateActive).await?;
    assert_eq!((m.version.as_str(), m.wanted.as_str()), ("1", "1"));
    wait_for(Duration::from_secs(30), "up-1 confirms its desired state", || async {
        f.reported("up-1").await.ok().filter(|r| r.confirmed_version >= v1)
    })
    .await?;
    let j = f.job().await?;
    assert_eq!((j.status, j.node_id.as_str(), j.label.as_str()), (JobStatus::Succeeded as i32, "up-1", "critical"));

    // Its self-test fails: reverted to 1, which keeps serving.
    let v2 = f.set("up-1", &[("sev", "2")]).await?;
    let m = f.wait_sev("up-1", v2, ModelUpdateState::ModelUpdateFailed).await?;
    assert!(m.reason.contains("self-test failed") && m.reason.contains("version 1 runs again"), "{}", m.reason);
    assert_eq!(m.version, "1");
    let j = f.job_of("1").await?;
    assert_eq!((j.status, j.node_id.as_str()), (JobStatus::Succeeded as i32, "up-1"), "{j:?}");
    let reason = &j.attempts[0].reason;
    assert!(reason.contains("runs sev version 1"), "the router says why: {reason}");
    let refused = f.job_of("2").await.unwrap_err();
    assert!(refused.to_string().contains("1 runs another version (up-1)"), "{refused}");

    // A damaged file: refused by its sha256, nothing activated.
    let v3 = f.set("up-2", &[("sev", "3")]).await?;
    let m = f.wait_sev("up-2", v3, ModelUpdateState::ModelUpdateFailed).await?;
    assert!(m.reason.contains("sha256"), "{}", m.reason);
    let store2 = ModelStore::open(&f.dir.path().join("up-2"))?;
    assert!(store2.current("sev").is_none() && !store2.holds("sev", "3"));

    // Over the disk budget: refused with the reason, before the files are sent.
    let v4 = f.set("up-3", &[("sev", "1")]).await?;
    let m = f.wait_sev("up-3", v4, ModelUpdateState::ModelUpdateFailed).await?;
    assert!(m.reason.contains("disk_budget"), "{}", m.reason);
    assert!(ModelStore::open(&f.dir.path().join("up-3"))?.used() == 0);

    // A restart keeps version 1 in force and does not fetch 2 again.
    let first = agents.remove(0);
    first.stop().await?;
    agents.push(restarted(&f).await?);

    for a in agents {
        a.stop().await?;
    }
    shutdown.cancel();
    Ok(())
}
