//! Enrollment and access records in both stores (docs/security.md): a
//! bootstrap token enrolls once and is refused when unknown, used, revoked or
//! expired; the clock's high-water mark only rises; API tokens resolve to their
//! role until revoked; overlay addresses are handed out in order and never
//! twice, even to a re-enrolled node; the audit log reads back newest first —
//! on SQLite and on the real PostgreSQL.

use fleet_controller::auth::{self as security, Quota, Role};
use fleet_controller::store::Store;
use fleet_controller::store::security::{AuditEntry, TokenRefused};
use fleet_controller::store::usage::ApiToken;
use fleet_tests::TestDb;
use std::net::Ipv4Addr;

const NOW: i64 = 1_800_000_000_000;
const HOUR: i64 = 3_600_000;

async fn check(s: &Store) -> anyhow::Result<()> {
    // Bootstrap tokens: one use each.
    let (token, hash) = security::new_token(security::BOOTSTRAP_PREFIX).map_err(anyhow::Error::msg)?;
    s.create_bootstrap_token("t1", &hash, "site=greenhouse", NOW, NOW + HOUR).await?;
    let used = s.use_bootstrap_token(&security::hash_token(token.expose()), "pi-a", NOW + 1).await?;
    let used = used.expect("a fresh token enrolls");
    assert_eq!((used.labels.as_str(), used.used_by.as_deref()), ("site=greenhouse", Some("pi-a")));
    let again = s.use_bootstrap_token(&hash, "pi-b", NOW + 2).await?;
    assert_eq!(again, Err(TokenRefused::Used("pi-a".into())));
    assert_eq!(s.use_bootstrap_token("nope", "pi-b", NOW).await?, Err(TokenRefused::Unknown));

    s.create_bootstrap_token("t2", "h2", "", NOW, NOW + HOUR).await?;
    assert_eq!(s.use_bootstrap_token("h2", "pi-b", NOW + HOUR).await?, Err(TokenRefused::Expired));
    // The clock's high-water mark: read back, only ever raised.
    assert_eq!(s.clock_high_water().await?, 0);
    s.raise_clock_high_water(NOW).await?;
    s.raise_clock_high_water(NOW - 86_400_000).await?;
    assert_eq!(s.clock_high_water().await?, NOW, "a mark set back is ignored");
    s.create_bootstrap_token("t3", "h3", "", NOW, NOW + HOUR).await?;
    assert!(s.revoke_bootstrap_token("t3", NOW + 5).await?);
    assert!(!s.revoke_bootstrap_token("t3", NOW + 6).await?, "revoked once");
    assert!(!s.revoke_bootstrap_token("t1", NOW + 6).await?, "a used token cannot be revoked");
    assert_eq!(s.use_bootstrap_token("h3", "pi-b", NOW + 7).await?, Err(TokenRefused::Revoked));
    let listed = s.list_bootstrap_tokens().await?;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|t| !t.token_id.is_empty()));

    // API tokens.
    let none = Quota::default();
    let two_jobs = Quota { jobs_per_day: 2, ..Quota::default() };
    s.create_api_token("ci", "ha", (Role::Viewer, &two_jobs), NOW).await?;
    s.create_api_token("ops", "hb", (Role::Admin, &none), NOW).await?;
    let named = |t: Option<ApiToken>| t.map(|t| (t.name, t.role, t.quota));
    assert_eq!(named(s.api_token("ha").await?), Some(("ci".into(), Role::Viewer, two_jobs)));
    assert_eq!(named(s.api_token("hb").await?), Some(("ops".into(), Role::Admin, none)));
    assert!(s.create_api_token("ci", "hc", (Role::Admin, &none), NOW).await.is_err(), "names are unique");
    assert!(s.revoke_api_token("ci", NOW + 1).await?);
    assert_eq!(s.api_token("ha").await?, None);
    assert!(!s.revoke_api_token("ci", NOW + 2).await?);

    // Overlay addresses in a /29: .0 network, .1 the controller, .7 broadcast,
    // so five nodes (.2-.6); never reused.
    let net = Ipv4Addr::new(10, 77, 0, 0);
    assert_eq!(s.allocate_overlay_address(net, 29, "pi-a", NOW).await?, Ipv4Addr::new(10, 77, 0, 2));
    assert_eq!(s.allocate_overlay_address(net, 29, "pi-b", NOW).await?, Ipv4Addr::new(10, 77, 0, 3));
    assert_eq!(
        s.allocate_overlay_address(net, 29, "pi-a", NOW).await?,
        Ipv4Addr::new(10, 77, 0, 2),
        "same node, same address"
    );
    for (i, n) in ["pi-c", "pi-d", "pi-e"].iter().enumerate() {
        let a = s.allocate_overlay_address(net, 29, n, NOW).await?;
        assert_eq!(a, Ipv4Addr::new(10, 77, 0, 4 + u8::try_from(i)?));
    }
    let full = s.allocate_overlay_address(net, 29, "pi-f", NOW).await.unwrap_err().to_string();
    assert!(full.contains("is full") && full.contains("overlay_cidr"), "{full}");

    // Audit log.
    for (i, action) in ["CreateBootstrapToken", "SetDesiredState", "RevokeNode"].iter().enumerate() {
        s.append_audit(&AuditEntry {
            at_unix_ms: NOW + i64::try_from(i)?,
            actor: "ops".into(),
            action: (*action).into(),
            target: "pi-a".into(),
            result: "ok".into(),
        })
        .await?;
    }
    let log = s.list_audit(NOW + 1, 10).await?;
    assert_eq!(log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(), ["RevokeNode", "SetDesiredState"]);
    assert_eq!(s.list_audit(0, 1).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn security_records_on_sqlite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    check(&Store::open_sqlite(dir.path()).await?).await
}

#[tokio::test]
async fn security_records_on_postgres() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let s = Store::open_postgres(&db.url, &fleet_tests::pg_storage(false)).await?;
    check(&s).await?;
    drop(s);
    db.cleanup().await
}

#[tokio::test]
async fn security_records_on_timescaledb() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    if let Some(s) = fleet_tests::timescale_store(&db, "security_records_on_timescaledb").await? {
        check(&s).await?;
    }
    db.cleanup().await
}
