//! Model versions on the API: `PushModel` and `ListModels` for operators, and
//! the node-facing `ArtifactService` a node downloads a version's files with
//! (a request signed with the node's key, docs/security.md).

use std::pin::Pin;
use std::sync::Arc;

use fleet_proto::v1::artifact_service_server::ArtifactService;
use fleet_proto::v1::{FetchModelFileRequest, ListModelsResponse, ModelChunk, ModelFileInfo, ModelVersion};
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::artifacts::{Artifacts, MAX_CHUNK, Stored};
use crate::link::Verifier;

/// Chunks buffered per download stream.
const FETCH_BUFFER: usize = 4;

/// The API's view of a kept version.
#[must_use]
pub fn version_view(s: &Stored) -> ModelVersion {
    let m = &s.manifest;
    ModelVersion {
        name: m.name.clone(),
        version: m.version.clone(),
        kind: m.kind.as_str().to_owned(),
        files: m
            .files
            .iter()
            .map(|f| ModelFileInfo { path: f.path.clone(), sha256: f.sha256.clone(), size: f.size.unwrap_or(0) })
            .collect(),
        total_bytes: m.total_size(),
        self_test_cases: m.self_test.as_ref().map_or(0, |t| u32::try_from(t.cases.len()).unwrap_or(u32::MAX)),
        pushed_at: super::json::when(s.pushed_unix_ms),
    }
}

/// Receives a pushed version and keeps it.
///
/// # Errors
/// As `Artifacts::publish`, or the stream broke off.
pub async fn push(artifacts: &Artifacts, mut chunks: Streaming<ModelChunk>) -> Result<ModelVersion, Status> {
    let mut incoming = artifacts.incoming()?;
    while let Some(chunk) = chunks.next().await {
        let c = chunk?;
        incoming.write(&c.path, c.offset, &c.data).await?;
    }
    Ok(version_view(&artifacts.publish(incoming).await?))
}

/// Every kept version (of one model when `name` is set).
///
/// # Errors
/// When the model directory cannot be read.
pub async fn list(artifacts: &Artifacts, name: &str) -> Result<ListModelsResponse, Status> {
    let kept = artifacts.list((!name.is_empty()).then_some(name)).await?;
    Ok(ListModelsResponse { versions: kept.iter().map(version_view).collect() })
}

/// The node-facing download service.
pub struct Fetch {
    pub artifacts: Artifacts,
    /// The nodes' enrolled keys.
    pub verifier: Arc<Verifier>,
    /// Bytes of model files sent to nodes.
    pub bytes_served: Counter,
}

impl Fetch {
    /// The service for `artifacts`, checking requests with `verifier`'s keys.
    #[must_use]
    pub fn new(artifacts: Artifacts, verifier: &Arc<Verifier>, metrics: &crate::metrics::Metrics) -> Self {
        Self { artifacts, verifier: verifier.clone(), bytes_served: metrics.model_bytes_served.clone() }
    }
}

#[tonic::async_trait]
impl ArtifactService for Fetch {
    type FetchModelFileStream = Pin<Box<dyn Stream<Item = Result<ModelChunk, Status>> + Send + 'static>>;

    async fn fetch_model_file(
        &self,
        req: Request<FetchModelFileRequest>,
    ) -> Result<Response<Self::FetchModelFileStream>, Status> {
        let r = req.into_inner();
        let key = self.verifier.key_of(&r.node_id).ok_or_else(|| {
            Status::permission_denied(format!("node {:?} is not enrolled here (or was revoked)", r.node_id))
        })?;
        fleet_proto::fetch::verify_fetch(&key, &r, fleet_proto::now_unix_ms())
            .map_err(|e| Status::permission_denied(format!("fetch by {}: {e}", r.node_id)))?;
        // The first chunk is read now, so a bad name, path or offset is this call's error.
        let first = self.artifacts.read(&r.name, &r.version, &r.path, r.offset, MAX_CHUNK).await?;
        tracing::debug!(node_id = %r.node_id, model = %r.name, version = %r.version, path = %r.path, offset = r.offset,
            "Model file download.");
        let (tx, rx) = mpsc::channel(FETCH_BUFFER);
        let (artifacts, served) = (self.artifacts.clone(), self.bytes_served.clone());
        tokio::spawn(async move {
            let (mut data, len) = first;
            let mut offset = r.offset;
            loop {
                let n = data.len() as u64;
                served.inc_by(n);
                let chunk = ModelChunk { path: r.path.clone(), offset, data };
                if n == 0 || tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                offset += n;
                if offset >= len {
                    return;
                }
                match artifacts.read(&r.name, &r.version, &r.path, offset, MAX_CHUNK).await {
                    Ok((d, _)) => data = d,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Every model version a desired state names must be held here: a node
/// cannot download one the controller does not have.
///
/// # Errors
/// `NOT_FOUND` naming the version and how to push it.
pub async fn held(artifacts: &Artifacts, desired: Option<&fleet_proto::v1::DesiredState>) -> Result<(), Status> {
    for (name, version) in desired.map(|d| &d.model_versions).into_iter().flatten() {
        artifacts.get(name, version).await.map_err(|e| {
            let s = Status::from(e);
            Status::new(s.code(), format!("desired.model_versions: {}", s.message()))
        })?;
    }
    Ok(())
}
