//! What the dashboard reads: the fleet table, one node (its status, desired
//! and reported state, events, recent jobs, enrollment and keys, chart
//! points), recent jobs with the edge/cloud share, tokens and the audit log.
//! Each stands for the `FleetService` call it makes, with that call's role.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use fleet_proto::v1::fleet_service_server::FleetService;
use fleet_proto::v1::{
    GetDesiredStateRequest, GetNodeRequest, GetUsageRequest, JobView, ListAuditLogRequest, ListBootstrapTokensRequest,
    ListJobsRequest, QueryTelemetryRequest, Site,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Code;

use super::fleet::{FleetQuery, page};
use super::reply::Reply;
use super::{Dashboard, call};
use crate::api::json::{audit_json, bootstrap_tokens_json, desired_json, event_json, job_json, node_json, when};
use crate::registry::profile_word;

/// Recent jobs a node's page shows.
const NODE_JOBS: u32 = 10;
/// Jobs the jobs page shows by default, and at most.
const JOBS: u32 = 50;
const MAX_JOBS: u32 = 1000;

/// `GET /api/fleet?state=&profile=&label=&q=&sort=&desc=&page=&per_page=`.
pub async fn fleet(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Query(q): Query<FleetQuery>) -> Reply {
    d.reader(&headers, "ListNodes").await?;
    let p = d.api.registry.read(|nodes| page(nodes.values(), &q));
    Ok(Json(serde_json::to_value(p).unwrap_or_default()))
}

/// `GET /api/nodes/{id}`.
pub async fn node(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Path(id): Path<String>) -> Reply {
    let caller = d.reader(&headers, "GetNode").await?;
    let node = d.api.get_node(call(GetNodeRequest { node_id: id.clone() }, &caller)).await?.into_inner();
    let desired = match d.api.get_desired_state(call(GetDesiredStateRequest { node_id: id.clone() }, &caller)).await {
        Ok(v) => desired_json(&v.into_inner()),
        Err(s) if s.code() == Code::NotFound => Value::Null,
        Err(s) => return Err(s.into()),
    };
    let jobs = d
        .api
        .list_jobs(call(ListJobsRequest { node_id: id.clone(), limit: NODE_JOBS, ..Default::default() }, &caller))
        .await?
        .into_inner()
        .jobs;
    let identity = d.api.store.identity(&id).await.map_err(tonic::Status::from)?.map(|i| {
        json!({
            "enrolled": when(i.enrolled_unix_ms), "revoked": i.revoked_unix_ms.map(when),
            "signing_key": i.signing_key, "wg_public_key": i.wg_public_key, "wg_next_key": i.wg_next_key,
            "overlay_address": i.overlay_address.to_string(), "labels": i.labels,
        })
    });
    let status = node.status.clone().unwrap_or_default();
    Ok(Json(json!({
        "node": node_json(&node),
        "profile": profile_word(&node),
        "controller_key_generation": status.controller_key_generation,
        "wg_generation": node.reported.as_ref().map_or(0, |r| r.wg_generation),
        "desired": desired,
        "events": d.api.registry.events(&id).iter().map(event_json).collect::<Vec<_>>(),
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
        "identity": identity,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartQuery {
    metric: String,
    /// `15m` (raw samples), `24h` (5-minute buckets) or `7d` (hourly rollups).
    #[serde(default)]
    range: Option<String>,
}

/// `GET /api/nodes/{id}/telemetry?metric=cpu.usage_pct&range=15m|24h|7d`.
pub async fn telemetry(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ChartQuery>,
) -> Reply {
    let caller = d.reader(&headers, "QueryTelemetry").await?;
    let (span, bucket_s) = match q.range.as_deref().unwrap_or("15m") {
        "15m" => (Duration::from_secs(15 * 60), 0),
        "24h" => (Duration::from_secs(86_400), 300),
        "7d" => (Duration::from_secs(7 * 86_400), 3600),
        other => {
            return Err(tonic::Status::invalid_argument(format!("range {other:?}: use 15m, 24h or 7d")).into());
        }
    };
    let now = fleet_proto::now_unix_ms();
    let start = now - i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    let r = QueryTelemetryRequest {
        node_id: id,
        metric: q.metric,
        start_unix_ms: start,
        end_unix_ms: 0,
        bucket_s,
        limit: 5000,
    };
    let r = d.api.query_telemetry(call(r, &caller)).await?.into_inner();
    Ok(Json(crate::api::json::telemetry_json(&r)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    #[serde(default)]
    limit: u32,
}

fn joint(j: &JobView) -> bool {
    j.attempts.iter().any(|a| a.reason.starts_with("joint inference"))
}

/// `GET /api/jobs?limit=`: recent jobs, where they ran, the share of edge
/// and cloud among them and how many were re-run on the cloud (joint inference).
pub async fn jobs(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Query(q): Query<JobsQuery>) -> Reply {
    let caller = d.reader(&headers, "ListJobs").await?;
    let limit = if q.limit == 0 { JOBS } else { q.limit.min(MAX_JOBS) };
    let jobs = d.api.list_jobs(call(ListJobsRequest { limit, ..Default::default() }, &caller)).await?.into_inner().jobs;
    let on = |site: Site| jobs.iter().filter(|j| j.site == site as i32).count();
    Ok(Json(json!({
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
        "share": {"edge": on(Site::Edge), "cloud": on(Site::Cloud)},
        "joint": jobs.iter().filter(|j| joint(j)).count(),
    })))
}

/// `GET /api/security` (admins): API tokens with their role, and bootstrap tokens (never a secret).
pub async fn security(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Reply {
    let caller = d.reader(&headers, "GetUsage").await?;
    let usage =
        d.api.get_usage(call(GetUsageRequest { hours: 1, days: 1, ..Default::default() }, &caller)).await?.into_inner();
    let boot = d.api.list_bootstrap_tokens(call(ListBootstrapTokensRequest::default(), &caller)).await?.into_inner();
    let api_tokens: Vec<Value> =
        usage.tokens.iter().map(|t| json!({"name": t.token, "role": t.role, "revoked": t.revoked})).collect();
    Ok(Json(json!({
        "api_tokens": api_tokens,
        "bootstrap_tokens": bootstrap_tokens_json(&boot.tokens, fleet_proto::now_unix_ms()),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    limit: u32,
}

/// `GET /api/audit?limit=`: newest first.
pub async fn audit(State(d): State<Arc<Dashboard>>, headers: HeaderMap, Query(q): Query<AuditQuery>) -> Reply {
    let caller = d.reader(&headers, "ListAuditLog").await?;
    let r = d.api.list_audit_log(call(ListAuditLogRequest { since_unix_ms: 0, limit: q.limit }, &caller)).await?;
    Ok(Json(json!({"records": audit_json(&r.into_inner().records)})))
}
