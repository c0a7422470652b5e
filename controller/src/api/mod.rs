//! The gRPC API: the `FleetService` calls (this file), the server that
//! serves them with health, reflection, TLS and the token guard (`server`),
//! and the JSON form of their answers (`json`).

use std::pin::Pin;

pub mod json;
pub mod models;
pub mod server;

use fleet_proto::v1::fleet_service_server::FleetService;
use fleet_proto::v1::{
    ControllerKeyStatus, CreateApiTokenRequest, CreateApiTokenResponse, CreateBootstrapTokenRequest,
    CreateBootstrapTokenResponse, CreateRolloutRequest, DesiredState, DesiredStateView, GetControllerKeyRequest,
    GetDesiredStateRequest, GetJobRequest, GetNodeRequest, GetRolloutRequest, JobView, ListAuditLogRequest,
    ListAuditLogResponse, ListBootstrapTokensRequest, ListBootstrapTokensResponse, ListJobsRequest, ListJobsResponse,
    ListNodesRequest, ListNodesResponse, ListRolloutsRequest, ListRolloutsResponse, Node, QueryTelemetryRequest,
    QueryTelemetryResponse, RevokeApiTokenRequest, RevokeApiTokenResponse, RevokeBootstrapTokenRequest,
    RevokeBootstrapTokenResponse, RevokeNodeRequest, RevokeNodeResponse, Rollout, RolloutActionRequest,
    RotateControllerKeyRequest, RotateNodeKeyRequest, RotateNodeKeyResponse, SetDesiredStateRequest,
    SetTokenQuotaRequest, SetTokenQuotaResponse, SubmitJobRequest, WatchNodesRequest,
};
use fleet_proto::v1::{
    GetUsageRequest, GetUsageResponse, ListModelsRequest, ListModelsResponse, ModelChunk, ModelVersion,
};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::ControllerError;
use crate::desired::DesiredStates;
use crate::registry::Registry;
use crate::security::guard::Caller;
use crate::store::Store;
use crate::usage::Usage;

/// Points a query returns when the caller sets no limit, and at most.
const DEFAULT_LIMIT: u32 = 10_000;
const MAX_LIMIT: u32 = 1_000_000;
/// Widest bucket accepted (31 days).
const MAX_BUCKET_S: u32 = 31 * 86_400;
/// Messages buffered per WatchNodes stream.
const WATCH_STREAM_BUFFER: usize = 256;

/// The service implementation.
pub struct Api {
    pub registry: Registry,
    pub store: Store,
    /// Ends open WatchNodes streams when the controller stops, so shutdown never waits on a client.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Checks, stores and publishes desired states.
    pub desired: DesiredStates,
    /// Routes and tracks inference jobs.
    pub jobs: crate::jobs::JobManager,
    /// Tokens, audit, enrollment.
    pub security: std::sync::Arc<crate::security::service::Security>,
    /// WireGuard key rotations.
    pub rotation: std::sync::Arc<crate::security::rotate::Rotation>,
    /// Rotations of the controller's own signing key.
    pub controller_key: std::sync::Arc<crate::security::controller_key::ControllerKey>,
    /// What each API token uses, and its quotas.
    pub usage: Usage,
    /// Model versions kept for nodes.
    pub artifacts: crate::artifacts::Artifacts,
    /// Staged rollouts.
    pub rollouts: crate::rollouts::Rollouts,
}

/// The caller the guard put on the call: its name and quotas (none when no guard ran).
fn caller<T>(req: &Request<T>) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or_else(|| Caller {
        name: "unknown".into(),
        role: crate::auth::Role::Viewer,
        quota: crate::auth::Quota::default(),
    })
}

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

fn check_node_id(id: &str) -> Result<(), Status> {
    fleet_proto::validate_node_id(id).map_err(|e| bad("node_id", e))
}

#[tonic::async_trait]
impl FleetService for Api {
    async fn list_nodes(&self, req: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        let state = req.into_inner().state;
        let nodes = self
            .registry
            .list()
            .into_iter()
            .filter(|n| state == 0 || n.status.as_ref().is_some_and(|s| s.state == state))
            .collect();
        Ok(Response::new(ListNodesResponse { nodes }))
    }

    async fn get_node(&self, req: Request<GetNodeRequest>) -> Result<Response<Node>, Status> {
        let id = req.into_inner().node_id;
        check_node_id(&id)?;
        self.registry.get(&id).map(Response::new).ok_or_else(|| ControllerError::UnknownNode(id).into())
    }

    type WatchNodesStream = Pin<Box<dyn Stream<Item = Result<Node, Status>> + Send + 'static>>;

    async fn watch_nodes(&self, _req: Request<WatchNodesRequest>) -> Result<Response<Self::WatchNodesStream>, Status> {
        let (tx, rx) = mpsc::channel(WATCH_STREAM_BUFFER);
        let mut changes = self.registry.subscribe();
        let registry = self.registry.clone();
        let shutdown = self.shutdown.clone();
        // Ends when the client goes away (send fails) or the controller stops.
        tokio::spawn(async move {
            tokio::select! {
                () = forward_changes(registry, &mut changes, &tx) => {}
                () = shutdown.cancelled() => {}
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn set_desired_state(&self, req: Request<SetDesiredStateRequest>) -> Result<Response<DesiredState>, Status> {
        let actor = caller(&req).name;
        let target = req.get_ref().desired.as_ref().map(|d| d.node_id.clone()).unwrap_or_default();
        let r = match models::held(&self.artifacts, req.get_ref().desired.as_ref()).await {
            Ok(()) => self.desired.set(req.into_inner()).await,
            Err(e) => Err(e),
        };
        self.security.audit.record_result(&actor, "SetDesiredState", &target, &r).await;
        r.map(Response::new)
    }

    async fn get_desired_state(
        &self,
        req: Request<GetDesiredStateRequest>,
    ) -> Result<Response<DesiredStateView>, Status> {
        let id = req.into_inner().node_id;
        check_node_id(&id)?;
        let desired = self.desired.get(&id).await.map_err(Status::from)?;
        let reported = self.registry.get(&id).and_then(|n| n.reported);
        if desired.is_none() && reported.is_none() {
            return Err(ControllerError::UnknownNode(id).into());
        }
        Ok(Response::new(DesiredStateView { desired, reported }))
    }

    async fn submit_job(&self, req: Request<SubmitJobRequest>) -> Result<Response<JobView>, Status> {
        let who = caller(&req);
        // The job's trace: a child of the caller's when it sent a `traceparent` (docs/tracing.md).
        let span = tracing::debug_span!("SubmitJob", api.token = %who.name);
        if let Some(tp) = req.metadata().get("traceparent").and_then(|v| v.to_str().ok()) {
            fleet_net::otel::follow(&span, tp);
        }
        let submitted = match self.usage.admit_job(&who.name, &who.quota).await {
            Ok(admitted) => {
                let r = span.in_scope(|| self.jobs.submit(req.into_inner(), &who.name));
                if r.is_err() {
                    self.usage.refund_job(&who.name, admitted);
                }
                r
            }
            Err(e) => Err(Status::from(e)),
        };
        let target = submitted.as_ref().map(|(v, _)| v.job_id.clone()).unwrap_or_default();
        self.security.audit.record_result(&who.name, "SubmitJob", &target, &submitted).await;
        let (view, done) = submitted?;
        let Some(done) = done else { return Ok(Response::new(view)) };
        // The job manager ends every job by its deadline; the margin only guards against a bug.
        let wait = u64::try_from(view.deadline_unix_ms - view.submitted_unix_ms).unwrap_or(0) + 5_000;
        match tokio::time::timeout(std::time::Duration::from_millis(wait), done).await {
            Ok(Ok(v)) => Ok(Response::new(v)),
            _ => Err(Status::internal(format!("job {} did not end by its deadline; see GetJob", view.job_id))),
        }
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<JobView>, Status> {
        let id = req.into_inner().job_id;
        if id.is_empty() || id.len() > 64 {
            return Err(bad("job_id", "give the id SubmitJob returned"));
        }
        match self.jobs.get(&id).await.map_err(Status::from)? {
            Some(v) => Ok(Response::new(v)),
            None => Err(Status::not_found(format!("no job {id} (finished jobs are kept for jobs.retention)"))),
        }
    }

    async fn list_jobs(&self, req: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let q = req.into_inner();
        if !q.node_id.is_empty() {
            check_node_id(&q.node_id)?;
        }
        if q.limit > 10_000 {
            return Err(bad("limit", "at most 10000"));
        }
        let limit = if q.limit == 0 { 100 } else { q.limit };
        let jobs = self.jobs.list(&q.node_id, q.status, limit).await.map_err(Status::from)?;
        Ok(Response::new(ListJobsResponse { jobs }))
    }

    async fn query_telemetry(
        &self,
        req: Request<QueryTelemetryRequest>,
    ) -> Result<Response<QueryTelemetryResponse>, Status> {
        let who = caller(&req);
        let q = req.into_inner();
        check_node_id(&q.node_id)?;
        if q.metric.is_empty() || q.metric.len() > 128 {
            return Err(bad("metric", "give a metric name such as cpu.usage_pct (1-128 characters)"));
        }
        let end = if q.end_unix_ms == 0 { fleet_proto::now_unix_ms() + 1 } else { q.end_unix_ms };
        if q.start_unix_ms < 0 || end <= q.start_unix_ms {
            return Err(bad("start_unix_ms", format!("must be >= 0 and before end ({end})")));
        }
        if q.bucket_s > MAX_BUCKET_S {
            return Err(bad("bucket_s", format!("at most {MAX_BUCKET_S} (31 days)")));
        }
        if q.limit > MAX_LIMIT {
            return Err(bad("limit", format!("at most {MAX_LIMIT}")));
        }
        let limit = if q.limit == 0 { DEFAULT_LIMIT } else { q.limit };
        self.usage.admit_query(&who.name, &who.quota).map_err(Status::from)?;
        let r = self
            .store
            .query(&q.node_id, &q.metric, q.start_unix_ms, end, q.bucket_s, limit as usize)
            .await
            .map_err(Status::from)?;
        self.usage.count_rows(&who.name, r.points.len());
        Ok(Response::new(QueryTelemetryResponse {
            node_id: q.node_id,
            metric: q.metric,
            bucket_s: q.bucket_s,
            points: r.points,
            truncated: r.truncated,
        }))
    }
    async fn create_bootstrap_token(
        &self,
        req: Request<CreateBootstrapTokenRequest>,
    ) -> Result<Response<CreateBootstrapTokenResponse>, Status> {
        self.security.create_bootstrap_token(req).await
    }

    async fn list_bootstrap_tokens(
        &self,
        _req: Request<ListBootstrapTokensRequest>,
    ) -> Result<Response<ListBootstrapTokensResponse>, Status> {
        self.security.list_bootstrap_tokens().await
    }

    async fn revoke_bootstrap_token(
        &self,
        req: Request<RevokeBootstrapTokenRequest>,
    ) -> Result<Response<RevokeBootstrapTokenResponse>, Status> {
        self.security.revoke_bootstrap_token(req).await
    }

    async fn create_api_token(
        &self,
        req: Request<CreateApiTokenRequest>,
    ) -> Result<Response<CreateApiTokenResponse>, Status> {
        self.security.create_api_token(req).await
    }

    async fn revoke_api_token(
        &self,
        req: Request<RevokeApiTokenRequest>,
    ) -> Result<Response<RevokeApiTokenResponse>, Status> {
        self.security.revoke_api_token(req).await
    }

    async fn set_token_quota(
        &self,
        req: Request<SetTokenQuotaRequest>,
    ) -> Result<Response<SetTokenQuotaResponse>, Status> {
        self.security.set_token_quota(req).await
    }

    async fn get_usage(&self, req: Request<GetUsageRequest>) -> Result<Response<GetUsageResponse>, Status> {
        self.usage.report(req.get_ref()).await.map(Response::new).map_err(Status::from)
    }

    async fn list_audit_log(
        &self,
        req: Request<ListAuditLogRequest>,
    ) -> Result<Response<ListAuditLogResponse>, Status> {
        self.security.list_audit_log(req.into_inner()).await
    }

    async fn revoke_node(&self, req: Request<RevokeNodeRequest>) -> Result<Response<RevokeNodeResponse>, Status> {
        let id = req.get_ref().node_id.clone();
        let r = self.security.revoke_node(req).await?;
        // Offline in the live view: its jobs go elsewhere, the router passes it by.
        if let Some(mut s) = self.registry.get(&id).and_then(|n| n.status) {
            s.state = fleet_proto::v1::NodeState::Offline as i32;
            self.registry.update_status(s);
        }
        Ok(r)
    }

    async fn rotate_node_key(
        &self,
        req: Request<RotateNodeKeyRequest>,
    ) -> Result<Response<RotateNodeKeyResponse>, Status> {
        let actor = caller(&req).name;
        let id = req.into_inner().node_id;
        let r = self.rotation.start(&id).await;
        self.security.audit.record_result(&actor, "RotateNodeKey", &id, &r).await;
        r.map(|generation| Response::new(RotateNodeKeyResponse { generation }))
    }

    async fn get_controller_key(
        &self,
        _req: Request<GetControllerKeyRequest>,
    ) -> Result<Response<ControllerKeyStatus>, Status> {
        self.controller_key.status().await.map(Response::new)
    }

    async fn rotate_controller_key(
        &self,
        req: Request<RotateControllerKeyRequest>,
    ) -> Result<Response<ControllerKeyStatus>, Status> {
        let actor = caller(&req).name;
        let finish_now = req.into_inner().finish_now;
        let r = self.controller_key.rotate(finish_now).await;
        let what = if finish_now { "finish now" } else { "open" };
        self.security.audit.record_result(&actor, "RotateControllerKey", what, &r).await;
        r.map(Response::new)
    }

    async fn push_model(&self, req: Request<tonic::Streaming<ModelChunk>>) -> Result<Response<ModelVersion>, Status> {
        let actor = caller(&req).name;
        let r = models::push(&self.artifacts, req.into_inner()).await;
        let target = r.as_ref().map(|v| format!("{} {}", v.name, v.version)).unwrap_or_default();
        self.security.audit.record_result(&actor, "PushModel", &target, &r).await;
        r.map(Response::new)
    }

    async fn list_models(&self, req: Request<ListModelsRequest>) -> Result<Response<ListModelsResponse>, Status> {
        models::list(&self.artifacts, &req.into_inner().name).await.map(Response::new)
    }

    async fn create_rollout(&self, req: Request<CreateRolloutRequest>) -> Result<Response<Rollout>, Status> {
        let actor = caller(&req).name;
        let r = self.rollouts.create(req.into_inner(), &actor).await;
        let target = r.as_ref().map(|r| r.rollout_id.clone()).unwrap_or_default();
        self.security.audit.record_result(&actor, "CreateRollout", &target, &r).await;
        r.map(Response::new)
    }

    async fn get_rollout(&self, req: Request<GetRolloutRequest>) -> Result<Response<Rollout>, Status> {
        self.rollouts.get(&req.into_inner().rollout_id).await.map(Response::new)
    }

    async fn list_rollouts(
        &self,
        _req: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        Ok(Response::new(ListRolloutsResponse { rollouts: self.rollouts.list().await? }))
    }

    async fn pause_rollout(&self, req: Request<RolloutActionRequest>) -> Result<Response<Rollout>, Status> {
        self.rollout_action(req, "PauseRollout").await
    }

    async fn resume_rollout(&self, req: Request<RolloutActionRequest>) -> Result<Response<Rollout>, Status> {
        self.rollout_action(req, "ResumeRollout").await
    }

    async fn abort_rollout(&self, req: Request<RolloutActionRequest>) -> Result<Response<Rollout>, Status> {
        self.rollout_action(req, "AbortRollout").await
    }
}

impl Api {
    /// Pauses, resumes or aborts a rollout, audited.
    async fn rollout_action(
        &self,
        req: Request<RolloutActionRequest>,
        what: &str,
    ) -> Result<Response<Rollout>, Status> {
        let actor = caller(&req).name;
        let id = req.into_inner().rollout_id;
        let r = match what {
            "PauseRollout" => self.rollouts.pause(&id, &actor).await,
            "ResumeRollout" => self.rollouts.resume(&id, &actor).await,
            _ => self.rollouts.abort(&id, &actor).await,
        };
        self.security.audit.record_result(&actor, what, &id, &r).await;
        r.map(Response::new)
    }
}

/// Sends the whole view, then every change; the whole view again after a lag.
async fn forward_changes(
    registry: Registry,
    changes: &mut broadcast::Receiver<Node>,
    tx: &mpsc::Sender<Result<Node, Status>>,
) {
    for n in registry.list() {
        if tx.send(Ok(n)).await.is_err() {
            return;
        }
    }
    loop {
        match changes.recv().await {
            Ok(n) => {
                if tx.send(Ok(n)).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Too slow to follow every change: send the whole view again.
                for n in registry.list() {
                    if tx.send(Ok(n)).await.is_err() {
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
