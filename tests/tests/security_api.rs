//! The API's locks (docs/security.md): TLS with the controller's own CA,
//! bearer tokens and roles, rate limits, the audit log, bootstrap tokens and
//! enrollment of a real agent, on the real gRPC server.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use fleet_agent::enroll::{EnrollOptions, enroll};
use fleet_controller::Controller;
use fleet_net::client::{FleetClient, fleet_client};
use fleet_proto::v1::{
    CreateApiTokenRequest, CreateBootstrapTokenRequest, DesiredState, ListAuditLogRequest, ListBootstrapTokensRequest,
    ListNodesRequest, NodeState, RevokeApiTokenRequest, RevokeBootstrapTokenRequest, RevokeNodeRequest,
    SetDesiredStateRequest,
};
use fleet_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const T: Duration = Duration::from_secs(15);

async fn client_with(c: &Controller, token: Option<&str>) -> anyhow::Result<FleetClient> {
    fleet_client(&c.api.url, c.api.ca_pem.as_deref().map(str::as_bytes), token).await.map_err(anyhow::Error::msg)
}

async fn api_token(admin: &mut FleetClient, name: &str, role: &str) -> anyhow::Result<String> {
    Ok(admin
        .create_api_token(CreateApiTokenRequest { name: name.into(), role: role.into(), quota: None })
        .await?
        .into_inner()
        .token)
}

fn set_desired(node: &str) -> SetDesiredStateRequest {
    SetDesiredStateRequest {
        desired: Some(DesiredState { node_id: node.into(), telemetry_interval_ms: 500, ..Default::default() }),
        expected_version: 0,
    }
}

async fn audit_has(admin: &FleetClient, actor: &str, action: &str, result_prefix: &str) -> anyhow::Result<()> {
    let what = format!("audit record {actor} {action} {result_prefix}");
    audit_where(admin, &what, |r| r.actor == actor && r.action == action && r.result.starts_with(result_prefix)).await
}

/// Waits for an audit record that `matches` (the audit writer is its own
/// task: a record follows the call's answer).
async fn audit_where(
    admin: &FleetClient,
    what: &str,
    matches: impl Fn(&fleet_proto::v1::AuditRecord) -> bool,
) -> anyhow::Result<()> {
    let matches = &matches;
    wait_for(T, what, || {
        let mut admin = admin.clone();
        async move {
            let recs = admin.list_audit_log(ListAuditLogRequest::default()).await.ok()?.into_inner().records;
            recs.iter().any(matches).then_some(())
        }
    })
    .await
}

/// Rate limit per token (20/s with bursts of 40), health open without a
/// token, plain HTTP/2 or an untrusted certificate refused with what to do.
async fn limits_health_and_tls(
    c: &Controller,
    operator: &mut FleetClient,
    admin: &mut FleetClient,
) -> anyhow::Result<()> {
    // The operator's next 100 calls are not all served.
    let mut limited = 0;
    for _ in 0..100 {
        if let Err(e) = operator.list_nodes(ListNodesRequest::default()).await {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
            limited += 1;
        }
    }
    assert!(limited > 0, "no call was rate limited");
    let metrics = http_get(c.http_addr, "/metrics").await?;
    assert!(metric_value(&metrics, "fleet_api_rejected_total{reason=\"rate_limited\"}") >= 1.0);
    // Other tokens are not slowed by it.
    admin.list_nodes(ListNodesRequest::default()).await?;

    // Health and reflection stay open (over TLS, no token).
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(c).await?);
    health.check(tonic_health::pb::HealthCheckRequest { service: "fleet.v1.FleetService".into() }).await?;

    // Plain HTTP/2 to the TLS port, or TLS without the CA: refused with what to do.
    let plain = c.api.url.replace("https://", "http://");
    let mut p = fleet_client(&plain, None, None).await.map_err(anyhow::Error::msg)?;
    assert!(p.list_nodes(ListNodesRequest::default()).await.is_err());
    let Err(e) = fleet_client(&c.api.url, None, None).await else { anyhow::bail!("untrusted certificate accepted") };
    assert!(e.to_string().contains("certificate"), "{e}");

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_tls_and_audit_on_the_real_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let mut cfg = controller_config(dir.path(), "", "");
    cfg.security.api_rate_per_s = 20;
    let c = Controller::start(cfg.clone(), stop.clone()).await?;
    assert!(c.api.url.starts_with("https://"), "{}", c.api.url);

    // The first admin token: a file only its owner can read.
    let token_file = c.api.token_file.clone().expect("auth is on");
    let mode = std::fs::metadata(&token_file)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut admin = grpc(&c).await?;
    admin.list_nodes(ListNodesRequest::default()).await?;

    // No token, an unknown token: UNAUTHENTICATED, counted.
    let mut anon = client_with(&c, None).await?;
    let e = anon.list_nodes(ListNodesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("Bearer"), "{}", e.message());
    let mut wrong = client_with(&c, Some("fat_not-a-real-token")).await?;
    assert_eq!(wrong.list_nodes(ListNodesRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);
    let metrics = http_get(c.http_addr, "/metrics").await?;
    assert!(metric_value(&metrics, "fleet_api_rejected_total{reason=\"unauthenticated\"}") >= 2.0, "{metrics}");

    // Roles: a viewer reads but cannot change desired state; an operator can.
    let viewer_token = api_token(&mut admin, "dashboard", "viewer").await?;
    let operator_token = api_token(&mut admin, "ops-alice", "operator").await?;
    let mut viewer = client_with(&c, Some(&viewer_token)).await?;
    let mut operator = client_with(&c, Some(&operator_token)).await?;
    viewer.list_nodes(ListNodesRequest::default()).await?;
    let e = viewer.set_desired_state(set_desired("pi-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("operator") && e.message().contains("dashboard"), "{}", e.message());
    operator.set_desired_state(set_desired("pi-1")).await?;
    let e =
        operator.create_api_token(CreateApiTokenRequest { name: "x".into(), role: "admin".into(), quota: None }).await;
    assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);
    // A token name is never reused; a bad role says which exist.
    let e = admin
        .create_api_token(CreateApiTokenRequest { name: "dashboard".into(), role: "viewer".into(), quota: None })
        .await;
    assert_eq!(e.unwrap_err().code(), Code::AlreadyExists);
    let e = admin
        .create_api_token(CreateApiTokenRequest { name: "y".into(), role: "root".into(), quota: None })
        .await
        .unwrap_err();
    assert!(e.message().contains("viewer, operator or admin"), "{}", e.message());

    // Every change, allowed or denied, is in the audit log with who did it.
    audit_has(&admin, "ops-alice", "SetDesiredState", "ok").await?;
    audit_has(&admin, "dashboard", "SetDesiredState", "PermissionDenied").await?;
    audit_has(&admin, "controller", "CreateApiToken", "ok").await?;
    let admin_name = admin
        .list_audit_log(ListAuditLogRequest::default())
        .await?
        .into_inner()
        .records
        .into_iter()
        .find(|r| r.action == "CreateApiToken" && r.target == "dashboard")
        .map(|r| r.actor)
        .expect("CreateApiToken audited");
    assert!(admin_name.starts_with("admin-"), "{admin_name}");

    // Revoked: refused at once on this controller.
    admin.revoke_api_token(RevokeApiTokenRequest { name: "dashboard".into() }).await?;
    assert_eq!(viewer.list_nodes(ListNodesRequest::default()).await.unwrap_err().code(), Code::Unauthenticated);

    limits_health_and_tls(&c, &mut operator, &mut admin).await?;

    // Restart: the same CA and admin token; no second admin token is made.
    stop.cancel();
    c.wait().await;
    let first_token = std::fs::read_to_string(&token_file)?;
    let ca = c.api.ca_pem.clone();
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    assert_eq!(std::fs::read_to_string(&token_file)?, first_token);
    assert_eq!(c.api.ca_pem, ca);
    grpc(&c).await?.list_nodes(ListNodesRequest::default()).await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}

/// Every way an enrollment is refused, each saying why: enrolled already
/// (no --force), a used, unknown, revoked or expired token, a node id that
/// is taken (before the token is spent). Returns the revoked token's id.
async fn every_refusal(
    opts: &impl Fn(&str, &str) -> EnrollOptions,
    admin: &mut FleetClient,
    used_token: &str,
    dir: &std::path::Path,
) -> anyhow::Result<String> {
    // Enrolled again without --force: refused on the node.
    let err = enroll(&opts(used_token, "pi-a")).await.unwrap_err().to_string();
    assert!(err.contains("enrolled already") && err.contains("--force"), "{err}");
    // The used token, for another node: refused.
    let err = enroll(&opts(used_token, "pi-b")).await.unwrap_err().to_string();
    assert!(err.contains("PermissionDenied") && err.contains("already used"), "{err}");
    // Unknown, revoked and expired tokens: refused, each saying so.
    let err = enroll(&opts("fbt_nonsense", "pi-b")).await.unwrap_err().to_string();
    assert!(err.contains("unknown bootstrap token"), "{err}");
    let revoked = admin.create_bootstrap_token(CreateBootstrapTokenRequest::default()).await?.into_inner();
    admin.revoke_bootstrap_token(RevokeBootstrapTokenRequest { token_id: revoked.token_id.clone() }).await?;
    let err = enroll(&opts(&revoked.token, "pi-b")).await.unwrap_err().to_string();
    assert!(err.contains("revoked"), "{err}");
    let short = admin.create_bootstrap_token(CreateBootstrapTokenRequest { ttl_s: 1, ..Default::default() }).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = enroll(&opts(&short.into_inner().token, "pi-b")).await.unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
    // A node id that is taken: refused before the token is spent.
    let fresh = admin.create_bootstrap_token(CreateBootstrapTokenRequest::default()).await?.into_inner();
    let mut taken = opts(&fresh.token, "pi-a");
    taken.dir = dir.join("pi-a-copy");
    let err = enroll(&taken).await.unwrap_err().to_string();
    assert!(err.contains("AlreadyExists"), "{err}");
    let e2 = enroll(&opts(&fresh.token, "pi-b")).await?;
    assert_eq!(e2.overlay_address, "10.77.0.3");

    Ok(revoked.token_id)
}

/// Revoke: offline in the live view, audited (its enrollment and pi-b's
/// refused one too); its id is never enrolled again.
async fn revoke_pi_a(c: &Controller, admin: &mut FleetClient) -> anyhow::Result<()> {
    admin.revoke_node(RevokeNodeRequest { node_id: "pi-a".into() }).await?;
    let nodes = list_nodes(admin).await?;
    assert_eq!(state_of(&nodes, "pi-a"), Some(NodeState::Offline));
    assert!(c.store.identity("pi-a").await?.is_some_and(|i| i.revoked_unix_ms.is_some()));
    audit_has(admin, "node:pi-a", "Enroll", "ok").await?;
    audit_has(admin, "node:pi-b", "Enroll", "PermissionDenied").await?;
    audit_where(admin, "the RevokeNode audit record", |r| {
        r.action == "RevokeNode" && r.target == "pi-a" && r.result == "ok"
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_enroll_a_node_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let stop = CancellationToken::new();
    let c = Controller::start(controller_config(dir.path(), "", ""), stop.clone()).await?;
    let mut admin = grpc(&c).await?;
    let ca = c.api.ca_pem.clone().map(String::into_bytes);
    let opts = |token: &str, node: &str| EnrollOptions {
        controller_url: c.api.url.clone(),
        ca_pem: ca.clone(),
        token: token.into(),
        node_id: node.into(),
        dir: dir.path().join(node),
        force: false,
    };

    let t = admin
        .create_bootstrap_token(CreateBootstrapTokenRequest {
            ttl_s: 3600,
            labels: [("site".to_owned(), "barn".to_owned())].into(),
        })
        .await?
        .into_inner();
    assert!(t.token.starts_with("fbt_"));

    // Enrollment: keys made on the node, identity.toml 0600, an overlay address.
    let e = enroll(&opts(&t.token, "pi-a")).await?;
    assert_eq!(e.node_id, "pi-a");
    assert_eq!(e.overlay_address, "10.77.0.2");
    assert_eq!(e.overlay_prefix_len, 16);
    assert_eq!(e.controller_allowed_ips, vec!["10.77.0.1/32".to_owned()]);
    assert_eq!(e.broker_url, c.mqtt_url);
    assert_eq!(e.broker_username, "pi-a");
    assert!(e.broker_password.starts_with("fbp_"));
    assert_eq!(e.labels.get("site").map(String::as_str), Some("barn"));
    for f in ["identity.toml", "wg.key", "signing.key"] {
        let mode = std::fs::metadata(dir.path().join("pi-a").join(f))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // Only the public halves reached the controller.
    let id = c.store.identity("pi-a").await?.expect("identity stored");
    let keys = fleet_agent::identity::Identity::load(&dir.path().join("pi-a"))?;
    assert_eq!(id.wg_public_key, keys.wg_public_base64());
    assert_eq!(id.signing_key, keys.signing_public_base64());
    assert_ne!(id.broker_hash, e.broker_password);

    let revoked = every_refusal(&opts, &mut admin, &t.token, dir.path()).await?;

    let tokens = admin.list_bootstrap_tokens(ListBootstrapTokensRequest {}).await?.into_inner().tokens;
    let used: Vec<_> = tokens.iter().filter(|t| t.used_unix_ms != 0).map(|t| t.used_by.as_str()).collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(used.contains(&"pi-a") && used.contains(&"pi-b"));
    assert!(tokens.iter().any(|t| t.token_id == revoked && t.revoked_unix_ms != 0));

    // The enrolled agent runs on what it was given (node id, broker, labels).
    let mut acfg = agent_config("", &c.mqtt_url, dir.path());
    acfg.data_dir = dir.path().join("pi-a");
    acfg.mqtt.url = "mqtt://127.0.0.1:9".into(); // replaced by the enrollment's broker
    let agent = AgentHandle::spawn(acfg);
    wait_for(T, "pi-a online with its token's label", || {
        let mut admin = admin.clone();
        async move {
            let nodes = list_nodes(&mut admin).await.ok()?;
            let n = nodes.iter().find(|n| n.node_id == "pi-a")?;
            let s = n.status.as_ref()?;
            (s.state == NodeState::Online as i32 && s.labels.get("site").is_some_and(|v| v == "barn")).then_some(())
        }
    })
    .await?;

    revoke_pi_a(&c, &mut admin).await?;
    agent.stop().await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}
