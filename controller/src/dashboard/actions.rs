//! What an operator or admin changes from the dashboard: each action is the
//! `FleetService` call it names, with that call's role, checks and audit
//! record (the actor is the session's API token); the page asks for a
//! confirmation before a revoke or a key rotation.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use fleet_proto::v1::fleet_service_server::FleetService;
use fleet_proto::v1::{
    CreateApiTokenRequest, CreateBootstrapTokenRequest, GetDesiredStateRequest, RevokeApiTokenRequest,
    RevokeBootstrapTokenRequest, RevokeNodeRequest, RotateNodeKeyRequest, SetDesiredStateRequest, SubmitJobRequest,
};
use serde::Deserialize;
use serde_json::json;
use tonic::Code;

use super::reply::Reply;
use super::{Dashboard, call};
use crate::api::json::job_json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyForm {
    /// The `[power]` policy as TOML (empty: the agent's own).
    power_policy_toml: String,
}

/// `POST /api/nodes/{id}/policy`: the node's desired state with this power
/// policy, the rest kept (refused if someone changed it meanwhile).
pub async fn set_policy(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(form): Json<PolicyForm>,
) -> Reply {
    let caller = d.changer(&headers, "SetDesiredState").await?;
    let current = match d.api.get_desired_state(call(GetDesiredStateRequest { node_id: id.clone() }, &caller)).await {
        Ok(v) => v.into_inner().desired,
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => return Err(s.into()),
    };
    let expected_version = current.as_ref().map_or(0, |c| c.version);
    let mut desired = current.unwrap_or_default();
    desired.node_id = id;
    desired.power_policy_toml = form.power_policy_toml;
    let r = d
        .api
        .set_desired_state(call(SetDesiredStateRequest { desired: Some(desired), expected_version }, &caller))
        .await?
        .into_inner();
    Ok(Json(json!({"version": r.version})))
}

/// `POST /api/nodes/{id}/revoke`.
pub async fn revoke_node(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let caller = d.changer(&headers, "RevokeNode").await?;
    d.api.revoke_node(call(RevokeNodeRequest { node_id: id }, &caller)).await?;
    Ok(Json(json!({})))
}

/// `POST /api/nodes/{id}/rotate-key`: a new WireGuard key for the node.
pub async fn rotate_key(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let caller = d.changer(&headers, "RotateNodeKey").await?;
    let r = d.api.rotate_node_key(call(RotateNodeKeyRequest { node_id: id }, &caller)).await?.into_inner();
    Ok(Json(json!({"generation": r.generation})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobForm {
    model: String,
    text: String,
}

/// `POST /api/jobs` `{"model", "text"}`: a test job, answered when it settles.
pub async fn submit_job(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Json(f): Json<JobForm>) -> Reply {
    let caller = d.changer(&headers, "SubmitJob").await?;
    let req = SubmitJobRequest { model: f.model, text: f.text, ..Default::default() };
    let j = d.api.submit_job(call(req, &caller)).await?.into_inner();
    Ok(Json(job_json(&j)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenForm {
    name: String,
    role: String,
}

/// `POST /api/api-tokens` `{"name", "role"}`: the secret is in this answer only.
pub async fn create_api_token(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Json(f): Json<ApiTokenForm>,
) -> Reply {
    let caller = d.changer(&headers, "CreateApiToken").await?;
    let req = CreateApiTokenRequest { name: f.name, role: f.role, quota: None };
    let r = d.api.create_api_token(call(req, &caller)).await?.into_inner();
    Ok(Json(json!({"name": r.name, "role": r.role, "token": r.token})))
}

/// `POST /api/api-tokens/{name}/revoke`: its sessions end at their next request.
pub async fn revoke_api_token(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Path(name): Path<String>) -> Reply {
    let caller = d.changer(&headers, "RevokeApiToken").await?;
    d.api.revoke_api_token(call(RevokeApiTokenRequest { name }, &caller)).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapForm {
    /// Lifetime in seconds (0: one hour).
    #[serde(default)]
    ttl_s: u32,
    #[serde(default)]
    labels: HashMap<String, String>,
}

/// `POST /api/bootstrap-tokens`: the secret is in this answer only.
pub async fn create_bootstrap_token(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Json(f): Json<BootstrapForm>,
) -> Reply {
    let caller = d.changer(&headers, "CreateBootstrapToken").await?;
    let req = CreateBootstrapTokenRequest { ttl_s: f.ttl_s, labels: f.labels };
    let r = d.api.create_bootstrap_token(call(req, &caller)).await?.into_inner();
    Ok(Json(json!({"token_id": r.token_id, "token": r.token, "expires_unix_ms": r.expires_unix_ms})))
}

/// `POST /api/bootstrap-tokens/{id}/revoke`.
pub async fn revoke_bootstrap_token(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Reply {
    let caller = d.changer(&headers, "RevokeBootstrapToken").await?;
    d.api.revoke_bootstrap_token(call(RevokeBootstrapTokenRequest { token_id: id }, &caller)).await?;
    Ok(Json(json!({})))
}
