//! The access-control calls of `FleetService`: bootstrap and API tokens, the
//! audit log, node revocation (enrollment itself is in `enroll`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fleet_proto::v1::{
    AuditRecord, BootstrapTokenInfo, CreateApiTokenRequest, CreateApiTokenResponse, CreateBootstrapTokenRequest,
    CreateBootstrapTokenResponse, ListAuditLogRequest, ListAuditLogResponse, ListBootstrapTokensResponse,
    RevokeApiTokenRequest, RevokeApiTokenResponse, RevokeBootstrapTokenRequest, RevokeBootstrapTokenResponse,
    RevokeNodeRequest, RevokeNodeResponse, SetTokenQuotaRequest, SetTokenQuotaResponse, TokenQuota,
};
use tonic::{Request, Response, Status};

use super::SecurityConfig;
use super::audit::Auditor;
use super::guard::{Caller, Guard};
use crate::auth::{API_PREFIX, BOOTSTRAP_PREFIX, Quota, Role, new_token};
use crate::clock::Clock;
use crate::store::Store;
use crate::store::security::BootstrapToken;

/// Prefix of a node's broker password.
pub const BROKER_PREFIX: &str = "fbp";
/// Longest bootstrap token lifetime.
const MAX_TTL_S: u32 = 30 * 86_400;

/// What the controller tells enrolling nodes about itself.
#[derive(Debug, Clone)]
pub struct NodeFacing {
    /// Broker URL for nodes.
    pub broker_url: String,
    /// The controller's WireGuard public key (base64) and endpoint (empty: no overlay).
    pub wg_public_key: String,
    pub wg_endpoint: String,
    /// The controller's signing keys: the one that signs now is handed out.
    pub sealer: Arc<crate::link::seal::Sealer>,
}

/// Shared state of the access-control calls.
pub struct Security {
    pub store: Store,
    pub guard: Arc<Guard>,
    pub audit: Auditor,
    pub cfg: SecurityConfig,
    pub facing: NodeFacing,
    /// The time expiry is judged at: never below what was seen (`crate::clock`).
    pub clock: Arc<Clock>,
    /// Called with each node enrolled or revoked (signature keys, broker, WireGuard).
    pub on_change: tokio::sync::broadcast::Sender<String>,
    /// Mosquitto's dynamic security, when the controller manages it.
    pub dynsec: Option<super::dynsec::Dynsec>,
}

fn caller<T>(req: &Request<T>) -> String {
    req.extensions().get::<Caller>().map_or_else(|| "unknown".to_owned(), |c| c.name.clone())
}

fn labels_text(labels: &BTreeMap<String, String>) -> Result<String, Status> {
    for (k, v) in labels {
        let ok =
            |s: &str| !s.is_empty() && s.len() <= 64 && !s.contains([',', '=']) && !s.chars().any(char::is_control);
        if !ok(k) || !(v.is_empty() || ok(v)) {
            return Err(Status::invalid_argument(format!(
                "labels: {k:?}={v:?} is not a label: 1-64 characters, no ',' or '='"
            )));
        }
    }
    Ok(labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
}

pub(super) fn labels_map(text: &str) -> HashMap<String, String> {
    text.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn token_info(t: BootstrapToken) -> BootstrapTokenInfo {
    BootstrapTokenInfo {
        labels: labels_map(&t.labels),
        token_id: t.token_id,
        created_unix_ms: t.created_unix_ms,
        expires_unix_ms: t.expires_unix_ms,
        used_unix_ms: t.used_unix_ms.unwrap_or(0),
        used_by: t.used_by.unwrap_or_default(),
        revoked_unix_ms: t.revoked_unix_ms.unwrap_or(0),
    }
}

/// A token's quotas as the API shows them: every field set.
fn quota_message(q: &Quota) -> TokenQuota {
    TokenQuota {
        jobs_per_day: Some(q.jobs_per_day),
        inference_s_per_day: Some(q.inference_s_per_day),
        queries_per_minute: Some(q.queries_per_minute),
    }
}

/// The quotas of a new token: absent fields unlimited.
fn quota_given(q: Option<&TokenQuota>) -> Result<Quota, Status> {
    let q = q.cloned().unwrap_or_default();
    let quota = Quota {
        jobs_per_day: q.jobs_per_day.unwrap_or(0),
        inference_s_per_day: q.inference_s_per_day.unwrap_or(0),
        queries_per_minute: q.queries_per_minute.unwrap_or(0),
    };
    quota.check().map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(quota)
}

pub(super) fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "Access-control call failed.");
    Status::unavailable("the controller's store is unavailable; retry later")
}

impl Security {
    pub async fn create_bootstrap_token(
        &self,
        req: Request<CreateBootstrapTokenRequest>,
    ) -> Result<Response<CreateBootstrapTokenResponse>, Status> {
        let who = caller(&req);
        let q = req.into_inner();
        let r = async {
            if q.ttl_s > MAX_TTL_S {
                return Err(Status::invalid_argument(format!("ttl_s: at most {MAX_TTL_S} (30 days)")));
            }
            let ttl_ms = if q.ttl_s == 0 {
                i64::try_from(self.cfg.bootstrap_ttl.as_millis()).unwrap_or(i64::MAX)
            } else {
                i64::from(q.ttl_s) * 1000
            };
            let labels = labels_text(&q.labels.into_iter().collect())?;
            let (token, hash) = new_token(BOOTSTRAP_PREFIX).map_err(internal)?;
            let token_id = hash[..12].to_owned();
            let now = self.clock.now_ms();
            let expires = now.saturating_add(ttl_ms);
            // The mark first: a restart right after with the clock set back cannot
            // stretch this token.
            self.store.raise_clock_high_water(now).await.map_err(internal)?;
            self.store.create_bootstrap_token(&token_id, &hash, &labels, now, expires).await.map_err(internal)?;
            Ok(CreateBootstrapTokenResponse { token_id, token: token.expose().to_owned(), expires_unix_ms: expires })
        }
        .await;
        let target = r.as_ref().map(|t| t.token_id.clone()).unwrap_or_default();
        self.audit.record_result(&who, "CreateBootstrapToken", &target, &r).await;
        r.map(Response::new)
    }

    pub async fn list_bootstrap_tokens(&self) -> Result<Response<ListBootstrapTokensResponse>, Status> {
        let tokens = self.store.list_bootstrap_tokens().await.map_err(internal)?;
        Ok(Response::new(ListBootstrapTokensResponse { tokens: tokens.into_iter().map(token_info).collect() }))
    }

    pub async fn revoke_bootstrap_token(
        &self,
        req: Request<RevokeBootstrapTokenRequest>,
    ) -> Result<Response<RevokeBootstrapTokenResponse>, Status> {
        let who = caller(&req);
        let id = req.into_inner().token_id;
        let r = match self.store.revoke_bootstrap_token(&id, fleet_proto::now_unix_ms()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Status::not_found(format!(
                "no unused bootstrap token {id:?} (fleetctl tokens list shows the ids; used tokens cannot be revoked, revoke the node)"
            ))),
            Err(e) => Err(internal(e)),
        };
        self.audit.record_result(&who, "RevokeBootstrapToken", &id, &r).await;
        r.map(|()| Response::new(RevokeBootstrapTokenResponse {}))
    }

    pub async fn create_api_token(
        &self,
        req: Request<CreateApiTokenRequest>,
    ) -> Result<Response<CreateApiTokenResponse>, Status> {
        let who = caller(&req);
        let q = req.into_inner();
        let r = async {
            let name_ok = !q.name.is_empty()
                && q.name.len() <= 64
                && q.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
            if !name_ok {
                return Err(Status::invalid_argument("name: 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.', '@'"));
            }
            let role = Role::parse(&q.role).map_err(|e| Status::invalid_argument(format!("role: {e}")))?;
            let quota = quota_given(q.quota.as_ref())?;
            let (token, hash) = new_token(API_PREFIX).map_err(internal)?;
            match self.store.create_api_token(&q.name, &hash, (role, &quota), fleet_proto::now_unix_ms()).await {
                Ok(()) => {}
                Err(crate::ControllerError::Db(e))
                    if e.as_database_error().is_some_and(|d| d.is_unique_violation()) =>
                {
                    return Err(Status::already_exists(format!(
                        "an API token named {:?} exists (or existed: names are not reused); choose another name",
                        q.name
                    )));
                }
                Err(e) => return Err(internal(e)),
            }
            Ok(CreateApiTokenResponse {
                name: q.name.clone(),
                role: role.as_str().into(),
                token: token.expose().into(),
                quota: Some(quota_message(&quota)),
            })
        }
        .await;
        self.audit.record_result(&who, "CreateApiToken", &q.name, &r).await;
        r.map(Response::new)
    }

    pub async fn revoke_api_token(
        &self,
        req: Request<RevokeApiTokenRequest>,
    ) -> Result<Response<RevokeApiTokenResponse>, Status> {
        let who = caller(&req);
        let name = req.into_inner().name;
        let r = match self.store.revoke_api_token(&name, fleet_proto::now_unix_ms()).await {
            Ok(true) => {
                self.guard.forget();
                Ok(())
            }
            Ok(false) => Err(Status::not_found(format!("no live API token named {name:?}"))),
            Err(e) => Err(internal(e)),
        };
        self.audit.record_result(&who, "RevokeApiToken", &name, &r).await;
        r.map(|()| Response::new(RevokeApiTokenResponse {}))
    }

    /// Sets the quotas given of a live API token (absent ones stay); the
    /// guard forgets its cached lookups, so the new quotas apply at once here.
    pub async fn set_token_quota(
        &self,
        req: Request<SetTokenQuotaRequest>,
    ) -> Result<Response<SetTokenQuotaResponse>, Status> {
        let who = caller(&req);
        let q = req.into_inner();
        let r = async {
            let given = q.quota.unwrap_or_default();
            let (j, i, m) = (given.jobs_per_day, given.inference_s_per_day, given.queries_per_minute);
            quota_given(Some(&given))?;
            if j.is_none() && i.is_none() && m.is_none() {
                return Err(Status::invalid_argument(
                    "quota: give at least one of jobs_per_day, inference_s_per_day, queries_per_minute (0: unlimited)",
                ));
            }
            match self.store.set_token_quota(&q.name, j, i, m).await.map_err(internal)? {
                Some(quota) => {
                    self.guard.forget();
                    Ok(SetTokenQuotaResponse { name: q.name.clone(), quota: Some(quota_message(&quota)) })
                }
                None => Err(Status::not_found(format!("no live API token named {:?}", q.name))),
            }
        }
        .await;
        self.audit.record_result(&who, "SetTokenQuota", &q.name, &r).await;
        r.map(Response::new)
    }

    pub async fn list_audit_log(&self, q: ListAuditLogRequest) -> Result<Response<ListAuditLogResponse>, Status> {
        if q.limit > 10_000 {
            return Err(Status::invalid_argument("limit: at most 10000"));
        }
        let limit = if q.limit == 0 { 100 } else { q.limit };
        let rows = self.store.list_audit(q.since_unix_ms, limit).await.map_err(internal)?;
        let records = rows
            .into_iter()
            .map(|e| AuditRecord {
                at_unix_ms: e.at_unix_ms,
                actor: e.actor,
                action: e.action,
                target: e.target,
                result: e.result,
            })
            .collect();
        Ok(Response::new(ListAuditLogResponse { records }))
    }

    /// Marks the node revoked; the caller re-routes its jobs. The broker and
    /// WireGuard follow through `on_change`.
    pub async fn revoke_node(&self, req: Request<RevokeNodeRequest>) -> Result<Response<RevokeNodeResponse>, Status> {
        let who = caller(&req);
        let id = req.into_inner().node_id;
        let r = async {
            fleet_proto::validate_node_id(&id).map_err(|e| Status::invalid_argument(format!("node_id: {e}")))?;
            if self.store.revoke_identity(&id, fleet_proto::now_unix_ms()).await.map_err(internal)? {
                if let Some(d) = &self.dynsec
                    && !d.remove_node(&id)
                {
                    tracing::error!(node_id = %id, "Cannot queue the broker client's removal; it is retried at the next connect.");
                }
                let _ = self.on_change.send(id.clone());
                tracing::info!(node_id = %id, "Node revoked.");
                Ok(())
            } else {
                Err(Status::not_found(format!("node {id} is not enrolled, or was revoked already")))
            }
        }
        .await;
        self.audit.record_result(&who, "RevokeNode", &id, &r).await;
        r.map(|()| Response::new(RevokeNodeResponse {}))
    }
}
