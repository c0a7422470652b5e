//! The dashboard's server side on a real controller (docs/dashboard.md): served
//! over TLS with the controller's certificate, hardened headers, logins with
//! API tokens, roles and CSRF held on every change, audit records, sessions
//! ended by logout and by revocation, and live updates by server-sent events.
//! The page itself is driven in Chromium by scripts/test-browser.

use std::time::Duration;

use fleet_controller::Controller;
use fleet_net::client::{FleetClient, fleet_client};
use fleet_proto::v1::{
    CreateApiTokenRequest, ListAuditLogRequest, NodeState, NodeStatus, NodeVitals, RevokeApiTokenRequest,
};
use fleet_tests::web::{Reply, Web};
use fleet_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(15);

/// A controller with TLS and API tokens on (the defaults) and HTTPS on its HTTP listener.
async fn controller(dir: &std::path::Path) -> anyhow::Result<(Controller, CancellationToken, Web, FleetClient)> {
    let mut cfg = controller_config(dir, "", "");
    cfg.http.tls = fleet_controller::http::HttpTls::Auto;
    let stop = CancellationToken::new();
    let c = Controller::start(cfg, stop.clone()).await?;
    let web = Web { addr: c.http_addr, ca_pem: c.api.ca_pem.clone() };
    let token = std::fs::read_to_string(c.api.token_file.as_ref().expect("auth is on"))?;
    let admin = fleet_client(&c.api.url, c.api.ca_pem.as_deref().map(str::as_bytes), Some(token.trim())).await?;
    Ok((c, stop, web, admin))
}

async fn token(admin: &mut FleetClient, name: &str, role: &str) -> anyhow::Result<String> {
    let r = CreateApiTokenRequest { name: name.into(), role: role.into(), quota: None };
    Ok(admin.create_api_token(r).await?.into_inner().token)
}

/// A logged-in browser: its cookie and CSRF token.
struct Browser {
    cookie: String,
    csrf: String,
}

async fn login(web: &Web, token: &str) -> anyhow::Result<(Browser, Reply)> {
    let body = serde_json::json!({ "token": token }).to_string();
    let r = web.send("POST", "/api/login", &[("sec-fetch-site", "same-origin")], Some(&body)).await?;
    anyhow::ensure!(r.status == 200, "login: {} {}", r.status, r.body);
    let set = r.header("set-cookie").unwrap_or_default().to_owned();
    let cookie = set.split(';').next().unwrap_or_default().to_owned();
    let csrf = r.json()["csrf"].as_str().unwrap_or_default().to_owned();
    Ok((Browser { cookie, csrf }, r))
}

impl Browser {
    async fn get(&self, web: &Web, path: &str) -> anyhow::Result<Reply> {
        web.get(path, &[("cookie", &self.cookie)]).await
    }

    async fn post(&self, web: &Web, path: &str, body: &str) -> anyhow::Result<Reply> {
        let h = [("cookie", self.cookie.as_str()), ("x-csrf-token", &self.csrf), ("sec-fetch-site", "same-origin")];
        web.send("POST", path, &h, Some(body)).await
    }
}

async fn audited(admin: &FleetClient, actor: &str, action: &str, result: &str) -> anyhow::Result<()> {
    wait_for(T, &format!("audit {actor} {action} {result}"), || {
        let mut admin = admin.clone();
        async move {
            let recs = admin.list_audit_log(ListAuditLogRequest::default()).await.ok()?.into_inner().records;
            recs.iter().any(|r| r.actor == actor && r.action == action && r.result.starts_with(result)).then_some(())
        }
    })
    .await
}

#[tokio::test]
async fn the_dashboard_is_served_over_tls_with_a_strict_content_security_policy() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (c, stop, web, _admin) = controller(dir.path()).await?;
    let page = web.get("/", &[]).await?;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.body.contains("<script type=\"module\" src=\"/assets/app.js\">"), "{}", page.body);
    assert!(!page.body.contains("<script>"), "no inline script in the page");
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(page.header("strict-transport-security").is_some(), "HSTS under TLS");
    let js = web.get("/assets/app.js", &[]).await?;
    assert_eq!((js.status, js.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
    assert_eq!(web.get("/assets/../Cargo.toml", &[]).await?.status, 404);
    // The metrics are on the same TLS listener.
    assert!(web.get("/metrics", &[]).await?.body.contains("fleet_nodes_known"));
    // Plain HTTP to the TLS port gets no page.
    let mut plain = tokio::net::TcpStream::connect(c.http_addr).await?;
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(T, plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("Spark Fleet"), "plain HTTP served the page");
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test]
async fn roles_csrf_and_sessions_hold_like_grpc_and_every_action_is_audited() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (c, stop, web, mut admin) = controller(dir.path()).await?;
    let (viewer_token, operator_token) =
        (token(&mut admin, "v", "viewer").await?, token(&mut admin, "o", "operator").await?);
    assert_eq!(web.get("/api/fleet", &[]).await?.status, 401, "not logged in");
    let bad = web.send("POST", "/api/login", &[], Some(r#"{"token":"fat_nope"}"#)).await?;
    assert_eq!(bad.status, 401, "{bad:?}");

    let (viewer, r) = login(&web, &viewer_token).await?;
    let set = r.header("set-cookie").unwrap_or_default();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert_eq!(viewer.get(&web, "/api/fleet").await?.status, 200);
    let who = viewer.get(&web, "/api/session").await?.json();
    assert_eq!((who["who"]["role"].as_str(), who["transport"]["tls"].as_bool()), (Some("viewer"), Some(true)));
    // A viewer may not act: refused and audited, like gRPC.
    let revoke = viewer.post(&web, "/api/nodes/n1/revoke", "{}").await?;
    assert_eq!(revoke.status, 403, "{revoke:?}");
    assert!(revoke.json()["error"].as_str().unwrap_or_default().contains("admin"), "{}", revoke.body);
    audited(&admin, "v", "RevokeNode", "PermissionDenied").await?;
    assert_eq!(viewer.get(&web, "/api/security").await?.status, 403, "admins only");

    let (op, _) = login(&web, &operator_token).await?;
    let policy = r#"{"power_policy_toml":"saver_below_pct = 50.0"}"#;
    // Without the CSRF token, or from another site: refused.
    let h = [("cookie", op.cookie.as_str()), ("sec-fetch-site", "same-origin")];
    assert_eq!(web.send("POST", "/api/nodes/n1/policy", &h, Some(policy)).await?.status, 403);
    audited(&admin, "o", "SetDesiredState", "PermissionDenied").await?;
    let h = [("cookie", op.cookie.as_str()), ("x-csrf-token", &op.csrf), ("origin", "https://evil.example")];
    assert_eq!(web.send("POST", "/api/nodes/n1/policy", &h, Some(policy)).await?.status, 403);
    let ok = op.post(&web, "/api/nodes/n1/policy", policy).await?;
    assert_eq!(ok.status, 200, "{ok:?}");
    audited(&admin, "o", "SetDesiredState", "ok").await?;
    let node = op.get(&web, "/api/nodes/n1").await?;
    assert_eq!(node.status, 404, "no such node yet: {node:?}");

    // Logout ends the session; revoking a token ends its sessions.
    assert_eq!(op.post(&web, "/api/logout", "{}").await?.status, 200);
    assert_eq!(op.get(&web, "/api/fleet").await?.status, 401);
    admin.revoke_api_token(RevokeApiTokenRequest { name: "v".into() }).await?;
    wait_for(T, "the revoked viewer's session to end", || async {
        (viewer.get(&web, "/api/fleet").await.ok()?.status == 401).then_some(())
    })
    .await?;
    audited(&admin, "o", "DashboardLogin", "ok").await?;
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test]
async fn an_admins_actions_reach_the_api_and_are_audited() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (c, stop, web, mut admin) = controller(dir.path()).await?;
    let (a, _) = login(&web, &token(&mut admin, "adm", "admin").await?).await?;
    // Each action is the API call it names: its answer, and its audit record under the session's token.
    let revoke = a.post(&web, "/api/nodes/ghost/revoke", "{}").await?;
    let rotate = a.post(&web, "/api/nodes/ghost/rotate-key", "{}").await?;
    let job = a.post(&web, "/api/jobs", r#"{"model":"severity","text":"disk full"}"#).await?;
    for (what, r) in [("RevokeNode", &revoke), ("RotateNodeKey", &rotate)] {
        assert_eq!(r.status, 404, "{what}: {r:?}");
        assert!(r.json()["error"].as_str().is_some_and(|e| e.contains("not enrolled")), "{what}: {r:?}");
        audited(&admin, "adm", what, "NotFound").await?;
    }
    assert_eq!((job.status, job.json()["status"].as_str()), (200, Some("succeeded")), "{job:?}");
    audited(&admin, "adm", "SubmitJob", "ok").await?;
    let created = a.post(&web, "/api/bootstrap-tokens", r#"{"ttl_s":600}"#).await?;
    assert_eq!(created.status, 200, "{created:?}");
    let id = created.json()["token_id"].as_str().unwrap_or_default().to_owned();
    assert!(created.json()["token"].as_str().is_some_and(|t| t.starts_with("fbt_")), "{created:?}");
    let revoked = a.post(&web, &format!("/api/bootstrap-tokens/{id}/revoke"), "{}").await?;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    let sec = a.get(&web, "/api/security").await?.json();
    let state =
        sec["bootstrap_tokens"].as_array().and_then(|t| t.iter().find(|t| t["token_id"] == id.as_str()).cloned());
    assert_eq!(state.map(|t| t["state"].clone()), Some(serde_json::json!("revoked")), "{sec}");
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test]
async fn a_session_outlives_a_controller_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (c, stop, web, mut admin) = controller(dir.path()).await?;
    let (b, _) = login(&web, &token(&mut admin, "o", "operator").await?).await?;
    drop(admin);
    stop.cancel();
    c.wait().await;
    drop(c);
    // The same data directory: the sessions are in the store, shared by replicas too.
    let (c, stop, web, _admin) = controller(dir.path()).await?;
    let s = b.get(&web, "/api/session").await?.json();
    assert_eq!(s["who"]["name"].as_str(), Some("o"), "{s}");
    assert_eq!(b.post(&web, "/api/logout", "{}").await?.status, 200, "the CSRF token still holds");
    stop.cancel();
    c.wait().await;
    Ok(())
}

#[tokio::test]
async fn live_updates_carry_the_watched_nodes_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (c, stop, web, mut admin) = controller(dir.path()).await?;
    let (b, _) = login(&web, &token(&mut admin, "o", "operator").await?).await?;
    let status = |pct: f64| NodeStatus {
        node_id: "n1".into(),
        boot_id: "b".into(),
        state: NodeState::Online as i32,
        vitals: Some(NodeVitals { battery_soc_pct: Some(pct), ..Default::default() }),
        ..Default::default()
    };
    c.registry.update_status(status(80.0));
    // A stream is read as it comes: connect, ask, then read events.
    let ca = web.ca_pem.clone().unwrap_or_default();
    let registry = c.registry.clone();
    let feeder = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            registry.update_status(status(79.0 - f64::from(i)));
        }
    });
    let text = read_stream(web.addr, &ca, &b.cookie, "/api/live?watch=n1", "\"node_id\":\"n1\"").await?;
    feeder.abort();
    assert!(text.contains("event: fleet") && text.contains("\"online\":1"), "{text}");
    stop.cancel();
    c.wait().await;
    Ok(())
}

/// Reads a server-sent-events stream until `want` appears (or `T` passes).
async fn read_stream(
    addr: std::net::SocketAddr,
    ca: &str,
    cookie: &str,
    path: &str,
    want: &str,
) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut s = fleet_tests::web::connector(ca)?.connect(name, tcp).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nCookie: {cookie}\r\n\r\n").as_bytes()).await?;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + T;
    let mut buf = [0u8; 4096];
    while !text.contains(want) {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf)).await??;
        anyhow::ensure!(n > 0, "the stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    Ok(text)
}
