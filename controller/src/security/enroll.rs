//! Enrollment (docs/security.md): the open `EnrollmentService` that turns a
//! one-time bootstrap token and a node's public keys into its identity,
//! overlay address and broker credentials; and the first admin API token.

use std::sync::Arc;

use fleet_proto::v1::enrollment_service_server::EnrollmentService;
use fleet_proto::v1::{BrokerCredentials, EnrollRequest, EnrollResponse, WireGuardPeer};
use tonic::{Request, Response, Status};

use super::service::{BROKER_PREFIX, Security, internal, labels_map};
use crate::auth::{API_PREFIX, Role, Secret, hash_token, new_token};
use crate::store::Store;
use crate::store::security::NodeIdentity;

impl Security {
    pub(super) async fn enroll(&self, q: EnrollRequest) -> Result<EnrollResponse, Status> {
        let (wg, signing, node_id) = check_request(&q)?;
        let token = q.token.trim();
        if self.store.identity(&node_id).await.map_err(internal)?.is_some() {
            return Err(Status::already_exists(format!(
                "node id {node_id} is enrolled already (ids are never reused, even after revoke); give this node another node_id"
            )));
        }
        let hash = hash_token(token);
        let now = self.clock.now_ms();
        let used = self
            .store
            .use_bootstrap_token(&hash, &node_id, now)
            .await
            .map_err(internal)?
            .map_err(|why| Status::permission_denied(why.to_string()))?;
        let (base, prefix) = self.cfg.overlay().map_err(|e| Status::internal(e.to_string()))?;
        let overlay = self.store.allocate_overlay_address(base, prefix, &node_id, now).await.map_err(|e| match e {
            crate::ControllerError::Io(m) => Status::resource_exhausted(m),
            other => internal(other),
        })?;
        let (password, password_hash) = new_token(BROKER_PREFIX).map_err(internal)?;
        let identity = NodeIdentity {
            node_id: node_id.clone(),
            wg_public_key: wg.to_base64(),
            wg_next_key: None,
            signing_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signing),
            broker_hash: password_hash,
            labels: used.labels.clone(),
            overlay_address: overlay,
            enrolled_unix_ms: now,
            revoked_unix_ms: None,
        };
        if !self.store.create_identity(&identity).await.map_err(internal)? {
            return Err(Status::already_exists(format!(
                "node id {node_id} was enrolled at the same moment by another caller; ask for a new token and another node_id"
            )));
        }
        if let Some(d) = &self.dynsec
            && !d.add_node(&node_id, password.expose())
        {
            return Err(Status::unavailable(format!(
                "node {node_id} is enrolled but its broker client could not be queued (MQTT client busy); \
                 revoke it and enroll again"
            )));
        }
        let _ = self.on_change.send(node_id.clone());
        tracing::info!(node_id, %overlay, token_id = %used.token_id, "Node enrolled.");
        let controller_ip = std::net::Ipv4Addr::from(u32::from(base) + 1);
        let mut r = self.answer(node_id, password.expose().to_owned(), controller_ip);
        (r.overlay_address, r.overlay_prefix_len, r.labels) =
            (overlay.to_string(), u32::from(prefix), labels_map(&used.labels));
        Ok(r)
    }

    /// What an enrolled node is told about this controller.
    fn answer(&self, node_id: String, password: String, controller_ip: std::net::Ipv4Addr) -> EnrollResponse {
        EnrollResponse {
            controller: Some(WireGuardPeer {
                public_key: self.facing.wg_public_key.clone(),
                endpoint: self.facing.wg_endpoint.clone(),
                allowed_ips: vec![format!("{controller_ip}/32")],
                persistent_keepalive_s: 25,
            }),
            broker: Some(BrokerCredentials {
                url: self.facing.broker_url.clone(),
                username: node_id.clone(),
                password,
            }),
            node_id,
            controller_signing_key: self.facing.sealer.public_key(),
            controller_key_generation: self.facing.sealer.generation(),
            ..Default::default()
        }
    }
}

/// The fields of an enrollment request, checked before anything is looked
/// up: the WireGuard key, the signing key and the node id it asks for.
/// Pure, so the fuzzer can throw anything at it.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field and what to give.
pub fn check_request(q: &EnrollRequest) -> Result<(wireguard_control::Key, [u8; 32], String), Status> {
    if !q.token.trim().starts_with("fbt_") {
        return Err(Status::invalid_argument(
            "token: give the bootstrap token from `fleetctl tokens create` (fbt_...)",
        ));
    }
    let wg = wireguard_control::Key::from_base64(&q.wg_public_key)
        .map_err(|_| Status::invalid_argument("wg_public_key: not a base64 WireGuard public key"))?;
    let signing: [u8; 32] = q
        .signing_public_key
        .as_slice()
        .try_into()
        .map_err(|_| Status::invalid_argument("signing_public_key: an Ed25519 public key is 32 bytes"))?;
    fleet_proto::signing::verifying_key(&signing)
        .map_err(|_| Status::invalid_argument("signing_public_key: not a valid Ed25519 public key"))?;
    let node_id = if q.requested_node_id.is_empty() { q.hostname.clone() } else { q.requested_node_id.clone() };
    fleet_proto::validate_node_id(&node_id)
        .map_err(|e| Status::invalid_argument(format!("requested_node_id: {e}; set node_id in the agent's config")))?;
    Ok((wg, signing, node_id))
}

/// Makes the first admin API token when no live admin token exists, and
/// writes it to `path` (mode 0600). Returns it when made now; `None`
/// when an admin token exists already.
///
/// # Errors
/// Store or file errors.
pub async fn first_admin_token(
    store: &Store,
    path: &std::path::Path,
) -> Result<Option<Secret>, crate::ControllerError> {
    if store.has_live_admin_token().await? {
        return Ok(None);
    }
    let (token, hash) = new_token(API_PREFIX)?;
    let name = format!("admin-{}", &hash[..8]);
    let unlimited = crate::auth::Quota::default();
    store.create_api_token(&name, &hash, (Role::Admin, &unlimited), fleet_proto::now_unix_ms()).await?;
    fleet_durable::write_private(path, format!("{}\n", token.expose()).as_bytes())
        .map_err(|e| crate::ControllerError::Io(format!("cannot write the admin token to {}: {e}", path.display())))?;
    let e = crate::store::security::AuditEntry {
        at_unix_ms: fleet_proto::now_unix_ms(),
        actor: "controller".into(),
        action: "CreateApiToken".into(),
        target: name.clone(),
        result: "ok".into(),
    };
    store.append_audit(&e).await?;
    tracing::info!(path = %path.display(), name, "First admin API token written (mode 0600); fleetctl reads it with --token-file.");
    Ok(Some(token))
}

/// The open enrollment service.
pub struct Enrollment(pub Arc<Security>);

#[tonic::async_trait]
impl EnrollmentService for Enrollment {
    async fn enroll(&self, req: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let q = req.into_inner();
        let asked = if q.requested_node_id.is_empty() { q.hostname.clone() } else { q.requested_node_id.clone() };
        let r = self.0.enroll(q).await;
        let actor = format!("node:{}", asked.chars().take(64).collect::<String>());
        self.0.audit.record_result(&actor, "Enroll", r.as_ref().map_or(&asked, |e| &e.node_id), &r).await;
        r.map(Response::new)
    }
}
